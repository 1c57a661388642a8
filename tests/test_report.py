"""The study report (issue 17): a pure function of the run's exported outputs, listed in the
output manifest and checked by the export gate through its own parse of the page; planted
violations in report.html and its tables are caught even when the manifest's hashes are
recomputed. The browser tests are in test_report_browser.py."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.outputs import gate
from hpcstudy.outputs import manifest as M
from hpcstudy.report import formatting as fmt
from hpcstudy.report import render, write
from hpcstudy.report.verify import Sources, check_html


@pytest.fixture
def out(local_run, tmp_path, monkeypatch) -> Path:
    """A fresh copy of a clean run (example 3 on small_data); its own export register."""
    monkeypatch.setenv("HPCSTUDY_EXPORT_REGISTER", str(tmp_path / "exports.jsonl"))
    copy = tmp_path / "run"
    shutil.copytree(local_run, copy)
    return copy


def redeclare(out: Path) -> None:
    """A deliberate edit: every hash in the manifest recomputed, so only the content checks
    stand between the edit and the export."""
    doc = json.loads((out / M.NAME).read_text())
    for e in doc["files"]:
        e["sha256"] = M.sha256((out / e["path"]).read_bytes())
    doc["manifest_sha256"] = M.sha256(M.canonical(doc))
    (out / M.NAME).write_text(json.dumps(doc))


def held(out: Path) -> dict[str, list[str]]:
    return gate.check(out).held


# -- formatting --------------------------------------------------------------------------------
@pytest.mark.parametrize("value, shown", [
    (0.853172, "0.853"), (1.23456, "1.23"), (12.345, "12.3"), (123.45, "123"), (999.4, "999"),
    (1234.5, "1,234"), (9.9996, "10.0"), (0.99996, "1.00"), (0.000123456, "0.000123"),
    (-0.04186, "-0.0419"), (0, "0"), (float("nan"), "–"), (None, "–")])
def test_three_significant_digits(value, shown):
    assert fmt.sig3(value) == shown


@pytest.mark.parametrize("p, shown", [(0.0, "< 0.001"), (0.000999, "< 0.001"),
                                      (0.001, "0.00100"), (0.04321, "0.0432"),
                                      (0.974, "0.974"), (1.0, "1.00")])
def test_p_values_as_a_paper_prints_them(p, shown):
    assert fmt.p_value(p) == shown


# -- the report of a run -----------------------------------------------------------------------
def test_a_run_writes_its_report_and_lists_it(local_run):
    doc = json.loads((local_run / M.NAME).read_text())
    kinds = {e["path"]: e["kind"] for e in doc["files"]}
    assert kinds["report.html"] == "report"
    assert kinds["tables/cohort.md"] == kinds["tables/publication/cohort.csv"] == "report_table"
    html = (local_run / "report.html").read_text()
    for section in ("run", "attrition", "cohort", "models", "lexis"):
        assert f'<section id="{section}">' in html
    assert "<script" not in html and "://" not in html
    # the page names the study, its description (from plan.txt) and the hashes it rests on
    assert ">diabetes_incidence</h1>" in html
    assert "Incidence of non-insulin-dependent diabetes by age band and calendar period" in html
    for digest in (doc["study"]["sha256"], doc["data_manifest_sha256"]):   # in groups of 8
        assert " ".join(digest[i:i + 8] for i in range(0, 64, 8)) in html


def test_the_same_outputs_give_the_same_bytes(out, tmp_path):
    before = {p: (out / p).read_bytes() for p in ("report.html", "tables/cohort.md",
                                                 "tables/publication/rates.csv", M.NAME)}
    # rendered again, elsewhere (no path of the folder leaks into the page)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    files = render(moved)
    assert files["report.html"] == before["report.html"]
    assert files["tables/cohort.md"] == before["tables/cohort.md"]
    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    for p, data in before.items():
        assert (out / p).read_bytes() == data, p
    assert r.stderr == ""   # nothing changed, so the audit record still vouches for the run


def test_a_clean_report_passes_the_gate_and_is_exported(out, tmp_path):
    verdict = gate.check(out)
    assert verdict.held == {} and {"report.html", "run.json", "tables/cohort.md"} <= \
        set(verdict.passed)
    dest = tmp_path / "dest"
    r = run_cli("export", out, dest)   # (the gate again, the register, the audit log)
    assert r.returncode == 0, r.stderr
    assert (dest / "report.html").read_bytes() == (out / "report.html").read_bytes()
    assert (dest / "tables" / "lexis.md").is_file()


def test_the_report_reads_nothing_private_and_refuses_edited_outputs(out):
    shutil.rmtree(out / "private")
    assert render(out)["report.html"] == (out / "report.html").read_bytes()
    with (out / "tables" / "cohort.csv").open("a") as f:
        f.write("extra,5,5,1.0,1.0,1.0,1.0,\n")
    r = run_cli("report", out)
    assert r.returncode == 2 and "tables/cohort.csv: edited after the run" in r.stderr
    assert r.stderr.startswith("hpcstudy: error:") and "Traceback" not in r.stderr


def test_report_of_a_folder_that_is_no_run(tmp_path):
    r = run_cli("report", tmp_path)
    assert r.returncode == 2 and "outputs.json is missing" in r.stderr


def test_markdown_and_csv_tables_repeat_the_page(local_run):
    html = (local_run / "report.html").read_text()
    md = (local_run / "tables" / "cohort.md").read_text()
    pub = list(csv.reader(io.StringIO((local_run / "tables" / "publication" /
                                       "cohort.csv").read_text())))
    assert pub[0] == ["Label", "Persons", "Events", "Person-years",
                      "Rate per 1000 person-years (95 % CI)"]
    cells = re.findall(r"<t[dh][^>]*>([^<]*)</t[dh]>",
                       html.split('id="t-cohort"')[1].split("</table>")[0])
    assert [c for row in pub for c in row] == cells
    assert "| " + " | ".join(pub[1]) + " |" in md


# -- planted violations (hashes recomputed: only the report's own parse can catch them) -------
def _edit(out: Path, path: str, old: str, new: str, count: int = 1) -> None:
    f = out / path
    text = f.read_text()
    assert old in text, old
    f.write_text(text.replace(old, new, count))
    redeclare(out)


def _first_count_cell(html: str) -> re.Match:
    return re.search(r'(<td data-columns="persons" data-row="\d+">)([\d,]+)(</td>)', html)


PLANTS = {
    "an edited cell": lambda out, html: _edit(
        out, "report.html", "".join(_first_count_cell(html).groups()),
        _first_count_cell(html).group(1) + "1,000,001" + _first_count_cell(html).group(3)),
    "an added small number": lambda out, html: _edit(
        out, "report.html", "</main>", "<p>3 persons in the 80-90 band died</p></main>"),
    "an added row": lambda out, html: _edit(
        out, "report.html", "</tbody>",
        '<tr><th data-columns="label" data-row="1">cohort</th>'
        '<td data-columns="persons" data-row="1">3</td></tr></tbody>'),
    "a suppressed cell given a value": lambda out, html: _edit(
        out, "report.html", ">suppressed</td>", ">4</td>"),
    "a number in a figure": lambda out, html: _edit(
        out, "report.html", "</svg>", '<text x="1" y="1">3 deaths</text></svg>'),
    "a number in a hover text": lambda out, html: _edit(
        out, "report.html", 'title="suppressed: fewer than 5 persons',
        'title="suppressed: 3 persons', 1),
    "a number in an aria-label": lambda out, html: _edit(
        out, "report.html", "<main>", '<main aria-label="3 deaths among women over 80">'),
    "a script tag": lambda out, html: _edit(
        out, "report.html", "</body>", "<script>fetch('/x')</script></body>"),
    "an event handler": lambda out, html: _edit(
        out, "report.html", "<body>", '<body onload="alert(1)">'),
    "an external URL": lambda out, html: _edit(
        out, "report.html", "</footer>", '<a href="https://example.org/x">more</a></footer>'),
    "an external image": lambda out, html: _edit(
        out, "report.html", "</footer>", '<img src="//example.org/p.png"></footer>'),
    "a CSS import": lambda out, html: _edit(
        out, "report.html", "</style>", "@import 'x.css';</style>"),
    "a CSS url": lambda out, html: _edit(
        out, "report.html", "</style>", "body{background:url(x.png)}</style>"),
    "a number in CSS content": lambda out, html: _edit(
        out, "report.html", "</style>", 'td.suppressed::after{content:" (3)"}</style>'),
    "a CPR number": lambda out, html: _edit(
        out, "report.html", "</footer>", "<p>pnr 010170-1234</p></footer>"),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_planted_violation_in_the_page_is_caught(out, plant):
    PLANTS[plant](out, (out / "report.html").read_text())
    problems = held(out)
    assert "report.html" in problems, plant
    # the tables that repeat the page are held with it; the run's own files still leave
    assert "tables/cohort.md" in problems
    assert "results.json" not in problems and "tables/cohort.csv" not in problems


def test_check_outputs_and_export_hold_a_planted_page(out, tmp_path):
    PLANTS["an added small number"](out, (out / "report.html").read_text())
    r = run_cli("check-outputs", out)
    assert r.returncode == 1 and "withheld report.html: 3 in text traced to no cell" \
        in r.stderr, r.stderr
    dest = tmp_path / "dest"
    r = run_cli("export", out, dest)   # (the rewritten manifest is not the audited one either)
    assert r.returncode != 0 and not (dest / "report.html").exists()


def test_what_each_planted_violation_is_called(out):
    PLANTS["an edited cell"](out, (out / "report.html").read_text())
    assert any("shows 1,000,001, but tables/" in p for p in held(out)["report.html"])


def test_an_edit_without_recomputed_hashes_is_caught_by_the_hash(out):
    (out / "report.html").write_text((out / "report.html").read_text().replace(
        "</main>", "<p>x</p></main>"))
    assert any("edited after the run" in p for p in held(out)["report.html"])


@pytest.mark.parametrize("path", ["tables/cohort.md", "tables/publication/cohort.csv"])
def test_a_planted_violation_in_a_report_table_is_caught(out, path):
    line = next(x for x in (out / path).read_text().splitlines()
                if x.startswith(("| cohort", "cohort,")))
    _edit(out, path, line, line.replace(re.search(r"\d[\d,]*", line).group(0), "3", 1))
    problems = held(out)
    assert path in problems and "report.html" not in problems
    assert "differs from the table t-cohort" in problems[path][0]


def test_a_report_traced_to_an_edited_file_is_held(out):
    """The page's numbers are compared only with files still as the run wrote them."""
    f = out / "tables" / "cohort.csv"
    f.write_text(f.read_text().replace("cohort,", "cohort ,"))
    problems = held(out)
    assert any("edited after the run" in p for p in problems["report.html"])


