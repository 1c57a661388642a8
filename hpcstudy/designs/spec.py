"""What a study says about its comparative design: the propensity score and how it is used.

    propensity:
      covariates: [age, sex, diabetes, charlson]   # or: all (every covariate of the study)
      method: matching          # matching | weighting | stratification | none
      matching: {ratio: 1, caliper: 0.2, replace: false}
      trim: true                # keep the common support of the two arms first

See docs/comparative.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ("matching", "weighting", "stratification", "none")
ESTIMANDS = ("ate", "att", "overlap")
BOTH_ARMS = ("remove", "first", "keep")


@dataclass(frozen=True)
class Matching:
    ratio: int = 1                  # controls per exposed person (1:k)
    caliper: float | None = 0.2     # in SDs of the logit of the score; None: no caliper
    replace: bool = False           # may a comparator person be matched more than once
    bootstrap: int = 0              # replicates of a bootstrap CI of the Cox model; 0: none


@dataclass(frozen=True)
class Weighting:
    estimand: str = "ate"           # ate | att | overlap
    stabilised: bool = False
    truncate: tuple[float, float] | None = None   # percentiles of the weights, e.g. (1, 99)


@dataclass(frozen=True)
class Propensity:
    covariates: tuple[str, ...]     # the study's covariate names ("all" is expanded on parsing)
    method: str = "matching"
    matching: Matching = Matching()
    weighting: Weighting = Weighting()
    strata: int = 5                 # stratification: quantile groups of the score
    trim: bool = False              # common support: drop persons outside both arms' range
    penalty: float = 0.0            # L2 strength (1/C of scikit-learn); 0: none
    bins: int = 20                  # preference-score histogram bins
    all_covariates: bool = False    # written as covariates: all
    charlson_components: bool = False   # each Charlson category a flag of the score
    codelist_flags: bool = False        # each other codelist a flag (any event before index)
    # the flags those two added to ``covariates`` when the study was compiled (plan only)
    added: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"covariates": "all" if self.all_covariates
                             else [c for c in self.covariates if c not in self.added]}
        for key in ("charlson_components", "codelist_flags"):
            if getattr(self, key):
                d[key] = True
        d["method"] = self.method
        if self.method == "matching" and self.matching != Matching():
            m = self.matching
            d["matching"] = {"ratio": m.ratio, "caliper": m.caliper, "replace": m.replace}
            if m.bootstrap:
                d["matching"]["bootstrap"] = m.bootstrap
        if self.method == "weighting" and self.weighting != Weighting():
            w = self.weighting
            d["weighting"] = {"estimand": w.estimand, "stabilised": w.stabilised,
                              **({"truncate": list(w.truncate)} if w.truncate else {})}
        if self.method == "stratification" and self.strata != 5:
            d["stratification"] = {"strata": self.strata}
        if self.trim:
            d["trim"] = True
        if self.penalty:
            d["penalty"] = self.penalty
        if self.bins != 20:
            d["bins"] = self.bins
        return d


SUPPLY = ("ddd", "units")


@dataclass(frozen=True)
class AsTreated:
    """``follow_up.as_treated``: follow-up ends when the index drug is no longer taken.

    Days of supply of a dispensing: apk × volume (DDDs) / ``per_day`` with ``supply: ddd``, or
    apk × packsize (units) / ``per_day`` with ``supply: units``; rounded down, at least 1.
    """

    supply: str = "ddd"             # ddd: apk × volume; units: apk × packsize
    per_day: float = 1.0            # the stated assumption: DDDs (or units) taken per day
    grace_days: int = 30            # an uncovered gap up to this long continues the episode
    stockpile: bool = True          # an early refill starts when the supply in hand runs out
    episode_end: bool = True        # censor at the end of the episode (+ grace)
    switch: bool = True             # censor at the first dispensing of the other arm's drug
    add_on: tuple[str, ...] = ()    # codelists: censor at the first dispensing of any of them

    def to_dict(self, active: bool = True) -> dict | bool:
        """As written in a study (``active``: the study has an active comparator, where a
        switch is censored by default)."""
        d: dict[str, Any] = {}
        base = AsTreated(switch=active)
        for k in ("supply", "per_day", "grace_days", "stockpile", "episode_end", "switch"):
            if getattr(self, k) != getattr(base, k):
                d[k] = getattr(self, k)
        if self.add_on:
            d["add_on"] = list(self.add_on)
        return d or True


@dataclass(frozen=True)
class EpisodePlan:
    """A group's as-treated follow-up in the plan (engines read this, never the study).

    ``units``: the lmdb column giving a pack's supply (``volume`` or ``packsize``);
    ``switch``: the other arm's index stream (None: no switch censoring); ``add_on``: streams.
    """

    units: str
    per_day: float
    grace_days: int
    stockpile: bool
    episode_end: bool
    switch: Any = None              # EventStream | None
    add_on: tuple = ()              # EventStream, ...
