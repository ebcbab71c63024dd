"""check: the gradient of a generated module against differences of its own loss.

    symgrad check SPEC.toml|MODULE.py [--method central|complex|directional|taylor]
                  [--tol T] [--seed S] [--directions K] [--time-limit SECONDS]

The module is untrusted (DESIGN, "The generated module"): its ``loss_and_grad`` is compared
with numbers computed from its ``loss`` alone, never with anything it says about itself.

**Isolation.**  A MODULE.py is imported in a separate process (symgrad.sandbox) that only
*evaluates*: ``loss`` and ``loss_and_grad`` at points this process chooses, sent back as
float64 numbers with a plain description of what the module returned.  Everything else is
decided here: whether a value is a real number of the right shape and dtype, the finite
differences, the tolerances, the table and the verdict.  The module can print, exit, hang,
fork or rewrite ``symgrad.check`` (or the sandbox's own evaluating code) in its own
process; it cannot reach these.  So a pass means: the module's gradient matches differences
of its own loss *as its process reported them* — it catches wrong gradients, and is no
proof against a module built to deceive (which could as well define a consistent loss).
Started as root, that process becomes ``nobody`` before the import (it cannot signal or
trace this one, and reads but cannot write root's files); on Linux it dies with this one
and is a subreaper, so what the module forks (setsid or not) is killed with it
(symgrad.sandbox.isolate, kill_descendants).  The process
runs under :data:`TIME_LIMIT` seconds for the whole check (then it and everything it
started are killed) and an address-space limit of :data:`MEMORY_LIMIT` bytes.  When no
report comes back (the process exited, died, timed out or sent garbage) the check fails
(exit 1) with one line saying what happened.  A module *object* passed to
:func:`check_module` (trusted: the caller imported it) and the module generated in memory
for a SPEC are served in-process by the same :class:`symgrad.sandbox.Session`.

For a SPEC the module is generated in memory and checked the same way; its loss is also
compared with the derivation's equations evaluated numerically (``Node.numeric``), and the
complex step, where it applies, differentiates the derivation rather than the module.

Methods (float64 throughout; data, parameters and directions drawn from ``--seed``):

* ``central``: every entry θ_j, by the five-point central difference
  (L(θ − 2h) − 8 L(θ − h) + 8 L(θ + h) − L(θ + 2h)) / 12h, truncation error O(h⁴), with
  h = 10⁻³ max(1, |θ_j|).  Where that disagrees, the entry is retried with h = 10⁻⁴ … 10⁻⁶
  (a kink of relu or |·| within 2h): a smaller step is further from kinks, a larger one is
  further from rounding; the entry passes if one of them agrees.
* ``complex``: ∂L/∂θ_j = Im L(θ + i h e_j) / h with h = 10⁻³⁰: no difference of nearly
  equal numbers, so the reference is exact to rounding.  Only for analytic losses (no relu,
  |·|, huber, l1 penalty); otherwise a note and central differences for the whole check.
* ``directional``: per parameter, K random unit directions v: the central difference
  (L(θ + h v) − L(θ − h v)) / 2h, h = 10⁻⁴ (five-point, then smaller steps, where that
  disagrees) against ⟨∇L, v⟩ — about 2K loss evaluations per parameter, whatever its size.
  A direction mixes every entry: one typical entry off by 1% moves ⟨∇L, v⟩ by ~1%/√size
  (10⁻⁴ relative for a 100×100 weight), an unusually small one by less; central
  differences are the test that names a single wrong entry.
* ``taylor``: per parameter, K random unit directions v: the remainder
  r(h) = |L(θ + h v) − L(θ) − h ⟨∇L, v⟩| must fall like h² (order 2); a wrong gradient
  leaves a first-order term, r ~ h (order 1).  No step size to tune.

**Size.**  Entry by entry (``central``, ``complex``) costs a few loss evaluations per entry,
each costing ~N × (number of parameters) multiply-adds.  When all entries together would
cost more than :data:`FULL_WORK`, every parameter with more than :data:`SAMPLE_ENTRIES`
entries is checked at a sample of them — the :data:`TOP_ENTRIES` largest |∂L/∂θ_j| claimed
and the rest drawn at random — plus K random directions (which mix every entry), and the
table says so ("central, 64 of 200,704 entries" and "directional, 8 directions").  Sizes are
bounded before anything is allocated (:data:`MAX_NUMBERS` for X, Y and the parameters
together).  On a terminal, progress is shown on stderr once a check takes over a second.

**Training mode** (batchnorm, dropout: DESIGN, "Layers beyond dense").  The loss checked is
the training-mode one, as ``loss_and_grad`` differentiates it: the batch statistics μ, σ²
(each over its layer type's axis: batchnorm's over the N rows) are part of the function, so a
difference of the loss moves them too; the dropout masks are held fixed.  For a SPEC they
are drawn from ``--seed`` (:func:`training_masks`: ``np.random.default_rng(seed)``, one
uniform matrix per dropout layer in layer order, kept where ≥ p), which the generated module
is given (``loss(…, seed=S)``, ``loss_and_grad(…, seed=S)``) and the derivation's equations
read as M_l — so the ``derivation`` row also checks that both draw the same masks.  A
MODULE.py is called with its defaults (training=True, seed=0).  Its ``BUFFER_SHAPES``
(batchnorm's running statistics) are taken from ``init_params`` and passed along in the
parameters' dict, never perturbed nor compared.  A note under the title says so.

**Domain.**  A module constant ``DOMAIN = "positive"`` (expression modules of functions like
``y log x``) makes the parameters uniform in [0.5, 1.5]; without it, a loss that is not
finite at the real starting point is tried at such a positive point, and the header says so.

Relative error (DESIGN): |a − n| / max(|a|, |n|, 10⁻¹²).  An entry also agrees when
|a − n| is within the difference's own rounding error (its *resolution*, ~ 12 ε |L| / h):
an entry far smaller than its neighbours (|∂L/∂θ_j| ~ 10⁻⁸) has no meaningful relative
error at any step; it is then compared absolutely, counted in a note, and left out of the
table's maximum.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sympy as sp

from symgrad.commands import command
from symgrad.errors import SymgradError
from symgrad.sandbox import MAGIC, Session, kill_descendants

__all__ = [
    "DEFAULT_TOL",
    "LOSS_TOL",
    "METHODS",
    "CheckReport",
    "Row",
    "check_module",
    "check_spec",
    "cmd_check",
]

METHODS = ("central", "complex", "directional", "taylor")
DEFAULT_TOL = {"central": 1e-6, "complex": 1e-12, "directional": 1e-6, "taylor": 1.8}
"""Max relative error per method; for taylor, the minimum observed order of the remainder."""

LOSS_TOL = 1e-10
"""Max relative difference of two evaluations of the same loss (module vs derivation)."""

TIME_LIMIT = 120.0
MAX_TIME_LIMIT = 86_400.0  # --time-limit: at most a day (poll()'s milliseconds, time's range)
"""Seconds a MODULE.py's process may take for the whole check (import included)."""

MEMORY_LIMIT = 4 << 30
"""Address space of a MODULE.py's process, in bytes (``resource.RLIMIT_AS``)."""

MAX_NUMBERS = 20_000_000
"""X, Y and the parameters together, in float64 numbers (160 MB): larger is refused."""

FULL_WORK = 1e10
"""Multiply-adds (entries × 4 evaluations × N × parameters) up to which every entry of
every parameter is checked; beyond it, large parameters are sampled."""

SAMPLE_ENTRIES = 64
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
TOP_ENTRIES = 8
PROGRESS_AFTER = 1.0  # seconds before progress is shown (on a terminal)

EPS = float(np.finfo(np.float64).eps)
FLOOR = 1e-12  # the denominator floor of the relative error (DESIGN)
STEPS = (1e-3, 1e-4, 1e-5, 1e-6)  # central: the first one used unless it disagrees
DIRECTIONAL_STEPS = STEPS[1:]  # a step along v moves a whole layer's pre-activations
COMPLEX_STEP = 1e-30
ULPS = 8  # rounding error of one loss evaluation, in units of ε |L|
SAMPLES = 64  # rows of random data
TAYLOR_H0 = 0.1
TAYLOR_HALVINGS = 24
TAYLOR_TAIL = 3  # orders of the smallest resolved steps that decide
BATCH = 512  # loss evaluations per request
MODULE_NAMES = ("INPUTS", "OUTPUTS", "PARAM_SHAPES", "loss", "loss_and_grad")


# ==========================================================================================
# The report
# ==========================================================================================


@dataclass(frozen=True)
class Row:
    """One line of the table: a parameter (or the loss value) and its verdict.

    ``error`` is the max relative error (for ``taylor``, the smallest observed order);
    ``worst`` names the entry (``[2, 3]``) or direction (``v3``) where it occurs;
    ``detail`` shows the values there when the row fails; ``coverage`` says what was
    compared when it was not every entry ("64 of 200,704 entries", "8 directions").
    """

    name: str
    shape: tuple[int, ...]
    error: float
    worst: str
    method: str
    ok: bool
    detail: str = ""
    below_resolution: int = 0  # entries compared absolutely (see the module docstring)
    smaller_steps: int = 0  # entries that needed a smaller step than the first (kinks)
    coverage: str = ""
    note: str = ""  # printed under the table (what a sampled check can miss)
    not_finite: bool = False  # the claimed gradient has an inf or nan: nothing to compare

    @property
    def error_text(self) -> str:
        if self.not_finite:
            return "not finite"
        if self.method == "taylor":
            return "—" if math.isnan(self.error) else f"order {self.error:.2f}"
        return "nan" if math.isnan(self.error) else f"{self.error:.1e}"

    @property
    def method_text(self) -> str:
        return f"{self.method}, {self.coverage}" if self.coverage else self.method

    @property
    def by_direction(self) -> bool:
        return self.worst.startswith("v")


