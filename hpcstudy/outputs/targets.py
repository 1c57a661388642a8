"""Where hpcstudy may write, and how a finished output replaces an old one.

Every command that writes a folder (``run --out``, ``synth --out``, ``ingest --data``,
``export DEST``) goes through :func:`check_target` before it computes anything and through
:func:`commit` when it is done. The promise: hpcstudy never deletes what it did not write.

- A new folder is always fine. An existing one is replaced only with ``--overwrite`` and only
  when it carries hpcstudy's marker of the same kind and holds no file the marker does not
  list: a run's ``private/hpcstudy-run.json``, a dataset's ``manifest.json``. An export never
  replaces anything.
- A target is refused when it is, contains or lies inside a folder the command reads (the data,
  the study or project file, an ingest's extract and key), or when it is or contains the
  current directory, the home directory, a git work tree or hpcstudy's own installation.
- The finished folder is written beside the target under ``.NAME.partial-PID@HOST`` and swapped
  in with one ``renameat2(RENAME_EXCHANGE)``: at every moment the target holds the old or the
  new state, never neither. The old state is then removed. On a file system without rename
  flags (NFS and some parallel file systems) a new target is a stable link to a hidden version
  folder (``.NAME.v-PID@HOST.TOKEN``), switched to the next version in one ``rename``; a folder
  that is not such a link is renamed away first (``.NAME.old-PID@HOST``) and the next command
  that touches the target puts it back if the process was killed in between.
- Leftovers of a process that is gone are removed by the next command on the same target;
  those of a process still running (or on another host) are named in a one-line note.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import UserError

KINDS = ("run", "dataset", "export")
RUN_MARKER = Path("private") / "hpcstudy-run.json"
RUN_FORMAT = "hpcstudy-run"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>partial|old|v|link|scratch)-(?P<pid>\d+)"
                       r"(?:@(?P<host>[A-Za-z0-9_-]+))?(?:\.(?P<token>[0-9a-f]+))?$")
_NAME_MAX = 255
_SUFFIX_MAX = 56


# -- where a target may be ----------------------------------------------------------------------
def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _installation() -> list[Path]:
    """hpcstudy's package folders and, for a source checkout, the repository root."""
    import hpcstudy

    pkg = _real(Path(hpcstudy.__file__).parent)
    found = [pkg]
    try:
        import hpcstudy_kernels
        found.append(_real(Path(hpcstudy_kernels.__file__).parent))
    except ImportError:
        pass
    if (pkg.parent / "pyproject.toml").is_file():
        found.append(pkg.parent)
    return found


def _option(kind: str) -> str:
    return {"run": "--out", "dataset": "--out", "export": "DEST"}[kind]


