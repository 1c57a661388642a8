"""hpcstudy: cohort studies on national health registers.

The Python API (see docs/python-api.md)::

    import hpcstudy
    result = hpcstudy.run(hpcstudy.load_study("study.yaml"), "data/", out="results/")

The API loads on first use: ``import hpcstudy`` itself stays light (no pandas, no dask).
"""

__all__ = ["load_study", "run", "StudyResult", "FittedModel", "StudyErrors", "UserError"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpcstudy' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
