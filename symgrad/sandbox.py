"""The untrusted side of ``symgrad check MODULE.py``: a separate process that only evaluates.

``symgrad check`` runs ``python -m symgrad.sandbox MODULE.py MEMORY_LIMIT`` and talks to it
over its stdin/stdout (which the module never sees: before the module is imported, file
descriptors 0 and 1 are pointed at /dev/null and the protocol keeps private duplicates).
Here the module is imported and its ``loss`` and ``loss_and_grad`` are called **at points
the parent chooses**; what comes back is numbers (float64 arrays) and plain descriptions
of what the module returned (its type, dtype, shape).  Every decision — is this a real
number, the right shape, finite; the finite differences, the tolerances, the table and the
verdict — is made in the parent (symgrad.check), which also enforces the time limit and
kills this process (and anything it started: it runs in its own session) at the end.
This process limits its own address space (``resource.RLIMIT_AS``) before the import.
The parent's ``setup`` sends the base point, the buffers (BUFFER_SHAPES: passed in the same
dict as the parameters, never perturbed) and the keywords of every ``loss`` and
``loss_and_grad`` call (a spec's ``seed``; none for a MODULE.py: its defaults).

The same :class:`Session` serves a trusted module object in-process (``check_module(module)``,
``check_spec``), so both paths produce the same descriptions and get the same validation.

numpy and the standard library only: the child starts quickly and imports nothing of the
parent's state.  Wire format, both ways: ``MAGIC``, an 8-byte big-endian length, a JSON
header of that length, then the arrays the header lists (``"arrays": [[key, shape], ...]``)
as little-endian float64, C order.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAGIC", "Session", "describe_array", "describe_scalar", "kill_descendants", "plain",
           "main"]

MAGIC = b"SGC1"
MAX_ITEMS = 10_000  # plain(): items of a container described
MAX_DEPTH = 6
REPR = 60  # characters of a repr kept


# ==========================================================================================
# Describing what the module returned (numbers travel; everything else is described)
# ==========================================================================================


def short(value: Any) -> str:
    try:
        text = " ".join(repr(value).split())
    except Exception:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= REPR else text[: REPR - 3] + "..."


def exception_text(e: BaseException) -> str:
    try:
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    except Exception:  # noqa: BLE001
        message = ""
    return type(e).__name__ + (f": {message}" if message else "")


def _from_tensor(value: Any) -> Any:
    """A torch tensor (a torch-backend module's value) as a numpy array, at this boundary;
    anything else as it is (torch is not imported here: a tensor is known by its type)."""
    if type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor",
                                                                               "Parameter"):
        try:
            return value.detach().cpu().numpy()
        except Exception:  # noqa: BLE001 - whatever the value does
            return value
    if type(value).__module__.startswith("cupy") and type(value).__name__ == "ndarray":
        try:  # a CuPy module's device array: copied to the host (cupy.ndarray.get)
            return value.get()
        except Exception:  # noqa: BLE001 - whatever the value does
            return value
    if type(value).__module__.startswith(("jax", "jaxlib")) and type(value).__name__ in (
            "ArrayImpl", "Array"):
        try:  # a JAX module's array (jax is not imported here either)
            return np.asarray(value)
        except Exception:  # noqa: BLE001 - whatever the value does
            return value
    return value


def _kind(value: Any) -> str:
    """A coarse type name the parent validates against."""
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, np.ndarray):
        return "ndarray"
    if isinstance(value, np.generic):
        return "numpy"
    for name, types in (("int", int), ("float", float), ("complex", complex), ("str", str),
                        ("list", list), ("tuple", tuple), ("dict", dict)):
        if isinstance(value, types):
            return name
    return "none" if value is None else "object"


def plain(value: Any, depth: int = 0) -> Any:
    """A JSON form of a constant (INPUTS, PARAM_SHAPES, DOMAIN, ...) that keeps its type."""
    kind = _kind(value)
    if depth > MAX_DEPTH:
        return {"other": "<too deeply nested>"}
    if kind == "bool":
        return {"bool": bool(value)}
    if kind == "int" or (kind == "numpy" and np.issubdtype(value.dtype, np.integer)):
        v = int(value)
        return {"int": v} if abs(v) < 2**62 else {"other": short(value)}
    if kind == "float":
        return {"float": float(value)}
    if kind == "str":
        return {"str": value[:200]}
    if kind in ("list", "tuple"):
        return {kind: [plain(v, depth + 1) for v in list(value)[:MAX_ITEMS]]}
    if kind == "dict":
        return {"dict": [[plain(k, depth + 1), plain(v, depth + 1)]
                         for k, v in list(value.items())[:MAX_ITEMS]]}
    return {"other": short(value)}


def describe_scalar(value: Any) -> tuple[complex, dict[str, Any]]:
    """(the number, {type, dtype, size, repr}); the number is nan where there is none."""
    value = _from_tensor(value)
    kind = _kind(value)
    info: dict[str, Any] = {"type": kind, "repr": short(value)}
    number: complex = complex(np.nan)
    try:
        if kind in ("int", "float", "complex", "numpy", "ndarray", "bool"):
            a = np.asarray(value)
            info["dtype"], info["size"] = str(a.dtype), int(a.size)
            if a.size == 1 and a.dtype.kind in "biufc":
                number = complex(a.reshape(()).item())
    except Exception:  # noqa: BLE001 - whatever the value does
        pass
    return number, info


def describe_array(value: Any, key: str, out: dict[str, np.ndarray],
                   limit: int) -> dict[str, Any]:
    """{type, dtype, shape, repr}; the values as float64 in ``out[key]`` when they are real
    numbers (dtype kind i, u or f) and at most ``limit`` of them."""
    value = _from_tensor(value)
    kind = _kind(value)
    info: dict[str, Any] = {"type": kind, "repr": short(value)}
    if kind not in ("ndarray", "numpy", "list", "tuple", "int", "float", "complex"):
        return info
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.asarray(value)
        info["dtype"], info["shape"] = str(a.dtype), [int(n) for n in a.shape]
        if a.dtype.kind in "iuf" and a.size <= limit:
            out[key] = np.ascontiguousarray(a, dtype="<f8")
            info["data"] = key
    except Exception:  # noqa: BLE001 - ragged lists, hostile __array__
        pass
    return info


# ==========================================================================================
# One session: a module, the data and base point the parent sent, and the calls
# ==========================================================================================


class Session:
    """Serves the parent's requests for one module (``handle``); never raises for what the
    module does: a raise becomes ``{"raised": "<op> raised <Error>: <message>"}``."""

    def __init__(self, module: Any, limit: int = 50_000_000):
        self.module = module
        self.limit = limit
        self.X = self.Y = None
        self.base: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}  # passed along, never perturbed
        self.keywords: dict[str, Any] = {}  # of every loss and loss_and_grad call
        self.directions: dict[int, tuple[str, np.ndarray]] = {}

    def handle(self, header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
        op = header.get("op")
        method = getattr(self, f"op_{op}", None)
        if method is None:
            return {"protocol": f"unknown request {op!r}"}, {}
        return method(header, arrays)

    def _call(self, what: str, fn: Any, *args: Any, **keywords: Any) -> tuple[Any, str]:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                return fn(*args, **keywords), ""
        except (Exception, SystemExit) as e:  # noqa: BLE001 - anything the module raises
            return None, f"{what} raised {exception_text(e)}"

    # -- requests --------------------------------------------------------------------------

    def op_interface(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        m = self.module
        names = ("INPUTS", "OUTPUTS", "PARAM_SHAPES", "BUFFER_SHAPES", "DOMAIN", "loss",
                 "loss_and_grad", "init_params")
        present = {n: hasattr(m, n) for n in names}
        reply: dict[str, Any] = {"present": present,
                                 "callable": {n: callable(getattr(m, n, None)) for n in names}}
        for n in ("INPUTS", "OUTPUTS", "PARAM_SHAPES", "BUFFER_SHAPES", "DOMAIN"):
            if present[n]:
                reply[n] = plain(getattr(m, n))
        return reply, {}

    def op_init_params(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        raw, raised = self._call("init_params", self.module.init_params, int(header["seed"]))
        if raised:
            return {"raised": raised}, {}
        if not isinstance(raw, dict):
            return {"value": {"type": _kind(raw), "repr": short(raw)}}, {}
        out: dict[str, np.ndarray] = {}
        items = {str(k): describe_array(v, f"p{i}", out, self.limit)
                 for i, (k, v) in enumerate(list(raw.items())[:MAX_ITEMS])}
        return {"value": {"type": "dict", "items": items}}, out

    def op_setup(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        self.X, self.Y = arrays["X"], arrays["Y"]
        self.base = {name: arrays[f"p:{name}"] for name in header["names"]}
        self.buffers = {name: arrays[f"b:{name}"] for name in header.get("buffers", [])}
        self.keywords = {str(k): int(v) for k, v in dict(header.get("keywords", {})).items()}
        self.directions.clear()
        return {"ok": True}, {}

    def _copies(self, params: dict[str, np.ndarray]) -> tuple:
        # a module that writes into its arguments cannot disturb the next evaluation;
        # the buffers (BUFFER_SHAPES: batchnorm's running statistics) travel in the same
        # dict, as init_params returned them, and are never perturbed
        values = {k: v.copy() for k, v in params.items()}
        values.update((k, v.copy()) for k, v in self.buffers.items())
        return values, self.X.copy(), self.Y.copy()

    def op_loss_and_grad(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        out, raised = self._call("loss_and_grad", self.module.loss_and_grad,
                                 *self._copies(self.base), **self.keywords)
        if raised:
            return {"raised": raised}, {}
        if not (isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[1], dict)):
            return {"value": {"type": _kind(out), "repr": short(out)}}, {}
        number, info = describe_scalar(out[0])
        found: dict[str, np.ndarray] = {}
        grads = {str(k): describe_array(v, f"g{i}", found, self.limit)
                 for i, (k, v) in enumerate(list(out[1].items())[:MAX_ITEMS])}
        return {"value": {"type": "pair", "loss": [number.real, number.imag, info],
                          "grads": grads}}, found

    def op_products(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        """check --hvp: ``fn`` (hvp or gnvp) at the base point along V (arrays ``v:NAME``),
        and the gradients of loss_and_grad at base ± t V; ``own``: with Y = forward(base, X)
        (where ∂ℓ/∂Ŷ = 0 and the Hessian is the Gauss–Newton matrix)."""
        fn, t = str(header["fn"]), float(header["t"])
        V = {name: arrays[f"v:{name}"] for name in self.base}
        f = getattr(self.module, fn, None)
        if not callable(f):
            return {"raised": f"the module has no {fn}() (generate it with --hvp)"}, {}
        params, X, Y = self._copies(self.base)
        if header.get("own"):
            Y, raised = self._call("forward", self.module.forward, params, X.copy())
            if raised:
                return {"raised": raised}, {}
            if self._modes_differ(params, X, Y):
                return {"value": {"type": "products", "inference_forward": True}}, {}
        found: dict[str, np.ndarray] = {}
        out, raised = self._call(fn, f, params, X, Y, {k: v.copy() for k, v in V.items()})
        if raised:
            return {"raised": raised}, {}
        if not isinstance(out, dict):
            return {"value": {"type": _kind(out), "repr": short(out)}}, {}
        reply: dict[str, Any] = {"product": {str(k): describe_array(v, f"r{i}", found, self.limit)
                                             for i, (k, v) in enumerate(list(out.items())[:MAX_ITEMS])}}
        for side, sign in (("plus", 1.0), ("minus", -1.0)):
            point = {k: v + sign * t * V[k] for k, v in self.base.items()}
            params, X, _ = self._copies(point)
            res, raised = self._call("loss_and_grad", self.module.loss_and_grad, params, X,
                                     np.array(Y, copy=True), **self.keywords)
            if raised:
                return {"raised": raised}, {}
            if not (isinstance(res, tuple | list) and len(res) == 2 and isinstance(res[1], dict)):
                return {"value": {"type": _kind(res), "repr": short(res)}}, {}
            reply[side] = {str(k): describe_array(v, f"{side}{i}", found, self.limit)
                           for i, (k, v) in enumerate(list(res[1].items())[:MAX_ITEMS])}
        return {"value": {"type": "products", **reply}}, found

    def _modes_differ(self, params, X, Y) -> bool:
        """Whether the module's loss in training mode (batch statistics, dropout) differs
        from its inference-mode loss at (X, Y): then forward(), in inference mode, is no
        point where the training-mode Hessian is the Gauss–Newton matrix."""
        losses = []
        for training in (True, False):
            value, raised = self._call("loss", self.module.loss, *self._copies(self.base)[:1],
                                       X.copy(), np.array(Y, copy=True), training=training)
            if raised:
                return False  # no training= keyword: one mode
            losses.append(value)
        try:
            a, b = (float(v) for v in losses)
        except (TypeError, ValueError):
            return False
        return not abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))

    def op_direction(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        self.directions[int(header["id"])] = (header["name"], arrays["v"])
        return {"ok": True}, {}

    def _point(self, name: str, kind: str, index: int, t: complex,
               dtype: type) -> dict[str, np.ndarray]:
        params = {k: v.astype(dtype) if dtype is not np.float64 else v for k, v in self.base.items()}
        if kind == "entry":
            theta = params[name].astype(dtype, copy=True)
            theta.reshape(-1)[index] += t
        else:
            _, v = self.directions[index]
            theta = params[name] + t * v
        params[name] = theta
        return params

    def op_losses(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        """loss at base + t e_j (``entry``) or base + t v (``direction``), for each point;
        ``complex``: t = i h (the complex step)."""
        complex_step = bool(header.get("complex"))
        dtype = np.complex128 if complex_step else np.float64
        values = np.full((len(header["points"]), 2), np.nan)
        kinds: list[Any] = []
        for i, (name, kind, index, t) in enumerate(header["points"]):
            step = 1j * t if complex_step else t
            value, raised = self._call("loss", self.module.loss,
                                       *self._copies(self._point(name, kind, index, step, dtype)),
                                       **self.keywords)
            if raised:
                return {"raised": raised}, {}
            number, info = describe_scalar(value)
            values[i] = number.real, number.imag
            kinds.append(info)
        return {"kinds": kinds}, {"values": values}


# ==========================================================================================
# The child process
# ==========================================================================================


class Channel:
    """Length-prefixed JSON headers and float64 arrays over two file descriptors."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd

    def send(self, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        arrays = arrays or {}
        header = {**header, "arrays": [[k, list(a.shape)] for k, a in arrays.items()]}
        text = json.dumps(header).encode()
        chunks = [MAGIC, len(text).to_bytes(8, "big"), text]
        chunks += [np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays.values()]
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.write_fd, view):]

    def _read(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = os.read(self.read_fd, min(n - got, 1 << 20))
            if not chunk:
                raise EOFError
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def receive(self) -> tuple[dict, dict[str, np.ndarray]]:
        if self._read(4) != MAGIC:
            raise EOFError
        header = json.loads(self._read(int.from_bytes(self._read(8), "big")))
        arrays = {}
        for key, shape in header.get("arrays", []):
            n = int(np.prod(shape, dtype=np.int64))
            arrays[key] = np.frombuffer(self._read(8 * n), dtype="<f8").reshape(shape).copy()
        return header, arrays


def load(path: Path) -> Any:
    """Import a module file with its directory on sys.path (as ``python MODULE.py`` has)."""
    import importlib.util

    name = f"_symgrad_checked_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as importlib's recipe has it (dataclasses look it up)
    sys.path.insert(0, str(path.parent.resolve()))
    spec.loader.exec_module(module)
    return module


def import_error(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"cannot import: SyntaxError: {e.msg} (line {e.lineno})"
    return f"cannot import: {exception_text(e)}"


def _limit_resources(memory: int) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    for which, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CORE, 0)):
        try:
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, hard))
        except (ValueError, OSError):  # pragma: no cover - a platform without the limit
            pass