def check_target(out: str | os.PathLike, *, kind: str, overwrite: bool = False,
                 reads: Iterable[str | os.PathLike | None] = (), option: str | None = None
                 ) -> Path:
    """Refuse (UserError) a folder that this command may not write; return it as given.

    ``reads`` are the files and folders the command reads (a path, or a pair of what it is and
    its path): the target may not be or contain any of them, nor lie inside a folder of them.
    Leftovers of interrupted commits on the target are tidied first.
    """
    if kind not in KINDS:
        raise ValueError(kind)
    opt = option or _option(kind)
    out = Path(out)
    if not str(out).strip():
        raise UserError(f"{opt} is empty", fix=f"give a new folder, e.g. {opt} results")
    if len(out.name.encode()) + _SUFFIX_MAX > _NAME_MAX:   # room for .NAME.partial-PID@HOST
        raise UserError(f"{opt} {str(out)[:60]}…: the folder name is longer than "
                        f"{_NAME_MAX - _SUFFIX_MAX} bytes", fix="choose a shorter name")
    real = _real(out)
    if out.is_symlink() and _version_of(out) is None:
        raise UserError(f"{opt} {out} is a symbolic link",
                        fix=f"give the folder it points to ({real}) or a new folder")
    for what, place, folder in _protected(reads):
        if real == place or real in place.parents:
            rel = "is" if real == place else "contains"
            raise UserError(f"{opt} {out} {rel} {what} {place}; replacing it would delete it",
                            fix=f"choose a new folder for {opt}"
                                + ("" if real == place else f" that does not hold {place}"))
        if folder and place in real.parents:
            raise UserError(f"{opt} {out} lies inside {what} {place}",
                            fix=f"choose a folder for {opt} outside {place}")
    holder = _inside_ours(real)
    if holder:
        raise UserError(f"{opt} {out} lies inside {holder[0]} {holder[1]}: its files would no "
                        "longer match what hpcstudy wrote there",
                        fix=f"choose a folder for {opt} outside {holder[1]}")
    tidy(out)
    if not os.path.lexists(out):
        return out
    if not out.is_dir():
        raise UserError(f"{opt} {out} exists and is not a folder", fix=f"choose a new {opt}")
    if (out / ".git").exists():
        raise UserError(f"{opt} {out} is a git work tree", fix=f"choose a new folder for {opt}")
    if kind == "export" or not overwrite:
        fix = f"choose a new {opt}" if kind == "export" else \
            f"choose a new {opt}, or pass --overwrite to replace an earlier {kind}'s output"
        raise UserError(f"{opt} {out} already exists", fix=fix)
    foreign = _not_written_by_us(out, kind)
    if foreign:
        raise UserError(f"{opt} {out} {foreign}; --overwrite replaces only what hpcstudy wrote",
                        fix=f"choose a new {opt}, or move your files out of {out}")
    return out


def _inside_ours(real: Path) -> tuple[str, Path] | None:
    """(what, folder) when ``real`` lies inside a run's folder or a dataset hpcstudy wrote:
    `synth --out data/bef/x` made the dataset fail `data verify` and refuse `ingest`, and a
    dataset under a run's tables/ held that run's export (outside tester, session 7)."""
    from ..registers.store import FORMAT, MANIFEST

    for folder in real.parents:
        if (folder / RUN_MARKER).is_file():
            return "the run", folder
        manifest = folder / MANIFEST
        if manifest.is_file():
            try:
                if json.loads(manifest.read_text()).get("format") == FORMAT:
                    return "the dataset", folder
            except (OSError, ValueError, AttributeError):
                pass
    return None


def _protected(reads) -> list[tuple[str, Path, bool]]:
    """(what, real path, whether a target inside it is refused too)."""
    found: list[tuple[str, Path, bool]] = []
    for r in reads:
        label, r = r if isinstance(r, tuple) else (None, r)
        if r is None or not str(r).strip():
            continue
        p = _real(r)
        folder = p.is_dir()
        found.append((label or ("the data" if folder else "the input"), p, folder))
    found.append(("the current folder", _real(os.getcwd()), False))
    home = os.environ.get("HOME")
    if home and home != "/":
        found.append(("the home folder", _real(home), False))
    for p in _installation():
        pkg = (p / "__init__.py").is_file()
        found.append(("the package" if pkg else "hpcstudy's repository", p, pkg))
    return found