@dataclass
class CheckReport:
    """The outcome of a check: ``rows`` per parameter, ``ok``, ``text()`` for people.

    ``failure`` says what happened when no report could be produced (the module's process
    exited, died or timed out); the check then failed."""

    target: str
    method: str  # the method used (central after a complex-step fallback)
    requested: str  # the method asked for
    tol: float
    seed: int
    samples: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failure: str = ""
    domain: str = ""  # "" (real) or why the parameters are positive
    not_finite: bool = False  # the loss is not finite at the check point (one row, FAIL)

    @property
    def ok(self) -> bool:
        return not self.failure and bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def row(self, name: str, method: str | None = None) -> Row:
        for r in self.rows:
            if r.name == name and (method is None or r.method == method):
                return r
        raise KeyError(name)

    def header(self) -> tuple[str, ...]:
        """The column titles, true to the rows: a Taylor row holds an order, the others a
        relative error; an entry or a direction is where the worst one is."""
        orders = {r.method == "taylor" for r in self.rows}
        error = ("min order" if orders == {True} else
                 "min order / rel. error" if orders == {True, False} else "max rel. error")
        kinds = {r.by_direction for r in self.rows if r.worst != "—"}
        worst = ("worst direction" if kinds == {True} else
                 "worst entry / direction" if kinds == {True, False} else "worst entry")
        return ("parameter", "shape", error, worst, "method", "result")

    def text(self) -> str:
        if self.failure:
            return f"symgrad check {self.target}: FAILED: {self.failure}\n"
        tol = f"min order {self.tol:g}" if self.method == "taylor" else f"tol {self.tol:g}"
        domain = f", positive inputs ({self.domain})" if self.domain else ""
        lines = [
            f"symgrad check {self.target}: {_METHOD_TITLES[self.method]}, {tol}, "
            f"seed {self.seed}, N = {self.samples}, float64{domain}"
        ]
        lines += [f"note: {n}" for n in self.notes]
        header = self.header()
        cells = self.cells()
        widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
        for c in [header, *cells]:
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        for r in self.rows:
            if r.detail:
                lines.append(f"  {r.detail}")
        for r in self.rows:
            if r.note:
                lines.append(f"note: {r.note}")
            one, many = ("direction", "directions") if r.by_direction else ("entry", "entries")
            if r.below_resolution:
                lines.append(
                    f"note: {r.name}: "
                    + (f"1 {one} is too small for a relative comparison; it agrees"
                       if r.below_resolution == 1 else
                       f"{r.below_resolution} {many} are too small for a relative comparison; "
                       "they agree")
                    + " within the reference's rounding error (not counted in the max)"
                )
            if r.smaller_steps:
                lines.append(
                    f"note: {r.name}: {r.smaller_steps} "
                    f"{one if r.smaller_steps == 1 else many} needed a smaller step than "
                    f"the first (a kink nearby)"
                )
        if self.ok:
            lines.append(f"ok: {len(self.rows)} of {len(self.rows)} checks passed")
        elif self.not_finite:
            lines.append("FAILED: the loss is not finite at the check point; no gradient was "
                         "checked")
        else:
            names = ", ".join(dict.fromkeys(r.name for r in self.failed))
            lines.append(f"FAILED: {names} ({len(self.failed)} of {len(self.rows)} checks)")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.text()

    def cells(self) -> list[tuple[str, ...]]:
        """The table's rows as text, under :meth:`header`."""
        mixed = "/" in self.header()[2]
        return [
            (r.name, _shape_text(r.shape),
             r.error_text if not mixed or r.method == "taylor" else f"rel. {r.error_text}",
             r.worst, r.method_text, "pass" if r.ok else "FAIL")
            for r in self.rows
        ]

    # -- display (symgrad.display): Jupyter, and a one-line repr --------------------------

    def _parts(self) -> tuple[str, list[str], str]:
        """(title, notes, summary): the lines of ``text()`` around its table, so the
        display says what the text says."""
        lines = self.text().splitlines()
        if self.failure or not self.rows:
            return lines[0], lines[1:-1], lines[-1] if len(lines) > 1 else ""
        table = 1 + len(self.notes) + 1 + len(self.rows)  # title, notes, header, rows
        notes = lines[1:1 + len(self.notes)] + [line.strip() for line in lines[table:-1]]
        return lines[0], notes, lines[-1]

    def _repr_html_(self) -> str:
        from symgrad import display as h

        kind = "pass" if self.ok else "fail"
        title, notes, summary = self._parts()
        body = []
        if self.rows:
            marks = ["pass" if r.ok else "fail" for r in self.rows]
            body.append(h.table(self.header(), self.cells(), marks))
        body += [f"<p>{h.escape(n)}</p>" for n in notes]
        if summary:
            body.append(f"<p><strong>{h.escape(summary)}</strong></p>")
        badge = h.badge(kind, "pass" if self.ok else "FAIL")
        return h.panel(kind, f"{badge} {h.escape(title)}", *body, what="check")

    def _repr_markdown_(self) -> str:
        from symgrad import display as h

        title, notes, summary = self._parts()
        out = [f"**{'pass' if self.ok else 'FAIL'}** — {h.md_escape(title)}", ""]
        if self.rows:
            out += [h.md_table(self.header(), self.cells()), ""]
        out += [f"- {h.md_escape(n)}" for n in notes]
        if summary:
            out += ["", f"**{h.md_escape(summary)}**"]
        return "\n".join(out) + "\n"

    def __repr__(self) -> str:
        from symgrad.display import short_repr

        return short_repr("CheckReport", f"{self.target}:", self.method,
                          self._parts()[2] or (f"FAILED: {self.failure}" if self.failure
                                               else "ok" if self.ok else "FAILED"))


_METHOD_TITLES = {
    "central": "central differences",
    "complex": "complex step",
    "directional": "directional derivatives",
    "taylor": "Taylor remainder test",
}


def _shape_text(shape: tuple[int, ...]) -> str:
    return "()" if not shape else "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _index_text(shape: tuple[int, ...], flat: int) -> str:
    return "[" + ", ".join(map(str, np.unravel_index(flat, shape))) + "]" if shape else "[]"


# ==========================================================================================
# Evaluators: the module in a separate process, or (trusted) in this one
# ==========================================================================================


class _NoReport(Exception):
    """The module's process gave no report (exited, died, timed out, sent garbage)."""


