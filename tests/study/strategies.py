"""Hypothesis strategies for valid studies, as the YAML-shaped data a researcher writes.

``studies()`` draws what changes the per-person table (every population, index, comparator,
criterion, covariate, outcome and follow-up form), so the engines can be compared on it;
``full_studies()`` adds the rest of the language (analyses, disclosure, variants, a codelist
read from a file). test_language.py proves that every key of keys.py and every field of the
language's dataclasses is drawn.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

CODES_DIR = Path(__file__).resolve().parent / "codes"    # base_dir for file: codelists

CODELISTS = {
    "mi": {"system": "icd10", "codes": ["I21*"]},
    "diabetes": {"system": "icd10", "codes": ["E11*"]},
    "copd": {"system": "icd10", "codes": ["J44"]},
    "cancer": {"system": "icd10", "codes": ["C"]},
    "angina": {"system": "icd10", "codes": ["I20", "I25"]},
    "statins": {"system": "atc", "codes": ["C10AA*"]},
    "metformin": {"system": "atc", "codes": ["A10BA02"]},
    "ras": {"system": "atc", "codes": ["C09"]},
}
ICD = [k for k, v in CODELISTS.items() if v["system"] == "icd10"]
ATC = [k for k, v in CODELISTS.items() if v["system"] == "atc"]
ALL = list(CODELISTS)
PATIENT = ["inpatient", "part-day", "outpatient", "emergency"]

years = st.integers(1998, 2020)


@st.composite
def window(draw, before=True):
    if before:
        lo = draw(st.one_of(st.none(), st.integers(-5000, -1)))
        hi = draw(st.integers(lo if lo is not None else -5000, 0))
    else:
        lo = draw(st.integers(0, 30))
        hi = draw(st.one_of(st.none(), st.integers(lo, 4000)))
    return [lo, hi]


def _one_or_list(draw, choices):
    vals = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=len(choices),
                         unique=True))
    return vals[0] if len(vals) == 1 and draw(st.booleans()) else vals


@st.composite
def filters(draw, register):
    if register == "lpr":
        f = {"c_pattype": draw(st.lists(st.integers(0, 3), min_size=1, max_size=3,
                                        unique=True))}
        if draw(st.booleans()):
            f["c_sgh"] = draw(st.sampled_from([1301, [1301, 7005]]))
    else:
        f = {"apk": draw(st.lists(st.integers(1, 3), min_size=1, max_size=2, unique=True))}
        if draw(st.booleans()):
            f["packsize"] = draw(st.sampled_from([100, [28, 100]]))
    return dict(draw(st.permutations(list(f.items()))))


def _register(e: dict) -> str:
    return e.get("register") or ("lpr" if CODELISTS[e["codelist"]]["system"] == "icd10"
                                 else "lmdb")


@st.composite
def events(draw, names=ALL, death=True):
    """An event definition: codelist, register, diagnosis and patient types, filters."""
    cl = draw(st.sampled_from(names))
    e = {"codelist": cl}
    system = CODELISTS[cl]["system"]
    register = "lpr" if system == "icd10" else "lmdb"
    if system == "icd10" and death and draw(st.integers(0, 5)) == 0:
        register = "death"
    if register != "lpr" or draw(st.booleans()):
        e["register"] = register
    if register == "lpr":
        if draw(st.booleans()):
            e["diagnosis_type"] = _one_or_list(draw, ["A", "B"])
        if draw(st.booleans()):
            e["patient_type"] = _one_or_list(draw, PATIENT[::-1])
    if register != "death" and draw(st.booleans()):
        e["filter"] = draw(filters(register))
    return e


@st.composite
def index_rule(draw, need_between=False, names=ALL):
    rule = {"first_event": draw(events(names))}
    if need_between or draw(st.booleans()):
        y0 = draw(years)
        rule["between"] = [f"{y0}-01-01", f"{draw(st.integers(y0, 2021))}-12-31"]
    if draw(st.booleans()):
        rule["washout_days"] = draw(st.sampled_from([30, 365]))
    if draw(st.integers(0, 3)) == 0:
        rule["nth"] = 2
    return rule


@st.composite
def covariate(draw, i, index_codelist):
    kind = draw(st.sampled_from(["flag", "count", "contacts"]))
    name = f"c{i}"
    if kind == "flag":
        c = {"name": name, **draw(events([n for n in ALL if n != index_codelist]))}
    elif kind == "count":
        ev = draw(events())
        c = {"name": name, "count": ev.pop("codelist"), **ev}
    else:
        c = {"name": name, "count": "hospital_contacts"}
        if draw(st.booleans()):
            c["patient_type"] = _one_or_list(draw, PATIENT)
        if draw(st.booleans()):
            c["filter"] = draw(filters("lpr"))
    if draw(st.integers(0, 4)):
        c["window"] = draw(window())
    hi = c.get("window", [None, 0])[1]
    if kind == "flag" and hi is not None and hi <= 0 and draw(st.integers(0, 3)) == 0:
        c["time_varying"] = True
    return c


@st.composite
def studies(draw):
    """A valid study with every construct that shapes the per-person table."""
    s = {"name": "generated", "seed": draw(st.integers(0, 2**40)), "codelists": CODELISTS}
    lo_age = draw(st.integers(0, 70))
    s["population"] = {"age": [lo_age, draw(st.integers(lo_age + 5, 110))]}
    if draw(st.booleans()):
        s["population"]["residence_years"] = draw(st.sampled_from([1, 2, 1.5, 5]))
    if draw(st.booleans()):
        s["population"]["sex"] = draw(st.sampled_from(["male", "female", "any"]))
    if draw(st.integers(0, 3)) == 0:
        s["population"]["regions"] = draw(st.lists(st.sampled_from([1081, 1082, 1083, 1084,
                                                                     1085]),
                                                    min_size=1, max_size=3, unique=True))
    kind = draw(st.sampled_from(["date", "event", "non_users", "active", "event", "non_users"]))
    index_codelist = None
    if kind == "date":
        s["index"] = {"date": f"{draw(years)}-07-01"}
    elif kind == "event":
        s["index"] = draw(index_rule())
    else:
        # two drugs (an active comparison of dispensings) often: as-treated switches
        drugs = kind == "active" and draw(st.booleans())
        rule = draw(index_rule(need_between=kind == "non_users", names=ATC if drugs else ALL))
        s["exposure"] = {**({"name": draw(st.sampled_from(["exposed", "statin", "drug_a"]))}
                            if draw(st.booleans()) else {}), **rule}
        if kind == "active":
            pool = ALL
            if _register(rule["first_event"]) == "lmdb" and draw(st.integers(0, 3)):
                pool = ATC   # two drugs: as-treated follow-up with switches can be drawn
            other = draw(index_rule(names=[n for n in pool if n != rule["first_event"]
                                           ["codelist"]]))
            s["comparator"] = {"active": other}
        elif draw(st.integers(0, 3)) == 0:
            s["comparator"] = "non_users"
        else:
            s["comparator"] = {"non_users": True}
            censor = draw(st.sampled_from([False, None, True]))
            if censor is not None:
                s["comparator"]["censor_on_exposure"] = censor
    if kind != "date":
        index_codelist = (s.get("index") or s["exposure"])["first_event"]["codelist"]
    others = [n for n in ALL if n != index_codelist]
    s["criteria"] = []
    for _ in range(draw(st.integers(0, 2))):
        body = {**draw(events(others)), "window": draw(window())}
        if draw(st.booleans()):
            body["min_count"] = 2
        c = {draw(st.sampled_from(["include", "exclude"])): body}
        if draw(st.booleans()):
            c["label"] = draw(st.sampled_from(["no cancer before", "prior ras use", "step Ø"]))
        s["criteria"].append(c)
    covs = ["age", "sex", "region", "calendar_year"]    # test_disclosure's rates use them
    charlson = draw(st.sampled_from(["none", "plain", "named", "renamed"]))
    if charlson == "plain":
        covs.append("charlson")
    elif charlson == "named":
        covs.append({"name": "charlson", "window": draw(window())})
    elif charlson == "renamed":
        covs.append({"name": "cci", "kind": "charlson", "window": draw(window())})
    covs += [draw(covariate(i, index_codelist)) for i in range(draw(st.integers(0, 3)))]
    rules = [s.get("index") or s["exposure"]]
    if isinstance(s.get("comparator"), dict) and "active" in s["comparator"]:
        rules.append(s["comparator"]["active"])
    from_contacts = kind in ("event", "active") and all(
        "first_event" in r and _register(r["first_event"]) == "lpr" for r in rules)
    if from_contacts and draw(st.booleans()):
        covs.append({"name": "hospital", "index_contact": "c_sgh"})
        if draw(st.booleans()):
            covs.append({"name": "ptype", "index_contact": "c_pattype"})
    if from_contacts and draw(st.booleans()):   # a codelist among the contact's diagnoses
        dx = {"name": "dx", "index_contact": "diagnoses", "codelist": draw(st.sampled_from(ICD))}
        if draw(st.booleans()):
            dx["diagnosis_type"] = draw(st.sampled_from([["A"], ["B"], ["A", "B"]]))
        covs.append(dx)
    s["covariates"] = draw(st.permutations(covs))
    death = draw(st.sampled_from(["no", "all", "cause"]))
    if death == "all":
        s["outcome"] = {"name": "death", "death": True}
    elif death == "cause":
        s["outcome"] = {"name": "cv_death", "death": True, "codelist": draw(st.sampled_from(ICD))}
    else:
        s["outcome"] = {"name": "o", **draw(events(ICD))}
    if draw(st.integers(0, 3)):
        s["outcome"]["window"] = draw(window(before=False))
    if draw(st.booleans()):
        s["follow_up"] = {"max_days": draw(st.integers(1, 5000))}
    hi = (s["outcome"].get("window") or [1, None])[1]
    longest = min(s.get("follow_up", {}).get("max_days", 10**6) - 1,
                  hi if hi is not None else 10**6)
    lag = draw(st.sampled_from([0, 0, 1, 30, 365]))
    if 0 < lag <= longest:
        s.setdefault("follow_up", {})["start_day"] = lag
    if draw(st.integers(0, 2)) == 0:
        rule = s.get("index") or s["exposure"]
        first = rule.get("date") or (rule.get("between") or ["1990-01-01"])[0]
        end = draw(st.sampled_from(["2012-06-30", "2016-12-31", "2019-01-01"]))
        s.setdefault("follow_up", {})["end_date"] = max(end, first)
    lmdb = [r for r in rules if "first_event" in r and _register(r["first_event"]) == "lmdb"]
    if kind != "date" and len(lmdb) == len(rules) and draw(st.integers(0, 2)):
        s.setdefault("follow_up", {})["as_treated"] = draw(as_treated(kind == "active"))
    s["analyses"] = {"rates": {"by": ["group", "sex"]}}
    return s


@st.composite
def as_treated(draw, active: bool):
    """follow_up.as_treated (hpcstudy/designs/episodes.py): true, or every option (each key is
    drawn whenever a mapping is, so that the key coverage test never hangs on chance)."""
    if not active and draw(st.integers(0, 3)) == 0:
        return True
    a: dict = {"supply": draw(st.sampled_from(["ddd", "units"])),
               "per_day": draw(st.sampled_from([1, 0.5, 2, 3.5])),
               "grace_days": draw(st.sampled_from([0, 15, 30, 90])),
               "stockpile": draw(st.booleans()), "episode_end": draw(st.booleans())}
    if active:
        a["switch"] = draw(st.booleans())
    if draw(st.booleans()):
        a["add_on"] = draw(st.lists(st.sampled_from(ATC), min_size=1, max_size=2, unique=True))
    if not a["episode_end"] and not a.get("add_on") and not a.get("switch"):
        a["episode_end"] = True
    return a


def _names(covs, kinds=None):
    out = []
    for c in covs:
        name, kind = (c, c) if isinstance(c, str) else (c["name"], c.get("kind", "x"))
        if kinds is None or kind in kinds:
            out.append(name)
    return out


@st.composite
def analyses(draw, s):
    covs = s["covariates"]
    groupable = ["group", *[n for n in _names(covs) if n != "age"]]
    terms = _names(covs)
    varying = {c["name"] for c in covs if isinstance(c, dict) and c.get("time_varying")}
    a: dict = {}
    by = draw(st.lists(st.sampled_from([g for g in groupable if g not in varying] +
                                       ["index_year"]), min_size=1, max_size=3, unique=True))
    if by != ["group"]:
        a["rates"] = {"by": by}
    elif draw(st.booleans()):
        a["rates"] = False
    if draw(st.booleans()):
        a["curves"] = draw(st.booleans())
    has_comparator = "comparator" in s
    for key in ("cox", "logistic", "poisson"):
        form = draw(st.sampled_from(["none", "true", "false", "spec"]))
        if form == "true" and (key != "cox" or has_comparator):
            a[key] = True
        elif form == "false":
            a[key] = False
        elif form == "spec":
            allowed = [t for t in terms if key != "logistic" or t not in varying]
            adjust = draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=3,
                                   unique=True))
            spec = {"adjust": adjust}
            rest = [t for t in terms if t not in adjust]
            if key == "cox" and rest and draw(st.booleans()):
                spec["strata"] = draw(st.lists(st.sampled_from(rest), min_size=1, max_size=1))
            a[key] = spec
    if draw(st.booleans()):
        ages = sorted(draw(st.lists(st.sampled_from([0, 18, 40, 50.5, 60, 80, 120]),
                                    min_size=2, max_size=5, unique=True)))
        periods = sorted(draw(st.lists(st.integers(1995, 2024), min_size=2, max_size=4,
                                       unique=True)))
        a["lexis"] = {"age_bands": ages, "periods": periods}
    units = [c["name"] for c in covs if isinstance(c, dict) and
             c.get("index_contact") in ("c_sgh", "c_pattype")]
    if "region" in _names(covs):
        units.append("region")
    if units and draw(st.booleans()):
        unit = draw(st.sampled_from(units))
        h: dict = {"by": unit}
        rest = [t for t in terms if t != unit and t not in varying]
        if rest and draw(st.booleans()):
            h["adjust"] = draw(st.lists(st.sampled_from(rest), min_size=1, max_size=3,
                                        unique=True))
        if draw(st.booleans()):
            h["identify"] = draw(st.sampled_from(["code", "rank", "none"]))
        a["hospitals"] = h
    if draw(st.booleans()):
        a["measures"] = [{"name": f"m{i}", **({"by": draw(st.lists(
            st.sampled_from(groupable + ["index_year", "age_band"]), max_size=2, unique=True))}
            if draw(st.booleans()) else {}), **draw(measure_time())}
            for i in range(draw(st.integers(1, 2)))]
        for m in a["measures"]:   # time_band needs time_bands, which warn without it
            if "time_bands" in m:
                m["by"] = [*m.get("by", [])[:1], "time_band"]
    return a


@st.composite
def measure_time(draw):
    """A measure's interval, standardisation and age bands (bands that cover every age)."""
    m: dict = {}
    if draw(st.booleans()):
        m["interval"] = draw(st.sampled_from(["month", "quarter", "year"]))
    if draw(st.booleans()):
        m["standardise"] = draw(st.sampled_from(["esp2013", "danish_2015"]))
    if draw(st.booleans()):
        m["indirect"] = draw(st.booleans())
    if draw(st.booleans()):
        m["age_bands"] = draw(st.sampled_from([[0, 50, 150], [0, 40, 60, 80, 150]]))
    if draw(st.booleans()):
        m["time_bands"] = draw(st.sampled_from([[0, 30, 365], [0, 365, 1826, 3652]]))
    return m


