"""Danish-style synthetic registers with planted, documented effects.

Persons are simulated in fixed-size blocks; block ``b`` draws everything from its own random
stream seeded by ``(seed, b)``. Rows are routed to partitions only after a block is done, so
the number of partitions never changes who exists or what happened to them, and the first
``k`` persons of a block are the same whatever ``N`` is.

The life-course model (all hazards per year, ages in years; see docs/registers.md):

* birth 1920–2023 with the Danish birth-cohort sizes, 51.2 % boys; 12 % immigrants;
* latent onsets of type 2 diabetes, stroke, heart failure, COPD and cancer: Gompertz hazards
  ``exp(a + b·age)`` with sex effects;
* statin initiation (first C10AA dispensing), only from 1995: Gompertz in age, raised by
  diabetes and lowered for women — confounding by indication, as in real data;
* first myocardial infarction: Gompertz in age, with planted log hazard ratios for female sex,
  diabetes (from its onset on) and statin use (from the first dispensing on, for life);
* death: Gompertz in age, raised by diabetes, MI and cancer, plus an early death after MI;
* emigration (some return), during which nothing is recorded.

The registers record what the real ones would: LPR contacts from 1977 (outpatients from 1995),
dispensings from 1995, only while the person lives in Denmark.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import codes as C
from .schema import CPR_START, DATA_END, LMDB_START, LPR_OUTPATIENT, LPR_START, day

YEAR = 365.25
BLOCK_SIZE = 16384  # persons per block; part of the data's identity: never change it lightly
BIRTH_FIRST, BIRTH_LAST = 1920, 2023


@dataclass(frozen=True)
class Gompertz:
    """Hazard ``exp(log_rate_age0 + per_year·age + effects)`` per person-year."""

    log_rate_age0: float
    per_year: float
    log_hr: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def at(rate_at: float, age: float, per_year: float, **log_hr: float) -> Gompertz:
        """A Gompertz hazard given its rate (per year) for a reference person at ``age``."""
        return Gompertz(math.log(rate_at) - per_year * age, per_year, dict(log_hr))


@dataclass(frozen=True)
class Truth:
    """Every planted effect; written verbatim to the manifest's ``truth`` section."""

    mi: Gompertz = Gompertz.at(0.004, 60, 0.07, female=-0.7, diabetes=math.log(2.0),
                               statin=math.log(0.75))
    statin_start: Gompertz = Gompertz.at(0.02, 60, 0.05, female=-0.3, diabetes=math.log(4.0))
    diabetes: Gompertz = Gompertz.at(0.006, 60, 0.04, female=-0.3)
    stroke: Gompertz = Gompertz.at(0.003, 70, 0.08, female=-0.2)
    heart_failure: Gompertz = Gompertz.at(0.004, 70, 0.08, female=-0.3)
    copd: Gompertz = Gompertz.at(0.003, 60, 0.05)
    cancer: Gompertz = Gompertz.at(0.008, 60, 0.06, female=-0.15)
    death: Gompertz = Gompertz.at(0.008, 60, 0.087, female=-0.4, diabetes=math.log(1.8),
                                  mi=math.log(2.0), cancer=math.log(4.0))
    # Probability of dying within 30 days of an MI: logistic in age, by region.
    mi_death_30d_logit: float = -2.6
    mi_death_30d_per_year: float = 0.04  # per year of age above 70
    mi_death_30d_region_log_or: dict[int, float] = field(default_factory=lambda: {
        1081: 0.15, 1082: -0.10, 1083: 0.05, 1084: -0.15, 1085: 0.10})
    immigrant_share: float = 0.12
    emigration_share: float = 0.08
    emigration_share_immigrants: float = 0.30
    return_share: float = 0.25
    # Second-line diabetes drugs (a separate random stream; see second_line): hospitalisation
    # for heart failure (DI110) after the first second-line dispensing, by drug.
    sglt2_hf: Gompertz = Gompertz.at(0.03, 70, 0.08, female=-0.3, prior_mi=math.log(2.0),
                                     sglt2=math.log(0.6))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = {
            "time_scale": "hazards are per person-year, ages in years (days / 365.25); "
                          "log_rate_age0 + per_year * age is the log hazard of a male "
                          "reference person without the listed conditions",
            "mi": "first myocardial infarction since the person could be observed (in Denmark, "
                  "from 1977), recorded as DI21 action diagnosis of an inpatient contact. "
                  "statin: from the first C10AA dispensing on, for life (intention to treat). "
                  "diabetes: from type 2 diabetes onset on. Age acts "
                  "through per_year, so a Cox model in time since index adjusted for age at "
                  "index estimates per_year as the age coefficient",
            "statin_start": "initiation of a statin (first C10AA dispensing), from 1995 on and "
                            "only while living in Denmark; depends on age, sex and diabetes: "
                            "confounding by indication",
            "death": "all-cause death; mi and cancer act from their onset on. On top, death "
                     "within 30 days of an MI with the logistic mi_death_30d_* model",
            "sglt2_hf": "persons with type 2 diabetes start one second-line drug (DPP-4 A10BH01, "
                        "SGLT2 A10BK01/A10BK03, GLP-1 A10BJ02, sulfonylurea A10BB12) from 2008 "
                        "on, the choice by calendar year (SGLT2 from 2013), age, sex and prior "
                        "MI (younger men after an MI get SGLT2 more often: confounding). From "
                        "that first dispensing on, hospitalisation for heart failure (DI110, "
                        "inpatient action diagnosis) has this hazard; sglt2 is the log hazard "
                        "ratio of SGLT2 against every other second-line drug (intention to "
                        "treat, for life); prior_mi: an MI before the start",
        }
        return d


