"""The study language is lossless and strict.

- YAML → Study → YAML → Study is the identity, for every generated study and every example;
- the generator draws every key of keys.py and every field of the language's dataclasses (so
  the round trip covers the whole language, and a new field fails here until it is drawn);
- every key in keys.py is documented in docs/studies.md;
- YAML reading is bounded (alias bombs, deep nesting, huge or non-UTF-8 files).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from hpcstudy.errors import UserError
from hpcstudy.study import StudyErrors, language, load_study, parse, study_from_text
from hpcstudy.study.keys import KEYS
from hpcstudy.study.yamlio import loads

from .strategies import CODES_DIR, full_studies

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _parsed(text: str, seen: set | None = None):
    study, problems = parse(loads(text, "g.yaml"), "g.yaml", CODES_DIR, keys_seen=seen)
    assert problems == [], "\n".join(map(str, problems)) + "\n" + text
    return study


def round_trip(study):
    """Study → YAML text → Study."""
    return _parsed(yaml.safe_dump(study.to_dict(), sort_keys=False, allow_unicode=True))


@SETTINGS
@given(spec=full_studies())
def test_generated_studies_round_trip(spec):
    study = _parsed(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    again = round_trip(study)
    assert again == study
    assert again.to_dict() == study.to_dict()      # and YAML → Study → YAML is stable
    for v in study.variant_names:                   # each variant survives too
        text = yaml.safe_dump(study.to_dict(), sort_keys=False, allow_unicode=True)
        a = study_from_text(yaml.safe_dump(spec, sort_keys=False), "g", CODES_DIR, v)
        b = study_from_text(text, "g", CODES_DIR, v)
        assert a == b


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid_without_warnings_and_round_trip(path):
    s = load_study(path)
    assert s.warnings == ()
    again = round_trip(s)
    assert again == s and again.to_dict() == s.to_dict()


def _language_classes():
    return [c for c in vars(language).values() if dataclasses.is_dataclass(c) and
            c.__module__ == language.__name__ and c is not language.Problem]


def _fields_used(obj, out: set) -> None:
    """(class, field) for every field holding something other than its default."""
    if isinstance(obj, tuple | list):
        for x in obj:
            _fields_used(x, out)
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        if not f.compare:
            continue
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else object()
        if value != default:
            out.add((type(obj).__name__, f.name))
        _fields_used(value, out)


def test_the_generator_draws_every_key_and_every_field():
    """A meta-test: fails when a key of keys.py or a field of a language dataclass is never
    generated (both lists are derived, not written here)."""
    seen_keys: set = set()
    seen_fields: set = set()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(spec=full_studies())
    def draw(spec):
        s = _parsed(yaml.safe_dump(spec, sort_keys=False), seen_keys)
        _fields_used(s, seen_fields)

    draw()
    every_key = {(c, k) for c, keys in KEYS.items() for k in keys}
    assert every_key - seen_keys == set()
    every_field = {(c.__name__, f.name) for c in _language_classes()
                   for f in dataclasses.fields(c) if f.compare}
    assert every_field - seen_fields == set()


def test_every_key_is_documented():
    """docs/studies.md lists exactly the keys of keys.py, context by context."""
    doc = (ROOT / "docs" / "studies.md").read_text()
    reference = doc[doc.index("## Every key"):]
    documented = {c: set(re.findall(r"^\| `([^`]+)` \|", _section(reference, c), re.M))
                  for c in KEYS}
    assert documented == {c: set(keys) for c, keys in KEYS.items()}


def _section(text: str, context: str) -> str:
    m = re.search(rf"^### `{context}`.*?(?=^### |\Z)", text, re.M | re.S)
    assert m, f"docs/studies.md has no section ### `{context}`"
    return m.group(0)


# -- bounded YAML ------------------------------------------------------------------------------
BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_an_alias_bomb_is_one_line_fast_and_small(tmp_path):
    assert len(BOMB.encode()) < 600
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    # VmHWM: this process's peak memory (ru_maxrss would count the parent's, kept over exec)
    code = ("import re, sys\n"
            "from hpcstudy.cli import main\n"
            "rc = main(['check', sys.argv[1]])\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(rc, hwm, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True,
                       timeout=120, env={**os.environ})
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 2, r.stderr
    assert lines[0].startswith(f"hpcstudy: error: {f}:") and "aliases" in lines[0]
    rc, rss_kb = lines[1].split()
    assert rc == "2"
    assert int(rss_kb) < 400_000       # the whole interpreter; the bomb expands to 3.9e8 values


def test_recursive_alias_and_deep_nesting_are_refused():
    with pytest.raises(UserError, match="refers to the value that contains it"):
        loads("name: &x [*x]\n", "s.yaml")
    with pytest.raises(UserError, match="nest deeper than"):
        loads("name: " + "[" * 60 + "]" * 60 + "\n", "s.yaml")
    with pytest.raises(UserError, match="nest deeper than"):
        loads("name: " + "[" * 1000 + "]" * 1000 + "\n", "s.yaml")


def test_big_and_non_utf8_files_are_refused(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_bytes(b"name: x\n# caf\xe9\n")
    with pytest.raises(UserError, match=r"s.yaml:2: not UTF-8 text \(byte 0xe9\)"):
        load_study(f)
    f.write_text("name: x\n" + "#" * 1_000_001 + "\n")
    with pytest.raises(UserError, match="more than 1000000 bytes"):
        load_study(f)


def test_merge_keys_and_duplicate_keys():
    s = study_from_text("""