# -- sections for outputs of kinds other helpers write (table1, balance, preference, …) -------
def synthetic_outputs(root: Path, suppressed: bool = True) -> Path:
    """A run folder written by hand: Table 1, balance, preference score, hospitals and a
    measure by interval and group, with a suppressed cell in Table 1 and in the measure."""
    root.mkdir(parents=True)
    (root / "tables").mkdir()
    tables = {
        "table1": ("table1", ["variable", "level", "arm", "persons", "percent", "mean", "sd",
                              "median", "q1", "q3", "suppressed"],
                   [["age", "", "statin", 400, "", 64.2, 9.1, "", "", "", ""],
                    ["age", "", "non_user", 1200, "", 58.7, 11.4, "", "", "", ""],
                    ["sex", "female", "statin", 180, 45.0, "", "", "", "", "", ""],
                    ["sex", "female", "non_user", 630, 52.5, "", "", "", "", "", ""],
                    ["diabetes", "yes", "statin", "", "", "", "", "", "", "",
                     "True" if suppressed else ""],
                    ["diabetes", "yes", "non_user", 60, 5.0, "", "", "", "", "", ""]]),
        "balance": ("balance", ["variable", "level", "smd_before", "smd_after"],
                    [["age", "", 0.53, 0.04], ["sex", "female", -0.15, 0.02],
                     ["diabetes", "yes", 0.31, -0.06]]),
        "preference": ("preference", ["arm", "bin", "persons"],
                       [[a, f"{b / 10:.1f}", n] for a, ns in
                        (("statin", [10, 20, 45, 80, 95, 70, 40, 25, 10, 5]),
                         ("non_user", [120, 180, 230, 250, 180, 120, 60, 30, 20, 10]))
                        for b, n in enumerate(ns)]),
        "hospitals": ("hospitals", ["hospital", "persons", "events", "expected", "oe",
                                    "lower_95", "upper_95", "limit95_low", "limit95_high",
                                    "limit998_low", "limit998_high"],
                      [[f"H{i}", 100 * i, 10 * i, 9.5 * i, 1.05, 0.8, 1.3, 1 - 0.6 / i ** .5,
                        1 + 0.6 / i ** .5, 1 - 0.9 / i ** .5, 1 + 0.9 / i ** .5]
                       for i in range(1, 7)]),
        "measure_readmission": ("measure", ["region", "interval", "persons", "events",
                                            "proportion", "lower_95", "upper_95",
                                            "suppressed"],
                                [[r, f"{y}", 200 + y, e, e / (200 + y), 0.9 * e / (200 + y),
                                  1.1 * e / (200 + y), ""] for r, k in (("north", 3),
                                                                        ("south", 5))
                                 for y in range(2015, 2021) for e in [20 + k * (y % 7)]] +
                                [["south", "2021", "", "", "", "", "",
                                  "True" if suppressed else ""]]),
    }
    roles = {"variable": "key", "level": "key", "arm": "key", "bin": "key", "hospital": "key",
             "region": "key", "interval": "key", "persons": "count", "events": "count",
             "suppressed": "flag"}
    entries = []
    for name, (kind, header, rows) in tables.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        (root / "tables" / f"{name}.csv").write_text(buf.getvalue())
        entries.append({"path": f"tables/{name}.csv", "kind": kind,
                        "columns": [{"name": c, "role": roles.get(c, "derived")}
                                    for c in header]})
    results = {"study": "synthetic_design", "run": {"engine": "reference", "min_cell": 5},
               "design": {"method": "1:1 nearest-neighbour matching on the propensity score",
                          "warnings": ["2 characteristics had an SMD above 0.1 before matching"]}}
    (root / "results.json").write_text(json.dumps(results))
    (root / "plan.txt").write_text("plan for study 'synthetic_design' (x.yaml)\n"
                                   "description: A hand-written run with every table kind\n")
    entries += [{"path": "results.json", "kind": "results"}, {"path": "plan.txt",
                                                              "kind": "plan"}]
    for e in entries:
        e["sha256"] = M.sha256((root / e["path"]).read_bytes())
    doc = {"format": M.FORMAT, "study": {"name": "synthetic_design", "sha256": "a" * 64,
                                         "variants": []},
           "data_manifest_sha256": "b" * 64, "min_cell": 5, "round_to": 0, "project": None,
           "files": sorted(entries, key=lambda e: e["path"])}
    doc["manifest_sha256"] = M.sha256(M.canonical(doc))
    (root / M.NAME).write_text(json.dumps(doc))
    return root


