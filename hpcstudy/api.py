"""The Python API for notebooks: run a study and get tables and fitted models back.

    import hpcstudy
    study = hpcstudy.load_study("examples/statins_mi.yaml")
    result = hpcstudy.run(study, "data/", out="results/")
    result.cohort                      # a pandas DataFrame
    result.models["cox"].summary       # terms, coef, se, HR, lower_95, upper_95, z, p
    result.exported                    # what may leave: every disclosure rule applied

What is private. Everything a :class:`StudyResult` holds except ``exported`` is the raw,
undisclosed result: exact small counts, the fitted models and the per-person table. It lives in
the notebook's memory, inside the secure platform, and nothing here writes it anywhere. Only
``exported`` (and, with ``out``, the folder written exactly as ``hpcstudy run`` writes it, which
the export gate checks) has passed disclosure control; copy nothing else out of the platform.

A run through this API is audited like ``hpcstudy run``: a started record before any data is
read and a finished one after, whatever the outcome; a site that requires a project approval
requires one here too (``project=``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError
from .study import Study, StudyErrors
from .study import load_study as _load_study

__all__ = ["load_study", "run", "StudyResult", "FittedModel", "StudyErrors", "UserError"]

YEAR = 365.25


class _OnFirstUse:
    """A module imported when one of its names is first used: ``hpcstudy run`` goes through
    this module and never builds a frame, and pandas costs about 0.6 s of CPU to import."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    import pandas as pd
else:
    pd = _OnFirstUse("pandas")


def load_study(path: str | Path, variant: str | None = None) -> Study:
    """Read and check a study (and each of its variants); with ``variant``, that variant.
    A study with problems raises :class:`StudyErrors` (``.lines()``: one per problem)."""
    _path_arg(path, "path", "the study's YAML file")
    return _load_study(path, variant)


def _path_arg(value, name: str, what: str) -> None:
    """A path argument of the API: a str or a path, else a one-line UserError (a None or a
    number went on to a TypeError; outside tester, session 8)."""
    if not isinstance(value, (str, os.PathLike)):
        raise UserError(f"{name} is the path of {what}, not {type(value).__name__}",
                        fix=f"give {name} as a str or a pathlib.Path")


def _arguments(data, out, project, client, overwrite, verify) -> None:
    """The arguments of :func:`run`, checked before the audit record names them."""
    _path_arg(data, "data", "a register folder")
    for name, value, what in (("out", out, "the outputs folder"),
                              ("project", project, "the project's approval file")):
        if value is not None:
            _path_arg(value, name, what)
    for name, value in (("overwrite", overwrite), ("verify", verify)):
        if not isinstance(value, bool):   # overwrite="no" replaced an earlier run's folder
            raise UserError(f"{name} is True or False, not {value!r}",
                            fix=f"write {name}=True or {name}=False")
    if client is not None and not callable(getattr(client, "submit", None)):
        raise UserError(f"client is a dask.distributed Client, not {type(client).__name__}",
                        fix="give client=dask.distributed.Client(...), or leave it out")


