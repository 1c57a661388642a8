"""Every key the study language allows, per context: the one table the parser checks mappings
against, the docs list and the tests derive their coverage from.

A *context* is a kind of mapping in a study (the study itself, a codelist, a criterion …).
``KEYS[context][key]`` is ``(type, meaning)``, both in the words the docs and errors use.
A key not in its context's table is an error naming the nearest allowed key.

    >>> "washout_days" in KEYS["index"], "washout_days" in KEYS["criterion_events"]
    (True, False)
"""

from __future__ import annotations

import re

from ..registers.sources import SOURCES

DAYS = 73_200              # 200 years: the largest number of days any window or rule may give
MAX_BYTES = 1_000_000      # a study file (codelists that long belong in a CSV file:)
MAX_NODES = 100_000        # values in a study after YAML aliases are expanded
MAX_DEPTH = 40             # nesting of mappings and lists

# Plain names: they become column names, model terms and parts of file names.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

BUILTIN_COVARIATES = ("age", "sex", "region", "calendar_year", "charlson")
# Columns of the per-person table and of the exported tables, and the model's own terms:
# a covariate, exposure, outcome or measure of that name would collide with them.
RESERVED_NAMES = frozenset({
    "pnr", "group", "index_date", "exit_date", "status", "time", "event", "events", "persons",
    "person_years", "rate_per_1000py", "lower_95", "upper_95", "proportion", "index_year",
    "label", "step", "age_band", "period", "day", "at_risk", "survival",
    "cumulative_incidence", "intercept"})
# group labels in the attrition tables (attrition_<label>.csv): an exposure may not take one
GROUP_LABELS = frozenset({"cohort", "comparator", "non_users"})

_EVENTS = {
    "codelist": ("name of a codelist", "the codes to look for"),
    "register": ("lpr | lmdb | death", "where to look (default: from the codelist's system: "
                 "icd10 → lpr, atc → lmdb)"),
    "diagnosis_type": ("A | B, or a list of them (lpr)", "action and/or secondary diagnoses "
                       "(default both)"),
    "patient_type": ("inpatient | part-day | outpatient | emergency, or a list (lpr)",
                     "kinds of hospital contact (default all)"),
    "filter": ("mapping column: whole number or list of them", "keep only events whose "
               "register column holds one of the values"),
}
_WINDOW = ("[from, to] in days relative to index (null: open)", "both ends included")
_INDEX = {
    "first_event": ("events mapping", "the index date is the first matching event"),
    "date": ("YYYY-MM-DD", "one index date for everyone (a population cohort)"),
    "between": ("[YYYY-MM-DD, YYYY-MM-DD]", "calendar window the index event must fall in"),
    "nth": ("whole number ≥ 1", "use the nth matching event in the window (default 1)"),
    "washout_days": (f"whole number 0–{DAYS}", "no matching event in that many days before "
                     "index (new users)"),
}
_MODEL_ADJUST = ("list of covariate names", "terms besides the exposure group")

