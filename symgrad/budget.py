"""Budgets: every piece of work whose cost SymPy does not bound runs under one of these.

One mechanism for the whole package (hardening issue, class 4): a computation that may
take unbounded time (``simplify``, ``expand``, building a hostile expression, a proof)
runs inside :func:`deadline`, or through :func:`within`, which turns running out of time
(or out of stack, or out of memory) into one clear refusal::

    symgrad: error: <where>: too complex to simplify in 5 s: <what was being done>

Callers that can do without the result (a prettier form, an optional proof step) catch
:data:`EXHAUSTED` themselves and keep what they have.

The limits in force are named here, so the README can list them and tests can lower them.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

from symgrad.errors import SymgradError

__all__ = [
    "COMMAND_SECONDS",
    "CommandTimeout",
    "EXHAUSTED",
    "OutOfTime",
    "PROOF_LAYERS",
    "PROOF_STEP_SECONDS",
    "DERIVATIVE_SECONDS",
    "EXPAND_TERMS",
    "PRETTY_TERMS",
    "SIMPLIFY_SECONDS",
    "clock",
    "deadline",
    "expansion_terms",
    "too_large_to_expand",
    "command_budget",
    "optional_end",
    "shared_budget",
    "within",
]

T = TypeVar("T")


def clock() -> float:
    """The clock of every budget on SymPy work: this thread's CPU seconds, not the wall's.

    On a loaded machine the wall clock runs on while this process waits for a core, so a
    wall-clock budget would cut a simplification short and print (and generate) another
    form: output would depend on the load. CPU time counts only the work done, so the same
    input gives the same forms; the whole command's backstop (:func:`command_budget`) stays
    on the wall clock. The calling thread's CPU time, not the whole process's: numpy's BLAS
    threads spin on the cores after a product, and their time is not SymPy's work."""
    return time.thread_time()

#: seconds allowed for one simplification (an activation's derivative, a printed form)
SIMPLIFY_SECONDS = 5.0

#: seconds allowed for the plain derivative of a user's activation or loss (needed: past it,
#: the spec is refused); generous, since a plain ``diff`` is cheap unless the text is hostile
DERIVATIVE_SECONDS = 20.0


class OutOfTime(BaseException):
    """Raised inside SymPy by the deadline tracer (BaseException: not swallowed by SymPy)."""


#: what a budgeted computation may raise when it runs out of something
EXHAUSTED = (OutOfTime, RecursionError, MemoryError)

_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
# mpmath functions with bare ``except:`` clauses (mpmath 1.3); SymPy has none.
_SWALLOWING = frozenset({"convert", "from_float", "isint", "_compare", "_hurwitz_reflection"})


def _can_interrupt(frame: FrameType) -> bool:
    """Whether an exception raised at the start of ``frame`` surely propagates to us.

    Only plain SymPy or mpmath functions qualify: not generators (a finalizer may resume
    them), not foreign code (gc callbacks) and not below an mpmath function that has a
    bare ``except:``.
    """
    if frame.f_code.co_flags & _GENERATOR_FLAGS:
        return False
    if not frame.f_globals.get("__name__", "").startswith(("sympy.", "mpmath.")):
        return False
    caller: FrameType | None = frame
    while caller is not None:
        if caller.f_code.co_name in _SWALLOWING and caller.f_globals.get("__name__", "").startswith(
            "mpmath"
        ):
            return False
        caller = caller.f_back
    return True


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Abort the Python code run in this block (in this thread) after ``seconds``.

    SymPy's automatic evaluation (assumptions, Piecewise conditions, ...) has no useful
    cost bound, so a call-event tracer raises :class:`OutOfTime` once time is up (a
    raising tracer is removed by Python, so it must be raised where nothing swallows it).
    An existing tracer (debugger, coverage) keeps receiving its events and is restored.
    """
    previous = sys.gettrace()
    end = clock() + seconds
    calls = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal calls
        calls += 1
        if calls >= 32:  # read the clock every 32 calls; every call once time is up
            if clock() <= end:
                calls = 0
            elif _can_interrupt(frame):
                raise OutOfTime
        return previous(frame, event, arg) if previous is not None else None

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)



def within(seconds: float, where: str, what: str, fn: Callable[..., T], *args: Any,
           verb: str = "simplify", **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` within ``seconds``, or one clear :class:`SymgradError`.

    ``where`` is the place in the user's input (``"spec.toml: [[layer]] 2: activation"``),
    ``what`` the thing being worked on; the message says which budget was exceeded.
    """
    try:
        with deadline(seconds):
            return fn(*args, **kwargs)
    except OutOfTime:
        raise SymgradError(where, f"too complex to {verb} in {seconds:g} s: {what}") from None
    except RecursionError:
        raise SymgradError(where, f"too deeply nested to {verb}: {what}") from None
    except MemoryError:
        raise SymgradError(where, f"too large to {verb} (out of memory): {what}") from None