TRUTH = Truth()

# Relative Danish live births by year (thousands), interpolated between the points.
_BIRTHS = {1920: 72, 1930: 65, 1940: 70, 1946: 96, 1950: 80, 1960: 76, 1966: 88, 1970: 71,
           1975: 72, 1983: 51, 1990: 63, 1995: 70, 2000: 67, 2008: 65, 2013: 56, 2021: 63,
           2023: 57}
_REGION_CODES = np.array([1081, 1082, 1083, 1084, 1085], np.int16)
_REGION_SHARE = np.array([0.10, 0.23, 0.21, 0.32, 0.14])
# Four hospitals per region, as c_sgh codes.
_HOSPITALS = {1081: [8001, 8003, 8041, 8042], 1082: [7005, 6620, 6006, 7601],
              1083: [4202, 5501, 3800, 5005], 1084: [1301, 1330, 1516, 2000],
              1085: [3007, 4001, 4005, 3800]}

# Background contact diagnoses: (category, weight).
_BG_DIAG = [("Z03", 6), ("Z00", 3), ("R07", 4), ("R10", 4), ("S52", 2), ("S82", 2), ("S06", 2),
            ("S72", 1), ("T78", 1), ("M54", 4), ("M16", 1), ("M17", 1), ("K80", 1), ("K35", 1),
            ("K40", 1), ("K21", 1), ("N39", 2), ("J18", 2), ("J45", 1), ("A09", 2), ("B34", 2),
            ("F32", 1), ("F41", 1), ("F10", 1), ("G43", 1), ("H26", 2), ("L40", 1), ("M05", 1),
            ("I10", 3), ("I20", 1), ("I25", 1), ("I48", 2), ("E78", 1), ("E66", 1), ("G45", 1),
            ("I24", 0.3), ("I61", 0.3), ("I64", 0.3), ("E10", 0.3), ("E13", 0.2), ("D12", 0.5),
            ("D05", 0.2), ("C44", 1), ("R55", 1), ("N18", 0.5), ("F03", 0.5)]
_CANCER_SITES = [("C18", 10), ("C19", 1), ("C20", 5), ("C25", 3), ("C34", 12), ("C43", 6),
                 ("C50", 14), ("C61", 12), ("C64", 2), ("C67", 4), ("C71", 2), ("C91", 2)]
_ACUTE_DRUGS = [("J01CE02", 5), ("J01CA04", 3), ("J01FA09", 1), ("N02BE01", 3), ("M01AE01", 3),
                ("R06AE07", 1), ("N05CF01", 1), ("N02AX02", 1), ("D07AC01", 1)]
_CHRONIC_DRUGS = [("A02BC01", 3), ("A02BC05", 1), ("N06AB04", 2), ("N06AB10", 1),
                  ("R03AC02", 2), ("H03AA01", 2), ("B01AC06", 3), ("C07AB02", 2),
                  ("C08CA01", 2), ("C03CA01", 1), ("B01AF01", 1)]
_STATINS = [("C10AA01", 60), ("C10AA05", 30), ("C10AA07", 5), ("C10AA03", 5)]


class Dictionaries:
    """Code → int32 index for the generator's dictionaries."""

    def __init__(self) -> None:
        self.dicts = C.dictionaries()
        self.index = {name: {c: i for i, c in enumerate(d)} for name, d in self.dicts.items()}
        icd = self.dicts["icd10"]
        # category index of every ICD-10 code ("DI219" -> index of "DI21")
        self.icd_category = np.array([self.index["icd10"][c[:4]] for c in icd], np.int32)

    def icd(self, cat: str, sub: int | None = None) -> int:
        return self.index["icd10"][f"D{cat}" + ("" if sub is None else str(sub))]

    def atc(self, code: str) -> int:
        return self.index["atc"][code]


def _weights(pairs):
    w = np.array([p[1] for p in pairs], float)
    return w / w.sum()


def _birth_year_probs() -> tuple[np.ndarray, np.ndarray]:
    years = np.arange(BIRTH_FIRST, BIRTH_LAST + 1)
    pts = sorted(_BIRTHS)
    w = np.interp(years, pts, [_BIRTHS[p] for p in pts])
    return years, w / w.sum()


