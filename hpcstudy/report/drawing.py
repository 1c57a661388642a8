"""Who draws the report's figures: this process (:class:`Here`), or a separate Python process
(:class:`FigureProcess`) that a run starts before it reads any data.

matplotlib is pure Python holding the GIL: in a process of its own it imports while the
partitions compute and draws while this process lays out the page, on the other core. It is
given only what the page would draw here (rows of the exported, disclosure-checked files, by
plot name) and gives back SVG text; the page is the same bytes either way (``render`` puts each
figure where the page drew a placeholder, or lays the page out again in the rare case a figure
had nothing to draw). No figure process is forked from this threaded one: it is a fresh
``python -m hpcstudy.report.drawing``, which imports no data code.

    figures = FigureProcess.start()      # before the partitions: matplotlib imports there
    ...
    render(out, figures)                 # hpcstudy.report.render
    figures.close()
"""

from __future__ import annotations

import os
import pickle
import queue
import re
import secrets
import subprocess
import sys
import threading
from concurrent.futures import Future

from ..errors import CannotWrite

__all__ = ["FigureProcess", "Here", "inline"]


class Here:
    """Figures drawn in this process, when the page asks (``hpcstudy report``, the Python
    API's ``write_outputs``)."""

    def draw(self, name: str, *args, **kw) -> str | None:
        from . import figures as F

        return F.draw(getattr(F, name), *args, **kw)


class FigureFailed(CannotWrite):
    """The figure process stopped or could not draw: the run's outputs are not written."""


class FigureProcess:
    """A separate Python process drawing the report's figures (see the module docstring).

    ``submit(name, *args, **kw)`` returns a Future of ``figures.draw(figures.<name>, *args,
    **kw)``; figures are drawn one at a time, in the order asked. Should the process stop,
    every figure not yet drawn fails with :class:`FigureFailed` (one line, exit code 1);
    ``render`` draws the page here instead where it stopped before answering any.
    """

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._next = 0
        self.answered = 0   # figures it has answered (drawn or not)
        self._closed = False
        self._stopped: str | None = None
        self._stderr: list[bytes] = []
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._early: dict[bytes, Future] = {}   # figures asked before the page: by call
        self._threads = [threading.Thread(target=self._read, name="hpcstudy-figures",
                                          daemon=True),
                         threading.Thread(target=self._drain, name="hpcstudy-figures-stderr",
                                          daemon=True),
                         threading.Thread(target=self._write, name="hpcstudy-figures-input",
                                          daemon=True)]
        for t in self._threads:
            t.start()

    @classmethod
    def start(cls) -> FigureProcess | Here:
        """A figure process, importing matplotlib from now on; drawing here where no process
        can be started (the same figures, later)."""
        # this process's module path: hpcstudy found where it was found here (a notebook's
        # sys.path too)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    close_fds=True, env=env)
        except (OSError, ValueError):
            return Here()
        return cls(proc)

    def submit(self, name: str, *args, **kw) -> Future:
        f: Future = Future()
        job = pickle.dumps((name, args, kw), pickle.HIGHEST_PROTOCOL)   # (rows: plain data)
        with self._lock:
            if self._stopped is not None:
                f.set_exception(self._failure())
                return f
            seq = self._next
            self._next += 1
            self._pending[seq] = f
        # written by a thread of its own: a figure's rows fill the pipe while the process still
        # draws the one before, and the page is laid out meanwhile
        self._outbox.put(pickle.dumps((seq, job), pickle.HIGHEST_PROTOCOL))
        return f

    def early(self, name: str, *args, **kw) -> None:
        """Ask now for a figure the page is expected to draw later with exactly this call
        (:mod:`.ahead`); :meth:`taken` gives it to the page that makes the call."""
        key = call_key(name, args, kw)
        with self._lock:
            if key in self._early:
                return
        f = self.submit(name, *args, **kw)
        with self._lock:
            self._early.setdefault(key, f)

    def taken(self, key: bytes) -> Future | None:
        """The figure asked early by the call ``key`` (:func:`call_key`), once; None if none
        was."""
        with self._lock:
            return self._early.pop(key, None)

    def _write(self) -> None:
        while (job := self._outbox.get()) is not None:
            try:
                self.proc.stdin.write(job)
                self.proc.stdin.flush()
            except (OSError, ValueError):
                with self._lock:
                    self._stop_locked("its input was closed")
                return
        try:
            self.proc.stdin.close()   # the process exits once it has drawn what it was given
        except OSError:
            pass

    def draw(self, name: str, *args, **kw) -> str | None:
        return self.submit(name, *args, **kw).result()

    def _read(self) -> None:
        why = "it stopped"
        try:
            while True:
                seq, ok, value = pickle.load(self.proc.stdout)
                with self._lock:
                    f = self._pending.pop(seq)
                    self.answered += 1
                if ok:
                    f.set_result(value)
                else:
                    f.set_exception(FigureFailed(f"the report's figure process could not draw "
                                                 f"a figure ({value})",
                                                 fix="report the error with the study"))
        except EOFError:
            pass
        except Exception as e:   # noqa: BLE001 - a garbled reply: the process is not ours
            why = f"its reply was not a figure ({type(e).__name__})"
        try:   # its exit code and last words, for the one line the run ends with
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._threads[1].join(2)
        with self._lock:
            self._stop_locked(why)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self._stderr = (self._stderr + [line])[-20:]

    def _stop_locked(self, why: str) -> None:
        if self._stopped is None:
            self._stopped = why
        pending, self._pending = self._pending, {}
        for f in pending.values():
            f.set_exception(self._failure())

    def _failure(self) -> FigureFailed:
        code = self.proc.poll()
        last = next((ln.decode(errors="replace").strip() for ln in reversed(self._stderr)
                     if ln.strip()), "")
        said = [w for w in (None if self._stopped == "it stopped" else self._stopped,
                            None if code is None else f"exit code {code}", last[:200] or None)
                if w]
        return FigureFailed("the report's figure process stopped" +
                            (f" ({'; '.join(said)})" if said else "") +
                            ", so nothing was written",
                            fix="run the study again (a machine short of memory stops "
                                "processes)")

    def close(self) -> None:
        """End the process (it exits when its input closes); kill it if it does not, or at once
        if it was given nothing to draw (a run that stopped before its report). Once: a second
        call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._outbox.put(None)
        if self._next == 0:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:   # they end at the pipes' EOF, now the process has gone
            t.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()


class Placeholders:
    """The page's figures while the figure process draws them: ``draw`` returns a placeholder
    (an HTML comment no exported text can contain: a fresh random nonce) and the page is laid
    out around it; ``drawn`` waits for the SVGs."""

    def __init__(self, figures: FigureProcess):
        self.figures = figures
        self.nonce = secrets.token_hex(16)
        self.futures: dict[str, Future] = {}
        self.keys: dict[bytes, str] = {}

    def draw(self, name: str, *args, **kw) -> str:
        key = call_key(name, args, kw)
        if key not in self.keys:
            token = f"<!--hpcstudy-figure {self.nonce} {len(self.futures)}-->"
            self.keys[key] = token
            self.futures[token] = self.figures.taken(key) or \
                self.figures.submit(name, *args, **kw)
        return self.keys[key]

    def drawn(self) -> dict[str, str | None]:
        """Every placeholder's SVG (None: nothing to draw); raises what the process raised."""
        return {t: f.result() for t, f in self.futures.items()}

    def known(self, svgs: dict[str, str | None]):
        """A ``draw`` for laying the page out again: each figure already drawn, by its call."""
        by_key = {k: svgs[t] for k, t in self.keys.items()}

        def draw(name: str, *args, **kw):
            key = call_key(name, args, kw)
            if key in by_key:
                return by_key[key]
            return self.figures.draw(name, *args, **kw)

        return draw