# ==========================================================================================
# A work estimate before SymPy's expansions
# ==========================================================================================

#: terms one expansion (``expand``, ``simplify``, ``cancel``) may produce; past it the
#: expansion is not attempted. SymPy multiplies out a power of a sum in one loop
#: (``multinomial_coefficients``) that calls no function, so :func:`deadline`'s tracer
#: never runs inside it: (X₀ + ⋯ + X₉)⁶⁴ has C(73, 9) ≈ 10¹¹ terms and would run for
#: hours and fill the memory. The size is estimated before, from the expression's tree.
#: 20 000 terms take well under a second.
EXPAND_TERMS = 20_000
#: terms an optional prettier form (an elementwise body multiplied out) may have: a form
#: that long never is the shortest one
PRETTY_TERMS = 500


def expansion_terms(e: Any, cap: int | None = None) -> int:
    """About how many terms multiplying out ``e`` makes or passes through (SymPy's
    ``expand``), capped at ``cap`` (default :data:`EXPAND_TERMS` + 1): a sum has the terms
    of its parts, a product the product of its factors', a power of a k-term sum to an
    integer p the C(p + k − 1, k − 1) terms of the multinomial (a denominator is expanded
    too, but is one term of the product); a function's arguments are expanded inside it.
    Cheap: linear in the size of the tree (shared subexpressions counted once)."""
    import math

    import sympy as sp

    limit = (EXPAND_TERMS + 1) if cap is None else cap
    seen: dict[Any, int] = {}
    largest = 0

    def terms(x: Any) -> int:
        nonlocal largest
        if x in seen:
            return seen[x]
        if not isinstance(x, sp.Basic) or x.is_Atom:
            n = 1
        elif isinstance(x, sp.Add):
            n = sum(terms(a) for a in x.args)
        elif isinstance(x, sp.Mul):
            n = 1
            for a in x.args:
                n = min(n * terms(a), limit)
        elif isinstance(x, sp.Pow) and x.exp.is_Integer and abs(int(x.exp)) >= 2:
            k = terms(x.base)
            p = abs(int(x.exp))
            full = math.comb(p + k - 1, k - 1) if k <= limit and p <= 10**6 else limit
            largest = max(largest, min(full, limit))
            n = min(full, limit) if x.exp > 0 else 1
        else:  # a function, a power to a symbol: its arguments expand inside it
            for a in x.args:
                terms(a)
            n = 1
        n = min(n, limit)
        largest = max(largest, n)
        seen[x] = n
        return n

    return max(terms(e), largest)


def too_large_to_expand(*es: Any, limit: int = EXPAND_TERMS) -> bool:
    """Whether multiplying out any of ``es`` would make over ``limit`` terms."""
    return any(expansion_terms(e, limit + 1) > limit for e in es)


# ==========================================================================================
# The backstop of a whole command (symgrad.cli.main)
# ==========================================================================================

#: wall-clock seconds one command may run (environment SYMGRAD_TIMEOUT; 0 turns it off)
COMMAND_SECONDS = 600.0
#: the share of physical memory one command may address (environment SYMGRAD_MEMORY_GB
#: gives an absolute limit in GiB; 0 turns it off), and never less than MEMORY_FLOOR bytes
MEMORY_FRACTION = 0.75
MEMORY_FLOOR = 2 << 30