def gompertz_onset(rng: np.random.Generator, start_age: np.ndarray, g: Gompertz,
                   base_log_hr: np.ndarray, breaks: list[np.ndarray] | None = None,
                   break_log_hr: list[float] | None = None) -> np.ndarray:
    """Age at which a piecewise Gompertz hazard first fires after ``start_age`` (inf: never).

    The hazard is ``exp(g.log_rate_age0 + g.per_year·age + base_log_hr + Σ_j β_j·[age ≥ t_j])``
    with per-person change points ``breaks[j]`` (inf where a change never happens). Sampled
    exactly by inverting the cumulative hazard segment by segment.
    """
    n = start_age.shape[0]
    b = g.per_year
    breaks = breaks or []
    k = len(breaks)
    if k:
        bk = np.stack(breaks, axis=1)
        inc = np.broadcast_to(np.asarray(break_log_hr, float), (n, k))
        order = np.argsort(bk, axis=1, kind="stable")
        bk = np.take_along_axis(bk, order, axis=1)
        inc = np.take_along_axis(inc, order, axis=1)
        seg_log = np.concatenate([np.zeros((n, 1)), np.cumsum(inc, axis=1)], axis=1)
        edges = np.concatenate([bk, np.full((n, 1), np.inf)], axis=1)
    else:
        seg_log = np.zeros((n, 1))
        edges = np.full((n, 1), np.inf)
    remaining = rng.exponential(size=n)
    out = np.full(n, np.inf)
    todo = np.ones(n, bool)
    lo = start_age.astype(float).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(k + 1):
            hi = np.maximum(lo, edges[:, j])
            c = np.exp(g.log_rate_age0 + base_log_hr + seg_log[:, j])
            h_seg = c / b * (np.exp(b * hi) - np.exp(b * lo))
            fires = todo & (remaining <= h_seg)
            out[fires] = np.log(np.exp(b * lo[fires]) + remaining[fires] * b / c[fires]) / b
            remaining = np.where(todo & ~fires, remaining - h_seg, remaining)
            todo &= ~fires
            lo = hi
    out[out > 120] = np.inf  # nobody lives that long: treat as never
    return out


@dataclass
class People:
    """Per-person latent life course of one block (days since 1970 unless noted)."""

    idx: np.ndarray        # global person number
    male: np.ndarray
    birth: np.ndarray
    region: np.ndarray
    entry: np.ndarray      # birth, or immigration for immigrants
    immigrant: np.ndarray
    emig: np.ndarray       # emigration day (inf if none)
    exit1: np.ndarray      # first departure: emigration, day after death, or after DATA_END
    back: np.ndarray       # return from emigration (inf if none)
    exit2: np.ndarray      # final departure after a return (death or after DATA_END)
    death: np.ndarray      # true death day (inf if after the data)
    onset: dict[str, np.ndarray]  # condition → onset day (inf if never)
    statin: np.ndarray     # statin initiation day (inf if never)
    frailty: np.ndarray    # propensity to use health care (gamma, mean 1)

    def take(self, sel: np.ndarray) -> People:
        def t(a):
            return a[sel]
        return People(t(self.idx), t(self.male), t(self.birth), t(self.region), t(self.entry),
                      t(self.immigrant), t(self.emig), t(self.exit1), t(self.back), t(self.exit2),
                      t(self.death), {k: t(v) for k, v in self.onset.items()}, t(self.statin),
                      t(self.frailty))

    def observed(self, who: np.ndarray, when: np.ndarray, since: int) -> np.ndarray:
        """Would a register opened on ``since`` record person ``who``'s event on ``when``?"""
        w = when
        resident = ((w >= self.entry[who]) & (w < self.exit1[who])) | \
                   ((w >= self.back[who]) & (w < self.exit2[who]))
        return resident & (w >= since) & (w <= DATA_END)

    def last_day(self) -> np.ndarray:
        """Last day on which anything can be recorded for each person."""
        last = np.where(np.isfinite(self.back), self.exit2, self.exit1)
        return np.minimum(last, DATA_END + 1)


def _age_days(age_years: np.ndarray, birth: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(age_years), np.floor(birth + age_years * YEAR), np.inf)


def _to_age(days: np.ndarray, birth: np.ndarray) -> np.ndarray:
    return (days - birth) / YEAR


