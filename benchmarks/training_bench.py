"""One epoch of mini-batch SGD, float32, side by side: the contenders of issue 6.

Workloads (synthetic data from a seeded generator, no downloads):

- W1: 784-256-128-10 relu, softmax + cross-entropy, N = 60,000 (``full``) or 12,000, batch 128
- W2: digits 64-32-10 tanh, N = 1,437 (``symgrad.datasets.digits_split``), batch 32
- W3: 512-512-512-512-512-10 relu, N = 20,000 (``full``) or 5,000, batch 128

Contenders (each prepared once, then timed one epoch at a time):

- ``GEMM floor``: only the matrix multiplications of the epoch, numpy, same shapes and
  dtype: forward A·W per layer, backward Aᵀ·δ per layer and δ·Wᵀ for every layer but
  the first (no gradient with respect to the data is needed).
- ``hand-written numpy``: preallocated buffers, ``out=`` everywhere, per-batch
  ``np.take(..., out=)`` gather, in-place activations, η/N folded into the output delta.
- ``generated f32`` / ``generated f64``: the module symgrad generates for the workload's
  spec, ``train(params, X, Y, epochs=1, ...)`` with optimizer "sgd".
- ``PyTorch eager``: nn.Sequential + F.cross_entropy + torch.optim.SGD, 2 threads.
- ``JAX jit step``: one jitted, AOT-compiled SGD step per batch (gather inside).
- ``JAX jit scan``: the whole epoch as one jitted ``lax.scan`` over batches.
- ``scikit-learn``: MLPClassifier(solver="sgd", momentum=0, alpha=0).partial_fit, one epoch.

Repetitions are paired and interleaved: in every repetition each contender runs one
epoch, the order rotated from repetition to repetition. Ratios are medians of the
per-repetition ratios (contender / GEMM floor and contender / hand-written numpy in
the same repetition), which cancels most of the slow drift of a shared machine.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    fmt_range,
    fmt_ratio,
    fmt_seconds,
    format_table,
    has_module,
    spec_toml,
    summarize,
    symgrad_env,
)

FLOOR = "GEMM floor"
HAND = "hand-written numpy"
CONTENDERS = (
    FLOOR,
    HAND,
    "generated f32",
    "generated f64",
    "PyTorch eager",
    "JAX jit step",
    "JAX jit scan",
    "scikit-learn",
)


PAUSE_S = 0.25  # sleep before each timed epoch (see run_workload)
TORCH_THREADS = 2
_thread_limits: list[Any] = []  # keeps threadpoolctl's limiter alive


def limit_threads(n: int) -> str:
    """Use ``n`` threads in numpy's BLAS (through threadpoolctl), PyTorch and, if JAX is
    not imported yet, XLA. For diagnosis on a busy machine: two-thread BLAS calls slow
    down by an order of magnitude when the cores are shared with other processes."""
    global TORCH_THREADS
    TORCH_THREADS = n
    notes = [f"torch {n}"]
    if has_module("threadpoolctl"):
        from threadpoolctl import threadpool_limits

        _thread_limits.append(threadpool_limits(limits=n, user_api="blas"))
        notes.append(f"numpy BLAS {n}")
    else:
        notes.append("numpy BLAS not limited (threadpoolctl missing)")
    if "jax" not in sys.modules and n == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
        notes.append("XLA 1")
    return "threads: " + ", ".join(notes)


class Skipped(Exception):
    """A contender that cannot run here (not installed, not yet available)."""


# --------------------------------------------------------------------------
# Workloads and data
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str
    inputs: int
    layers: tuple[tuple[int, str], ...]  # (units, activation); the last is softmax
    n: int
    batch_size: int
    learning_rate: float
    data: str = "synthetic"  # or "digits"

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.inputs, *(u for u, _ in self.layers))

    @property
    def hidden_activation(self) -> str:
        return self.layers[0][1]

    @property
    def outputs(self) -> int:
        return self.layers[-1][0]

    @property
    def title(self) -> str:
        arch = "-".join(map(str, self.sizes))
        return (
            f"{self.key}: {arch} {self.hidden_activation}, softmax+CE, N={self.n:,}, "
            f"batch {self.batch_size}, float32"
        )

    def toml(self) -> str:
        return spec_toml(
            f"bench_{self.key.lower()}",
            self.inputs,
            self.layers,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
        )


def _mlp(key, sizes, act, n, batch, lr, data="synthetic") -> Workload:
    layers = tuple((u, act) for u in sizes[1:-1]) + ((sizes[-1], "softmax"),)
    return Workload(key, sizes[0], layers, n, batch, lr, data)


def make_workloads(full: bool = False, quick: bool = False) -> dict[str, Workload]:
    """W1, W2, W3 as issue 6 defines them; smaller N by default, smaller still for
    ``quick`` (a smoke run)."""
    n1 = 60_000 if full else 2_048 if quick else 12_000
    n3 = 20_000 if full else 1_024 if quick else 5_000
    return {
        "W1": _mlp("W1", (784, 256, 128, 10), "relu", n1, 128, 0.01),
        "W2": _mlp("W2", (64, 32, 10), "tanh", 1_437, 32, 0.1, data="digits"),
        "W3": _mlp("W3", (512, 512, 512, 512, 512, 10), "relu", n3, 128, 0.01),
    }


def tiny_workload() -> Workload:
    """A few hundred samples of a tiny net, for tests."""
    return _mlp("T", (16, 8, 4), "tanh", 200, 32, 0.05)


@dataclass
class Data:
    X: np.ndarray  # float32, (N, inputs)
    Y: np.ndarray  # float32 one-hot, (N, outputs)
    y: np.ndarray  # int64 labels, (N,)
    _cache: dict = field(default_factory=dict, repr=False)

    def as_dtype(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        key = np.dtype(dtype).name
        if key not in self._cache:
            self._cache[key] = (
                np.ascontiguousarray(self.X, dtype=dtype),
                np.ascontiguousarray(self.Y, dtype=dtype),
            )
        return self._cache[key]


def make_data(w: Workload, seed: int = 0) -> Data:
    if w.data == "digits":
        from symgrad.datasets import digits_split

        d = digits_split(dtype=np.float32)
        X, Y, y = d["X_train"][: w.n], d["Y_train"][: w.n], d["y_train"][: w.n]
        return Data(np.ascontiguousarray(X), np.ascontiguousarray(Y), y)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((w.n, w.inputs), dtype=np.float32)
    y = rng.integers(0, w.outputs, size=w.n)
    Y = np.zeros((w.n, w.outputs), dtype=np.float32)
    Y[np.arange(w.n), y] = 1
    return Data(X, Y, y)


def glorot(sizes: tuple[int, ...], dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    Ws, bs = [], []
    for n_in, n_out in zip(sizes, sizes[1:], strict=False):
        lim = np.sqrt(6.0 / (n_in + n_out))
        Ws.append(rng.uniform(-lim, lim, (n_in, n_out)).astype(dtype))
        bs.append(np.zeros(n_out, dtype=dtype))
    return Ws, bs


def batch_bounds(n: int, batch: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch, n)) for s in range(0, n, batch)]


# --------------------------------------------------------------------------
# numpy contenders
# --------------------------------------------------------------------------


class _Buffers:
    """Per-layer buffers for a batch of ``batch`` rows; ``view(n)`` for the last,
    partial batch (views, so no allocation)."""

    def __init__(self, sizes: tuple[int, ...], batch: int, dtype) -> None:
        self.n = batch
        self.A = [np.empty((batch, s), dtype) for s in sizes]  # A[0] = X batch, A[L] = Ŷ
        self.yb = np.empty((batch, sizes[-1]), dtype)
        self.dA = [np.empty((batch, s), dtype) for s in sizes[:-1]]  # δ of hidden layers
        self.tmp = [np.empty((batch, s), dtype) for s in sizes[:-1]]  # f′ of hidden layers
        self.mask = [np.empty((batch, s), bool) for s in sizes[:-1]]  # relu masks
        self.row = np.empty((batch, 1), dtype)

    def view(self, n: int) -> _Buffers:
        if n == self.n:
            return self
        v = object.__new__(_Buffers)
        v.n = n
        v.A = [a[:n] for a in self.A]
        v.yb = self.yb[:n]
        v.dA = [a[:n] for a in self.dA]
        v.tmp = [a[:n] for a in self.tmp]
        v.mask = [a[:n] for a in self.mask]
        v.row = self.row[:n]
        return v


class NumpyMLP:
    """The hand-written reference: what a careful numpy programmer writes."""

    def __init__(self, w: Workload, data: Data, dtype=np.float32, seed: int = 0) -> None:
        self.X, self.Y = data.as_dtype(dtype)
        self.batch, self.lr, self.act = w.batch_size, w.learning_rate, w.hidden_activation
        self.W, self.b = glorot(w.sizes, dtype, seed)
        self.gW = [np.empty_like(W) for W in self.W]
        self.gb = [np.empty_like(b) for b in self.b]
        self.buf = _Buffers(w.sizes, w.batch_size, dtype)
        self.bounds = batch_bounds(len(self.X), w.batch_size)
        last = self.bounds[-1][1] - self.bounds[-1][0]
        self.last = self.buf.view(last)
        self.rng = np.random.default_rng(seed)

    def epoch(self) -> None:
        perm = self.rng.permutation(len(self.X))
        for s, e in self.bounds:
            self.step(perm[s:e], self.buf if e - s == self.batch else self.last)

    def step(self, idx: np.ndarray, buf: _Buffers) -> None:
        A, W, b = buf.A, self.W, self.b
        L = len(W)
        np.take(self.X, idx, axis=0, out=A[0])
        np.take(self.Y, idx, axis=0, out=buf.yb)
        for i in range(L):  # forward: Z = A W + b, A = f(Z), in place
            z = A[i + 1]
            np.matmul(A[i], W[i], out=z)
            z += b[i]
            if i < L - 1:
                if self.act == "relu":
                    np.maximum(z, 0, out=z)
                else:
                    np.tanh(z, out=z)
        z, row = A[L], buf.row  # softmax, row-wise, stable
        np.max(z, axis=1, keepdims=True, out=row)
        z -= row
        np.exp(z, out=z)
        np.sum(z, axis=1, keepdims=True, out=row)
        z /= row
        d = z  # δ_L = η (Ŷ − Y) / n: the learning rate folded into the output delta
        d -= buf.yb
        d *= self.lr / buf.n
        for i in range(L - 1, -1, -1):
            np.matmul(A[i].T, d, out=self.gW[i])
            np.sum(d, axis=0, out=self.gb[i])
            if i > 0:
                dp = buf.dA[i]
                np.matmul(d, W[i].T, out=dp)  # before W[i] is updated
                if self.act == "relu":
                    np.greater(A[i], 0, out=buf.mask[i])
                    dp *= buf.mask[i]
                else:
                    t = buf.tmp[i]  # tanh′ = 1 − A²
                    np.multiply(A[i], A[i], out=t)
                    np.subtract(1, t, out=t)
                    dp *= t
                d = dp
            W[i] -= self.gW[i]
            b[i] -= self.gb[i]


class GemmFloor:
    """Only the matrix multiplications of one epoch of ``NumpyMLP``."""

    def __init__(self, w: Workload, data: Data, dtype=np.float32, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.W, _ = glorot(w.sizes, dtype, seed)
        self.gW = [np.empty_like(W) for W in self.W]
        self.buf = _Buffers(w.sizes, w.batch_size, dtype)
        for a in self.buf.A + self.buf.dA:
            a[...] = rng.standard_normal(a.shape, dtype=np.float32) * 0.1
        self.bounds = batch_bounds(len(data.X), w.batch_size)
        last = self.bounds[-1][1] - self.bounds[-1][0]
        self.last = self.buf.view(last)
        self.delta = [np.empty((w.batch_size, s), dtype) for s in w.sizes[1:]]
        for dlt in self.delta:
            dlt[...] = 0.01

    def epoch(self) -> None:
        for s, e in self.bounds:
            n = e - s
            buf = self.buf if n == self.buf.n else self.last
            A, W = buf.A, self.W
            for i in range(len(W)):
                np.matmul(A[i], W[i], out=A[i + 1])
            for i in range(len(W) - 1, -1, -1):
                d = self.delta[i][:n]
                np.matmul(A[i].T, d, out=self.gW[i])
                if i > 0:
                    np.matmul(d, W[i].T, out=buf.dA[i])


# --------------------------------------------------------------------------
# Preparing contenders
# --------------------------------------------------------------------------


@dataclass
class Prepared:
    epoch: Callable[[], None]
    compile_s: float | None = None
    note: str = ""


@dataclass
class Context:
    workload: Workload
    data: Data
    workdir: Path
    seed: int = 0
    modules: dict = field(default_factory=dict)


def prep_floor(ctx: Context) -> Prepared:
    return Prepared(GemmFloor(ctx.workload, ctx.data, seed=ctx.seed).epoch)


def prep_hand(ctx: Context) -> Prepared:
    return Prepared(NumpyMLP(ctx.workload, ctx.data, seed=ctx.seed).epoch)


def generated_module(ctx: Context):
    """Generate, write and import the module for the workload's spec (once per run)."""
    key = ctx.workload.key
    if key in ctx.modules:
        return ctx.modules[key]
    if not has_module("symgrad.codegen"):
        raise Skipped("symgrad.codegen does not exist yet")
    spec_path = ctx.workdir / f"bench_{key.lower()}.toml"
    spec_path.write_text(ctx.workload.toml(), encoding="utf-8")
    out = ctx.workdir / f"bench_{key.lower()}.py"
    import symgrad.codegen as codegen

    if hasattr(codegen, "generate_source"):
        from symgrad.spec import load_spec

        out.write_text(codegen.generate_source(load_spec(spec_path)), encoding="utf-8")
    else:
        cmd = [sys.executable, "-m", "symgrad", "generate", str(spec_path), "-o", str(out),
               "--force"]
        proc = subprocess.run(cmd, env=symgrad_env(), capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise Skipped(f"symgrad generate failed: {proc.stderr.strip()[:200]}")
    mod = import_file(out, f"_symgrad_bench_{key.lower()}")
    ctx.modules[key] = mod
    return mod


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _prep_generated(ctx: Context, dtype) -> Prepared:
    mod = generated_module(ctx)
    w = ctx.workload
    X, Y = ctx.data.as_dtype(dtype)
    params = mod.init_params(seed=ctx.seed, dtype=dtype)

    def epoch() -> None:
        mod.train(params, X, Y, epochs=1, batch_size=w.batch_size,
                  learning_rate=w.learning_rate, optimizer="sgd", verbose=False)

    return Prepared(epoch)


def prep_generated_f32(ctx: Context) -> Prepared:
    return _prep_generated(ctx, np.float32)


def prep_generated_f64(ctx: Context) -> Prepared:
    return _prep_generated(ctx, np.float64)


def _require(module: str, pip_name: str) -> None:
    if not has_module(module):
        raise Skipped(f"{pip_name} not installed")


def prep_torch(ctx: Context) -> Prepared:
    _require("torch", "torch")
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(ctx.seed)
    w = ctx.workload
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[w.hidden_activation]
    mods: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(w.sizes, w.sizes[1:], strict=False)):
        mods.append(torch.nn.Linear(n_in, n_out))
        if i < len(w.sizes) - 2:
            mods.append(act())
    model = torch.nn.Sequential(*mods)  # logits; F.cross_entropy applies log-softmax
    opt = torch.optim.SGD(model.parameters(), lr=w.learning_rate, momentum=0.0)
    X = torch.from_numpy(ctx.data.X)
    y = torch.from_numpy(ctx.data.y.astype(np.int64))
    B, N = w.batch_size, len(ctx.data.X)

    def epoch() -> None:
        perm = torch.randperm(N)
        for s in range(0, N, B):
            idx = perm[s:s + B]
            xb, yb = X[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()

    return Prepared(epoch, note=f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def _jax_pieces(ctx: Context):
    _require("jax", "jax")
    import jax
    import jax.numpy as jnp

    w = ctx.workload
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[w.hidden_activation]
    Ws, bs = glorot(w.sizes, np.float32, ctx.seed)
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(Ws, bs, strict=True)]

    def loss_fn(p, xb, yb):
        a = xb
        for W, b in p[:-1]:
            a = act(a @ W + b)
        W, b = p[-1]
        logp = jax.nn.log_softmax(a @ W + b, axis=1)
        return -jnp.mean(jnp.sum(yb * logp, axis=1))

    lr = w.learning_rate

    def step(p, X, Y, idx):
        xb = jnp.take(X, idx, axis=0)
        yb = jnp.take(Y, idx, axis=0)
        g = jax.grad(loss_fn)(p, xb, yb)
        return jax.tree_util.tree_map(lambda q, gq: q - lr * gq, p, g)

    X = jnp.asarray(ctx.data.X)
    Y = jnp.asarray(ctx.data.Y)
    return jax, params, step, X, Y


def prep_jax_step(ctx: Context) -> Prepared:
    jax, params, step, X, Y = _jax_pieces(ctx)
    w = ctx.workload
    N, B = len(ctx.data.X), w.batch_size
    bounds = batch_bounds(N, B)
    rng = np.random.default_rng(ctx.seed)
    t0 = time.perf_counter()
    compiled = {}
    for s, e in bounds:
        if e - s not in compiled:
            idx = np.arange(e - s, dtype=np.int32)
            compiled[e - s] = jax.jit(step, donate_argnums=0).lower(params, X, Y, idx).compile()
    compile_s = time.perf_counter() - t0
    state = {"p": params}

    def epoch() -> None:
        perm = rng.permutation(N).astype(np.int32)
        p = state["p"]
        for s, e in bounds:
            p = compiled[e - s](p, X, Y, perm[s:e])
        state["p"] = jax.block_until_ready(p)

    return Prepared(epoch, compile_s, note=f"jax {jax.__version__}, {jax.default_backend()}")


def prep_jax_scan(ctx: Context) -> Prepared:
    jax, params, step, X, Y = _jax_pieces(ctx)
    w = ctx.workload
    N, B = len(ctx.data.X), w.batch_size
    full = N // B

    def epoch_fn(p, X, Y, perm):
        idx = perm[: full * B].reshape(full, B)
        p, _ = jax.lax.scan(lambda q, i: (step(q, X, Y, i), None), p, idx)
        if N % B:
            p = step(p, X, Y, perm[full * B:])
        return p

    rng = np.random.default_rng(ctx.seed)
    t0 = time.perf_counter()
    perm0 = np.arange(N, dtype=np.int32)
    compiled = jax.jit(epoch_fn, donate_argnums=0).lower(params, X, Y, perm0).compile()
    compile_s = time.perf_counter() - t0
    state = {"p": params}

    def epoch() -> None:
        perm = rng.permutation(N).astype(np.int32)
        state["p"] = jax.block_until_ready(compiled(state["p"], X, Y, perm))

    return Prepared(epoch, compile_s, note=f"jax {jax.__version__}")


def prep_sklearn(ctx: Context) -> Prepared:
    _require("sklearn", "scikit-learn")
    import warnings

    import sklearn
    from sklearn.neural_network import MLPClassifier

    w = ctx.workload
    clf = MLPClassifier(
        hidden_layer_sizes=tuple(u for u, _ in w.layers[:-1]),
        activation=w.hidden_activation,
        solver="sgd",
        learning_rate_init=w.learning_rate,
        batch_size=w.batch_size,
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        shuffle=True,
        random_state=ctx.seed,
    )
    classes = np.arange(w.outputs)

    def epoch() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(ctx.data.X, ctx.data.y, classes=classes)

    return Prepared(epoch, note=f"scikit-learn {sklearn.__version__}")


PREPARERS: dict[str, Callable[[Context], Prepared]] = {
    FLOOR: prep_floor,
    HAND: prep_hand,
    "generated f32": prep_generated_f32,
    "generated f64": prep_generated_f64,
    "PyTorch eager": prep_torch,
    "JAX jit step": prep_jax_step,
    "JAX jit scan": prep_jax_scan,
    "scikit-learn": prep_sklearn,
}


# --------------------------------------------------------------------------
# The interleaved run
# --------------------------------------------------------------------------


def run_workload(
    w: Workload,
    reps: int,
    workdir: Path,
    contenders: tuple[str, ...] = CONTENDERS,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
    pause: float = PAUSE_S,
) -> dict[str, Any]:
    """Prepare every contender (one untimed warm-up epoch each), then ``reps``
    interleaved repetitions. Returns a JSON-able result; see ``format_workload``.

    ``pause`` seconds of sleep precede every timed epoch: the thread pools of the
    previous contender (OpenBLAS, OpenMP, XLA's) spin for a while after their last
    task, and on two cores that spinning would be charged to the next contender."""
    data = make_data(w, seed)
    ctx = Context(w, data, workdir, seed)
    prepared: dict[str, Prepared] = {}
    status: dict[str, str] = {}
    for name in contenders:
        try:
            p = PREPARERS[name](ctx)
            p.epoch()  # warm-up: first-touch, caches, lazy initialisation
            prepared[name] = p
        except Skipped as e:
            status[name] = f"skipped: {e}"
        except Exception as e:  # a contender's failure must not sink the whole report
            status[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if name in status:
            log(f"  {w.key} {name}: {status[name]}")
    times: dict[str, list[float]] = {name: [] for name in prepared}
    for r in range(reps):
        names = list(prepared)
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            gc.collect()
            time.sleep(pause)
            t0 = time.perf_counter()
            try:
                prepared[name].epoch()
            except Exception as e:
                status[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                del prepared[name]
                continue
            times[name].append(time.perf_counter() - t0)
        log(f"  {w.key} repetition {r + 1}/{reps} done")
    rows = []
    for name in contenders:
        row: dict[str, Any] = {"contender": name}
        if name in prepared and times[name]:
            row.update(summarize(times[name]))
            row["times"] = times[name]
            row["ratio_floor"] = _paired_ratio(times, name, FLOOR)
            row["ratio_hand"] = _paired_ratio(times, name, HAND)
            if prepared[name].compile_s is not None:
                row["compile_s"] = prepared[name].compile_s
            if prepared[name].note:
                row["note"] = prepared[name].note
        else:
            row["status"] = status.get(name, "failed: no timing")
        rows.append(row)
    return {
        "workload": w.key,
        "title": w.title,
        "sizes": list(w.sizes),
        "n": w.n,
        "batch_size": w.batch_size,
        "learning_rate": w.learning_rate,
        "reps": reps,
        "rows": rows,
    }


def _paired_ratio(times: dict[str, list[float]], name: str, base: str) -> float | None:
    """Median over repetitions of time(name) / time(base) in the same repetition."""
    if base not in times or not times[base] or len(times[base]) != len(times[name]):
        return None
    return statistics.median(t / b for t, b in zip(times[name], times[base], strict=True))


def format_workload(result: dict[str, Any]) -> str:
    headers = ["contender", "median s/epoch", "min–max", "× GEMM floor", "× hand numpy",
               "compile", "note"]
    rows = []
    for r in result["rows"]:
        if "median" in r:
            rows.append([
                r["contender"], fmt_seconds(r["median"]), fmt_range(r["min"], r["max"]),
                fmt_ratio(r.get("ratio_floor")), fmt_ratio(r.get("ratio_hand")),
                fmt_seconds(r.get("compile_s")), r.get("note", ""),
            ])
        else:
            status = r["status"] if len(r["status"]) <= 80 else r["status"][:77] + "..."
            rows.append([r["contender"], "-", "-", "-", "-", "-", status])
    head = f"{result['title']} — {result['reps']} interleaved repetitions, medians"
    return head + "\n" + format_table(headers, rows)
