"""A new output kind needs one catalogue entry: the writer's declarations, the gate's section
rules and the re-checker's small-cell rules follow from it (docs/secure.md, "Adding an output
kind")."""

from __future__ import annotations

import pytest

from hpcstudy.outputs import checks as C
from hpcstudy.outputs import manifest as M


@pytest.fixture
def table1(monkeypatch):
    monkeypatch.setitem(M.KINDS, "table1", M.Kind(("variable", "level", "arm"), ("persons",),
                                                  ("percent",)))


def test_a_new_kind_is_a_results_section_of_its_own_name(table1):
    assert M.kind_of_section("table1") == "table1"
    assert M.kind_of_section("models.cox") == "model"
    assert M.kind_of_section("lexis_model") == "model"
    assert M.kind_of_section("models.a.b") is None and M.kind_of_section("nothing") is None
    res = {"table1": [{"variable": "sex", "level": "female", "arm": "statin", "persons": 40,
                       "percent": 50.0}], "attrition": {}}
    assert M.results_sections(res, {})["table1"]["kind"] == "table1"


def test_a_new_kind_s_counts_are_checked_without_rules_of_its_own(table1):
    rows = [{"variable": "sex", "level": "female", "arm": "a", "persons": 3, "percent": 30.0},
            {"variable": "sex", "level": "male", "arm": "a", "persons": 7, "percent": 70.0}]
    assert any("3 is below 5" in x for x in C.check_kind("table1", rows, 5, "t"))
    # withheld, but its percent shown; and the only withheld cell of its total
    rows[0].update(persons=None)
    found = C.check_kind("table1", rows, 5, "t")
    assert any("shown for a withheld row" in x for x in found)
    rows[0].update(percent=None)
    rows.append({"variable": "sex", "level": "male", "arm": "b", "persons": 9, "percent": 90})
    rows.append({"variable": "sex", "level": "female", "arm": "b", "persons": 1 + 9,
                 "percent": 10})
    assert any("recoverable exactly" in x for x in C.check_kind("table1", rows, 5, "t"))