def _not_written_by_us(out: Path, kind: str) -> str | None:
    """The first thing in ``out`` that hpcstudy did not write (or a missing marker), or None."""
    if not any(out.iterdir()):
        return None   # an empty folder: replacing it loses nothing
    if kind == "run":
        marker, listed = out / RUN_MARKER, set()
        try:
            doc = json.loads(marker.read_text())
            if doc.get("format") == RUN_FORMAT:
                listed = {f for f in doc["files"] if isinstance(f, str)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"has no run marker ({RUN_MARKER}): an earlier run did not write it"
        if not listed:
            return f"has no run marker ({RUN_MARKER}): an earlier run did not write it"
        listed.add(str(RUN_MARKER))
    else:
        from ..registers.store import FORMAT, MANIFEST

        try:
            doc = json.loads((out / MANIFEST).read_text())
            if doc.get("format") != FORMAT:
                return f"has a {MANIFEST} that is not an hpcstudy dataset's"
            listed = {f["path"] for r in doc["registers"].values() for f in r["files"]
                      if isinstance(f.get("path"), str)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"has no dataset manifest ({MANIFEST}): it is not an hpcstudy dataset"
        listed.add(MANIFEST)
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir() and not p.is_symlink():
            if not any(f.startswith(rel + "/") for f in listed):
                return f"holds {rel}/, which hpcstudy did not write"
            continue
        if rel not in listed:
            return f"holds {rel}, which hpcstudy did not write"
    return changed_since_written(out, kind)


def changed_since_written(out: Path, kind: str, kinds: tuple[str, ...] | None = None
                          ) -> str | None:
    """The first file hpcstudy wrote that has been edited since: a run's exported files
    against their SHA-256 in outputs.json (a note added to tables/cohort.md was replaced
    without a word), a dataset's files against their recorded size (hashing a dataset on
    every ingest would cost more than the edit it could find). ``kinds``: only a run's files
    of those kinds (what ``hpcstudy report`` replaces)."""
    import hashlib

    from .manifest import NAME, canonical

    if kind == "run":
        try:
            doc = json.loads((out / NAME).read_text())
            entries = [(e["path"], "sha256", e["sha256"]) for e in doc["files"]
                       if kinds is None or e.get("kind") in kinds]
        except (OSError, ValueError, KeyError, TypeError):
            return None   # no manifest: the marker alone vouches (an older or cut-short run)
        if doc.get("manifest_sha256") != hashlib.sha256(canonical(doc)).hexdigest():
            return f"holds {NAME}, changed since the run wrote it"
    else:
        from ..registers.store import MANIFEST

        try:
            doc = json.loads((out / MANIFEST).read_text())
            entries = [(f["path"], "bytes", f["bytes"]) for r in doc["registers"].values()
                       for f in r["files"] if "bytes" in f]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    for rel, how, want in entries:
        p = out / str(rel)
        if not p.is_file() or p.is_symlink():
            continue
        got = p.stat().st_size if how == "bytes" else \
            hashlib.sha256(p.read_bytes()).hexdigest()
        if got != want:
            return f"holds {rel}, changed since {'the run' if kind == 'run' else kind} wrote it"
    return None


def run_marker(staging: Path) -> None:
    """Write a run's marker: the list of files it wrote (the same bytes for the same run)."""
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                   if p.is_file() and p.relative_to(staging) != RUN_MARKER)
    (staging / "private").mkdir(mode=0o700, exist_ok=True)
    (staging / RUN_MARKER).write_text(json.dumps({"format": RUN_FORMAT, "files": files},
                                                 indent=1) + "\n")


# -- leftovers of interrupted commits -----------------------------------------------------------
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0])[:32] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _version_of(out: Path) -> Path | None:
    """The version folder ``out`` links to, when it is one of hpcstudy's stable links."""
    try:
        target = os.readlink(out)
    except OSError:
        return None
    m = _LEFTOVER.match(target)
    if "/" in target or not m or m["what"] != "v" or m["name"] != out.name:
        return None
    return out.parent / target


def leftover(out: Path, what: str) -> Path:
    """This process's name for a staging (``partial``) or old (``old``) folder beside ``out``."""
    return out.parent / f".{out.name}.{what}-{os.getpid()}@{_host()}"