def call_key(name: str, args: tuple, kw: dict) -> bytes:
    """One figure call, as bytes: two calls with the same key draw the same figure."""
    return pickle.dumps((name, args, sorted(kw.items())), pickle.HIGHEST_PROTOCOL)


def inline(svg: str, prefix: str, label: str) -> str:
    """The SVG made fit for inlining in HTML: no XML prolog, DOCTYPE, metadata or namespace
    URLs; every id prefixed (ids are unique across the page's figures); the size from CSS."""
    svg = re.sub(r"<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = re.sub(r'\s+version="1\.1"', "", svg)
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r'((?:xlink:)?href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}-'
                 f'{m.group(2)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    svg = re.sub(r'<svg\s+width="[^"]*"\s+height="[^"]*"',
                 f'<svg role="img" aria-label="{label}" class="figure"', svg, count=1)
    return svg.strip()


def _serve() -> None:
    """The figure process: import matplotlib now, then draw each figure asked on stdin and
    answer on stdout (pickled), until stdin closes."""
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)   # a stray print must not garble the replies
    requests = sys.stdin.buffer
    from . import figures as F

    # test hooks: stop at the figure numbered so (from 0), or give it nothing to draw
    die = os.environ.get("HPCSTUDY_TEST_FIGURES_EXIT")
    empty = os.environ.get("HPCSTUDY_TEST_FIGURES_NONE")
    while True:
        try:
            seq, job = pickle.load(requests)
        except EOFError:
            # every reply is flushed: no interpreter teardown (about 0.1 s with matplotlib
            # loaded) for the run's close() to wait for
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        name, args, kw = pickle.loads(job)
        if die is not None and seq >= int(die):
            os._exit(3)
        try:
            got = (seq, True, None if empty is not None and seq == int(empty) else
                   F.draw(getattr(F, name), *args, **kw))
        except Exception as e:   # noqa: BLE001 - the run says it in one line
            got = (seq, False, f"{type(e).__name__}: {e}")
        pickle.dump(got, reply, pickle.HIGHEST_PROTOCOL)
        reply.flush()


if __name__ == "__main__":
    _serve()
