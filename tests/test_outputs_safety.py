"""hpcstudy never deletes what it did not write, commits outputs with no moment where they are
missing, keeps everything with a pnr in folders only its owner can read, and refuses data whose
files disagree with the manifest.

The cases come from issue 11: ``--out data``, ``--out thesis/`` holding chapter1.tex, ``--out
proj`` holding proj/data, ``ingest --data thesis``, ``--out .``, ``--overwrite`` of a folder
without hpcstudy's marker; every commit killed at every step; an edited manifest."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import as_compared, run_cli

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "diabetes_incidence.yaml"


def state(path: Path, runs: bool = False) -> dict[str, bytes] | None:
    """Every file under ``path`` with its bytes (but a run's own audit.json, the chain head
    that differs from run to run); None when the path is missing. ``runs``: to compare two
    runs, each file as conftest.as_compared gives it (not what each records of itself)."""
    if not path.exists():
        return None
    return {p.relative_to(path).as_posix():
            as_compared(p.name, p.read_bytes()) if runs else p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file() and
            p.relative_to(path).as_posix() != "audit.json"}


def refused(r, *words: str, code: int = 2) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """400 persons in two partitions: the dataset these tests copy and damage."""
    from hpcstudy.registers.generate import generate

    out = tmp_path_factory.mktemp("tiny") / "data"
    generate(out, 400, 3, 2, jobs=1)
    return out


@pytest.fixture
def data(tiny, tmp_path) -> Path:
    """A private copy of ``tiny``: a test that fails to refuse may destroy it."""
    d = tmp_path / "data"
    shutil.copytree(tiny, d)
    return d


@pytest.fixture(scope="module")
def first_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first") / "out"
    r = run_cli("run", STUDY, "--data", tiny, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def run(data: Path, out, *extra, cwd=None, env=None):
    return run_cli("run", STUDY, "--data", data, "--out", out, "--quiet", *extra, cwd=cwd,
                   env=env)


# -- never delete what hpcstudy did not write -----------------------------------------------
@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_out_that_is_the_data_is_refused(data, overwrite):
    before = state(data)
    refused(run(data, data, *overwrite), "is the data")
    refused(run(data, data / "inside", *overwrite), "lies inside the data")
    assert state(data) == before


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_a_folder_of_user_files_is_never_replaced(data, tmp_path, overwrite):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("\\chapter{One}")
    r = run(data, f"{thesis}/", *overwrite)
    refused(r, "already exists" if not overwrite else "no run marker")
    assert (thesis / "chapter1.tex").read_text() == "\\chapter{One}"
    assert leftovers(thesis) == []


def test_out_holding_the_data_or_the_project_is_refused(data, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.move(data, proj / "data")
    before = state(proj)
    refused(run(proj / "data", proj, "--overwrite"), "contains the data")
    approval = proj / "approval.yaml"
    approval.write_text("project: X\n")
    refused(run(tmp_path / "proj" / "data", proj / "..", "--overwrite"))
    assert state(proj)["data/manifest.json"] == before["data/manifest.json"]
    # the project file itself is read: an out that holds it is refused before it is parsed
    from hpcstudy.errors import UserError
    from hpcstudy.outputs.targets import check_target

    with pytest.raises(UserError, match="contains the input"):
        check_target(proj, kind="run", overwrite=True, reads=[approval])


def test_out_dot_is_refused_and_the_folder_kept(data, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.md").write_text("mine")
    for out in (".", str(work)):
        refused(run(data, out, "--overwrite", cwd=work), "the current folder")
    refused(run(data, "..", "--overwrite", cwd=work), "contains")
    assert (work / "notes.md").read_text() == "mine"


def test_the_installation_and_repository_are_refused(data, tmp_path):
    study = tmp_path / "study.yaml"
    shutil.copy(STUDY, study)

    def run_elsewhere(out, *extra):
        return run_cli("run", study, "--data", data, "--out", out, *extra, cwd=tmp_path)

    refused(run_elsewhere(ROOT, "--overwrite"), "contains the package")
    refused(run_elsewhere(ROOT / "hpcstudy" / "results"), "lies inside the package")
    assert (ROOT / "hpcstudy" / "cli.py").is_file() and not (ROOT / "hpcstudy" / "results").exists()


def test_overwrite_needs_the_run_marker_and_nothing_else(tiny, first_run, tmp_path):
    out = tmp_path / "out"
    # looks like a run, but hpcstudy's marker is missing: refused
    shutil.copytree(first_run, out)
    (out / "private" / "hpcstudy-run.json").unlink()
    before = state(out)
    refused(run(tiny, out, "--overwrite"), "no run marker")
    assert state(out) == before
    # the marker is there, but someone added a file: refused, the file kept
    shutil.rmtree(out)
    shutil.copytree(first_run, out)
    (out / "tables" / "my_figure.R").write_text("plot()")
    refused(run(tiny, out, "--overwrite"), "tables/my_figure.R")
    refused(run(tiny, out), "already exists", "--overwrite")
    assert (out / "tables" / "my_figure.R").read_text() == "plot()"
    # an earlier run, untouched: replaced
    (out / "tables" / "my_figure.R").unlink()
    r = run(tiny, out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert state(out, True) == state(first_run, True) and leftovers(out) == []
    marker = json.loads((out / "private" / "hpcstudy-run.json").read_text())
    assert "results.json" in marker["files"] and "private/person_table.parquet" in marker["files"]


def test_other_places_a_target_may_not_be(first_run, tmp_path, monkeypatch):
    from hpcstudy.errors import UserError
    from hpcstudy.outputs.targets import check_target

    def refuses(out, *words, kind="run"):
        with pytest.raises(UserError) as e:
            check_target(out, kind=kind, overwrite=True)
        for w in words:
            assert w in str(e.value), (w, str(e.value))

    home = tmp_path / "home"
    (home / "me").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home / "me"))
    refuses(home / "me", "is the home folder")
    refuses(home, "contains the home folder")
    repo = tmp_path / "repo"
    shutil.copytree(first_run, repo)       # even with hpcstudy's marker
    (repo / ".git").mkdir()
    refuses(repo, "git work tree")
    (tmp_path / "file").write_text("x")
    refuses(tmp_path / "file", "not a folder")
    (tmp_path / "link").symlink_to(first_run)
    refuses(tmp_path / "link", "symbolic link")
    run_copy = tmp_path / "run"
    shutil.copytree(first_run, run_copy)
    refuses(run_copy, "no dataset manifest", kind="dataset")   # synth over a run's folder
    with pytest.raises(UserError, match="already exists"):
        check_target(run_copy, kind="export")
    assert check_target(run_copy, kind="run", overwrite=True) == run_copy


def test_ingest_refuses_a_folder_that_is_not_only_a_dataset(data, tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    src = tmp_path / "bef.csv"
    src.write_text("cpr,koen,foed_dag,region\n010150-1234,1,1950-01-01,1084\n")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("text")
    args = ("--register", "bef", "--input", src, "--key-file", key)
    refused(run_cli("ingest", *args, "--data", thesis), "no dataset manifest")
    assert state(thesis) == {"chapter1.tex": b"text"}
    (data / "bef" / "notes.txt").write_text("mine")
    refused(run_cli("ingest", *args, "--data", data), "bef/notes.txt")
    assert (data / "bef" / "notes.txt").read_text() == "mine"
    refused(run_cli("ingest", *args, "--data", tmp_path), "contains the extract")
    refused(run_cli("ingest", *args, "--data", data, "--quarantine", data / "q.csv"),
            "contains the quarantine file")
    assert src.is_file() and key.is_file()


def test_export_never_writes_over_or_into_what_it_reads(first_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    before = state(out)
    refused(run_cli("export", out, out / "exported"), "lies inside the run")
    refused(run_cli("export", out, out), "is the run")
    (tmp_path / "dest").mkdir()
    refused(run_cli("export", out, tmp_path / "dest"), "already exists")
    assert state(out) == before


def test_synth_overwrites_only_a_dataset_holding_nothing_else(data, tmp_path):
    (data / "README.txt").write_text("mine")
    refused(run_cli("synth", "--persons", "30", "--out", data, "--overwrite"), "README.txt")
    assert (data / "README.txt").read_text() == "mine"


# -- a commit killed at each step leaves the old or the new state --------------------------------
def _ingest_args(tmp_path: Path, rows: str, name: str):
    key = tmp_path / "key"
    if not key.exists():
        key.write_bytes(b"k" * 40)
    src = tmp_path / name
    src.write_text("cpr,koen,foed_dag,region\n" + rows)
    return ("ingest", "--register", "bef", "--input", src, "--key-file", key)


STEPS = [("staged", ""), ("exchanged", ""), ("removing", ""), ("moved-old", "1")]


@pytest.mark.parametrize("command", ["run", "synth", "ingest"])
def test_a_commit_killed_at_each_step_leaves_old_or_new(command, tiny, first_run, tmp_path):
    """SIGKILL inside the commit at each step (with the exchange, and on the path of a file
    system without it): the target holds exactly the old or the new state; the next command
    on it removes every leftover."""
    from hpcstudy.outputs.targets import tidy

    old_path = tmp_path / "old"
    if command == "run":
        shutil.copytree(first_run, old_path)
        study = tmp_path / "study.yaml"   # another threshold: other bytes in the new state
        study.write_text(STUDY.read_text() + "\ndisclosure: {min_cell: 6}\n")
        new_args = lambda t: ("run", study, "--data", tiny, "--out", t, "--quiet",  # noqa: E731
                              "--overwrite", "--engine", "reference")
    elif command == "synth":
        from hpcstudy.registers.generate import generate

        generate(old_path, 60, 1, 2)
        new_args = lambda t: ("synth", "--persons", "70", "--partitions", "2", "--out", t,  # noqa: E731
                              "--quiet", "--overwrite", "--jobs", "1")
    else:
        assert run_cli(*_ingest_args(tmp_path, "010150-1234,1,1950-01-01,1084\n", "a.csv"),
                       "--data", old_path, "--partitions", "2").returncode == 0
        b = _ingest_args(tmp_path, "020260-1111,2,1960-02-02,1081\n", "b.csv")
        new_args = lambda t: (*b, "--data", t)  # noqa: E731
    old = state(old_path, True)
    ref = tmp_path / "ref"
    shutil.copytree(old_path, ref)
    r = run_cli(*new_args(ref))
    assert r.returncode == 0, r.stderr
    new = state(ref, True)
    assert new != old
    for step, no_exchange in STEPS:
        target = tmp_path / f"at-{step}"
        shutil.copytree(old_path, target)
        env = {"HPCSTUDY_TEST_KILL_AT": step, "HPCSTUDY_TEST_NO_EXCHANGE": no_exchange}
        r = run_cli(*new_args(target), env=env)
        assert r.returncode == -9, (step, r.stderr)
        after = state(target, True)
        if step == "moved-old":
            # without the exchange there is a moment with no target; the next command that
            # touches the path puts the old state back
            assert after is None and leftovers(target)
            if command == "run":
                refused(run(tiny, target), "already exists")
            else:
                assert run_cli("data", "summary", target).returncode == 0
            after = state(target, True)
        assert after == (new if step in ("exchanged", "removing") else old), step
        assert leftovers(target) or step == "moved-old", step   # that one was tidied
        if step == "removing":   # the next command removes the half-removed old state
            r = run_cli(*new_args(target))
            assert r.returncode == 0, (step, r.stderr)
            assert state(target, True) == new
        else:
            tidy(target)
        assert leftovers(target) == [], (step, leftovers(target))


def test_without_rename_flags_a_target_is_a_link_switched_in_one_step(tmp_path):
    """On a file system without renameat2's flags (NFS), a new dataset is a link to a hidden
    version folder; each later commit switches the link in one rename. Killed at each step,
    the target is the old or the new dataset, and the next command leaves one version."""
    env = {"HPCSTUDY_TEST_NO_EXCHANGE": "1"}
    out = tmp_path / "data"

    def synth(persons, **extra):
        return run_cli("synth", "--persons", persons, "--partitions", "2", "--out", out,
                       "--quiet", "--overwrite", "--jobs", "1", env={**env, **extra})

    assert synth(40).returncode == 0
    assert out.is_symlink() and out.is_dir()
    old = state(out)
    for step in ("staged", "linked", "removing"):
        r = synth(50, HPCSTUDY_TEST_KILL_AT=step)
        assert r.returncode == -9, (step, r.stderr)
        after = state(out)
        manifest = json.loads((out / "manifest.json").read_text())
        assert after == old if step == "staged" else manifest["source"]["persons"] == 50, step
        if step != "staged":
            from hpcstudy.registers.verify import verify

            assert verify(out) == []
        r = synth(40)   # the next command: back to the old bytes, one version folder left
        assert r.returncode == 0, r.stderr
        assert state(out) == old and out.is_symlink()
        assert len(leftovers(out)) == 1, leftovers(out)   # the one the link points to
    refused(run_cli("run", STUDY, "--data", out, "--out", out, "--overwrite"), "is the data")


def test_the_leftovers_an_older_hpcstudy_left_are_put_back(data, tmp_path):
    """What issue 11 found after killing ingest between its two renames: no dataset, only
    .data.old-PID and .data.partial-PID. The next command puts the old dataset back."""
    from hpcstudy.registers.store import Dataset

    before = state(data)
    dead = 4_194_304 + 7   # above the kernel's largest pid: no process has it
    data.rename(tmp_path / f".data.old-{dead}")
    (tmp_path / f".data.partial-{dead}").mkdir()
    (tmp_path / f".data.partial-{dead}" / "manifest.json").write_text("{}")
    assert Dataset.open(data).partitions == 2
    assert state(data) == before and leftovers(data) == []


def test_leftovers_of_a_live_process_are_named_not_removed(data, tmp_path):
    out = tmp_path / "out"
    other = tmp_path / f".out.partial-{os.getpid()}@elsewhere"
    other.mkdir()
    (other / "results.json").write_text("{}")
    r = run(data, out)
    assert r.returncode == 0, r.stderr
    assert other.is_dir() and f"{other}" in r.stderr and "may still be running" in r.stderr


# -- private stays private ---------------------------------------------------------------------
def _pnr_files(root: Path) -> list[Path]:
    found = []
    for p in root.rglob("*.parquet"):
        if "pnr" in pq.read_schema(p).names:
            found.append(p)
    return found


def _private(path: Path, root: Path) -> bool:
    """Some folder between root and path is readable by its owner only."""
    return any(stat.S_IMODE(d.stat().st_mode) & 0o077 == 0
               for d in path.parents if root in d.parents)


def test_every_pnr_file_of_a_run_is_in_a_0700_folder(tiny, tmp_path):
    where = tmp_path / "runs"
    where.mkdir()
    out = where / "out"
    ckpt = where / "out.checkpoints"
    ckpt.mkdir(mode=0o755)   # one an older hpcstudy left readable: narrowed
    os.chmod(ckpt, 0o755)
    env = {"HPCSTUDY_TEST_KILL_AT": "staged"}   # stopped with everything written, uncommitted
    r = run_cli("run", STUDY, "--data", tiny, "--out", out, "--quiet", env=env)
    assert r.returncode == -9
    during = _pnr_files(where)
    assert any("checkpoints" in p.parts[-2] for p in during)
    assert any(p.name == "person_table.parquet" for p in during)
    assert all(_private(p, where) for p in during), during
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o700
    r = run_cli("run", STUDY, "--data", tiny, "--out", out, "--quiet", "--resume")
    assert r.returncode == 0, r.stderr
    after = _pnr_files(where)
    assert [p.relative_to(where).as_posix() for p in after] == ["out/private/person_table.parquet"]
    assert all(_private(p, where) for p in after)
    assert stat.S_IMODE((out / "private").stat().st_mode) == 0o700


# -- run checks the manifest against the files it will read ------------------------------------
def test_an_edited_manifest_is_refused_before_anything_runs(data, tmp_path):
    m = json.loads((data / "manifest.json").read_text())
    m["partitions"] = 1
    (data / "manifest.json").write_text(json.dumps(m))
    refused(run(data, tmp_path / "o1"), "partitions: 1")
    assert not (tmp_path / "o1").exists()


def test_missing_truncated_extra_or_corrupt_partition_files_are_refused(data, tmp_path):
    victim = data / "lmdb" / "part-00001.parquet"
    keep = victim.read_bytes()
    victim.unlink()
    refused(run(data, tmp_path / "o"), "lmdb/part-00001.parquet: missing")
    victim.write_bytes(keep[:-7])
    refused(run(data, tmp_path / "o"), "lmdb/part-00001.parquet", "bytes")
    victim.write_bytes(keep)
    shutil.copy(victim, data / "lmdb" / "part-00002.parquet")
    refused(run(data, tmp_path / "o"), "part-00002.parquet: not in the manifest")
    (data / "lmdb" / "part-00002.parquet").unlink()
    middle = len(keep) // 2
    victim.write_bytes(keep[:middle] + bytes([keep[middle] ^ 0xFF]) + keep[middle + 1:])
    refused(run(data, tmp_path / "o", "--verify"), "lmdb/part-00001.parquet", "checksum")
    victim.write_bytes(keep)
    assert run(data, tmp_path / "o", "--verify").returncode == 0
    assert not any(p.name.startswith(".o.") for p in tmp_path.iterdir())


def test_workers_spill_into_a_private_folder():
    """Worker processes spill partitions (with pnr) to disk under memory pressure: into a
    folder only this user can read (distributed makes each worker's folder 0700), removed when
    the workers stop. A guard: hpcstudy relies on it."""
    from hpcstudy.cluster.launchers import client_for

    with client_for("processes", workers=1) as client:
        where = [Path(d) for d in
                 client.run(lambda dask_worker: dask_worker.local_directory).values()]
        assert where and all(any(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0
                                 for p in [d, *d.parents] if p != Path("/")) for d in where)
        private = [next(p for p in [d, *d.parents] if stat.S_IMODE(p.stat().st_mode) & 0o077
                        == 0) for d in where]
    assert not any(p.exists() for p in private)