@st.composite
def variants(draw, s):
    lag = s.get("follow_up", {}).get("start_day", 0)
    options = [("seed", st.integers(0, 99)),
               ("follow_up.max_days", st.integers(lag + 1, 9000)),
               ("population.age", st.sampled_from([[50, 80], [18, 65]])),
               ("disclosure.min_cell", st.integers(6, 20)),
               ("population.residence_years", st.none())]
    if s["criteria"]:
        action = next(iter(k for k in s["criteria"][0] if k != "label"))
        options.append((f"criteria.0.{action}.window", st.sampled_from([[-730, -1],
                                                                         [None, -1]])))
    rule = "exposure" if "exposure" in s else "index" if "first_event" in s["index"] else None
    if rule:
        options.append((f"{rule}.washout_days", st.sampled_from([0, 180, 730])))
    out = []
    for i in range(draw(st.integers(1, 2))):
        chosen = draw(st.lists(st.sampled_from(options), min_size=1, max_size=2,
                               unique_by=lambda o: o[0]))
        out.append({"name": f"v{i}", "set": {p: draw(v) for p, v in chosen}})
    return out


@st.composite
def full_studies(draw):
    """A valid study using every part of the language."""
    s = draw(studies())
    if draw(st.booleans()):
        s["description"] = draw(st.sampled_from(["Statins and MI", "Æble: ø, å — 'x'", "1"]))
    if draw(st.booleans()):
        s["codelists"] = {**s["codelists"], "angina_file": {"system": "icd10",
                                                            "file": "angina.csv"}}
        if draw(st.booleans()):
            s["codelists"]["angina_file"]["codes"] = draw(st.sampled_from([["I24"], ["I20"]]))
        if "filter" not in s["outcome"]:
            s["outcome"] = {"name": "angina", "codelist": "angina_file"}
    s["analyses"] = draw(analyses(s))
    if draw(st.booleans()):
        s["disclosure"] = {"min_cell": draw(st.integers(1, 50))}
        if draw(st.booleans()):
            s["disclosure"]["round_to"] = draw(st.integers(0, 10))
    if draw(st.booleans()):
        s["variants"] = draw(variants(s))
    if "comparator" in s and draw(st.integers(0, 3)):
        s["propensity"] = draw(propensity(s))
    if isinstance(s.get("comparator"), dict) and "active" in s["comparator"] and \
            draw(st.booleans()):
        s["comparator"]["both_arms"] = draw(st.sampled_from(["remove", "first", "keep"]))
    split_terms(draw, s["analyses"])   # last: the draws before stay those of older versions
    return s


