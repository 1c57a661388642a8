"""A corpus of broken studies (tests/study/broken/*.yaml): typos at every depth, wrong types,
impossible combinations, hostile YAML. Each file says in its header what it must produce:

    # expect: <a fragment of one error line: field: message — fix>
    # line: <the line of the study that error names>

and `hpcstudy check FILE` must exit 2 and print one line per problem, each
``hpcstudy: error: FILE:LINE: … — fix``, never a traceback. They run in-process through
``hpcstudy.cli.main`` for speed; a few run as real subprocesses too.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.cli import main

BROKEN = Path(__file__).resolve().parent / "broken"
FILES = sorted(BROKEN.glob("*.yaml"))


def header(path: Path) -> tuple[str, int]:
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    expect = lines[0].removeprefix("# expect: ")
    line = int(lines[1].removeprefix("# line: "))
    return expect, line


@pytest.fixture(scope="module", autouse=True)
def keep_signal_handlers():
    """cli.main turns SIGTERM/SIGUSR1 into KeyboardInterrupt; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_the_corpus_is_large_and_covers_every_kind():
    assert len(FILES) >= 100
    kinds = {p.name.split("_")[0] for p in FILES}
    assert {"typo", "type", "misplaced", "yaml", "variant", "covariate", "outcome"} <= kinds


def _assert_one_line_each(path: Path, rc: int, out: str, err: str) -> None:
    expect, line = header(path)
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and out == "", err
    lines = err.splitlines()
    assert lines, "no error printed"
    one = re.compile(rf"hpcstudy: error: {re.escape(str(path))}:\d+: \S.* — \S.*")
    bad = [x for x in lines if not one.fullmatch(x)]
    assert bad == [], f"lines without file:line or a fix: {bad}"
    hits = [x for x in lines if expect in x]
    assert hits, f"{expect!r} not in {lines}"
    assert any(x.startswith(f"hpcstudy: error: {path}:{line}: ") for x in hits), (line, hits)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_check_refuses_each_broken_study_in_one_line_each(path, capsys):
    rc = main(["check", str(path)])
    out, err = capsys.readouterr()
    _assert_one_line_each(path, rc, out, err)


@pytest.mark.parametrize("name", ["typo_criterion_label", "filter_text_value",
                                  "yaml_alias_bomb", "encoding_latin1"])
def test_the_same_through_a_real_process(name):
    path = BROKEN / f"{name}.yaml"
    r = run_cli("check", path)
    _assert_one_line_each(path, r.returncode, r.stdout, r.stderr)


def test_plan_and_run_refuse_the_same_way(tmp_path, small_data):
    path = BROKEN / "misplaced_criterion_nth.yaml"
    for cmd in (["plan", str(path), "--data", str(small_data)],
                ["run", str(path), "--data", str(small_data), "--out", str(tmp_path / "o")]):
        r = run_cli(*cmd)
        _assert_one_line_each(path, r.returncode, r.stdout, r.stderr)
    assert not (tmp_path / "o").exists()