def tidy(out: str | os.PathLike) -> None:
    """Clean the leftovers of interrupted commits on ``out`` whose process is gone; put an old
    state back where a commit was killed between its two renames; name the others."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        entries = list(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return
    mine, others = [], []
    current = _version_of(out)
    for e in entries:
        m = _LEFTOVER.match(e.name)
        if not m or m["name"] != out.name or e == current:
            continue
        pid, host = int(m["pid"]), m["host"]
        here = host is None or host == _host()
        if here and pid == os.getpid():
            continue                       # this process's own staging
        if here and not _alive(pid):
            mine.append((m["what"], e))
        else:
            others.append((pid, host, e))
    if not os.path.lexists(out):
        olds = [e for what, e in mine if what == "old"]
        if olds:   # killed between the two renames of a commit without exchange
            try:
                os.rename(olds[0], out)
            except OSError:
                pass   # another process (an MPI rank) put it back first
            mine = [(w, e) for w, e in mine if e != olds[0]]
    for _, e in mine:
        _remove(e)
    for pid, host, e in others:
        if e in _named:
            continue
        _named.add(e)
        print(f"hpcstudy: note: {e} is left by process {pid}"
              f"{' on ' + host if host else ''}, which may still be running; remove it once "
              "that process has ended", file=sys.stderr)


_named: set[Path] = set()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


# -- committing ---------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Rename with flags; False where the system or the file system cannot."""
    if os.environ.get("HPCSTUDY_TEST_NO_EXCHANGE"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(e, os.strerror(e), str(dst))


def _fault(step: str) -> None:
    """Die here, as a kill -9 would, when a test asks (HPCSTUDY_TEST_KILL_AT=step)."""
    if os.environ.get("HPCSTUDY_TEST_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _sync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(staging: Path, out: Path, replace: bool = True) -> None:
    """Put the finished ``staging`` folder at ``out`` in one step, then remove the old state.
    A rename the system refuses is one line and exit 1; ``out`` keeps its old state. Without
    ``replace`` (no --overwrite) an ``out`` that appeared meanwhile is kept: two runs started
    on one new --out both said done, and the first one's outputs were gone.

    Test hooks: ``HPCSTUDY_TEST_KILL_AT`` in staged, exchanged, moved-old, linked, removing;
    ``HPCSTUDY_TEST_NO_EXCHANGE`` takes the path of a file system without exchange."""
    try:
        _commit(staging, Path(out), replace)
    except OSError as e:
        err = UserError(f"cannot put {out} in place ({e.strerror or e}); it keeps its old state",
                        fix="choose a new folder, or pass --overwrite"
                        if e.errno == errno.EEXIST and not replace else
                        "check the file system (space, permissions, a mount point) and "
                        "run again")
        err.exit_code = 1   # an I/O failure, not bad input
        raise err from e


def _commit(staging: Path, out: Path, replace: bool = True) -> None:
    _fault("staged")
    if not os.path.lexists(out):
        if not _renameat2(staging, out, _RENAME_NOREPLACE):
            _link(staging, out)   # no rename flags here: a link the next commit can switch
        _sync_dir(out.parent)
        return
    if not replace:
        raise FileExistsError(errno.EEXIST, "another command wrote it while this one ran; "
                              "--overwrite was not given", str(out))
    if _version_of(out) is not None:
        old = _version_of(out)
        _link(staging, out)
        _fault("linked")
    elif _renameat2(staging, out, _RENAME_EXCHANGE):
        old = staging          # the exchange left the old state under the staging name
        _sync_dir(out.parent)
        _fault("exchanged")
    else:
        old = leftover(out, "old")
        os.rename(out, old)
        _fault("moved-old")
        try:
            os.rename(staging, out)
        except OSError:
            os.rename(old, out)
            raise
        _sync_dir(out.parent)
    _remove_slowly(old)


def _link(staging: Path, out: Path) -> None:
    """Make ``out`` a link to ``staging`` (renamed to a version folder) in one ``rename``."""
    version = out.parent / f".{out.name}.v-{os.getpid()}@{_host()}.{os.urandom(4).hex()}"
    os.rename(staging, version)
    tmp = leftover(out, "link")
    if os.path.lexists(tmp):
        tmp.unlink()
    os.symlink(version.name, tmp)
    if os.path.isdir(out) and not os.path.islink(out):
        tmp.unlink()
        raise FileExistsError(errno.EEXIST, "appeared while this command ran", str(out))
    os.replace(tmp, out)


def _remove_slowly(old: Path) -> None:
    if os.environ.get("HPCSTUDY_TEST_KILL_AT") == "removing":
        files = [p for p in old.rglob("*") if p.is_file()]
        if files:
            files[len(files) // 2].unlink()
        _fault("removing")
    _remove(old)