name: m
codelists: {mi: {system: icd10, codes: [I21]}}
index: {date: 2010-01-01}
base: &w {codelist: mi, window: [null, -1]}
outcome: {name: mi, codelist: mi}
""".replace("base: &w {codelist: mi, window: [null, -1]}\n", ""))
    assert s.name == "m"
    text = """
name: m
codelists: {mi: {system: icd10, codes: [I21]}}
index: {date: 2010-01-01}
criteria:
  - exclude: &prior {codelist: mi, window: [null, -1]}
  - include: {<<: *prior, window: [-365, -1], min_count: 1}
outcome: {name: mi, codelist: mi}
"""
    s = study_from_text(text)
    assert s.criteria[1].window == language.Window(-365, -1)
    assert s.criteria[1].events == s.criteria[0].events
    with pytest.raises(UserError, match=r"s.yaml:3: not valid YAML: duplicate key 'name'"):
        loads("name: a\nseed: 1\nname: b\n", "s.yaml")
    with pytest.raises(UserError, match="a key must be a plain word"):
        loads("? [a, b]\n: c\n", "s.yaml")


def test_many_problems_stay_one_line_each_and_short():
    """A value is shown short, never in full (the old alias bomb printed 522 MB)."""
    text = "name: x\nindex: {date: 2010-01-01}\noutcome: {name: d, death: true}\n" \
        "seed: [" + ", ".join(["1234567890"] * 5000) + "]\n"
    with pytest.raises(StudyErrors) as e:
        study_from_text(text, "s.yaml")
    assert e.value.lines() == ["s.yaml:4: seed: must be a whole number from 0 to "
                               "9223372036854775807, not a list — e.g. seed: 1"]


# -- semantics the docs state ------------------------------------------------------------------
def test_file_and_inline_codes_round_trip_as_one_list():
    text = """