def run(study: Study | str | Path, data: str | Path, out: str | Path | None = None,
        variant: str | None = None, engine: str = "dask", *, project: str | Path | None = None,
        client=None, overwrite: bool = False, verify: bool = False,
        device: str = "cpu") -> StudyResult:
    """Run ``study`` (a :class:`Study` or a YAML path) on the registers in ``data``.

    ``variant`` picks one of the study's variants. ``engine`` is "dask" or "reference".
    ``project`` is the project's approval file (a site may require one). ``client`` is a
    dask client (default: a local one). With ``out``, the outputs are also written there,
    exactly as ``hpcstudy run --out`` writes them (``overwrite`` to replace an earlier run;
    ``verify`` checks every data file's checksum first). ``device`` is "cpu", "gpu" or "auto"
    (gpu where CuPy finds a device), as ``hpcstudy run --device``.

    Returns a :class:`StudyResult`: its DataFrames and models are private (see the module
    docstring); ``exported`` is the disclosure-controlled export. Bad input raises
    :class:`UserError` (a :class:`StudyErrors` for a study's problems), never anything else.
    """
    from .secure import audit

    _arguments(data, out, project, client, overwrite, verify)
    study = _study(study, variant)
    entry = {"command": "run", "args": ["(python api)", str(study.source), "--data", str(data),
                                        *(["--out", str(out)] if out is not None else []),
                                        *(["--variant", variant] if variant else []),
                                        "--engine", engine,
                                        *(["--device", device] if device != "cpu" else [])]}
    if study.source != "<python>":
        entry["study_sha256"] = audit.file_sha256(study.source)
    entry["data_manifest_sha256"] = audit.file_sha256(Path(data) / "manifest.json")
    if project is not None:
        entry["approval_sha256"] = audit.file_sha256(project)
    outer = audit._current      # the head of the command around this call, if any
    started = audit.begin(entry)
    status = "error"
    try:
        result = _run(study, data, out, engine, project, client, overwrite, verify, device)
        status = audit.outcome(None)
        return result
    except BaseException as e:
        status = audit.outcome(e)
        raise
    finally:
        done = {**entry, "status": status}
        if out is not None and status == "ok" and (Path(out) / "outputs.json").is_file():
            done["outputs"] = {"outputs.json": audit.file_sha256(Path(out) / "outputs.json")}
        try:
            audit.finish(started, done)
        except UserError:
            if status == "ok":
                raise
        finally:
            # this run's head must not mark folders written after it (write_head)
            audit._current = outer


def _study(study, variant: str | None) -> Study:
    if not isinstance(study, Study):
        if not isinstance(study, (str, Path)):
            raise UserError(f"a study is a Study or the path of its YAML file, not "
                            f"{type(study).__name__}", fix="use hpcstudy.load_study(path)")
        return load_study(study, variant)
    if variant is not None:
        if study.source == "<python>" or not Path(study.source).is_file():
            raise UserError(f"variant {variant!r} of a study with no file",
                            fix="load the variant with hpcstudy.load_study(path, variant=...)")
        return load_study(study.source, variant)
    return study


def prepared(study, data, project=None, variant: str | None = None):
    """The study (a Study or a YAML path; ``variant`` of it) checked and compiled against the
    data's manifest and the project's approval: :class:`hpcstudy.pipeline.Prepared`. A site
    that requires an approval refuses ``project=None``. Only manifests are read."""
    from .pipeline import prepare
    from .secure.approval import check_dataset, load_approval, require_project

    approval = None
    if project is None:
        require_project()
    else:
        approval = load_approval(project)
        check_dataset(approval, data)   # the manifest only: before any data file is read
    return prepare(_study(study, variant), data, approval)


def _run(study, data, out, engine, project, client, overwrite, verify,
         device="cpu") -> StudyResult:
    from .engines.run import ENGINES

    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}", fix=f"use one of {', '.join(ENGINES)}")
    prep = prepared(study, data, project)
    return execute(prep, out, engine=engine, client=client, overwrite=overwrite,
                   verify=verify, device=device)


def execute(prep, out=None, *, engine: str = "dask", client=None, progress=None,
            overwrite: bool = False, verify: bool = False, resume: bool = False,
            report: dict | None = None, checked: bool = False, device: str = "cpu",
            gather: bool = True, figures=None) -> StudyResult:
    """Run a prepared study (:func:`prepared`) and return its :class:`StudyResult`; with
    ``out``, write the output folder. The one code path of ``hpcstudy run`` and :func:`run`
    (neither audits here: their callers do). ``checked``: the output folder and the data were
    checked already. ``gather=False`` leaves the dask engine's per-person table where it was
    computed (the result then has no ``person_table`` and no ``models``). ``figures``: a
    figure process started earlier (:func:`hpcstudy.pipeline.execute`)."""
    from . import pipeline
    from .models.partitions import LocalPartitions

    if not checked:
        if out is not None:
            pipeline.check_run(out, prep, overwrite=overwrite, verify=verify)
        else:   # what check_run checks of the data, without a folder to write
            pipeline.check_data(prep, verify)
    done = pipeline.execute(prep, out, engine=engine, client=client, progress=progress,
                            overwrite=overwrite, resume=resume, report=report, device=device,
                            gather=gather, figures=figures)
    models, table = {}, None
    if done.table is not None:
        local = LocalPartitions([done.table])
        models = {name: FittedModel(name, m, prep.plan, done.table, local)
                  for name, m in done.fitted.items()}
        table = pd.DataFrame(done.table)
    return StudyResult(study=prep.study, plan=prep.plan, results=done.results,
                       exported=done.exported, models=models, person_table=table,
                       out=Path(out) if out is not None else None)


