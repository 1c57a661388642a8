"""An outsider's attacks on the project's promises (session 6): each test is a break that was
found by running the real CLI, kept so it stays fixed (or marked xfail where the fix belongs to
a file owned by someone else this session)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
STATINS = (ROOT / "examples" / "statins_mi.yaml").read_text()


def _one_error_line(r, exit_code: int = 2) -> str:
    """The promise for bad input: exit 2, one line ``hpcstudy: error: …``, no traceback."""
    assert r.returncode == exit_code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: "), r.stderr
    return lines[0]


def test_a_control_character_in_a_study_is_a_one_line_error(tmp_path):
    # a NUL (or BEL) byte pasted into a study was "internal error … a bug in hpcstudy" (exit 70):
    # PyYAML's reader refuses it while the loader is built, outside the YAML error handling
    for ch, code in (("\x00", "#x0000"), ("\x07", "#x0007")):
        study = tmp_path / "s.yaml"
        study.write_text(STATINS.replace("seed: 1", "seed: 1" + ch))
        line = _one_error_line(run_cli("check", study))
        assert f"s.yaml:{STATINS[:STATINS.index('seed: 1')].count(chr(10)) + 1}:" in line
        assert code in line


def test_a_control_character_in_a_project_file_is_a_one_line_error(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(STATINS)
    project = tmp_path / "project.yaml"
    project.write_text("project: FSEID-1\x00\nregisters: {bef: '*'}\n")
    line = _one_error_line(run_cli("check", study, "--project", project))
    assert "project.yaml:1:" in line