@pytest.fixture
def synthetic(synthetic_report) -> Path:
    """The hand-written run and its report (conftest's synthetic_report, shared with the
    browser tests: read only)."""
    return synthetic_report


def test_design_and_hospital_sections_are_drawn_when_present(synthetic):
    html = (synthetic / "report.html").read_text()
    for section in ("table1", "measures", "hospitals"):
        assert f'<section id="{section}">' in html
    for figure in ("fig-love-balance", "fig-overlap-preference", "fig-funnel",
                   "fig-measure-readmission"):
        assert f'id="{figure}"' in html
    # Table 1: n (%) and mean (SD) per arm, from the planted numbers
    t1 = html.split('id="t-table1"')[1].split("</table>")[0]
    assert ">180 (45.0)</td>" in t1 and ">64.2 (9.10)</td>" in t1
    assert "1:1 nearest-neighbour matching" in html
    assert not any(s in html for s in ('id="curves"', 'id="lexis"', 'id="attrition"'))


def test_a_suppressed_cell_shows_as_suppressed_with_its_reason(synthetic):
    html = (synthetic / "report.html").read_text()
    cells = re.findall(r'<td data-columns="([^"]+)" data-row="(\d+)" class="suppressed" '
                       r'title="([^"]+)">suppressed</td>', html)
    assert ("persons", "5") in [(c, r) for c, r, _ in cells]          # Table 1, diabetes/statin
    assert all("fewer than 5 persons" in why for _, _, why in cells)
    md = (synthetic / "tables" / "table1.md").read_text()
    assert "| suppressed |" in md and "fewer than 5 persons" in md