KEYS: dict[str, dict[str, tuple[str, str]]] = {
    "study": {
        "name": ("plain name (letters, digits, _ . -)", "names the study and its outputs"),
        "description": ("text", "free text"),
        "seed": ("whole number ≥ 0", "for rules that draw (non-users' random index dates)"),
        "codelists": ("mapping name: codelist", "the codes the study uses"),
        "population": ("mapping", "who is eligible at index"),
        "exposure": ("index rule with a name", "the exposed group (needs comparator:)"),
        "index": ("index rule", "the index date of a single cohort"),
        "comparator": ("non_users, or mapping", "the comparison group"),
        "criteria": ("list of include:/exclude: entries", "eligibility by events around index"),
        "covariates": ("list of names or mappings", "columns measured at index"),
        "outcome": ("mapping", "the event followed up"),
        "follow_up": ("mapping", "how long follow-up may last"),
        "analyses": ("mapping", "what is computed"),
        "disclosure": ("mapping", "small-cell rules"),
        "variants": ("list of {name, set}", "sensitivity analyses"),
        "propensity": ("mapping", "propensity score: matching, weighting, balance"),
    },
    "codelist": {
        "system": ("icd10 | atc", "the code system"),
        "codes": ("list of codes", "I21, I21.9, DI219, I21* (ICD-10); C10AA, C10AA01 (ATC)"),
        "file": ("path of a CSV file", "codes from its code column (relative to the study)"),
    },
    "population": {
        "age": ("[lowest, highest) in years, numbers 0–150", "age at index"),
        "sex": ("any | male | female", "default any"),
        "regions": ("list of region codes 1081–1085", "region of residence"),
        "residence_years": ("number 0–150", "continuous residence in Denmark before index"),
    },
    "index": dict(_INDEX),
    "exposure": {**{k: v for k, v in _INDEX.items() if k != "date"},
                 "name": ("plain name", "the exposure's model term (default exposed)")},
    "events": dict(_EVENTS),
    "comparator": {
        "non_users": ("true", "persons without the exposure, at a random date"),
        "active": ("index rule", "new users of something else"),
        "censor_on_exposure": ("true | false", "non-users leave when they start the exposure "
                               "(default true)"),
        "both_arms": ("remove | first | keep", "persons in both arms of an active comparison: "
                      "dropped (default), kept in the arm they entered first, or kept in both"),
    },
    "criterion": {
        "include": ("events mapping with window, min_count", "keep persons with the events"),
        "exclude": ("events mapping with window, min_count", "drop persons with the events"),
        "label": ("one line of text", "the step's name in the attrition table"),
    },
    "criterion_events": {**_EVENTS, "window": (_WINDOW[0], "default [null, 0]"),
                         "min_count": ("whole number ≥ 1", "events needed (default 1)")},
    "covariate": {
        "name": ("plain name", "the column's name"),
        "kind": ("charlson", "a Charlson index under another name or window"),
        "count": ("codelist name, or hospital_contacts", "number of events, not 0/1"),
        "window": (_WINDOW[0], "default [null, 0]; charlson [-3650, 0]"),
        "time_varying": ("true | false", "a 0/1 covariate that switches on at its first "
                         "event after index (follow-up is split there)"),
        "index_contact": ("c_sgh | c_pattype | diagnoses", "an attribute of the index contact "
                          "(the hospital, the patient type, or with codelist: 1 when one of "
                          "its diagnoses is in the codelist); needs an index from lpr "
                          "contacts"),
        **_EVENTS,
    },
    "outcome": {
        "name": ("plain name", "the outcome's name"),
        "death": ("true | false", "all-cause death (with codelist: cause-specific)"),
        "window": ("[from, to] in days after index, from ≥ 0", "when the outcome counts "
                   "(default [1, null])"),
        **_EVENTS,
    },
    "follow_up": {
        "max_days": (f"whole number 1–{DAYS}", "follow-up ends after that many days"),
        "start_day": (f"whole number 0–{DAYS}", "a lag: follow-up (person-time and outcomes) "
                      "starts that many days after index; a person with the outcome before "
                      "leaves the cohort (default 0)"),
        "end_date": ("YYYY-MM-DD", "calendar end of follow-up (last day at risk)"),
        "as_treated": ("true, or mapping", "follow-up ends when the index drug is no longer "
                       "taken: end of the episode of dispensings, switch, add-on (default: "
                       "intention to treat; see comparative.md)"),
    },
    "analyses": {
        "rates": ("false, or {by: [...]}", "rates by covariates besides the cohort table"),
        "curves": ("true | false", "Kaplan–Meier and cumulative incidence per group"),
        "cox": ("true, false or {adjust, strata, age_bands}", "Cox model"),
        "logistic": ("true, false or {adjust}", "logistic model of the outcome within "
                     "follow-up"),
        "poisson": ("true, false or {adjust, age_bands, time_bands}", "Poisson model with log "
                    "person-years offset"),
        "lexis": ("{age_bands, periods}", "rates by age band and calendar period"),
        "hospitals": ("{by, adjust, identify}", "observed and risk-adjusted expected "
                      "outcomes per hospital, O/E and funnel-plot limits"),
        "measures": ("list of {name, by, interval, ...}", "rate (or, for a fixed-horizon "
                     "outcome, share) with the outcome by groups and intervals"),
    },
    "rates": {"by": ("list of covariate names, group", "the rate table's groups")},
    "hospitals": {
        "by": ("a covariate name (index_contact: c_sgh)", "the unit compared"),
        "adjust": ("list of covariate names", "the risk-adjustment model's terms, fitted on "
                   "all hospitals together"),
        "identify": ("code | rank | none", "what the table shows for each unit: its code, "
                     "its rank by O/E, or an anonymous number by size (default code)"),
    },
    "cox": {"adjust": _MODEL_ADJUST,
            "strata": ("list of covariate names", "separate baseline hazards"),
            "age_bands": ("increasing list of ages 0–150", "attained-age bands of the term "
                          "age_band (follow-up is split where a person changes band)")},
    "logistic": {"adjust": _MODEL_ADJUST},
    "poisson": {"adjust": _MODEL_ADJUST,
                "age_bands": ("increasing list of ages 0–150", "attained-age bands of the "
                              "term age_band (follow-up is split where a person changes "
                              "band)"),
                "time_bands": (f"increasing list of whole days 0–{DAYS}", "bands of days "
                               "since index of the term time_band")},
    "lexis": {
        "age_bands": ("increasing list of ages 0–150", "band limits in years"),
        "periods": ("increasing list of years 1900–2100", "period limits (1 January)"),
    },
    "measure": {
        "name": ("plain name", "names the table measure_<name>.csv"),
        "by": ("list of covariate names, group, index_year, age_band, time_band", "the "
               "table's groups (age_band: attained age; time_band: time since index)"),
        "interval": ("month | quarter | year", "calendar intervals: person-time and events "
                     "in each (a fixed-horizon outcome: persons by index date)"),
        "standardise": ("esp2013 | danish_YYYY", "direct age standardisation to the European "
                        "Standard Population 2013 or the Danish population of 1 January YYYY"),
        "indirect": ("true | false", "indirect standardisation: expected events from the "
                     "whole cohort's age-specific rates, and the SIR/SMR"),
        "age_bands": ("increasing list of ages 0–150", "age band limits (default the ESP's "
                      "5-year bands 0, 5, …, 90, 150)"),
        "time_bands": (f"increasing list of whole days 0–{DAYS}", "limits of time_band, the "
                       "time since index (by: [time_band])"),
    },
    "disclosure": {
        "min_cell": ("whole number 1–1000", "smallest count shown (default 5)"),
        "round_to": ("whole number 0–1000", "round shown counts to this multiple (0: off)"),
    },
    "variant": {
        "name": ("plain name (letters, digits, _ -)", "the variant's name"),
        "set": ("mapping dotted.path: value", "fields to change (null removes one)"),
    },
    # the columns filter: may name, per register, with the values they hold (the catalogue's)
    **{f"filter_{name}": {col: (f.values, f.meaning) for col, f in src.filters.items()}
       for name, src in SOURCES.items() if src.filters},
}