def _clean(text: Any, limit: int = 200) -> str:
    """A string from the module's process, made one printable line of bounded length."""
    text = "".join(c if c.isprintable() else "?" for c in " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Local:
    """A trusted module object, served in this process by the same Session."""

    def __init__(self, module: ModuleType):
        self.session = Session(module, MAX_NUMBERS)

    def call(self, op: str, header: dict | None = None, arrays: dict | None = None,
             what: str = "") -> tuple[dict, dict[str, np.ndarray]]:
        arrays = {k: np.array(v, dtype=np.float64) for k, v in (arrays or {}).items()}
        reply, out = self.session.handle({"op": op, **(header or {})}, arrays)
        return reply, {k: np.array(v, dtype=np.float64) for k, v in out.items()}

    def close(self) -> None:
        pass


def _signal_name(number: int) -> str:
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def _ready(fd: int, events: int, seconds: float) -> bool:
    """Whether ``fd`` is ready (or closed at the other end) within ``seconds``; poll, not
    select, which fails for descriptors past 1024."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0, int(seconds * 1000) + 1)))


class _Isolated:
    """``python -m symgrad.sandbox MODULE.py`` in its own session, under a deadline."""

    def __init__(self, path: Path, where: str, time_limit: float, memory_limit: int):
        self.where, self.time_limit = where, time_limit
        self.deadline = time.monotonic() + time_limit
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        for name in THREAD_VARIABLES:  # small products (N rows): one BLAS thread is as fast,
            env.setdefault(name, "1")  # and does not collapse when the cores are busy
        debug = bool(os.environ.get("SYMGRAD_DEBUG"))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "symgrad.sandbox", str(path.resolve()),
                 str(int(memory_limit)), str(MAX_NUMBERS), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=None if debug else subprocess.DEVNULL, env=env,
                start_new_session=True, close_fds=True)
        except OSError as e:
            raise _NoReport(f"could not start the checking process ({e}); no gradient was "
                            "checked") from None
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.doing = "import"
        hello = self._receive()[0]
        if "import_error" in hello:
            self.close()
            raise SymgradError(where, _clean(hello["import_error"]))
        if hello.get("ready") is not True:
            self._malformed()
        self.doing = ""

    # -- the conversation -----------------------------------------------------------------

    def call(self, op: str, header: dict | None = None, arrays: dict | None = None,
             what: str = "") -> tuple[dict, dict[str, np.ndarray]]:
        self.doing = what or op
        arrays = arrays or {}
        head = {"op": op, **(header or {}),
                "arrays": [[k, list(np.shape(a))] for k, a in arrays.items()]}
        text = json.dumps(head).encode()
        data = [MAGIC, len(text).to_bytes(8, "big"), text]
        data += [np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays.values()]
        self._write(b"".join(data))
        return self._receive()

    def _write(self, data: bytes) -> None:
        """All of ``data`` to the process, or out of time (a stopped process never reads)."""
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            left = self.deadline - time.monotonic()
            if left <= 0 or not _ready(fd, select.POLLOUT, left):
                self._timed_out()
            try:
                view = view[os.write(fd, view[: 1 << 16]):]
            except BlockingIOError:
                continue
            except OSError:  # BrokenPipeError: it is gone
                self._died()

    def _read(self, n: int) -> bytes:
        fd = self.proc.stdout.fileno()
        parts, got = [], 0
        while got < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._timed_out()
            if not _ready(fd, select.POLLIN, min(left, 0.25)):
                if self.proc.poll() is not None:  # gone, while a fork holds the pipe open
                    self._died()
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                self._died()
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _receive(self) -> tuple[dict, dict[str, np.ndarray]]:
        if self._read(4) != MAGIC:
            self._malformed()
        size = int.from_bytes(self._read(8), "big")
        if size > 64 << 20:
            self._malformed()
        try:
            header = json.loads(self._read(size))
            shapes = [(str(k), tuple(int(n) for n in s)) for k, s in header.pop("arrays", [])]
            if not isinstance(header, dict) or any(n < 0 for _, s in shapes for n in s):
                raise ValueError
        except (ValueError, TypeError, RecursionError, AttributeError):
            self._malformed()
        if sum(math.prod(s) for _, s in shapes) > 4 * MAX_NUMBERS:
            self._malformed()
        arrays = {}
        for key, shape in shapes:
            raw = self._read(8 * math.prod(shape))
            arrays[key] = np.frombuffer(raw, dtype="<f8").reshape(shape).astype(np.float64)
        return header, arrays

    # -- the ways it ends without a report ------------------------------------------------

    def _during(self) -> str:
        return "during import" if self.doing == "import" else f"while {self.doing}"

    def _ending(self) -> str:
        return ("no gradient was checked" if self.doing == "import"
                else "the check did not finish")

    def _died(self):
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        during = self._during()
        how = (f"closed its output {during}" if code is None else
               f"exited {during} with status {code}" if code >= 0 else
               f"was killed by {_signal_name(-code)} {during}")
        raise _NoReport(f"module {how}; {self._ending()}")

    def _timed_out(self):
        self.close()
        raise _NoReport(f"module did not answer within the time limit of {self.time_limit:g} s "
                        f"({self._during()}); it was stopped and {self._ending()}")

    def _malformed(self):
        self.close()
        raise _NoReport(f"module's process sent a malformed reply {self._during()}; "
                        f"{self._ending()}")

    def close(self) -> None:
        """Ask the process to quit, then kill its whole session (what it forked too)."""
        proc = self.proc
        if proc.poll() is None:
            try:
                text = json.dumps({"op": "quit"}).encode()
                os.write(proc.stdin.fileno(), MAGIC + len(text).to_bytes(8, "big") + text)
                proc.wait(timeout=0.5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:  # still the subreaper of all it started (setsid or not)
            kill_descendants(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the pgid is its pid
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


# ==========================================================================================
# The problem: a loss, its claimed gradient, a point and data
# ==========================================================================================


class _Progress:
    """One live line on stderr (a terminal only), once the check has taken over a second."""

    def __init__(self, start: float, stream=None):
        self.start = start
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = 0
        self.last = 0.0

    def __call__(self, text: str) -> None:
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.start < PROGRESS_AFTER or now - self.last < 0.1:
            return
        self.last = now
        line = f"symgrad check: {text} ({now - self.start:.1f} s)"
        self.stream.write("\r" + line.ljust(self.shown))
        self.stream.flush()
        self.shown = len(line)

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.stream.flush()
            self.shown = 0


@dataclass
class _Claim:
    """What loss_and_grad returned for one parameter: its description, and the values as
    float64 when they were real numbers."""

    info: dict[str, Any]
    values: np.ndarray | None


@dataclass
class Problem:
    """What every method needs: the module's ``loss`` at points chosen here (through an
    evaluator), the gradient its ``loss_and_grad`` claims at ``params`` (for data X, Y),
    and for a spec's complex step the derivation's loss at complex parameters."""

    where: str
    params: dict[str, np.ndarray]
    X: np.ndarray
    Y: np.ndarray
    evaluator: Any
    grads: dict[str, _Claim] = field(default_factory=dict)
    complex_loss: Callable[[dict[str, np.ndarray]], complex] | None = None
    module_complex: bool = False  # the complex step through the module's own loss
    rows: list[Row] = field(default_factory=list)  # the loss-value rows
    notes: list[str] = field(default_factory=list)
    domain: str = ""
    buffers: dict[str, np.ndarray] = field(default_factory=dict)  # passed along, not perturbed
    not_finite: bool = False  # the loss is not finite at the check point: nothing compared
    progress: Callable[[str], None] = lambda text: None
    _directions: int = 0
    _vectors: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return self.X.shape[0]

    @property
    def size(self) -> int:
        return sum(v.size for v in self.params.values())

    def losses(self, points: list[tuple[str, str, int, float]]) -> np.ndarray:
        """The module's loss at base + t e_j (``entry``, j) or base + t v (``direction``, id)."""
        out = np.empty(len(points))
        for start in range(0, len(points), BATCH):
            chunk = points[start:start + BATCH]
            reply, arrays = self.evaluator.call("losses", {"points": chunk}, what="evaluating loss")
            values = self._values(reply, arrays, len(chunk))
            for i, info in enumerate(reply["kinds"]):
                _check_real(self.where, "loss", info, values[i])
            out[start:start + len(chunk)] = values[:, 0]
        return out

    def complex_losses(self, points: list[tuple[str, str, int, float]]) -> np.ndarray:
        """Im L(base + i h e_j) or Im L(base + i h v), by the derivation or the module."""
        if self.complex_loss is not None:
            out = np.empty(len(points))
            for i, (name, kind, index, h) in enumerate(points):
                params = {k: v.astype(np.complex128) for k, v in self.params.items()}
                if kind == "entry":
                    params[name].reshape(-1)[index] += 1j * h
                else:
                    params[name] = params[name] + 1j * h * self._vectors[index]
                out[i] = self.complex_loss(params).imag
            return out
        out = np.empty(len(points))
        for start in range(0, len(points), BATCH):
            chunk = points[start:start + BATCH]
            reply, arrays = self.evaluator.call("losses", {"points": chunk, "complex": True},
                                                what="evaluating loss at complex parameters")
            values = self._values(reply, arrays, len(chunk))
            for info in reply["kinds"]:
                if not (info.get("type") == "complex"
                        or str(info.get("dtype", "")).startswith("complex")) or info.get("size") != 1:
                    raise SymgradError(self.where, "loss returned a real number at complex "
                                       "parameters")
            out[start:start + len(chunk)] = values[:, 1]
        return out

    def _values(self, reply: dict, arrays: dict, n: int) -> np.ndarray:
        if "raised" in reply:
            raise SymgradError(self.where, _clean(reply["raised"]))
        values = arrays.get("values")
        kinds = reply.get("kinds")
        if values is None or values.shape != (n, 2) or not isinstance(kinds, list) \
                or len(kinds) != n or not all(isinstance(k, dict) for k in kinds):
            raise _NoReport("module's process sent a malformed reply while evaluating loss; "
                            "the check did not finish")
        return values

    def direction(self, name: str, v: np.ndarray) -> int:
        """Send a direction for ``name`` once; its id for ``losses``."""
        self._directions += 1
        self._vectors[self._directions] = v
        self.evaluator.call("direction", {"id": self._directions, "name": name}, {"v": v},
                            what="receiving a direction")
        return self._directions

    def loss_at_base(self) -> float:
        name = next(iter(self.params))
        return float(self.losses([(name, "entry", 0, 0.0)])[0])


def _check_real(where: str, what: str, info: dict, number: Any) -> None:
    """A loss is a real number: a Python int or float, or a numpy real scalar or size-1
    array; complex numbers, booleans, strings, lists are refused (bad input)."""
    kind, dtype = info.get("type"), str(info.get("dtype", ""))
    text = _clean(info.get("repr", "?"), 60)
    if kind in ("int", "float") or (kind in ("numpy", "ndarray") and info.get("size") == 1
                                    and dtype[:3] in ("flo", "int", "uin")):
        return
    if kind == "complex" or dtype.startswith("complex"):
        raise SymgradError(where, f"{what} returned {text}, a complex number; a loss is real")
    raise SymgradError(where, f"{what} returned {text}, not a number")


def _dict(value: Any) -> dict:
    """A reply's part that should be a dict (a hostile process may send anything)."""
    return value if isinstance(value, dict) else {}


def _decode(value: Any) -> Any:
    """The Python value of sandbox.plain()'s JSON form (an opaque stand-in for anything
    else a hostile process sends)."""
    try:
        return _decode_plain(value)
    except (TypeError, ValueError, AttributeError, RecursionError):
        return _Opaque("?")


def _decode_plain(value: Any) -> Any:
    if not isinstance(value, dict) or len(value) != 1:
        return _Opaque("?")
    (kind, v), = value.items()
    if kind in ("int", "bool", "float", "str"):
        return {"int": int, "bool": bool, "float": float, "str": str}[kind](v)
    if kind == "list":
        return [_decode_plain(x) for x in v]
    if kind == "tuple":
        return tuple(_decode_plain(x) for x in v)
    if kind == "dict":
        out = {}
        for k, x in v:
            key = _decode_plain(k)
            out[key if isinstance(key, str | int | float | bool) else repr(key)] = _decode_plain(x)
        return out
    return _Opaque(_clean(v, 60))