def simulate_people(rng: np.random.Generator, n: int, first_idx: int) -> People:
    """Latent life courses for ``n`` candidate persons (not yet filtered to the CPR era)."""
    t = TRUTH
    male = rng.random(n) < 0.512
    years, probs = _birth_year_probs()
    byear = rng.choice(years, size=n, p=probs)
    birth = np.array([day(f"{y}-01-01") for y in range(BIRTH_FIRST, BIRTH_LAST + 2)])
    b0, b1 = birth[byear - BIRTH_FIRST], birth[byear - BIRTH_FIRST + 1]
    birth_day = np.floor(b0 + rng.random(n) * (b1 - b0))
    region = _REGION_CODES[rng.choice(5, size=n, p=_REGION_SHARE)]
    immigrant = rng.random(n) < t.immigrant_share
    window = np.maximum(birth_day, CPR_START)
    immig_day = np.floor(window + rng.random(n) * np.maximum(DATA_END - window, 0))
    entry = np.where(immigrant, np.maximum(immig_day, birth_day), birth_day)
    female = (~male).astype(float)
    zero = np.zeros(n)

    def onset(g: Gompertz, **extra) -> np.ndarray:
        base = g.log_hr.get("female", 0.0) * female
        return _age_days(gompertz_onset(rng, zero, g, base, **extra), birth_day)

    ons = {"diabetes": onset(t.diabetes), "stroke": onset(t.stroke),
           "heart_failure": onset(t.heart_failure), "copd": onset(t.copd),
           "cancer": onset(t.cancer)}
    d_age = _to_age(ons["diabetes"], birth_day)
    # Statins are started in Denmark, from 1995 (or arrival): a start abroad would leave
    # someone exposed whom no Danish register could ever see as a user.
    lmdb_age = np.maximum(_to_age(np.maximum(entry, LMDB_START), birth_day), 0.0)
    s = t.statin_start
    statin = _age_days(gompertz_onset(rng, lmdb_age, s, s.log_hr["female"] * female,
                                      [d_age], [s.log_hr["diabetes"]]), birth_day)
    m = t.mi
    # The first MI is simulated from when a person can be observed (in Denmark, LPR open):
    # an earlier, unrecorded first MI would leave someone who looks MI-free but can never
    # have one, which no register study could see.
    observable = np.maximum(_to_age(np.maximum(entry, LPR_START), birth_day), 0.0)
    mi = _age_days(gompertz_onset(rng, observable, m, m.log_hr["female"] * female,
                                  [d_age, _to_age(statin, birth_day)],
                                  [m.log_hr["diabetes"], m.log_hr["statin"]]), birth_day)
    ons["mi"] = mi
    dg = t.death
    death = _age_days(gompertz_onset(
        rng, zero, dg, dg.log_hr["female"] * female,
        [d_age, _to_age(mi, birth_day), _to_age(ons["cancer"], birth_day)],
        [dg.log_hr["diabetes"], dg.log_hr["mi"], dg.log_hr["cancer"]]), birth_day)
    # Early death after an MI, logistic in age and region.
    mi_age = _to_age(mi, birth_day)
    region_lor = np.vectorize(t.mi_death_30d_region_log_or.get)(region).astype(float)
    with np.errstate(invalid="ignore"):
        logit = t.mi_death_30d_logit + t.mi_death_30d_per_year * (mi_age - 70) + region_lor
        p_early = 1 / (1 + np.exp(-logit))
    early = np.isfinite(mi) & (rng.random(n) < np.nan_to_num(p_early))
    early_day = mi + np.floor(rng.random(n) * 30)
    death = np.where(early & (early_day < death), early_day, death)
    death = np.where(death > DATA_END, np.inf, death)

    # Emigration: a uniform day in the resident span; some return after ~4 years.
    share = np.where(immigrant, t.emigration_share_immigrants, t.emigration_share)
    emigrates = rng.random(n) < share
    span_end = np.minimum(death + 1, DATA_END + 1)  # exclusive: the death day is recorded
    start = np.maximum(entry, CPR_START)
    emig = np.floor(start + rng.random(n) * np.maximum(span_end - start, 0))
    emigrates &= emig > entry
    returns = emigrates & (rng.random(n) < t.return_share)
    back = np.where(returns, emig + np.floor(rng.exponential(4 * YEAR, n)) + 1, np.inf)
    back = np.where(back < span_end, back, np.inf)
    exit1 = np.where(emigrates, emig, span_end)
    exit2 = np.where(np.isfinite(back), span_end, exit1)
    frailty = rng.gamma(2.0, 0.5, n)
    return People(np.arange(first_idx, first_idx + n, dtype=np.int64), male, birth_day,
                  region, entry, immigrant, np.where(emigrates, emig, np.inf), exit1, back,
                  exit2, death, ons, statin, frailty)