from ..designs.language import KEYS as _DESIGN_KEYS  # noqa: E402 - the design's own keys

KEYS.update(_DESIGN_KEYS)

FILTER_RANGES = {col: f.bounds for src in SOURCES.values() for col, f in src.filters.items()}

# Fixes for keys users put in the wrong place (context, key) → fix.
MISPLACED = {
    **{("criterion", k): f"{k}: goes inside include:/exclude: (- exclude: {{codelist: mi, "
                         "window: [null, 0]})" for k in (*_EVENTS, "window", "min_count")},
    ("criterion_events", "label"): "label: goes beside include:/exclude:, not inside it",
    ("criterion_events", "nth"): "nth belongs to an index rule; a criterion counts events in "
                                 "its window (min_count: 2 for at least two)",
    ("criterion_events", "washout_days"): "washout_days belongs to an index rule; a criterion "
                                          "says its days with window: [-365, -1]",
    ("criterion_events", "between"): "between belongs to an index rule; a criterion says its "
                                     "days with window: [from, to]",
    ("index", "name"): "name: belongs to exposure: (a study with a comparator)",
    ("exposure", "date"): "an exposure starts at an event per person (first_event:); one date "
                          "for everyone is a single cohort: index: {date: ...}",
    ("lexis", "by"): "Lexis cells are by group, age band and period; for rates by a covariate "
                     "use rates: {by: [...]}",
    ("rates", "per"): "rates are always per 1000 person-years",
    ("curves", "horizon"): "curves run to the end of follow-up; limit it with follow_up: "
                           "{max_days: ...}",
    ("logistic", "strata"): "only the Cox model takes strata:; adjust for it instead",
    ("poisson", "strata"): "only the Cox model takes strata:; adjust for it instead",
    ("cox", "time_bands"): "time since index is the Cox model's own time scale (its bands are "
                           "the baseline hazard's): use poisson: for a time_band term",
    ("logistic", "age_bands"): "a logistic model takes one value per person: use poisson: or "
                               "cox: for an age_band term",
    ("logistic", "time_bands"): "a logistic model takes one value per person: use poisson: "
                                "for a time_band term",
    ("comparator", "between"): "the non-users' index dates come from the exposure's between:",
}


def contexts_of_events() -> list[str]:
    """Contexts that hold an event definition (codelist, register, …)."""
    return [c for c, keys in KEYS.items() if "codelist" in keys and "register" in keys]