class _Opaque:
    """A value the module holds that is not plain data: only its repr travels."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= 1


@dataclass(frozen=True)
class _Interface:
    inputs: int
    outputs: int
    shapes: dict[str, tuple[int, ...]]
    init: bool
    domain: str | None  # None when the module does not say
    buffers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # BUFFER_SHAPES
    extended: bool = False  # the module has BUFFER_SHAPES (the interface of the new layers)


def _interface(evaluator, where: str, samples: int) -> _Interface:
    """INPUTS, OUTPUTS, PARAM_SHAPES (and DOMAIN) of an untrusted module, validated, and
    the sizes bounded before anything is allocated."""
    reply, _ = evaluator.call("interface", what="reading the module's constants")
    try:
        present, callable_ = dict(reply["present"]), dict(reply["callable"])
    except (KeyError, TypeError, ValueError):
        raise _NoReport("module's process sent a malformed reply; no gradient was checked") from None
    missing = [name for name in MODULE_NAMES if not present.get(name)]
    if missing:
        raise SymgradError(where, f"not a symgrad module: no {', '.join(missing)}")
    for name in ("loss", "loss_and_grad"):
        if not callable_.get(name):
            raise SymgradError(where, f"not a symgrad module: {name} is not a function")
    values = {name: _decode(reply.get(name)) for name in ("INPUTS", "OUTPUTS", "PARAM_SHAPES")}
    for name in ("INPUTS", "OUTPUTS"):
        if not _positive_int(values[name]):
            raise SymgradError(where, f"not a symgrad module: {name} must be a positive integer, "
                               f"not {_short(values[name])}")
    raw = values["PARAM_SHAPES"]
    if not (isinstance(raw, dict) and raw and all(
        isinstance(name, str) and isinstance(shape, tuple | list) and shape
        and all(_positive_int(n) for n in shape) for name, shape in raw.items()
    )):
        raise SymgradError(where, "not a symgrad module: PARAM_SHAPES must map parameter names "
                           "to shapes (tuples of positive integers)")
    shapes = {name: tuple(int(n) for n in shape) for name, shape in raw.items()}
    buffers = _buffer_shapes(reply, present, where, shapes)
    inputs, outputs = int(values["INPUTS"]), int(values["OUTPUTS"])
    total = sum(math.prod(s) for s in [*shapes.values(), *buffers.values()])
    numbers = samples * (inputs + outputs) + total
    if numbers > MAX_NUMBERS:
        raise SymgradError(where, f"too large to check: X and Y ({samples} samples × "
                           f"{inputs:,} inputs and {outputs:,} outputs) and {total:,} parameters "
                           f"are {numbers:,} numbers; the limit is {MAX_NUMBERS:,}")
    domain = None
    if present.get("DOMAIN"):
        domain = _decode(reply.get("DOMAIN"))
        if domain not in ("positive", "real"):
            raise SymgradError(where, f"DOMAIN must be 'positive' or 'real', not {_short(domain)}")
    return _Interface(inputs, outputs, shapes, bool(callable_.get("init_params")), domain,
                      buffers, bool(present.get("BUFFER_SHAPES")))


def _buffer_shapes(reply: dict, present: dict, where: str,
                   shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """BUFFER_SHAPES of a module (DESIGN, "Layers beyond dense"), validated: values that
    ``init_params`` returns beside the parameters (batchnorm's running statistics) and that
    ``loss`` receives in the same dict, but that are not differentiated: {} without it."""
    if not present.get("BUFFER_SHAPES"):
        return {}
    raw = _decode(reply.get("BUFFER_SHAPES"))
    if not (isinstance(raw, dict) and all(
        isinstance(name, str) and isinstance(shape, tuple | list) and shape
        and all(_positive_int(n) for n in shape) for name, shape in raw.items()
    )):
        raise SymgradError(where, "not a symgrad module: BUFFER_SHAPES must map buffer names "
                           "to shapes (tuples of positive integers)")
    both = sorted(set(raw) & set(shapes))
    if both:
        raise SymgradError(where, f"not a symgrad module: {', '.join(both)} is in both "
                           "PARAM_SHAPES and BUFFER_SHAPES; a buffer is not a parameter")
    return {name: tuple(int(n) for n in shape) for name, shape in raw.items()}


def _initial(evaluator, where: str, iface: _Interface, seed: int,
             rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(parameters, buffers): init_params(seed) if the module has it, else random weights;
    biases moved off zero (a generic point, not the symmetric start).  The buffers
    (BUFFER_SHAPES) are init_params' own, unchanged (ones without init_params)."""
    params: dict[str, np.ndarray] = {}
    buffers: dict[str, np.ndarray] = {name: np.ones(shape) for name, shape in iface.buffers.items()}
    shapes = {**iface.shapes, **iface.buffers}
    if iface.init:
        reply, arrays = evaluator.call("init_params", {"seed": seed}, what="calling init_params")
        if "raised" in reply:
            raise SymgradError(where, _clean(reply["raised"]))
        value = _dict(reply.get("value"))
        if value.get("type") != "dict" or not isinstance(value.get("items"), dict):
            raise SymgradError(where, f"init_params returned {_clean(value.get('repr', '?'), 40)}, "
                               "not a dict of arrays")
        items = value["items"]
        for name, shape in shapes.items():
            if name not in items:
                raise SymgradError(where, f"init_params returned no {name}, which PARAM_SHAPES "
                                   "lists")
            info = _dict(items[name])
            data = arrays.get(str(info.get("data")))
            if data is None:
                raise SymgradError(where, f"init_params returned {name} = "
                                   f"{_clean(info.get('repr', '?'), 40)}, not an array of real "
                                   "numbers")
            if data.shape != shape:
                raise SymgradError(where, f"init_params returned {name} of shape "
                                   f"{_shape_text(data.shape)}; PARAM_SHAPES says "
                                   f"{_shape_text(shape)}")
            (buffers if name in iface.buffers else params)[name] = data
    for name, shape in iface.shapes.items():
        if name not in params:
            scale = 1 / math.sqrt(shape[0]) if len(shape) > 1 else 0.5
            params[name] = scale * rng.standard_normal(shape)
        elif len(shape) == 1 or not np.any(params[name]):
            params[name] = params[name] + 0.1 * rng.standard_normal(shape)
    return params, buffers


def _positive(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 2])  # a stream apart from the data's and directions'
    return {name: rng.uniform(0.5, 1.5, shape) for name, shape in shapes.items()}


def _targets(kind: str, n: int, outputs: int, rng: np.random.Generator) -> np.ndarray:
    """Y for a loss: one-hot rows (cross-entropy, and modules, whose loss is unknown),
    0/1 labels (binary cross-entropy) or real targets (regression)."""
    if kind == "binary_cross_entropy":
        return rng.integers(0, 2, size=(n, outputs)).astype(np.float64)
    if kind in ("cross_entropy", "one-hot"):
        return np.eye(outputs)[rng.integers(0, outputs, size=n)]
    return rng.standard_normal((n, outputs))


def _setup(evaluator, X, Y, params, buffers=None, keywords=None) -> None:
    """The data, the base point and what else every loss call gets: the buffers (in the
    parameters' dict, never perturbed) and the keywords (a spec's ``seed``)."""
    buffers = buffers or {}
    arrays = {"X": X, "Y": Y, **{f"p:{k}": v for k, v in params.items()},
              **{f"b:{k}": v for k, v in buffers.items()}}
    evaluator.call("setup", {"names": list(params), "buffers": list(buffers),
                             "keywords": dict(keywords or {})}, arrays,
                   what="receiving the data")