NOBODY = 65534  # the unprivileged uid and gid the process takes when started as root
_PR_SET_PDEATHSIG, _PR_SET_KEEPCAPS, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 8, 36, 38
_CAP_VERSION_3 = 0x20080522
_CAP_DAC_READ_SEARCH = 2


def _descendants(root: int) -> list[int]:
    """The live (not zombie) processes below ``root``, from /proc/*/stat's ppid links."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - no /proc
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "(comm)", which may hold spaces
        if len(fields) > 1 and fields[0] not in (b"Z", b"X"):
            parents[int(entry)] = int(fields[1])
    below, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier}
        below += sorted(frontier)
    return below


def kill_descendants(root: int, rounds: int = 100) -> None:
    """SIGKILL every process below ``root`` (what the module forked, setsid or not), again
    until none is left: ``root`` is a subreaper (isolate), so an orphan whose parent was
    killed meanwhile reparents to it and is found in the next round."""
    import signal

    for _ in range(rounds):
        pids = _descendants(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone, or not ours
                pass
        if root == os.getpid():  # reap them (a subreaper's orphans are its children)
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass


def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _keep_file_access(libc: Any) -> None:
    """After setuid from root with PR_SET_KEEPCAPS: keep only CAP_DAC_READ_SEARCH — read any
    file and enter any directory (the module and the Python installation may sit where only
    root can enter), write nothing nobody could not (no CAP_DAC_OVERRIDE: the module must
    not rewrite symgrad's sources or anything else root owns); CAP_KILL, CAP_SYS_PTRACE and
    the rest are gone."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    keep = 1 << _CAP_DAC_READ_SEARCH
    data = (Data * 2)(Data(keep, keep, 0), Data(0, 0, 0))
    libc.capset(ctypes.byref(Header(_CAP_VERSION_3, 0)), data)  # failure: no file access kept


def isolate(parent: int) -> str:
    """Before the module is imported: take away its means to act on the ``parent`` (the
    ``symgrad check`` process).  Returns what was done, for SYMGRAD_DEBUG.

    * Started as root: become ``nobody`` (uid and gid 65534, no supplementary groups), so
      ``kill`` (SIGSTOP, SIGALRM, SIGINT …) and ``ptrace`` of the parent are refused; root's
      reading of files is kept (CAP_DAC_READ_SEARCH), not its writing (CAP_DAC_OVERRIDE)
      nor anything else, and no_new_privs stops a set-uid program from giving it back.
    * Linux: die with the parent (PR_SET_PDEATHSIG, SIGKILL), so a killed ``check`` leaves
      no process behind; if the parent is already gone, exit now.  And be a subreaper
      (PR_SET_CHILD_SUBREAPER): what the module forks stays below this process even after
      setsid and a double fork, so :func:`kill_descendants` (here before exiting, in the
      parent on a timeout or kill) finds and ends all of it.
    A module run by an ordinary user keeps that user's uid and can still signal its parent
    (README, "check": what remains)."""
    import signal

    done = []
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = _libc()
        except OSError:  # pragma: no cover - no C library to load
            libc = None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            if libc is not None:
                libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            done.append(f"uid {NOBODY}")
            if libc is not None:
                _keep_file_access(libc)
        except OSError:  # a container that forbids it: run as we are
            pass
    if libc is not None:
        # after the uid change, which clears the death signal; no_new_privs likewise
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
            done.append("subreaper")
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            done.append("dies with its parent")
    if parent and os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(0)
    return ", ".join(done)


def main(argv: list[str] | None = None) -> int:
    args = (argv or sys.argv[1:])
    path, memory, limit = args[:3]
    parent = int(args[3]) if len(args) > 3 else 0
    read_fd, write_fd = os.dup(0), os.dup(1)  # private (not inherited by what the module starts)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - for the life of the process
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    channel = Channel(read_fd, write_fd)
    isolate(parent)
    _limit_resources(int(memory))
    try:
        module = load(Path(path))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - anything the module does on import
        channel.send({"import_error": import_error(e)})
        return 0
    session = Session(module, int(limit))
    channel.send({"ready": True})
    while True:
        try:
            header, arrays = channel.receive()
        except (EOFError, OSError, ValueError):
            return 0
        if header.get("op") == "quit":
            return 0
        try:
            reply, out = session.handle(header, arrays)
        except MemoryError:
            reply, out = {"raised": f"{header.get('op')} ran out of memory (limit "
                          f"{int(memory) >> 20} MiB)"}, {}
        channel.send(reply, out)


def run(argv: list[str] | None = None) -> int:
    """main(), then end whatever the module started (it may have forked and left)."""
    try:
        return main(argv)
    finally:
        kill_descendants(os.getpid())


if __name__ == "__main__":
    raise SystemExit(run())