class CommandTimeout(BaseException):
    """The whole command ran past :data:`COMMAND_SECONDS` (raised by SIGALRM in the main
    thread; a BaseException, so nothing on the way swallows it)."""


def _env_number(name: str, default: float) -> float:
    import os

    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def command_seconds() -> float:
    return _env_number("SYMGRAD_TIMEOUT", COMMAND_SECONDS)


def memory_limit() -> int:
    """Bytes of address space one command may use (0: no limit)."""
    import os

    gib = _env_number("SYMGRAD_MEMORY_GB", -1.0)
    if gib >= 0:
        return int(gib * (1 << 30))
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
    return max(int(MEMORY_FRACTION * physical), MEMORY_FLOOR)


def memory_text() -> str:
    limit = memory_limit()
    if not limit:
        return "no limit set"
    return f"the limit is {limit / (1 << 30):.1f} GiB of address space; SYMGRAD_MEMORY_GB changes it"


@contextmanager
def command_budget() -> Iterator[None]:
    """Run one command under a wall-clock limit (SIGALRM; :class:`CommandTimeout`) and an
    address-space limit (RLIMIT_AS, so that running out is a MemoryError, reported in one
    line, rather than the system's out-of-memory killer). Both are restored on exit; where
    they cannot be set (another thread, no SIGALRM, a handler already installed, no
    ``resource``) the command runs without them."""
    import signal
    import threading

    seconds = command_seconds()
    timer = (seconds > 0 and hasattr(signal, "setitimer")
             and threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None))
    previous_handler = None
    if timer:
        import time

        end = time.monotonic() + seconds

        def expire(signum, frame):
            early = end - time.monotonic()
            if early > 0:  # not our timer: a SIGALRM another process sent (a checked module)
                signal.setitimer(signal.ITIMER_REAL, early)
                return
            signal.setitimer(signal.ITIMER_REAL, 1.0)  # again in 1 s, should it be swallowed
            raise CommandTimeout(f"stopped after {seconds:g} s, the time limit of one command "
                                 "(SYMGRAD_TIMEOUT=SECONDS changes it)")

        previous_handler = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    limits = None
    try:
        import resource

        wanted = memory_limit()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if wanted and (soft == resource.RLIM_INFINITY or soft > wanted) and (
                hard == resource.RLIM_INFINITY or hard >= wanted):
            resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
            limits = (soft, hard)
    except (ImportError, ValueError, OSError):
        limits = None
    try:
        yield
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_handler)
        if limits is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, limits)


# ==========================================================================================
# The proof (symgrad derive --prove, symgrad.crosscheck)
# ==========================================================================================

#: layers the scalar-expansion proof expands, once runs of like layers are shortened to
#: three (first, one middle, last: every layer between is an instance of the middle one);
#: a network with more has its chain rule proved equation by equation instead
PROOF_LAYERS = 8
#: seconds one simplifying step of the proof (an activation's, the loss's derivative, a
#: fusion) may take; past it the step is "not proved" (exit 1)
PROOF_STEP_SECONDS = 60.0


# ==========================================================================================
# One clock for the optional work of one command (simpler forms of derivatives)
# ==========================================================================================

_SHARED_ENDS: list[float] = []  # clock times by which optional work must end (innermost last)


@contextmanager
def shared_budget(seconds: float) -> Iterator[None]:
    """Optional work started inside (the textbook form of every activation's and the
    loss's derivative) shares one clock of ``seconds``, so that a spec with several hard
    activations costs about one budget, not one per layer."""
    _SHARED_ENDS.append(clock() + seconds)
    try:
        yield
    finally:
        _SHARED_ENDS.pop()


def optional_end(seconds: float) -> float:
    """The clock time by which optional work started now must end: ``seconds`` from now,
    or the end of the enclosing :func:`shared_budget` if that comes first."""
    return min([clock() + seconds, *_SHARED_ENDS])