# -- results ----------------------------------------------------------------------------------
def _frame(rows) -> pd.DataFrame | None:
    return None if rows is None else pd.DataFrame(rows)


@dataclass(repr=False)
class StudyResult:
    """A study's results in a notebook. Private (raw, undisclosed): every attribute but
    ``exported``. ``exported`` is the results with every disclosure rule applied; with ``out``
    it is what ``out/results.json`` holds.

    attrition     {arm label: DataFrame[step, persons]}, persons left after each step
    cohort        DataFrame[label, persons, events, person_years, rate_per_1000py, lower_95,
                  upper_95], one row per arm
    rates         DataFrame[<rates.by columns>, persons, events, person_years, rate_per_1000py,
                  lower_95, upper_95], or None when the study asks for no rates
    curves        DataFrame[group, day, at_risk, events, survival, lower_95, upper_95,
                  cumulative_incidence], or None
    measures      {measure name: DataFrame[<by columns>, persons, events, proportion,
                  lower_95, upper_95]} (empty when none)
    lexis         DataFrame[group, age_band, period, (persons,) events, person_years,
                  rate_per_1000py, lower_95, upper_95], or None
    models        {"cox" | "logistic" | "poisson" | "lexis_poisson": FittedModel}
    person_table  DataFrame: one row per person and arm (pnr, group, index_date, covariates,
                  exit_date, status, time, event); never exported
    results       the raw results dict; exported, out, study, plan
    """

    study: Study
    plan: object
    results: dict
    exported: dict
    models: dict = field(default_factory=dict)
    person_table: pd.DataFrame | None = None
    out: Path | None = None

    @property
    def attrition(self) -> dict[str, pd.DataFrame]:
        return {g: pd.DataFrame(rows, columns=["step", "persons"])
                for g, rows in self.results["attrition"].items()}

    @property
    def cohort(self) -> pd.DataFrame:
        return pd.DataFrame(self.results["cohort"])

    @property
    def rates(self) -> pd.DataFrame | None:
        return _frame(self.results.get("rates"))

    @property
    def curves(self) -> pd.DataFrame | None:
        return _frame(self.results.get("curves"))

    @property
    def lexis(self) -> pd.DataFrame | None:
        return _frame(self.results.get("lexis"))

    @property
    def measures(self) -> dict[str, pd.DataFrame]:
        return {k: pd.DataFrame(v) for k, v in self.results.get("measures", {}).items()}

    def __repr__(self) -> str:
        parts = [k for k in ("rates", "curves", "lexis", "measures") if k in self.results]
        return (f"<StudyResult {self.study.name!r}: arms {list(self.results['attrition'])}, "
                f"models {list(self.models)}, tables {['cohort', 'attrition', *parts]}"
                f"{f', written to {self.out}' if self.out else ''}>")