name: f
codelists: {angina: {system: icd10, file: angina.csv, codes: [I24, I20]}}
index: {date: 2010-01-01}
outcome: {name: angina, codelist: angina}
"""
    s = study_from_text(text, "s.yaml", CODES_DIR)
    assert s.codelist("angina").codes == ("I20", "I25", "I24")    # the file's first, once each
    assert round_trip(s) == s


def test_variants_round_trip_and_are_checked_without_being_run(tmp_path):
    base = (ROOT / "examples" / "statins_mi.yaml").read_text()
    ok = base + "variants:\n  - {name: w2, set: {exposure.washout_days: 730, " \
                "criteria.0.exclude.window: [null, -1], follow_up.max_days: null}}\n"
    s = study_from_text(ok, "s.yaml")
    assert s.variants == (language.Variant("w2", (("exposure.washout_days", 730),
                                                   ("criteria.0.exclude.window", [None, -1]),
                                                   ("follow_up.max_days", None))),)
    v = study_from_text(ok, "s.yaml", variant="w2")
    assert v.name == "statins_mi.w2" and v.index.washout_days == 730
    assert v.criteria[0].window == language.Window(None, -1) and v.follow_up_days is None
    assert round_trip(s) == s
    bad = base + "variants:\n  - {name: w2, set: {exposure.washot_days: 730}}\n" \
                 "  - {name: w3, set: {criteria.4.exclude.window: [null, -1]}}\n" \
                 "  - {name: w4, set: {population.sex: both}}\n"
    with pytest.raises(StudyErrors) as e:
        study_from_text(bad, "s.yaml")           # the base study: its variants are checked
    lines = e.value.lines()
    n = len(base.splitlines())
    assert lines == [
        f"s.yaml:{n + 2}: variants[0] w2: exposure.washot_days: unknown field — did you mean "
        "'washout_days'?",
        f"s.yaml:{n + 3}: variants[1] w3: set.criteria.4.exclude.window: criteria is a "
        "list of 1: no item 4 — items count from 0 to 0",
        f"s.yaml:{n + 4}: variants[2] w4: population.sex: 'both' is not any, male or female "
        "— use any, male or female"]


def test_a_variant_that_changes_nothing_is_a_warning():
    base = (ROOT / "examples" / "statins_mi.yaml").read_text()
    s = study_from_text(base + "variants:\n  - {name: same, set: {seed: 1}}\n", "s.yaml")
    assert [w.message for w in s.warnings] == ["variant 'same' changes nothing"]


def test_warnings_are_carried_on_the_study():
    s = study_from_text("""
name: w
codelists:
  mi: {system: icd10, codes: [I21, I21]}
  spare: {system: atc, codes: [C10]}
index: {date: 2010-01-01}
criteria:
  - include: {codelist: mi, window: [-365, 30]}
covariates:
  - age
  - {name: later_mi, codelist: mi, window: [1, 365]}
outcome: {name: d, death: true}
""", "s.yaml")
    assert [str(w) for w in s.warnings] == [
        "s.yaml:4: codelists.mi.codes: code 'I21' repeated — drop the repeat",
        "s.yaml:8: criteria[0].include.window: eligibility looks after the index day (window "
        "[-365, 30]): who is in the cohort then depends on the future — end the window at 0 "
        "or before",
        "s.yaml:11: covariates[1].window: a covariate at index counts events after the index "
        "day (window [1, 365]) — end the window at 0 or before",
        "s.yaml:5: codelists.spare: is never used — drop it, or use it"]


def test_charlson_forms_keep_their_window():
    text = """
name: c
index: {date: 2010-01-01}
covariates: [COV]
outcome: {name: d, death: true}
"""
    for form in ("charlson", "{name: charlson}", "{name: cci, kind: charlson}"):
        s = study_from_text(text.replace("COV", form))
        assert s.covariates[0].window == language.Window(-3650, 0), form  # docs: unless given
        assert s.covariates[0].kind == "charlson" and round_trip(s) == s
    s = study_from_text(text.replace("COV", "{name: cci, kind: charlson, window: [-365, 0]}"))
    assert s.covariates[0].window == language.Window(-365, 0) and round_trip(s) == s


def test_the_index_day_is_the_only_day_an_index_window_rule_exempts():
    """An exclude criterion on the index rule's own events over day 0 would drop everyone."""
    text = """
name: x
codelists: {mi: {system: icd10, codes: [I21]}}
index: {first_event: {codelist: mi}}
criteria: [{exclude: {codelist: mi, window: [null, 0]}}]
outcome: {name: d, death: true}
"""
    with pytest.raises(StudyErrors, match="excludes every person"):
        study_from_text(text)
    assert study_from_text(text.replace("[null, 0]", "[null, -1]")).criteria