def test_the_synthetic_report_passes_the_independent_parse(synthetic):
    doc = json.loads((synthetic / M.NAME).read_text())
    problems, _ = check_html((synthetic / "report.html").read_text(), Sources(synthetic, doc),
                             5, "report.html")
    assert problems == []


def test_a_small_count_traced_from_the_page_is_caught(tmp_path):
    """A page can only show what its sources hold: a source that holds a small count (one a
    careless writer let through) makes the page that shows it fail too."""
    root = synthetic_outputs(tmp_path / "out")
    f = root / "tables" / "table1.csv"
    f.write_text(f.read_text().replace("non_user,60,5.0", "non_user,3,0.3"))
    redeclare(root)
    write(root)
    doc = json.loads((root / M.NAME).read_text())
    problems, _ = check_html((root / "report.html").read_text(), Sources(root, doc), 5,
                             "report.html")
    assert any("'persons' of tables/table1.csv row 6: 3 is below 5" in p for p in problems)


def test_a_curve_stops_where_its_published_points_stop():
    from hpcstudy.report.figures import km_plot

    rows = [{"group": 1, "day": d, "at_risk": n, "events": 5, "survival": s, "lower_95": s - .05,
             "upper_95": min(1, s + .05), "cumulative_incidence": 1 - s}
            for d, n, s in ((100, 200, .97), (400, 150, .93), (700, 20, .9))] + \
           [{"group": 2, "day": d, "at_risk": n, "events": 5, "survival": s, "lower_95": s - .05,
             "upper_95": min(1, s + .05), "cumulative_incidence": 1 - s}
            for d, n, s in ((50, 500, .99), (900, 300, .95), (2000, 100, .9))]
    svg = km_plot(rows, {"1": "statin", "2": "non_user"}, "survival")
    texts = re.findall(r'<text [^>]*y="([\d.]+)"[^>]*>([\d,]+)</text>', svg)
    lines: dict[float, list[str]] = {}
    for y, t in texts:
        lines.setdefault(float(y), []).append(t)
    first, second = (lines[y] for y in sorted(lines)[-2:])   # the rows under the axis
    # group 1's last point is day 700: its numbers stop there, at the ticks 0, 250, 500
    assert first == ["200", "150", "20"]
    assert second[0] == "500" and second[-1] == "100" and len(second) > 3
    assert svg == km_plot(rows, {"1": "statin", "2": "non_user"}, "survival")   # same bytes


