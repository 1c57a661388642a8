"""The planted truth can be recovered from the registers themselves.

From the registers alone (no access to the generator's latent variables): persons who never
migrated, aged 40–90 on 1 January 2000 without a prior MI, followed to the first MI (DI21
action diagnosis of an inpatient contact), death or the end of data. Statin use (from the first
C10AA dispensing) and diabetes (from the first DE11 diagnosis) vary in time. Because the MI
hazard is Gompertz in age, a Cox model in calendar time adjusted for age at start estimates the
planted log hazard ratios, the age slope included. A crude model (statin only) does not.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy.models import CoxPH
from hpcstudy.registers import codes
from hpcstudy.registers.generate import generate
from hpcstudy.registers.schema import DATA_END, day
from hpcstudy.registers.store import Dataset

pytestmark = pytest.mark.slow

START = day("2000-01-01")


def days(a):
    return a.astype("datetime64[D]").astype(np.int64)


def first_date(pnr, when, people):
    """First date per person in ``people`` (sorted), or a large number."""
    out = np.full(people.size, 10**9, np.int64)
    order = np.lexsort((when, pnr))
    pnr, when = pnr[order], when[order]
    first = np.ones(pnr.size, bool)
    first[1:] = pnr[1:] != pnr[:-1]
    pos = np.searchsorted(people, pnr[first])
    ok = (pos < people.size) & (people[np.minimum(pos, people.size - 1)] == pnr[first])
    out[pos[ok]] = when[first][ok]
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("truth") / "d"
    generate(out, persons=120_000, seed=2024, partitions=4, jobs=2)
    ds = Dataset.open(out)
    icd, atc = ds.dictionary("icd10"), ds.dictionary("atc")
    bef = ds.read("bef")
    pnr = bef.column("pnr").to_numpy()
    order = np.argsort(pnr)
    pnr = pnr[order]
    birth = days(bef.column("foed_dag").to_numpy())[order]
    female = (bef.column("koen").to_numpy()[order] == 2).astype(float)
    moved = np.isin(pnr, ds.read("vnds", columns=["pnr"]).column(0).to_numpy())
    dod = ds.read("dod")
    death = first_date(dod.column("pnr").to_numpy(), days(dod.column("doddato").to_numpy()), pnr)
    adm = ds.read("lpr_adm")
    lo, hi = codes.prefix_range(icd, "DI21")
    a_pnr, a_day = adm.column("pnr").to_numpy(), days(adm.column("d_inddto").to_numpy())
    a_diag, a_pat = adm.column("c_adiag").to_numpy(), adm.column("c_pattype").to_numpy()
    is_mi = (a_diag >= lo) & (a_diag < hi) & (a_pat == 0)
    mi = first_date(a_pnr[is_mi], a_day[is_mi], pnr)
    # diabetes: first DE11 diagnosis, action or secondary (through recnum)
    diag = ds.read("lpr_diag")
    lo, hi = codes.prefix_range(icd, "DE11")
    d_code = diag.column("c_diag").to_numpy()
    rec = diag.column("recnum").to_numpy()[(d_code >= lo) & (d_code < hi)]
    recnum = adm.column("recnum").to_numpy()
    hit = np.isin(recnum, rec)
    diabetes = first_date(a_pnr[hit], a_day[hit], pnr)
    lmdb = ds.read("lmdb")
    lo, hi = codes.prefix_range(atc, "C10AA")
    code = lmdb.column("atc").to_numpy()
    s = (code >= lo) & (code < hi)
    statin = first_date(lmdb.column("pnr").to_numpy()[s], days(lmdb.column("eksd").to_numpy())[s],
                        pnr)
    age0 = (START - birth) / 365.25
    keep = ~moved & (age0 >= 40) & (age0 < 90) & (death > START) & (mi >= START)
    end = np.minimum(np.minimum(mi, death), DATA_END)
    event = (mi <= end) & (mi <= DATA_END)
    return {k: v[keep] for k, v in dict(age0=age0, female=female, end=end, event=event,
                                         statin=statin, diabetes=diabetes).items()}


def split(c):
    """Counting-process rows (start, stop] in days since START, split at statin and diabetes."""
    rows = []
    n = c["end"].size
    cuts = np.stack([np.zeros(n), c["statin"] - START, c["diabetes"] - START,
                     c["end"] - START], axis=1).astype(float)
    stop = cuts[:, 3]
    pts = np.sort(np.clip(cuts, 0, stop[:, None]), axis=1)
    for k in range(3):
        a, b = pts[:, k], pts[:, k + 1]
        ok = b > a
        rows.append(dict(start=a[ok], stop=b[ok], idx=np.flatnonzero(ok)))
    start = np.concatenate([r["start"] for r in rows])
    stop_ = np.concatenate([r["stop"] for r in rows])
    idx = np.concatenate([r["idx"] for r in rows])
    t_abs = START + stop_
    event = c["event"][idx] & (stop_ == (c["end"][idx] - START))
    statin = (c["statin"][idx] < t_abs).astype(float)
    diabetes = (c["diabetes"][idx] < t_abs).astype(float)
    X = np.stack([c["age0"][idx], c["female"][idx], diabetes, statin], axis=1)
    return X, start, stop_, event.astype(float)


def test_adjusted_cox_recovers_every_planted_effect(cohort):
    from hpcstudy.registers.synth import TRUTH

    X, start, stop, event = split(cohort)
    m = CoxPH().fit(X, stop, event, entry=start, names=["age", "female", "diabetes", "statin"])
    truth = [TRUTH.mi.per_year, TRUTH.mi.log_hr["female"], TRUTH.mi.log_hr["diabetes"],
             TRUTH.mi.log_hr["statin"]]
    assert m.n_events_ > 1500
    z = (m.coef_ - truth) / m.se_
    assert np.all(np.abs(z) < 3.5), (m.coef_, truth, z)


def test_crude_statin_comparison_is_confounded(cohort):
    from hpcstudy.registers.synth import TRUTH

    X, start, stop, event = split(cohort)
    crude = CoxPH().fit(X[:, [3]], stop, event, entry=start)
    z = (crude.coef_[0] - TRUTH.mi.log_hr["statin"]) / crude.se_[0]
    assert z > 4, (crude.coef_, z)  # statin users are older and more often diabetic
