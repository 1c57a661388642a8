"""The design step under a distributed client moves no per-person numbers through the client
but matching's triples: a stratified and a weighted design with truncated weights, a penalised
score and numbers in Table 1 (age, Charlson index) receive a bounded number of bytes per
partition, the same at 3 000 and 20 000 persons, and give the same bytes as without a client."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from test_device_path import bytes_received, table_bytes

from hpcstudy.designs.apply import STEP_MATCH, STEP_STRATA, STEP_TRIM
from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .test_designs import BASE

DESIGN_STEPS = (STEP_TRIM, STEP_MATCH, STEP_STRATA)

DESIGNS = {
    "strata": {"method": "stratification", "stratification": {"strata": 10}},
    "ipw": {"method": "weighting", "weighting": {"estimand": "ate", "stabilised": True,
                                                 "truncate": [1, 99]}},
}


def spec(design):
    s = yaml.safe_load(yaml.safe_dump(BASE))
    s["propensity"] = {"covariates": ["age", "sex", "region", "diabetes", "charlson"],
                       "penalty": 0.5, **DESIGNS[design]}
    return study_from_text(yaml.safe_dump(s))


@pytest.fixture(scope="module")
def received(small_data, medium_data):
    """Per (design, data): the bytes the client received building the design's tables on a
    LocalCluster of worker processes, the partitions, the rows the design started from, and
    whether tables, attrition and design results equal a run without a client."""
    from distributed import Client, LocalCluster

    out = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        workers = set(cluster.scheduler_info["workers"])
        for design in DESIGNS:
            for name, data in (("small", small_data), ("medium", medium_data)):
                _, plan, ds = R.prepare(spec(design), data)
                local = R.person_table(plan, ds, "dask")
                with bytes_received(workers) as got:
                    built = R.person_table(plan, ds, "dask", client)
                during = got["bytes"]
                host = list(built.tables)
                a, b = R.combined(plan, local.tables), R.combined(plan, host)
                same = (set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
                        and built.attrition == local.attrition and
                        json.dumps(built.design, sort_keys=True) ==
                        json.dumps(local.design, sort_keys=True))
                persons = sum([n for step, n in arm if step not in DESIGN_STEPS][-1]
                              for arm in local.attrition.values())
                out[(design, name)] = {"bytes": during, "parts": len(host), "same": same,
                                       "rows": sum(table_bytes(t) for t in host),
                                       "persons": persons}
    return out


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_the_client_receives_no_more_for_more_persons(design, received):
    """Before, the client received per person the score (stratification edges) or the weight
    (truncation), age and the Charlson index (Table 1) and the penalised score's design row:
    ~800 kB at 20 000 persons, 8 MB at 200 000. Now the per-partition reductions, the same
    for 6x the persons, and less than three numbers a person even at this small size."""
    small, big = received[(design, "small")], received[(design, "medium")]
    assert small["same"] and big["same"]
    assert big["persons"] > 5 * small["persons"], (small, big)   # the sizes differ enough
    per_part = [r["bytes"] / r["parts"] for r in (small, big)]
    assert per_part[1] < per_part[0] * 1.25, (small, big)
    assert big["bytes"] < 3 * 8 * big["persons"], big
    assert big["bytes"] < big["rows"] / 4, big