def split_terms(draw, a: dict) -> None:
    """age_band (Cox, Poisson) and time_band (Poisson) terms in the models drawn."""
    for key in ("cox", "poisson"):
        spec = a.get(key)
        if not isinstance(spec, dict) or not draw(st.booleans()):
            continue
        spec["age_bands"] = draw(st.sampled_from([[0, 50, 150], [40, 60, 80, 150]]))
        spec["adjust"] = [*spec.get("adjust", []), "age_band"]
        if key == "poisson" and draw(st.booleans()):
            spec["time_bands"] = draw(st.sampled_from([[0, 30, 365], [0, 365, 1826]]))
            spec["adjust"] = [*spec["adjust"], "time_band"]


@st.composite
def propensity(draw, s):
    """A comparative design on the study's covariates (hpcstudy/designs)."""
    names = _names(s["covariates"])
    p: dict = {"covariates": "all" if draw(st.booleans()) else
               draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))}
    method = draw(st.sampled_from(["matching", "weighting", "stratification", "none", None,
                                   "weighting"]))
    if method is not None:
        p["method"] = method
    if method in ("matching", None) and draw(st.integers(0, 3)):
        p["matching"] = {"ratio": draw(st.integers(1, 3)),
                         "caliper": draw(st.sampled_from([0.05, 0.2, 1, None])),
                         "replace": draw(st.booleans())}
    if method in ("matching", None) and s.get("analyses", {}).get("cox") not in (None, False):
        p.setdefault("matching", {})["bootstrap"] = draw(st.sampled_from([0, 20, 200]))
    if method == "weighting":
        est = draw(st.sampled_from(["ate", "att", "overlap"]))
        p["weighting"] = {"estimand": est, "stabilised": est != "overlap" and draw(
            st.booleans())}
        if draw(st.integers(0, 3)):   # often: the meta-test must see it in 200 draws
            p["weighting"]["truncate"] = draw(st.sampled_from([[1, 99], [0.5, 99.5], [5, 100]]))
    if method == "stratification":
        p["stratification"] = {"strata": draw(st.integers(2, 10))}
    if draw(st.booleans()):
        p["trim"] = draw(st.booleans())
    if draw(st.booleans()):
        p["penalty"] = draw(st.sampled_from([0, 0.5, 10]))
    if draw(st.booleans()):
        p["bins"] = draw(st.integers(2, 50))
    for key in ("charlson_components", "codelist_flags"):
        if draw(st.booleans()):
            p[key] = draw(st.booleans())
    return p