class FittedModel:
    """A fitted model of a study. ``kind``: "cox", "logistic" or "poisson" (``lexis_poisson``
    is a Poisson model of the Lexis cells).

    summary        DataFrame[term, coef, se, HR|OR|RR, lower_95, upper_95, z, p]
    coef_, se_     Series by term; cov_ the covariance DataFrame; conf_int(level)
    loglik_, n_obs_, n_iter_ (Newton steps), n_events_ (Cox), model: the underlying fit
    design(df)     the design matrix (DataFrame by term) of a person table's rows
    predict(df)    Cox: the relative hazard exp(x·β) against a person with every term 0;
                   logistic: the probability of the outcome; Poisson: the rate per
                   person-year (times ``exposure`` person-years when given)
    baseline_hazard  (Cox) DataFrame[stratum, day, events, hazard, cumulative_hazard]: the
                   Breslow estimate at every term 0 (stratum 0 when unstratified)
    predict_survival(df, day)  (Cox, unstratified) exp(-H0(day)·exp(x·β))
    """

    def __init__(self, name: str, model, plan, table: dict, parts):
        from .engines import analyses as A

        self.name, self.model, self._plan, self._table = name, model, plan, table
        self.kind = {"CoxPH": "cox", "Logistic": "logistic"}.get(type(model).__name__,
                                                                  "poisson")
        from .plan.nodes import ModelPlan

        spec = plan.analysis(ModelPlan, model=name)
        self._strata: tuple[str, ...] = ()
        self._spec = None
        split = spec is not None and {"age_band", "time_band"} & set(spec.adjust)
        if spec is not None and not split:
            # (a model of split follow-up predicts from rows named like its terms only)
            names, self._spec = A.design_columns(plan, parts, spec.adjust)
            self._strata = tuple(spec.strata)
        self._baseline = None

    # -- estimates --------------------------------------------------------------------------
    @property
    def terms(self) -> list[str]:
        return list(self.model.names)

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(self.model.summary)

    @property
    def coef_(self) -> pd.Series:
        return pd.Series(np.asarray(self.model.coef_, float), index=self.terms, name="coef")

    @property
    def se_(self) -> pd.Series:
        return pd.Series(np.asarray(self.model.se_, float), index=self.terms, name="se")

    @property
    def cov_(self) -> pd.DataFrame:
        return pd.DataFrame(self.model.cov_, index=self.terms, columns=self.terms)

    def conf_int(self, level: float = 0.95) -> pd.DataFrame:
        """Wald confidence intervals of the coefficients (log scale): DataFrame[lower, upper]
        by term; exp() of them is the ratio's interval."""
        from statistics import NormalDist

        if not isinstance(level, (int, float)) or not 0 < level < 1:
            raise UserError(f"level must be between 0 and 1, not {level!r}", fix="e.g. 0.95")
        z = NormalDist().inv_cdf(0.5 + level / 2)
        b, s = self.coef_, self.se_
        return pd.DataFrame({"lower": b - z * s, "upper": b + z * s})

    def __getattr__(self, attr):
        if attr.endswith("_") and not attr.startswith("_"):
            return getattr(self.model, attr)   # loglik_, n_obs_, n_iter_, n_events_, …
        raise AttributeError(attr)

    def __repr__(self) -> str:
        return f"<FittedModel {self.name}: {self.kind}, terms {self.terms}>"

    # -- prediction -------------------------------------------------------------------------
    def design(self, df: pd.DataFrame) -> pd.DataFrame:
        """The model's terms (without the intercept) for each row of ``df``: a person table's
        columns (group, covariates) or the terms themselves as columns."""
        terms = [t for t in self.terms if t != "intercept"]
        if not isinstance(df, pd.DataFrame):
            raise UserError(f"predict takes a pandas DataFrame, not {type(df).__name__}",
                            fix="pass rows of result.person_table, or a DataFrame of the terms")
        used = set(terms) | {c for c, _ in self._spec or ()}
        bad = [c for c in df.columns if c in used and not (
            pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
        if bad:   # age="old" was a ValueError from NumPy
            raise UserError(f"model {self.name}: column(s) {bad} are not numbers",
                            fix="pass rows of result.person_table, whose columns are numbers")
        if all(t in df.columns for t in terms):
            return df[terms].astype(float)
        if self._spec is None:
            raise UserError(f"model {self.name}: the DataFrame lacks the term(s) "
                            f"{[t for t in terms if t not in df.columns]}",
                            fix=f"give columns {terms}")
        missing = sorted({c for c, _ in self._spec if c not in df.columns})
        if missing:
            raise UserError(f"model {self.name}: the DataFrame lacks the column(s) {missing}",
                            fix="pass rows of result.person_table (or columns named like "
                                f"the terms {terms})")
        cols = {}
        for term, (col, level) in zip(terms, self._spec, strict=True):
            v = df[col].to_numpy(dtype=float)
            cols[term] = (v == level).astype(float) if level is not None else v
        return pd.DataFrame(cols, index=df.index)

    def _linear(self, df) -> np.ndarray:
        X = self.design(df).to_numpy()
        b = np.asarray(self.model.coef_, float)
        if self.terms and self.terms[0] == "intercept":
            return b[0] + X @ b[1:]
        return X @ b

    def predict(self, df: pd.DataFrame, exposure=None) -> pd.Series:
        """See the class docstring: relative hazard (Cox), probability (logistic), rate per
        person-year or expected events (Poisson)."""
        eta = self._linear(df)
        if self.kind == "logistic":
            out = 1 / (1 + np.exp(-eta))
        else:
            out = np.exp(eta)
            if self.kind == "poisson" and exposure is not None:
                out = out * _exposure(exposure, len(out))
        return pd.Series(out, index=df.index, name="prediction")

    @property
    def baseline_hazard(self) -> pd.DataFrame:
        if self.kind != "cox":
            raise UserError(f"model {self.name} is {self.kind}: only a Cox model has a "
                            "baseline hazard", fix="use predict()")
        if self._spec is None:
            raise UserError(f"model {self.name} fits split follow-up (age_band): its baseline "
                            "hazard is not one per person's row", fix="use its estimates")
        if self._baseline is None:
            self._baseline = self._breslow()
        return self._baseline

    def _breslow(self) -> pd.DataFrame:
        t = self._table
        df = pd.DataFrame({c: t[c] for c in {c for c, _ in self._spec} | set(self._strata)})
        risk = np.exp(self._linear(df))
        time, event = t["time"].astype(float), t["event"].astype(float)
        stratum = np.zeros(len(time), np.int64)
        for name in self._strata:
            stratum = stratum * 100_000 + np.asarray(t[name], np.int64)
        rows = []
        for s in np.unique(stratum):
            sel = stratum == s
            ts, ds, rs = time[sel], event[sel], risk[sel]
            order = np.argsort(ts, kind="stable")
            ts, ds, rs = ts[order], ds[order], rs[order]
            at_risk = np.cumsum(rs[::-1])[::-1]          # Σ risk over time ≥ t_i
            days, first = np.unique(ts, return_index=True)
            events = np.add.reduceat(ds, first)
            keep = events > 0
            h = events[keep] / at_risk[first][keep]
            rows.append(pd.DataFrame({"stratum": int(s), "day": days[keep],
                                      "events": events[keep].astype(int), "hazard": h,
                                      "cumulative_hazard": np.cumsum(h)}))
        return pd.concat(rows, ignore_index=True)

    def predict_survival(self, df: pd.DataFrame, day: float) -> pd.Series:
        """(Cox, unstratified) the probability of no outcome by ``day`` of follow-up."""
        if self.kind != "cox" or self._strata:
            raise UserError(f"model {self.name}: survival is predicted from an unstratified "
                            "Cox model only", fix="use baseline_hazard per stratum")
        if isinstance(day, bool) or not isinstance(day, (int, float, np.integer, np.floating)) \
                or not np.isfinite(day) or day < 0:
            # day="x" or nan gave the survival at the last event day, silently
            raise UserError(f"model {self.name}: day is a number of days ≥ 0, not {day!r}",
                            fix="e.g. predict_survival(people, day=365)")
        bh = self.baseline_hazard
        i = np.searchsorted(bh["day"].to_numpy(), day, side="right")
        h0 = float(bh["cumulative_hazard"].iloc[i - 1]) if i > 0 else 0.0
        return pd.Series(np.exp(-h0 * np.exp(self._linear(df))), index=df.index,
                         name="survival")



def _exposure(exposure, n: int) -> np.ndarray:
    """Person-years for a Poisson prediction: a number, or one per row (a list of the wrong
    length was broadcast, a string was a ValueError)."""
    try:
        e = np.asarray(exposure, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"exposure is person-years (a number, or one per row), not "
                        f"{type(exposure).__name__}",
                        fix="e.g. exposure=people['time'] / 365.25") from None
    if e.ndim > 1 or (e.ndim == 1 and e.shape[0] != n) or not np.isfinite(e).all() or \
            (e < 0).any():
        raise UserError(f"exposure must be a number ≥ 0 or one per row ({n}), not "
                        f"{e.shape[0] if e.ndim == 1 else 'a table'} values",
                        fix="e.g. exposure=people['time'] / 365.25")
    return e