def block_people(seed: int, block: int) -> tuple[np.random.Generator, People]:
    """The ``BLOCK_SIZE`` persons of block ``block``: resident at some point since CPR start."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block])))
    kept: list[People] = []
    have = 0
    first = block * BLOCK_SIZE
    while have < BLOCK_SIZE:
        cand = simulate_people(rng, BLOCK_SIZE + BLOCK_SIZE // 8, 0)
        # lived in Denmark at some point since the CPR opened (an immigrant whose death came
        # before the arrival day never arrived)
        resident_since_cpr = (cand.last_day() > np.maximum(cand.entry, CPR_START)) & \
            (cand.entry <= DATA_END)
        sel = np.flatnonzero(resident_since_cpr)[: BLOCK_SIZE - have]
        kept.append(cand.take(sel))
        have += sel.size
    p = kept[0] if len(kept) == 1 else _concat_people(kept)
    p.idx = np.arange(first, first + BLOCK_SIZE, dtype=np.int64)
    return rng, p


def _concat_people(parts: list[People]) -> People:
    cat = np.concatenate
    return People(cat([p.idx for p in parts]), cat([p.male for p in parts]),
                  cat([p.birth for p in parts]), cat([p.region for p in parts]),
                  cat([p.entry for p in parts]), cat([p.immigrant for p in parts]),
                  cat([p.emig for p in parts]), cat([p.exit1 for p in parts]),
                  cat([p.back for p in parts]),
                  cat([p.exit2 for p in parts]), cat([p.death for p in parts]),
                  {k: cat([p.onset[k] for p in parts]) for k in parts[0].onset},
                  cat([p.statin for p in parts]), cat([p.frailty for p in parts]))


# -- pseudonyms ------------------------------------------------------------------------------
_M62 = np.uint64((1 << 62) - 1)


def pseudonym(idx: np.ndarray, salt: int = 0) -> np.ndarray:
    """A bijection of [0, 2^62) (multiply by odd constants and xor-shift, all mod 2^62)."""
    x = (idx.astype(np.uint64) + np.uint64(salt)) & _M62
    with np.errstate(over="ignore"):
        x = (x * np.uint64(0x9E3779B97F4A7C15)) & _M62
        x ^= x >> np.uint64(29)
        x = (x * np.uint64(0xBF58476D1CE4E5B9)) & _M62
        x ^= x >> np.uint64(32)
        x = (x * np.uint64(0x94D049BB133111EB)) & _M62
        x ^= x >> np.uint64(31)
    return x.astype(np.int64)


# -- register rows --------------------------------------------------------------------------
def _poisson_times(rng, who, lo, hi, rate0, per_year, birth, mult):
    """Event days of an inhomogeneous Poisson process with rate ``rate0·exp(per_year·age)·mult``
    per year on [lo, hi) per entry of ``who``; returns (entry index, day) arrays."""
    k = per_year
    a_lo, a_hi = _to_age(lo, birth), _to_age(np.maximum(hi, lo), birth)
    with np.errstate(over="ignore"):
        e_lo, e_hi = np.exp(k * a_lo), np.exp(k * a_hi)
    lam = np.where(hi > lo, rate0 * mult / k * (e_hi - e_lo), 0.0)
    n = rng.poisson(lam)
    rows = np.repeat(np.arange(who.size), n)
    u = rng.random(rows.size)
    age = np.log(np.repeat(e_lo, n) + u * np.repeat(e_hi - e_lo, n)) / k
    return rows, np.floor(np.repeat(birth, n) + age * YEAR)


def _series(rng, who, start, stop, every, jitter, cap=400):
    """Regular dispensings from ``start`` roughly every ``every`` days until ``stop``;
    returns (entry index of ``who``, day, dispensing number)."""
    with np.errstate(invalid="ignore"):
        n = np.clip(np.nan_to_num(np.floor((stop - start) / every)), -1, cap - 1).astype(np.int64)
    n = np.where(stop > start, n + 1, 0)
    rows = np.repeat(np.arange(who.size), n)
    k = np.arange(rows.size) - np.repeat(np.cumsum(n) - n, n)
    j = rng.integers(-jitter, jitter + 1, rows.size)
    when = np.repeat(start, n) + k * every + np.where(k > 0, j, 0)
    return rows, when, k


def _pick(rng, pairs, size, lookup):
    codes = np.array([lookup(p[0]) for p in pairs], np.int32)
    return codes[rng.choice(len(pairs), size=size, p=_weights(pairs))]


def _subcode(rng, cats: np.ndarray) -> np.ndarray:
    """Random four-character subcode of each three-character category index."""
    return (cats + 1 + rng.integers(0, 10, cats.size)).astype(np.int32)


def block_rows(seed: int, block: int, persons: int) -> dict[str, dict[str, np.ndarray]]:
    """All register rows of one block, limited to global persons < ``persons``.

    Each register's columns come back as arrays; ``_pnr``/``_d_inddto`` in ``lpr_diag`` are
    sort keys only (the partition writer drops them).
    """
    rng, P = block_people(seed, block)
    dic = Dictionaries()
    n = P.idx.size
    limit = max(0, min(n, persons - block * BLOCK_SIZE))
    pnr = pseudonym(P.idx)
    allp = np.arange(n)
    out: dict[str, dict[str, np.ndarray]] = {}

    out["bef"] = {"_row": allp, "koen": np.where(P.male, 1, 2).astype(np.int8),
                  "foed_dag": P.birth.astype(np.int32), "region": P.region}
    finite = np.isfinite(P.death)
    d = np.flatnonzero(finite & P.observed(allp, np.where(finite, P.death, 0), CPR_START))
    out["dod"] = {"_row": d, "doddato": P.death[d].astype(np.int32)}

    # Causes of death: MI within 30 days, cancer, else a background cause.
    dd = P.death[d]
    mi_recent = (dd - P.onset["mi"][d] <= 30) & (dd >= P.onset["mi"][d])
    has_cancer = P.onset["cancer"][d] <= dd
    bg_causes = [("I25", 3), ("J44", 2), ("F03", 2), ("I64", 1), ("I50", 2), ("R99", 1),
                 ("N18", 1), ("J18", 1)]
    bg = _pick(rng, bg_causes, d.size, dic.icd)
    cancer_cat = _pick(rng, _CANCER_SITES, d.size, dic.icd)
    cause = np.where(mi_recent, dic.icd("I21"), np.where(has_cancer, cancer_cat, bg))
    out["dodsaarsag"] = {"_row": d, "doddato": P.death[d].astype(np.int32),
                         "c_dodtilgrundl": _subcode(rng, cause)}

    # Migrations: immigration (I), emigration (U), return (I).
    imm = np.flatnonzero(P.immigrant & (P.entry > P.birth))
    em = np.flatnonzero(np.isfinite(P.emig))
    ret = np.flatnonzero(np.isfinite(P.back))
    who = np.concatenate([imm, em, ret])
    kind = np.concatenate([np.zeros(imm.size), np.ones(em.size), np.zeros(ret.size)])
    when = np.concatenate([P.entry[imm], P.emig[em], P.back[ret]])
    keep = (when >= CPR_START) & (when <= DATA_END)
    out["vnds"] = {"_row": who[keep], "indud_kode": kind[keep].astype(np.int32),
                   "haend_dato": when[keep].astype(np.int32)}

    out["lpr_adm"], out["lpr_diag"] = _hospital(rng, P, dic)
    out["lmdb"] = _prescriptions(rng, P, dic)
    # Second-line diabetes drugs, from their own random stream: every row above stays the same
    adm2, diag2, lmdb2 = second_line(seed, block, P, dic)
    for reg, more in (("lpr_adm", adm2), ("lpr_diag", diag2), ("lmdb", lmdb2)):
        out[reg] = {k: np.concatenate([v, more[k].astype(v.dtype)]) for k, v in out[reg].items()}

    # Limit to the persons asked for and turn block rows into pseudonyms.
    for reg, cols in out.items():
        row = cols.pop("_row")
        sel = row < limit
        cols = {k: v[sel] for k, v in cols.items()}
        key = "_pnr" if reg == "lpr_diag" else "pnr"
        out[reg] = {key: pnr[row[sel]], **cols}
    return out


def _hospital(rng, P: People, dic: Dictionaries):
    """LPR contacts (lpr_adm) and their diagnoses (lpr_diag)."""
    n = P.idx.size
    allp = np.arange(n)
    last = P.last_day().astype(float)
    lo = np.maximum(P.entry, LPR_START).astype(float)
    rows_l, day_l, pat_l, diag_l, stay_l = [], [], [], [], []

    def add(rows, days, pattype, diag, stay):
        rows_l.append(rows)
        day_l.append(days)
        pat_l.append(np.broadcast_to(np.asarray(pattype, np.int8), rows.shape))
        diag_l.append(diag.astype(np.int32))
        stay_l.append(stay)

    # One contact at each condition's onset. A condition that began before the person could
    # be seen (LPR not yet open, or living abroad) is registered at a first contact in the
    # two years after.
    observable = np.maximum(P.entry, LPR_START)
    first_cat = {"mi": "I21", "stroke": "I63", "heart_failure": "I50", "diabetes": "E11",
                 "copd": "J44"}
    onset_pattype = {"mi": 0, "stroke": 0, "heart_failure": 0, "diabetes": 2, "copd": 2,
                     "cancer": 0}
    follow_rate = {"mi": 1.0, "stroke": 0.5, "heart_failure": 1.0, "diabetes": 0.7,
                   "copd": 0.6, "cancer": 1.5}
    for cond, t0 in P.onset.items():
        finite = np.isfinite(t0)
        late = finite & (t0 < observable) & (cond != "mi")
        when = np.where(late, observable + np.floor(rng.random(n) * 730), t0)
        rows = np.flatnonzero(finite & P.observed(allp, np.where(finite, when, 0), LPR_START))
        days = when[rows]
        if cond == "cancer":
            cat = _pick(rng, _CANCER_SITES, rows.size, dic.icd)
        else:
            cat = np.full(rows.size, dic.icd(first_cat[cond]), np.int32)
        pt = np.full(rows.size, onset_pattype[cond], np.int8)
        pt = np.where((pt == 2) & (days < LPR_OUTPATIENT), 0, pt)
        stay = np.where(pt == 0, rng.integers(1, 12, rows.size), 0)
        add(rows, days, pt, _subcode(rng, cat), stay)
        # Follow-up contacts for five years (after an MI: chronic ischaemic heart disease).
        span = np.minimum(last[rows], days + 5 * YEAR)
        ep, fd = _poisson_times(rng, rows, days + 1, span, follow_rate[cond], 1e-6,
                                P.birth[rows], np.ones(rows.size))
        fr = rows[ep]
        fcat = np.full(fr.size, dic.icd("I25"), np.int32) if cond == "mi" else cat[ep]
        ok = P.observed(fr, fd, LPR_START)
        fpt = np.where(fd[ok] >= LPR_OUTPATIENT, 2, 0).astype(np.int8)
        add(fr[ok], fd[ok], fpt, _subcode(rng, fcat[ok]), np.where(fpt == 0, 1, 0))

    # Background contacts: rate rising with age, scaled by the person's frailty.
    ep, bd = _poisson_times(rng, allp, lo, last, 0.25, 0.025, P.birth, P.frailty)
    ok = P.observed(ep, bd, LPR_START)
    br, bd = ep[ok], bd[ok]
    before_op = bd < LPR_OUTPATIENT
    # Before 1995 only inpatient stays were recorded: thin the process accordingly.
    thin = ~before_op | (rng.random(br.size) < 0.3)
    br, bd, before_op = br[thin], bd[thin], before_op[thin]
    pt = np.where(before_op, 0, rng.choice([0, 2, 3], size=br.size, p=[0.15, 0.6, 0.25]))
    cat = _pick(rng, _BG_DIAG, br.size, dic.icd)
    add(br, bd, pt.astype(np.int8), _subcode(rng, cat),
        np.where(pt == 0, rng.integers(1, 8, br.size), 0))

    rows = np.concatenate(rows_l)
    d_in = np.concatenate(day_l)
    pattype = np.concatenate(pat_l)
    adiag = np.concatenate(diag_l)
    d_out = np.minimum(d_in + np.concatenate(stay_l), DATA_END)
    # Contact id: from person and contact number, so the same whatever the partitioning.
    order = np.lexsort((adiag, d_in, rows))
    rows, d_in, d_out, pattype, adiag = (a[order] for a in (rows, d_in, d_out, pattype, adiag))
    per_person = np.bincount(rows, minlength=n)
    seq = np.arange(rows.size) - np.repeat(np.cumsum(per_person) - per_person, per_person)
    recnum = pseudonym(P.idx[rows] * 4096 + seq, salt=0x5EED)
    hosp = np.array([_HOSPITALS[int(r)] for r in _REGION_CODES])  # (5 regions, 4 hospitals)
    reg_i = np.searchsorted(_REGION_CODES, P.region[rows])
    sgh = hosp[reg_i, rng.integers(0, 4, rows.size)].astype(np.int32)
    adm = {"_row": rows, "recnum": recnum, "d_inddto": d_in.astype(np.int32),
           "d_uddto": d_out.astype(np.int32), "c_pattype": pattype, "c_adiag": adiag,
           "c_sgh": sgh}

    # Diagnoses: the action diagnosis (A), then secondary ones (B): background codes, and
    # chronic conditions the person already has, at half of their later contacts.
    nb = rng.poisson(0.5, rows.size)
    b_idx = np.repeat(np.arange(rows.size), nb)
    b_diag = _subcode(rng, _pick(rng, _BG_DIAG, b_idx.size, dic.icd))
    a_cat = dic.icd_category[adiag]
    idx_l, diag_l2 = [np.arange(rows.size), b_idx], [adiag, b_diag]
    for cond, cat in (("diabetes", "E11"), ("copd", "J44"), ("heart_failure", "I50")):
        c = dic.icd(cat)
        has = (P.onset[cond][rows] < d_in) & (a_cat != c) & (rng.random(rows.size) < 0.5)
        idx = np.flatnonzero(has)
        idx_l.append(idx)
        diag_l2.append(_subcode(rng, np.full(idx.size, c, np.int32)))
    c_idx = np.concatenate(idx_l)
    c_diag = np.concatenate(diag_l2)
    c_type = np.concatenate([np.zeros(rows.size, np.int32),
                             np.ones(c_idx.size - rows.size, np.int32)])
    diag = {"_row": rows[c_idx], "recnum": recnum[c_idx], "c_diag": c_diag.astype(np.int32),
            "c_diagtype": c_type, "_d_inddto": d_in[c_idx].astype(np.int32)}
    return adm, diag


def _prescriptions(rng, P: People, dic: Dictionaries):
    """LMDB dispensings."""
    n = P.idx.size
    allp = np.arange(n)
    last = P.last_day().astype(float)
    lo = np.maximum(P.entry, LMDB_START).astype(float)
    rows_l, day_l, atc_l, apk_l = [], [], [], []

    def add(rows, days, atc, apk):
        ok = P.observed(rows, days, LMDB_START)
        rows_l.append(rows[ok])
        day_l.append(days[ok])
        atc_l.append(atc[ok])
        apk_l.append(apk[ok])

    def chronic(who, start, mean_years, every, drug):
        """Episodes of regular use: one dispensing about every ``every`` days."""
        drug = np.broadcast_to(np.asarray(drug, np.int32), who.shape)
        stop = np.minimum(start + rng.exponential(mean_years * YEAR, who.size), last[who])
        ep, d, _ = _series(rng, who, start, stop, every, 10)
        apk = np.where(rng.random(ep.size) < 0.15, 2, 1).astype(np.int16)
        add(who[ep], d, drug[ep], apk)

    # Statins from the latent initiation day; a few users later add ezetimibe.
    s = np.flatnonzero(np.isfinite(P.statin))
    chronic(s, P.statin[s], 8.0, 100, _pick(rng, _STATINS, s.size, dic.atc))
    combo = s[rng.random(s.size) < 0.05]
    chronic(combo, P.statin[combo] + np.floor(rng.random(combo.size) * 3 * YEAR), 3.0, 98,
            _pick(rng, [("C10AX09", 1), ("C10BA02", 1)], combo.size, dic.atc))
    # Metformin for most people with diabetes, from diagnosis (or from 1995).
    dia = np.flatnonzero(np.isfinite(P.onset["diabetes"]) & (rng.random(n) < 0.85))
    start = np.maximum(P.onset["diabetes"][dia] + np.floor(rng.random(dia.size) * 90),
                       LMDB_START + np.floor(rng.random(dia.size) * 365))
    chronic(dia, start, 15.0, 90, dic.atc("A10BA02"))
    later = dia[rng.random(dia.size) < 0.3]
    chronic(later, np.maximum(P.onset["diabetes"][later] + 3 * YEAR, LMDB_START), 5.0, 90,
            _pick(rng, [("A10BB12", 2), ("A10BJ02", 1), ("A10AE04", 1)], later.size, dic.atc))
    # RAS blockers: more with diabetes and heart failure.
    ras_log_hr = np.log(2.5) * np.isfinite(P.onset["diabetes"]) + \
        np.log(5.0) * np.isfinite(P.onset["heart_failure"])
    lo_age = np.maximum(_to_age(lo, P.birth), 0.0)
    ras_day = _age_days(gompertz_onset(rng, lo_age, Gompertz.at(0.02, 60, 0.05), ras_log_hr),
                        P.birth)
    r = np.flatnonzero(np.isfinite(ras_day))
    chronic(r, ras_day[r], 10.0, 100, _pick(rng, [("C09AA05", 3), ("C09AA02", 1),
                                                   ("C09CA01", 2), ("C09CA06", 1)], r.size,
                                                  dic.atc))
    # Background: acute single dispensings and chronic episodes of other drugs.
    ar, ad = _poisson_times(rng, allp, lo, last, 0.2, 0.015, P.birth, P.frailty)
    add(ar, ad, _pick(rng, _ACUTE_DRUGS, ar.size, dic.atc), np.ones(ar.size, np.int16))
    cr, cd = _poisson_times(rng, allp, lo, last, 0.015, 0.03, P.birth, P.frailty)
    chronic(cr, cd, 2.0, 90, _pick(rng, _CHRONIC_DRUGS, cr.size, dic.atc))

    atc = np.concatenate(atc_l)
    names = dic.dicts["atc"]
    packsize = np.array([C.DRUG_BY_ATC[a][4] for a in names], np.int32)
    volume = np.array([C.DRUG_BY_ATC[a][4] * C.DRUG_BY_ATC[a][2] / C.DRUG_BY_ATC[a][3]
                       for a in names])
    return {"_row": np.concatenate(rows_l), "eksd": np.concatenate(day_l).astype(np.int32),
            "atc": atc, "apk": np.concatenate(apk_l), "packsize": packsize[atc],
            "volume": np.round(volume[atc], 3)}


def second_line(seed: int, block: int, P: People, dic: Dictionaries):
    """Second-line diabetes drugs and hospitalisation for heart failure after them, drawn from
    the stream ``(seed, block, 0x2D1A)`` so that no other row of the block changes.

    Returns rows to append to lpr_adm, lpr_diag and lmdb (same columns as theirs).
    """
    t = TRUTH
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block, 0x2D1A])))
    n = P.idx.size
    last = P.last_day().astype(float)
    onset = P.onset["diabetes"]
    has = np.isfinite(onset) & (rng.random(n) < 0.6)
    start = np.maximum(onset + np.floor(rng.exponential(4 * YEAR, n)),
                       day("2008-01-01") + np.floor(rng.random(n) * 365))
    start = np.where(has, start, np.inf)
    who = np.flatnonzero(has & P.observed(np.arange(n), np.where(has, start, 0), LMDB_START) &
                         (start < last - 30))
    t2 = start[who]
    year = 1970 + t2 / YEAR
    age = _to_age(t2, P.birth[who])
    male = P.male[who].astype(float)
    prior_mi = (P.onset["mi"][who] < t2).astype(float)
    # drug choice: a multinomial logit in calendar year, age, sex and prior MI
    score = np.stack([
        1.2 - 0.15 * (year - 2008),                                           # sulfonylurea
        0.5 + 0.03 * (age - 60),                                              # DPP-4
        np.where(year >= 2010, -1.0 + 0.1 * (year - 2010) - 0.04 * (age - 60), -np.inf),
        np.where(year >= 2013, -1.0 + 0.3 * (year - 2013) - 0.07 * (age - 60) + 0.6 * male
                 + 1.0 * prior_mi, -np.inf)], axis=1)                         # SGLT2
    p = np.exp(score - score.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    u = rng.random(who.size)
    drug = np.minimum((u[:, None] > np.cumsum(p, axis=1)).sum(axis=1), 3)
    sglt2 = drug == 3
    # one SGLT2 agent or the other
    codes = np.array([dic.atc(c) for c in ("A10BB12", "A10BH01", "A10BJ02", "A10BK01")])
    atc = codes[drug]
    atc = np.where(sglt2 & (rng.random(who.size) < 0.5), dic.atc("A10BK03"), atc)
    # dispensings every ~90 days for an exponential time on the drug
    stop = np.minimum(t2 + rng.exponential(3 * YEAR, who.size), last[who])
    ep, d, _ = _series(rng, who, t2, stop, 90, 10)
    ok = P.observed(who[ep], d, LMDB_START)
    rows = who[ep][ok]
    names = dic.dicts["atc"]
    packsize = np.array([C.DRUG_BY_ATC[a][4] for a in names], np.int32)
    volume = np.array([C.DRUG_BY_ATC[a][4] * C.DRUG_BY_ATC[a][2] / C.DRUG_BY_ATC[a][3]
                       for a in names])
    a = atc[ep][ok]
    lmdb = {"_row": rows, "eksd": d[ok].astype(np.int32), "atc": a,
            "apk": np.where(rng.random(rows.size) < 0.15, 2, 1).astype(np.int16),
            "packsize": packsize[a], "volume": np.round(volume[a], 3)}
    # hospitalisation for heart failure after the start, for life (intention to treat)
    g = t.sglt2_hf
    log_hr = g.log_hr["female"] * (1 - male) + g.log_hr["prior_mi"] * prior_mi + \
        g.log_hr["sglt2"] * sglt2
    hf_age = gompertz_onset(rng, age, g, log_hr)
    hf = _age_days(hf_age, P.birth[who])
    seen = np.isfinite(hf)
    seen[seen] = P.observed(who[seen], hf[seen], LPR_START)
    hr, hd = who[seen], hf[seen]
    stay = rng.integers(1, 12, hr.size)
    diag = np.full(hr.size, dic.index["icd10"]["DI110"], np.int32)
    # contact ids apart from the person's other contacts (those are numbered from 0)
    recnum = pseudonym(P.idx[hr] * 4096 + 4095, salt=0x5EED)
    hosp = np.array([_HOSPITALS[int(r)] for r in _REGION_CODES])
    reg_i = np.searchsorted(_REGION_CODES, P.region[hr])
    adm = {"_row": hr, "recnum": recnum, "d_inddto": hd.astype(np.int32),
           "d_uddto": np.minimum(hd + stay, DATA_END).astype(np.int32),
           "c_pattype": np.zeros(hr.size, np.int8), "c_adiag": diag.astype(np.int32),
           "c_sgh": hosp[reg_i, rng.integers(0, 4, hr.size)].astype(np.int32)}
    lpr_diag = {"_row": hr, "recnum": recnum, "c_diag": diag.astype(np.int32),
                "c_diagtype": np.zeros(hr.size, np.int32), "_d_inddto": hd.astype(np.int32)}
    return adm, lpr_diag, lmdb