def _problem(evaluator, where: str, seed: int, samples: int, targets: str = "one-hot",
             progress: Callable[[str], None] | None = None,
             keywords: dict[str, int] | None = None) -> Problem:
    """Random data and parameters (seeded) and the module's claims there; ``keywords`` go
    to every call of loss and loss_and_grad (none: their defaults)."""
    iface = _interface(evaluator, where, samples)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, iface.inputs))
    Y = _targets(targets, samples, iface.outputs, rng)
    domain = ""
    if iface.domain == "positive":
        params, domain = _positive(iface.shapes, seed), "DOMAIN = 'positive'"
        buffers = {name: np.ones(shape) for name, shape in iface.buffers.items()}
    else:
        params, buffers = _initial(evaluator, where, iface, seed, rng)
    problem = Problem(where, params, X, Y, evaluator, domain=domain, buffers=buffers)
    if iface.extended and keywords is None:
        problem.notes.append(_module_training_note(buffers))
    if progress is not None:
        problem.progress = progress

    def setup(params: dict[str, np.ndarray]) -> None:
        _setup(evaluator, X, Y, params, buffers, keywords)

    setup(params)
    L0 = problem.loss_at_base()
    tried = ""
    if iface.domain is None and not math.isfinite(L0):
        positive = _positive(iface.shapes, seed)
        setup(positive)
        problem.params = positive
        if math.isfinite(problem.loss_at_base()):
            problem.domain = f"the loss is {L0} at a real point"
            L0 = problem.loss_at_base()
        else:  # no better: back to the real point
            problem.params = params
            setup(params)
            tried = ", and at a point of positive parameters"
    if not math.isfinite(L0):  # no difference means anything there: its own verdict
        problem.not_finite = True
        problem.rows.append(Row(
            "loss", (), math.nan, "—", "loss()", False,
            f"loss: loss() is {L0} at the check point (seed {seed}{tried}); no gradient was "
            "compared (a different --seed, or parameters where the loss is finite)"))
        return problem

    reply, arrays = evaluator.call("loss_and_grad", what="calling loss_and_grad")
    if "raised" in reply:
        raise SymgradError(where, _clean(reply["raised"]))
    out = _dict(reply.get("value"))
    if out.get("type") != "pair":
        raise SymgradError(where, f"loss_and_grad returned {_clean(out.get('repr', '?'), 40)}, "
                           "not (loss, gradients)")
    try:
        re, im, info = out["loss"]
        value = float(re)
        grads = {str(k): _Claim(_dict(v), arrays.get(str(_dict(v).get("data"))))
                 for k, v in dict(out["grads"]).items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _NoReport("module's process sent a malformed reply while calling loss_and_grad; "
                        "the check did not finish") from None
    _check_real(where, "loss_and_grad", _dict(info), value)
    problem.grads = grads
    problem.rows.append(_value_row("loss", value, problem.loss_at_base(), "loss()",
                                   "loss_and_grad's loss", "loss()'s"))
    return problem


def _module_training_note(buffers: dict[str, np.ndarray]) -> str:
    """The note of a module with the extended interface (BUFFER_SHAPES): what its loss is a
    function of."""
    note = ("training mode: loss and loss_and_grad are called with their defaults "
            "(training=True, seed=0), so any dropout masks are held fixed by that seed and "
            "batch statistics are differentiated through")
    if buffers:
        note += f"; the buffers {', '.join(buffers)} are passed along, not perturbed"
    return note


def _training_note(spec, graph, seed: int) -> str:
    """One line: what a spec's training-mode loss holds fixed (the dropout masks, by the
    seed) and what it differentiates through (the batch statistics); "" when neither."""
    parts = []
    if graph.masks:
        names = ", ".join(m.name for m, _ in graph.masks)
        parts.append(f"dropout masks held fixed by the seed ({names} drawn from seed {seed}, "
                     f"as loss(…, seed={seed}) draws them)")
    norms = [note for l, layer in enumerate(spec.layers, 1) if (note := layer.kind.check_note(l))]
    if norms:
        parts.append(f"batch statistics μ, σ² differentiated through ({', '.join(norms)})")
    return "training mode: " + "; ".join(parts) if parts else ""


def _value_row(name: str, a: float, n: float, method: str, a_name: str, n_name: str) -> Row:
    """Two evaluations of the loss value, which must agree to LOSS_TOL."""
    rel = _rel(a, n)
    ok = bool(rel <= LOSS_TOL)
    detail = "" if ok else f"{name}: {a_name} {a:.15g} vs {n_name} {n:.15g}"
    return Row(name, (), rel, "—", method, ok, detail)


# ==========================================================================================
# Loading targets
# ==========================================================================================


def _resolve(target: str | Path) -> tuple[str, Path]:
    path = Path(target)
    where = str(target)
    if os.path.isdir(path):
        raise SymgradError(where, "is a directory; give a spec (.toml) or a module (.py)")
    if path.suffix == ".py":
        from symgrad.files import check_readable

        check_readable(path, where, what="module")  # regular, bounded: before it is imported
        return "module", path
    if path.suffix == ".toml":
        return "spec", path  # load_spec reads it through the one read path
    if not os.path.exists(path):
        raise SymgradError(where, "no such file")
    raise SymgradError(where, "not a spec (.toml) or a module (.py)")


# ==========================================================================================
# The numbers: finite differences with their resolution
# ==========================================================================================


def _rel(a: float, n: float) -> float:
    """|a − n| / max(|a|, |n|, 10⁻¹²); nan when either is not finite."""
    if not (math.isfinite(a) and math.isfinite(n)):
        return math.nan
    return abs(a - n) / max(abs(a), abs(n), FLOOR)


def _agree(a: float, n: float, tol: float, resolution: float) -> tuple[bool, bool]:
    """(a and n agree, relatively or within n's resolution; the relative test decided)."""
    if not (math.isfinite(a) and math.isfinite(n)):
        return False, False
    diff = abs(a - n)
    if diff <= tol * max(abs(a), abs(n), FLOOR):
        return True, True
    return diff <= resolution, False


@dataclass
class _Entry:
    """One compared number: the reference n, the relative error against the claim, the
    verdict, whether the relative test decided it (not the resolution) and whether it
    needed a step below STEPS[0]."""

    n: float
    rel: float
    ok: bool
    resolved: bool
    retried: bool = False


def _stencils(h: float, two_point: bool) -> list[list[float]]:
    """The steps evaluated at one h, in the order they are needed."""
    return [[h, -h], [2 * h, -2 * h]] if two_point else [[h, -h, 2 * h, -2 * h]]


def _differentiate(f: Callable[[np.ndarray], np.ndarray], a: float, tol: float, scale: float,
                   steps: tuple[float, ...] = STEPS, two_point: bool = False) -> _Entry:
    """f′(0) by central differences, against the claim a; ``f`` maps an array of steps to
    the values there.

    At each step h (× scale) the five-point difference
    (8 (f(h) − f(−h)) − (f(2h) − f(−2h))) / 12h — with ``two_point``, first the cheaper
    (f(h) − f(−h)) / 2h and the five-point one only if that disagrees; if the estimates
    disagree, the next, smaller step (a kink within 2h).  Each estimate carries its
    rounding error ULPS ε max|f| Σ|coefficients|.  The first estimate that agrees decides;
    when none does, the closest one is reported (the reading most favourable to the claim).
    """
    best: _Entry | None = None
    for i, h in enumerate(steps):
        h *= scale
        values: list[float] = []
        for stencil in _stencils(h, two_point):
            values += [float(x) for x in f(np.array(stencil))]
            if len(values) == 2:
                fp1, fm1 = values
                n = (fp1 - fm1) / (2 * h)
                resolution = ULPS * EPS * max(abs(fp1), abs(fm1)) / h
            else:
                fp1, fm1, fp2, fm2 = values
                n = (8 * (fp1 - fm1) - (fp2 - fm2)) / (12 * h)
                resolution = ULPS * EPS * max(abs(fp1), abs(fm1), abs(fp2), abs(fm2)) * 1.5 / h
            ok, resolved = _agree(a, n, tol, resolution)
            entry = _Entry(n, _rel(a, n), ok, resolved, i > 0)
            if ok:
                return entry
            if best is None or not abs(a - best.n) <= abs(a - n):
                best = entry
    assert best is not None
    return best


def _entry_row(name: str, shape, a: np.ndarray, entries: list[_Entry], method: str,
               a_name: str, n_name: str, label: Callable[[int], str] | None = None,
               coverage: str = "") -> Row:
    """One row from per-entry results: the max relative error over the entries that were
    compared relatively (or failed), where it occurs, and the values there if it fails.
    ``a`` holds the claims of the compared entries, ``label(k)`` names the k-th."""
    label = label or (lambda j: _index_text(shape, j))
    counted = [j for j, e in enumerate(entries) if e.resolved or not e.ok]
    worst = max(counted, key=lambda j: (math.isnan(entries[j].rel), entries[j].rel if
                                        not math.isnan(entries[j].rel) else 0.0), default=None)
    failing = [j for j, e in enumerate(entries) if not e.ok]
    detail = ""
    if failing:
        assert worst is not None
        unit = "entries" if label(worst).startswith("[") else "directions"
        more = f" ({len(failing)} {unit} fail)" if len(failing) > 1 else ""
        where = label(worst)
        where = f"{name}{where}" if where.startswith("[") else f"{name} along {where}"
        detail = (f"{where}: {a_name} {a[worst]:.10g} vs {n_name} "
                  f"{entries[worst].n:.10g}{more}")
    return Row(
        name, shape, 0.0 if worst is None else entries[worst].rel,
        "—" if worst is None else label(worst), method, not failing, detail,
        below_resolution=sum(1 for e in entries if e.ok and not e.resolved),
        smaller_steps=sum(1 for e in entries if e.ok and e.retried),
        coverage=coverage,
    )


def _claimed(problem: Problem, name: str, shape: tuple[int, ...],
             method: str) -> tuple[np.ndarray | None, Row | None]:
    """The module's gradient for ``name`` as a flat float64 array, or a failing row: it
    must be a numpy array of float64 (the parameters' dtype, DESIGN) and their shape."""

    def fail(why: str) -> tuple[None, Row]:
        return None, Row(name, shape, math.nan, "—", method, False, f"{name}: {why}")

    claim = problem.grads.get(name)
    if claim is None:
        return fail("loss_and_grad returned no gradient for it")
    info = claim.info
    kind, dtype = info.get("type"), _clean(info.get("dtype", ""), 20)
    shape_info = info.get("shape")
    got = (tuple(shape_info) if isinstance(shape_info, list) and len(shape_info) <= 32
           and all(isinstance(n, int) for n in shape_info) else None)
    if kind in ("list", "tuple") and dtype:
        return fail(f"loss_and_grad returned a Python {kind} (of {dtype} values), not a numpy "
                    "array of float64 like the parameter")
    if kind != "ndarray" or got is None:
        return fail(f"loss_and_grad returned {_clean(info.get('repr', '?'), 40)}, not an array")
    if dtype.startswith("complex"):
        return fail(f"loss_and_grad returned {dtype} values; the gradient of a real loss is "
                    "real (float64, like the parameter)")
    if dtype != "float64":
        return fail(f"loss_and_grad returned {dtype} values; the parameter is float64, and "
                    "a gradient has the parameter's dtype")
    if got != shape:
        return fail(f"loss_and_grad's gradient has the shape {_shape_text(got)}, "
                    f"the parameter {_shape_text(shape)}")
    if claim.values is None or claim.values.shape != shape:
        return fail(f"loss_and_grad returned {_clean(info.get('repr', '?'), 40)}, not an array")
    flat = claim.values.reshape(-1)
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:  # whatever the differences say there (they may be inf too): nothing compares
        j = int(bad[0])
        more = f" ({bad.size} entries are not finite)" if bad.size > 1 else ""
        return None, Row(name, shape, math.nan, _index_text(shape, j), method, False,
                         f"{name}{_index_text(shape, j)}: the gradient is not finite "
                         f"(loss_and_grad {flat[j]:g}){more}", not_finite=True)
    return flat, None


# ------------------------------------------------------------------------------------------
# The methods
# ------------------------------------------------------------------------------------------


def _large(size: int, samples: int) -> bool:
    """Whether checking all ``size`` entries (about 4 loss evaluations each, each ~ N ×
    size multiply-adds) would cost more than FULL_WORK."""
    return 4 * samples * size * size > FULL_WORK


def _plan(problem: Problem) -> dict[str, bool]:
    """Which parameters are sampled (True) rather than checked entry by entry."""
    large = _large(problem.size, problem.samples)
    return {name: large and theta.size > SAMPLE_ENTRIES for name, theta in problem.params.items()}


def _sample(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    """SAMPLE_ENTRIES flat indices: the TOP_ENTRIES largest |a_j| (non-finite ones first)
    and the rest at random, in increasing order."""
    size = a.size
    magnitude = np.where(np.isfinite(a), np.abs(a), np.inf)
    chosen = list(np.argsort(-magnitude, kind="stable")[:TOP_ENTRIES])
    taken = set(int(j) for j in chosen)
    for j in rng.choice(size, size=min(size, SAMPLE_ENTRIES), replace=False):
        if len(chosen) >= SAMPLE_ENTRIES:
            break
        if int(j) not in taken:
            taken.add(int(j))
            chosen.append(j)
    return np.sort(np.array(chosen, dtype=np.int64))


def _coverage(indices: np.ndarray | None, size: int) -> str:
    return "" if indices is None else f"{len(indices)} of {size:,} entries"


def _finite_differences(problem: Problem, name: str, indices: np.ndarray, a: np.ndarray,
                        tol: float, what: str) -> list[_Entry]:
    """Central differences at the given entries: the first step of every entry in batches
    of requests, then the adaptive retries (smaller steps) entry by entry."""
    flat = problem.params[name].reshape(-1)
    scales = [max(1.0, abs(float(flat[j]))) for j in indices]
    caches: list[dict[float, float]] = [{} for _ in indices]
    chunk = max(1, BATCH // 4)
    for start in range(0, len(indices), chunk):
        points, owners = [], []
        for k in range(start, min(start + chunk, len(indices))):
            for t in _stencils(STEPS[0] * scales[k], False)[0]:
                points.append((name, "entry", int(indices[k]), t))
                owners.append((k, t))
        for (k, t), value in zip(owners, problem.losses(points), strict=True):
            caches[k][t] = float(value)
        problem.progress(f"{name}: {what} {min(start + chunk, len(indices))} of {len(indices)}")
    entries = []
    for k, j in enumerate(indices):
        cache = caches[k]

        def f(ts: np.ndarray, j=int(j), cache=cache) -> np.ndarray:
            missing = [float(t) for t in ts if float(t) not in cache]
            if missing:
                points = [(name, "entry", j, t) for t in missing]
                cache.update(zip(missing, map(float, problem.losses(points)), strict=True))
            return np.array([cache[float(t)] for t in ts])

        entries.append(_differentiate(f, float(a[j]), tol, scales[k]))
    return entries


def _central(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    rows = []
    plan = _plan(problem)
    for name, theta in problem.params.items():
        a, bad = _claimed(problem, name, theta.shape, "central")
        if bad:
            rows.append(bad)
            continue
        indices = _sample(rng, a) if plan[name] else None
        chosen = np.arange(theta.size) if indices is None else indices
        entries = _finite_differences(problem, name, chosen, a, tol, "entry")
        rows.append(_entry_row(name, theta.shape, a[chosen], entries, "central",
                               "loss_and_grad", "finite differences",
                               label=lambda k, c=chosen, s=theta.shape: _index_text(s, int(c[k])),
                               coverage=_coverage(indices, theta.size)))
        if indices is not None:
            rows.append(replace(
                _directional_row(problem, name, a, tol, rng, directions,
                                 coverage=f"{directions} directions"),
                note=_sampling_note(name, theta.size, indices, a, tol, directions)))
    return rows


def _sampling_note(name: str, size: int, indices: np.ndarray, a: np.ndarray, tol: float,
                   directions: int) -> str:
    """What a sampled check can miss.  An entry outside the sample, off by e, moves
    ⟨∇L, v⟩ by e v_j, v_j ~ 1/√size, against a tolerance of tol |⟨∇L, v⟩| ~ tol ‖∇L‖₂/√size:
    the directions see it once e is a few times tol ‖∇L‖₂ (3×: measured on 784-256-128-64-10,
    where 1.7× passed and 17× failed)."""
    floor = 3 * tol * float(np.linalg.norm(a))
    top = min(TOP_ENTRIES, len(indices))
    return (f"{name}: {len(indices)} of {size:,} entries compared (the {top} largest claimed, "
            f"{len(indices) - top} at random) and {directions} random directions; one wrong "
            f"entry outside them is caught when it is off by more than about {floor:.1g} "
            f"(3 tol ‖∂L/∂{name}‖₂; its largest entry is "
            f"{float(np.max(np.abs(a), initial=0.0)):.1g})")


def _complex(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    rows = []
    plan = _plan(problem)
    for name, theta in problem.params.items():
        a, bad = _claimed(problem, name, theta.shape, "complex")
        if bad:
            rows.append(bad)
            continue
        indices = _sample(rng, a) if plan[name] else None
        chosen = np.arange(theta.size) if indices is None else indices
        n = np.empty(len(chosen))
        for start in range(0, len(chosen), BATCH):
            part = chosen[start:start + BATCH]
            n[start:start + len(part)] = problem.complex_losses(
                [(name, "entry", int(j), COMPLEX_STEP) for j in part]) / COMPLEX_STEP
            problem.progress(f"{name}: entry {start + len(part)} of {len(chosen)}")
        # Im L and the module's gradient are both sums with rounding ~ ε Σ|terms|;
        # the largest entry of the parameter's gradient stands for Σ|terms|.
        resolution = 64 * EPS * float(np.max(np.abs(a), initial=0.0))
        entries = []
        for k, j in enumerate(chosen):
            ok, resolved = _agree(float(a[j]), float(n[k]), tol, resolution)
            entries.append(_Entry(float(n[k]), _rel(float(a[j]), float(n[k])), ok, resolved))
        rows.append(_entry_row(name, theta.shape, a[chosen], entries, "complex",
                               "loss_and_grad", "complex step",
                               label=lambda k, c=chosen, s=theta.shape: _index_text(s, int(c[k])),
                               coverage=_coverage(indices, theta.size)))
        if indices is not None:
            entries, claims = [], []
            for _ in range(directions):
                v = _unit(rng, theta.shape)
                claim = float(a @ v.reshape(-1))
                k = problem.direction(name, v)
                ref = float(problem.complex_losses([(name, "direction", k, COMPLEX_STEP)])[0]
                            / COMPLEX_STEP)
                res = 64 * EPS * float(np.abs(a) @ np.abs(v.reshape(-1)))
                ok, resolved = _agree(claim, ref, tol, res)
                entries.append(_Entry(ref, _rel(claim, ref), ok, resolved))
                claims.append(claim)
            rows.append(replace(
                _entry_row(name, theta.shape, np.array(claims), entries, "complex",
                           "⟨loss_and_grad, v⟩", "complex step", label=lambda k: f"v{k + 1}",
                           coverage=f"{directions} directions"),
                note=_sampling_note(name, theta.size, indices, a, tol, directions)))
    return rows


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v)


def _along(problem: Problem, name: str, v: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """t ↦ L(θ + t v) for an array of t (v sent to the evaluator once)."""
    k = problem.direction(name, v)

    def f(ts: np.ndarray) -> np.ndarray:
        return problem.losses([(name, "direction", k, float(t)) for t in ts])

    return f


def _directional_row(problem: Problem, name: str, a: np.ndarray, tol: float, rng,
                     directions: int, coverage: str = "") -> Row:
    theta = problem.params[name]
    entries, claims = [], []
    for k in range(directions):
        v = _unit(rng, theta.shape)
        claim = float(a @ v.reshape(-1))
        entries.append(_differentiate(_along(problem, name, v), claim, tol, 1.0,
                                      DIRECTIONAL_STEPS, two_point=True))
        claims.append(claim)
        problem.progress(f"{name}: direction {k + 1} of {directions}")
    return _entry_row(name, theta.shape, np.array(claims), entries, "directional",
                      "⟨loss_and_grad, v⟩", "finite differences",
                      label=lambda k: f"v{k + 1}", coverage=coverage)


def _directional(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    rows = []
    for name, theta in problem.params.items():
        a, bad = _claimed(problem, name, theta.shape, "directional")
        rows.append(bad if bad else _directional_row(problem, name, a, tol, rng, directions))
    return rows


def _taylor(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    L0 = problem.loss_at_base()
    floor = 1e3 * ULPS * EPS * max(abs(L0), 1e-300)  # remainders below this are rounding
    rows = []
    for name, theta in problem.params.items():
        a, bad = _claimed(problem, name, theta.shape, "taylor")
        if bad:
            rows.append(bad)
            continue
        worst_order, worst_k, linear = math.inf, 0, 0
        trace = ""
        for k in range(directions):
            v = _unit(rng, theta.shape)
            claim = float(a @ v.reshape(-1))
            f = _along(problem, name, v)
            order, text = _observed_order(f, L0, claim, floor)
            problem.progress(f"{name}: direction {k + 1} of {directions}")
            if math.isnan(order):
                linear += 1
                continue
            if order < worst_order:
                worst_order, worst_k, trace = order, k, text
        if math.isinf(worst_order):  # linear along every direction
            worst_order = math.nan
        ok = math.isnan(worst_order) or worst_order >= tol
        rows.append(Row(name, theta.shape, worst_order, f"v{worst_k + 1}", "taylor", ok,
                        "" if ok else f"{name} along v{worst_k + 1}: {trace}"))
        if linear:
            problem.notes.append(
                f"{name}: along {linear} of {directions} directions the remainder is at "
                "rounding level for every step (the loss is linear there); nothing to fit"
            )
    return rows


def _observed_order(f: Callable[[np.ndarray], np.ndarray], L0: float, claim: float,
                    floor: float) -> tuple[float, str]:
    """The order p of r(h) = |f(h) − f(0) − h claim| ~ hᵖ over the smallest steps whose
    remainder is above rounding; nan when no remainder is.  All steps are evaluated in
    one request; the scan stops after two successive remainders at rounding level."""
    steps = TAYLOR_H0 / 2.0 ** np.arange(TAYLOR_HALVINGS + 1)
    values = f(steps)
    hs, rs = [], []
    below = 0
    for h, value in zip(steps, values, strict=True):
        r = abs(float(value) - L0 - float(h) * claim)  # nan/inf (overflow) never pairs
        hs.append(float(h))
        rs.append(r)
        below = below + 1 if r < floor else 0
        if below == 2:
            break
    orders = [
        math.log2(rs[i] / rs[i + 1])
        for i in range(len(rs) - 1)
        if rs[i + 1] >= floor and rs[i] >= floor and math.isfinite(rs[i])
    ]
    if not orders:
        if all(r < floor for r in rs):
            return math.nan, ""
        return 0.0, "no two successive remainders above rounding and finite"
    tail = orders[-TAYLOR_TAIL:]
    order = float(np.median(tail))
    last = [i for i in range(len(rs) - 1) if rs[i + 1] >= floor][-1]
    text = (f"remainder {rs[last]:.3g} at h = {hs[last]:.3g}, {rs[last + 1]:.3g} at "
            f"h = {hs[last + 1]:.3g} (order {order:.2f}; a correct gradient gives 2)")
    return order, text


_METHODS = {"central": _central, "complex": _complex, "directional": _directional,
            "taylor": _taylor}


# ==========================================================================================
# The derivation, evaluated numerically (real and complex)
# ==========================================================================================


def _complex_sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _first_order(f, df):
    """Extend a real function to x + iy with tiny y (the complex step): f(x) + i y f′(x),
    exact to O(y²) — for functions numpy cannot take at complex arguments."""

    def g(z):
        z = np.asarray(z)
        if not np.iscomplexobj(z):
            return f(z)
        return f(z.real) + 1j * z.imag * df(z.real)

    return g


_real_erf = np.vectorize(math.erf, otypes=[float])
_COMPLEX_FUNCTIONS = {
    "sigmoid": _complex_sigmoid,
    "softplus": _first_order(lambda x: np.logaddexp(0.0, x), lambda x: _complex_sigmoid(x)),
    "erf": _first_order(_real_erf, lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x)),
}


@lru_cache(maxsize=128)
def _complex_lambdified(expr: sp.Expr, symbols: tuple[sp.Symbol, ...]):
    return sp.lambdify(symbols, expr, modules=[_COMPLEX_FUNCTIONS, "numpy"])


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b; for complex operands as real products of the parts."""
    if not np.iscomplexobj(b):
        return a @ b if not np.iscomplexobj(a) else a.real @ b + 1j * (a.imag @ b)
    if not np.iscomplexobj(a):
        return a @ b.real + 1j * (a @ b.imag)
    return (a.real @ b.real - a.imag @ b.imag) + 1j * (a.real @ b.imag + a.imag @ b.real)


def training_masks(graph, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The dropout masks of one training-mode evaluation at ``seed``, as a generated module's
    ``loss(params, X, Y, seed=seed)`` and ``loss_and_grad`` draw them: one generator
    ``np.random.default_rng(seed)``, one uniform N×n matrix per dropout layer in layer order,
    an entry kept (1.0) where it is at least p — so with probability 1 − p — and dropped
    (0.0) elsewhere.  Held fixed, they make the loss a function of the parameters alone."""
    from symgrad.ops import N, _size

    rng = np.random.default_rng(seed)
    sizes = {N: samples, **graph.sizes()}
    out = {}
    for mask, p in graph.masks:
        shape = tuple(_size(d, sizes) for d in mask.shape)
        out[mask.name] = (rng.random(shape) >= p).astype(np.float64)
    return out


def _derivation_env(derivation, params: dict[str, np.ndarray], X, Y, seed: int = 0) -> dict:
    """The values a derivation's equations read: data, sizes (N and every width n_l), the
    penalties' λ, the parameters as matrices (a vector as a 1×n row) and the dropout masks
    of ``seed`` (:func:`training_masks`)."""
    from symgrad.ops import L1, L2, N

    spec, graph = derivation.spec, derivation.graph
    channels = int(sp.sympify(graph.data[0].shape[1]).xreplace(graph.sizes()))
    env: dict[Any, Any] = {"X": X.reshape(-1, channels),  # an image batch: its (N·H·W, C) map
                           "Y": Y, N: X.shape[0], L1: spec.l1, L2: spec.l2}
    env.update(graph.sizes())
    for name, value in params.items():  # a conv kernel (kh, kw, C, F): the graph's (kh·kw·C, F)
        env[name] = value.reshape(1, -1) if value.ndim == 1 else value.reshape(-1, value.shape[-1])
    env.update(training_masks(graph, X.shape[0], seed))
    return env


def _derivation_loss(derivation, params, X, Y, seed: int = 0) -> float:
    """The loss by the derivation's forward equations, ``Node.numeric`` each (training mode:
    batch statistics, the dropout masks of ``seed``)."""
    env = _derivation_env(derivation, params, X, Y, seed)
    with np.errstate(all="ignore"):
        for eq in derivation.forward:
            env[eq.target.name] = eq.rhs.numeric(env)
    return float(np.asarray(env[derivation.graph.loss.name]).reshape(()))


def _derivation_complex_loss(derivation, X, Y,
                             seed: int = 0) -> Callable[[dict[str, np.ndarray]], complex]:
    """The loss by the derivation's forward equations at complex parameters.

    Products, elementwise maps, softmax and the mean loss are evaluated here (σ, softplus
    and erf through complex-safe forms; softmax shifted by the real part of the row
    maximum; products as real products of the real and imaginary parts, which BLAS does
    faster than complex ones at these sizes); every other node by its own ``numeric``."""
    from symgrad.activations import X as X_SYM
    from symgrad.losses import YHAT
    from symgrad.losses import Y as Y_SYM
    from symgrad.ops import BiasAdd, Elementwise, MatMul, MeanLoss, Softmax

    def loss(params: dict[str, np.ndarray]) -> complex:
        env = _derivation_env(derivation, params, X, Y, seed)
        for eq in derivation.forward:
            rhs = eq.rhs
            if isinstance(rhs, MatMul):
                value = _matmul(rhs.a.numeric(env), rhs.b.numeric(env))
            elif isinstance(rhs, BiasAdd) and isinstance(rhs.a, MatMul):
                value = _matmul(rhs.a.a.numeric(env), rhs.a.b.numeric(env)) + rhs.b.numeric(env)
            elif isinstance(rhs, Elementwise):
                z = rhs.x.numeric(env)
                value = np.broadcast_to(_complex_lambdified(rhs.fn.expr, (X_SYM,))(z), z.shape)
            elif isinstance(rhs, Softmax):
                z = rhs.x.numeric(env)
                e = np.exp(z - z.real.max(axis=1, keepdims=True))
                value = e / e.sum(axis=1, keepdims=True)
            elif isinstance(rhs, MeanLoss):
                yh, y = rhs.yhat.numeric(env), rhs.y.numeric(env)
                per = _complex_lambdified(rhs.loss.expr, (YHAT, Y_SYM))(yh, y)
                value = np.array([[np.sum(np.broadcast_to(per, yh.shape)) / yh.shape[0]]])
            else:
                value = rhs.numeric(env)
            env[eq.target.name] = value
        return complex(np.asarray(env[derivation.graph.loss.name]).reshape(()))

    return loss


def _not_analytic(spec) -> str:
    """Why the complex step does not apply to ``spec`` ("" when it does)."""
    for l, layer in enumerate(spec.layers, 1):
        if not layer.fn.analytic:
            return f"{layer.fn.name} (layer {l}) is not analytic"
    if not spec.loss_fn.analytic:
        return f"the loss {spec.loss_fn.name} is not analytic"
    if spec.l1:
        return "the l1 penalty λ₁ Σ|W| is not analytic"
    return ""




# ==========================================================================================
# The API
# ==========================================================================================


def check_spec(spec, method: str = "central", tol: float | None = None, seed: int = 0,
               directions: int = 8, samples: int = SAMPLES, *,
               time_limit: float | None = None) -> CheckReport:
    """Generate the module of ``spec`` (a :class:`~symgrad.spec.Spec` or a TOML path) in
    memory and check it as :func:`check_module` does; also compare its loss with the
    derivation's forward equations evaluated numerically (a ``loss`` row, method
    ``derivation``).  The complex step, where the spec is analytic, differentiates the
    derivation's equations at complex parameters.  With ``time_limit`` the generated module
    is evaluated in a separate process under it, as a MODULE.py is."""
    from symgrad.codegen import generate_source, load_module
    from symgrad.derive import derive
    from symgrad.spec import load_spec

    start = time.perf_counter()
    _options(method, tol, seed, directions, samples, time_limit)
    if isinstance(spec, str | Path):
        kind, path = _resolve(spec)
        if kind != "spec":
            raise SymgradError(str(spec), "not a spec (.toml); check_module checks modules")
        spec = load_spec(path)
    derivation = derive(spec)
    source = generate_source(derivation)
    module = load_module(source)
    kind = "custom" if spec.loss_expr is not None else spec.loss_fn.name
    progress = _Progress(start)
    size = sum(math.prod(s) for s in module.PARAM_SHAPES.values())
    evaluator: Any = None
    scratch = None
    try:
        if _large(size, samples) or time_limit is not None:  # as a MODULE.py: a deadline
            scratch = tempfile.TemporaryDirectory(prefix="symgrad-check-")
            path = Path(scratch.name) / f"{spec.name}.py"
            path.write_text(source, encoding="utf-8")
            evaluator = _Isolated(path, str(spec.source),
                                  TIME_LIMIT if time_limit is None else time_limit, MEMORY_LIMIT)
        else:
            evaluator = _Local(module)
        graph = derivation.graph
        problem = _problem(evaluator, spec.source, seed, samples, targets=kind,
                           progress=progress,
                           keywords={"seed": seed} if graph.masks else {})
        note = _training_note(spec, graph, seed)
        if note:
            problem.notes.insert(0, note)
        if not problem.not_finite:
            reference = _derivation_loss(derivation, problem.params, problem.X, problem.Y,
                                         seed)
            problem.rows.append(_value_row("loss", problem.loss_at_base(), reference,
                                           "derivation", "the module's loss",
                                           "the derivation's"))
        if method == "complex" and not problem.not_finite:
            reason = _not_analytic(spec)
            if reason:
                problem.notes.append(_fallback(reason, tol))
            else:
                problem.complex_loss = _derivation_complex_loss(derivation, problem.X,
                                                                problem.Y, seed)
        return _run(problem, method, tol, seed, directions, start)
    except _NoReport as e:
        return _no_report(str(spec.source), e, method, tol, seed, samples, start)
    finally:
        progress.done()
        if evaluator is not None:
            evaluator.close()
        if scratch is not None:
            scratch.cleanup()


def check_module(module_or_path: ModuleType | str | Path, method: str = "central",
                 tol: float | None = None, seed: int = 0, directions: int = 8,
                 samples: int = SAMPLES, *, time_limit: float | None = None,
                 memory_limit: int | None = None) -> CheckReport:
    """Check an untrusted module (a path or an imported module): its ``loss_and_grad``
    against differences of its own ``loss``.  Sizes come from INPUTS, OUTPUTS and
    PARAM_SHAPES, parameters from ``init_params(seed)`` when it has one; X is standard
    normal and Y one-hot rows (valid targets for every built-in loss).

    A path is imported in a separate process, under ``time_limit`` seconds for the whole
    check (default :data:`TIME_LIMIT`) and ``memory_limit`` bytes of address space (default
    :data:`MEMORY_LIMIT`); when it gives no report the returned report has ``failure`` set
    (and ``ok`` false).  A module object is trusted and evaluated in this process."""
    start = time.perf_counter()
    _options(method, tol, seed, directions, samples, time_limit)
    progress = _Progress(start)
    if isinstance(module_or_path, ModuleType):
        where = getattr(module_or_path, "__file__", None) or module_or_path.__name__
        evaluator: Any = _Local(module_or_path)
    else:
        kind, path = _resolve(module_or_path)
        if kind != "module":
            raise SymgradError(str(module_or_path), "not a module (.py); check_spec checks specs")
        where = str(module_or_path)
        evaluator = None
    try:
        if evaluator is None:
            evaluator = _Isolated(path, where, TIME_LIMIT if time_limit is None else time_limit,
                                  MEMORY_LIMIT if memory_limit is None else memory_limit)
        problem = _problem(evaluator, where, seed, samples, progress=progress)
        if method == "complex" and not problem.not_finite:
            problem.module_complex = True
            reason = _module_complex_reason(problem)
            if reason:
                problem.notes.append(_fallback(reason, tol))
                problem.module_complex = False
            else:
                problem.notes.append("complex step through the module's own loss, which is "
                                     "assumed analytic (no relu, |·|, max)")
        return _run(problem, method, tol, seed, directions, start)
    except _NoReport as e:
        return _no_report(where, e, method, tol, seed, samples, start)
    finally:
        progress.done()
        if evaluator is not None:
            evaluator.close()


def _no_report(where: str, e: Exception, method: str, tol: float | None, seed: int,
               samples: int, start: float) -> CheckReport:
    """The report of a check whose module gave no answer (died, timed out, exited)."""
    report = CheckReport(where, method, method, DEFAULT_TOL[method] if tol is None else tol,
                         seed, samples, failure=str(e))
    report.seconds = time.perf_counter() - start
    return report


def _options(method: str, tol: float | None, seed: int, directions: int, samples: int,
             time_limit: float | None = None) -> None:
    if method not in METHODS:
        raise SymgradError("check", f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if tol is not None and not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise SymgradError("check: --tol", f"must be a positive number, not {tol!r}")
    if not isinstance(seed, int) or seed < 0:
        raise SymgradError("check: --seed", f"must be a non-negative integer, not {seed!r}")
    if not isinstance(directions, int) or not 1 <= directions <= 10_000:
        raise SymgradError("check: --directions", f"must be between 1 and 10000, not {directions!r}")
    if not isinstance(samples, int) or not 1 <= samples <= 100_000:
        raise SymgradError("check: samples", f"must be between 1 and 100000, not {samples!r}")
    if time_limit is not None and not (isinstance(time_limit, int | float)
                                       and not isinstance(time_limit, bool)
                                       and 0 < time_limit <= MAX_TIME_LIMIT):
        raise SymgradError("check: --time-limit", f"must be a number of seconds in "
                           f"(0, {MAX_TIME_LIMIT:g}], not {time_limit!r}")


def _fallback(reason: str, tol: float | None) -> str:
    note = f"complex step does not apply: {reason}; central differences are used for the whole check"
    if tol is not None:
        note += f" (with your tol {tol:g}; their default is {DEFAULT_TOL['central']:g})"
    return note


def _module_complex_reason(problem: Problem) -> str:
    """Why the module's loss cannot carry the complex step ("" when it can): it raises,
    or drops the imaginary part (a generated module returns ``float(L)``)."""
    name = next(iter(problem.params))
    try:
        value = problem.complex_losses([(name, "entry", 0, COMPLEX_STEP)])[0]
    except SymgradError as e:  # the module's loss may refuse complex input
        return f"the module's {e.what}"
    if not np.isfinite(value):
        return "the module's loss is not finite at complex parameters"
    return ""


def _run(problem: Problem, method: str, tol: float | None, seed: int, directions: int,
         start: float) -> CheckReport:
    complex_ok = problem.complex_loss is not None or problem.module_complex
    used = "central" if method == "complex" and not complex_ok else method
    tol = DEFAULT_TOL[used] if tol is None else float(tol)
    rng = np.random.default_rng([seed, 1])  # directions: a stream apart from the data's
    rows = [] if problem.not_finite else _METHODS[used](problem, tol, rng, directions)
    report = CheckReport(problem.where, used, method, tol, seed, problem.samples,
                         rows + problem.rows, list(problem.notes), domain=problem.domain,
                         not_finite=problem.not_finite)
    report.seconds = time.perf_counter() - start
    return report


# ==========================================================================================
# The command
# ==========================================================================================


@command("check")
def cmd_check(args: argparse.Namespace) -> int:
    """symgrad check SPEC|MODULE.py: print the table; exit 0 all pass, 1 a failure (or no
    report from the module's process: one line saying what happened)."""
    if getattr(args, "hvp", False):
        products = check_products(args.target, tol=args.tol, seed=args.seed,
                                  time_limit=getattr(args, "time_limit", None))
        sys.stdout.write(products.text())
        return 0 if products.ok else 1
    kind, _ = _resolve(args.target)
    if kind == "spec":
        report = check_spec(args.target, method=args.method, tol=args.tol, seed=args.seed,
                            directions=args.directions,
                            time_limit=getattr(args, "time_limit", None))
    else:
        report = check_module(args.target, method=args.method, tol=args.tol, seed=args.seed,
                              directions=args.directions,
                              time_limit=getattr(args, "time_limit", None))
    if report.failure:
        print(f"symgrad: check failed: {report.target}: {report.failure}", file=sys.stderr)
        return 1
    sys.stdout.write(report.text())
    return 0 if report.ok else 1


# ==========================================================================================
# check --hvp: the module's hvp and gnvp against central differences of its loss_and_grad
# ==========================================================================================

HVP_STEP = 1e-5  # t of (∇L(θ + tV) − ∇L(θ − tV)) / 2t


@dataclass
class ProductReport:
    """check --hvp: one row per product and parameter. The error of a parameter's block is
    max |a − n| / max(max |a|, max |n|, 1e-12) over its entries (a the product, n the central
    difference of the module's loss_and_grad along V)."""

    target: str
    tol: float
    seed: int
    rows: list[tuple[str, str, tuple[int, ...], float, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r[4] for r in self.rows)

    def text(self) -> str:
        lines = [f"check --hvp of {self.target} (float64, seed {self.seed}, tol {self.tol:g}, "
                 f"step {HVP_STEP:g})",
                 f"{'product':<8} {'parameter':<12} {'shape':<12} {'max rel error':<14} result"]
        for fn, name, shape, err, ok in self.rows:
            lines.append(f"{fn:<8} {name:<12} {_shape_text(shape):<12} {err:<14.1e} "
                         f"{'pass' if ok else 'FAIL'}")
        lines += [f"  {n}" for n in self.notes]
        lines.append("all passed" if self.ok else "FAILED")
        return "\n".join(lines) + "\n"


def check_products(target: str | Path, tol: float | None = None, seed: int = 0,
                   samples: int = 16, *, time_limit: float | None = None) -> ProductReport:
    """``symgrad check --hvp SPEC|MODULE.py``: hvp(params, X, Y, V) against central
    differences of loss_and_grad along V at random data and a random direction; gnvp the
    same at Y = forward(params, X), where ∂ℓ/∂Ŷ = 0 and the Hessian is the Gauss–Newton
    matrix; and ⟨V, G V⟩ ≥ 0. A SPEC's module is generated with hvp/gnvp; a MODULE.py is
    evaluated in its own process, as check does."""
    from symgrad.codegen import generate_source, load_module
    from symgrad.spec import load_spec

    tol = 1e-6 if tol is None else float(tol)
    _options("central", tol, seed, 1, samples, time_limit)
    kind, path = _resolve(target)
    scratch = None
    targets = "one-hot"
    flat = True  # ℓ′(y, y) = 0 and smooth there: at Y = Ŷ the Hessian is G
    if kind == "spec":
        from symgrad.losses import YHAT, Y

        spec = load_spec(path)
        source = generate_source(spec, products=True)
        evaluator: Any = _Local(load_module(source))
        targets = "custom" if spec.loss_expr is not None else spec.loss_fn.name
        slope = spec.loss_fn.derivative
        flat = (sp.simplify(slope.xreplace({YHAT: Y})) == 0 and not slope.has(sp.sign, sp.Abs)
                and not slope.has(sp.Piecewise, sp.Heaviside)
                or spec.loss_fn.name == "huber")
    else:
        evaluator = _Isolated(path, str(target), TIME_LIMIT if time_limit is None else time_limit,
                              MEMORY_LIMIT)
    report = ProductReport(str(target), tol, seed)
    try:
        problem = _problem(evaluator, str(target), seed, samples, targets=targets)
        if problem.not_finite:
            report.notes.append("the loss is not finite at the check point")
            return report
        rng = np.random.default_rng([seed, 2])
        V = {k: rng.standard_normal(v.shape) for k, v in problem.params.items()}
        for fn in ("hvp", "gnvp"):
            if fn == "gnvp" and not flat:
                report.notes.append("gnvp: not compared; the loss has no point where H = G "
                                    "(ℓ′(y, y) ≠ 0, or a kink at ŷ = y)")
                continue
            reply, arrays = evaluator.call(
                "products", {"fn": fn, "t": HVP_STEP, "own": fn == "gnvp"},
                {f"v:{k}": v for k, v in V.items()}, what=f"calling {fn}")
            if "raised" in reply:
                raise SymgradError(str(target), _clean(reply["raised"]))
            out = _dict(reply.get("value"))
            if out.get("type") != "products":
                raise SymgradError(str(target), f"{fn} returned {_clean(out.get('repr', '?'), 40)}"
                                   ", not a dict of arrays")
            if out.get("inference_forward"):
                report.notes.append("gnvp: not compared; forward() is in inference mode "
                                    "(running statistics, no dropout) and the products in "
                                    "training mode, so Y = forward(params, X) is no point "
                                    "where H = G")
                continue

            def values(side: str, name: str, out=out, arrays=arrays) -> np.ndarray | None:
                info = _dict(dict(out.get(side, {})).get(name))
                return arrays.get(str(info.get("data")))

            inner = 0.0
            # the differences' rounding error: eps × the largest gradient entry / the step
            # (an entry of a product that is 0 at every point, b before a batchnorm, is noise
            # on both sides and agrees within it)
            grads = [v for k in problem.params for v in (values("plus", k), values("minus", k))
                     if v is not None]
            noise = 100 * np.finfo(np.float64).eps * max(
                [float(np.max(np.abs(v), initial=0)) for v in grads] + [0.0]) / HVP_STEP
            for name, base in problem.params.items():
                a, plus, minus = (values(s, name) for s in ("product", "plus", "minus"))
                if a is None or a.shape != base.shape or plus is None or minus is None:
                    report.rows.append((fn, name, base.shape, math.nan, False))
                    report.notes.append(f"{fn}: no array of shape {base.shape} for {name}")
                    continue
                n = (plus - minus) / (2 * HVP_STEP)
                scale = max(float(np.max(np.abs(a), initial=0)), float(np.max(np.abs(n),
                            initial=0)), 1e-12)
                err = float(np.max(np.abs(a - n), initial=0)) / scale
                if scale <= noise:  # both sides within the differences' rounding error
                    err = 0.0
                    report.notes.append(f"{fn}: {name}: the product and the differences are "
                                        f"both below their rounding error ({noise:.1e}): "
                                        "they agree within it")
                report.rows.append((fn, name, base.shape, err, bool(err <= tol)))
                inner += float(np.sum(V[name] * a))
            if fn == "gnvp":
                psd = inner >= -tol * max(1.0, abs(inner))
                report.notes.append(f"gnvp: ⟨V, G V⟩ = {inner:.6g} "
                                    f"({'≥ 0' if psd else 'NEGATIVE'}), at Y = forward(params, X) "
                                    "where H = G")
                if not psd:
                    report.rows.append(("gnvp", "⟨V, G V⟩", (), inner, False))
        return report
    except _NoReport as e:
        report.notes.append(str(e))
        report.rows.append(("hvp", "—", (), math.nan, False))
        return report
    finally:
        evaluator.close()
        if scratch is not None:
            scratch.cleanup()