def test_empty_or_degenerate_tables_give_a_report_without_failing_the_run(tmp_path):
    """A cohort of nobody (empty curves, a measure with every cell suppressed): the page
    shows the tables it can and draws no figure with nothing in it; no warning escapes."""
    root = synthetic_outputs(tmp_path / "out")
    for name in ("balance", "hospitals"):
        f = root / "tables" / f"{name}.csv"
        f.write_text(f.read_text().splitlines()[0] + "\n")
    doc = json.loads((root / M.NAME).read_text())
    for name, kind in (("curves", "curves"), ("cohort", "cohort")):
        (root / "tables" / f"{name}.csv").write_text("")
        doc["files"].append({"path": f"tables/{name}.csv", "kind": kind, "columns": []})
    (root / M.NAME).write_text(json.dumps(doc))
    redeclare(root)
    write(root)
    html = (root / "report.html").read_text()
    assert 'id="fig-love-balance"' not in html and 'id="fig-funnel"' not in html
    assert 'id="fig-km"' not in html and 'id="t-table1"' in html
    assert not (root / "tables" / "cohort.md").exists()   # nothing to publish
    doc = json.loads((root / M.NAME).read_text())
    for e in doc["files"]:
        if e["kind"] in M.REPORT_KINDS:
            from hpcstudy.report.verify import check

            assert check(root, e, (root / e["path"]).read_text(), doc, 5) == [], e["path"]
