"""One epoch of mini-batch SGD, float32, side by side: the contenders of issue 6.

Workloads (synthetic data from a seeded generator, no downloads):

- W1: 784-256-128-10 relu, softmax + cross-entropy, N = 60,000 (``full``) or 12,000, batch 128
- W2: digits 64-32-10 tanh, N = 1,437 (``symgrad.datasets.digits_split``), batch 32
- W3: 512-512-512-512-512-10 relu, N = 20,000 (``full``) or 5,000, batch 128
- W6: 784-256-BN-relu-256-BN-relu-(add skip)-10 softmax, N = 12,000, batch 128 (issue 11):
  dense 256 → batchnorm relu → dense 256 → batchnorm relu → add [A2, A4] → dense 10
  softmax, training-mode batchnorm (batch statistics, running statistics updated)

Contenders (each prepared once, then timed one epoch at a time):

- ``GEMM floor``: only the matrix multiplications of the epoch, numpy, same shapes and
  dtype: forward A·W per layer, backward Aᵀ·δ per layer and δ·Wᵀ for every layer but
  the first (no gradient with respect to the data is needed). W6: its three dense layers.
- ``hand-written numpy``: preallocated buffers, ``out=`` everywhere, per-batch
  ``np.take(..., out=)`` gather, in-place activations, η/N folded into the output delta.
  W6: batchnorm forward and backward in place (X̂ overwrites Z; the compact backward
  with 𝟏ᵀ∂L/∂X̂ = γ ⊙ ∂L/∂β and 𝟏ᵀ(∂L/∂X̂ ⊙ X̂) = γ ⊙ ∂L/∂γ, no extra pass).
- ``generated f32`` / ``generated f64``: the module symgrad generates for the workload's
  spec, ``train(params, X, Y, epochs=1, ...)`` with optimizer "sgd".
- ``PyTorch eager``: nn.Sequential + F.cross_entropy + torch.optim.SGD, 2 threads
  (W6: nn.BatchNorm1d and the same skip in a small nn.Module).
- ``JAX jit step``: one jitted, AOT-compiled SGD step per batch (gather inside).
- ``JAX jit scan``: the whole epoch as one jitted ``lax.scan`` over batches.
- ``scikit-learn``: MLPClassifier(solver="sgd", momentum=0, alpha=0).partial_fit, one epoch
  (not W6: MLPClassifier has no batchnorm).

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
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # the spec's (and torch's) batchnorm defaults
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
    # "mlp": a dense chain; "bn_residual": layers are the three dense layers of W6's
    # dense → batchnorm relu → dense → batchnorm relu → add (skip) → dense softmax
    arch: str = "mlp"

    @property
    def sizes(self) -> tuple[int, ...]:
        """The widths of the dense layers' inputs and outputs (the GEMM floor's shapes)."""
        return (self.inputs, *(u for u, _ in self.layers))

    @property
    def hidden_activation(self) -> str:
        return self.layers[0][1]

    @property
    def outputs(self) -> int:
        return self.layers[-1][0]

    @property
    def title(self) -> str:
        if self.arch == "bn_residual":
            i, h1, h2, o = self.sizes
            arch = f"{i}-{h1}-BN-relu-{h2}-BN-relu-(add skip)-{o}"
        else:
            arch = "-".join(map(str, self.sizes)) + f" {self.hidden_activation}"
        return (
            f"{self.key}: {arch}, softmax+CE, N={self.n:,}, "
            f"batch {self.batch_size}, float32"
        )

    def toml(self) -> str:
        if self.arch == "bn_residual":
            (h1, _), (h2, _), (o, _) = self.layers
            tables: list[dict[str, Any]] = [
                {"units": h1},
                {"type": "batchnorm", "activation": "relu"},
                {"units": h2},
                {"type": "batchnorm", "activation": "relu"},
                {"type": "add", "inputs": ["A2", "A4"]},
                {"units": o, "activation": "softmax"},
            ]
            return spec_toml(f"bench_{self.key.lower()}", self.inputs, tables,
                             learning_rate=self.learning_rate, batch_size=self.batch_size)
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


def _bn_residual(key, sizes, n, batch, lr) -> Workload:
    i, h1, h2, o = sizes
    if h1 != h2:
        raise ValueError("the skip adds A2 and A4: both hidden widths must be equal")
    return Workload(key, i, ((h1, "relu"), (h2, "relu"), (o, "softmax")), n, batch, lr,
                    arch="bn_residual")


def make_workloads(full: bool = False, quick: bool = False) -> dict[str, Workload]:
    """W1, W2, W3 as issue 6 defines them, W6 as issue 11 does; smaller N by default,
    smaller still for ``quick`` (a smoke run)."""
    n1 = 60_000 if full else 2_048 if quick else 12_000
    n3 = 20_000 if full else 1_024 if quick else 5_000
    n6 = 2_048 if quick else 12_000
    return {
        "W1": _mlp("W1", (784, 256, 128, 10), "relu", n1, 128, 0.01),
        "W2": _mlp("W2", (64, 32, 10), "tanh", 1_437, 32, 0.1, data="digits"),
        "W3": _mlp("W3", (512, 512, 512, 512, 512, 10), "relu", n3, 128, 0.01),
        "W6": _bn_residual("W6", (784, 256, 256, 10), n6, 128, 0.01),
    }


def tiny_workloads() -> dict[str, Workload]:
    """A few hundred samples of tiny nets, for tests: T a dense chain, T6 W6's shape."""
    return {
        "T": _mlp("T", (16, 8, 4), "tanh", 200, 32, 0.05),
        "T6": _bn_residual("T6", (16, 8, 8, 4), 200, 32, 0.05),
    }


def tiny_workload() -> Workload:
    """A few hundred samples of a tiny net, for tests."""
    return tiny_workloads()["T"]


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


class _BNBuffers:
    """The batch-sized buffers of ``NumpyBNResidual``; ``view(n)`` for the last batch."""

    NAMES = ("x", "y", "h2", "a2", "h4", "a4", "a5", "p", "d5", "d4", "d2", "t", "m", "row")

    def __init__(self, sizes: tuple[int, ...], batch: int, dtype) -> None:
        i, h, _, o = sizes
        self.n = batch
        self.x, self.y = np.empty((batch, i), dtype), np.empty((batch, o), dtype)
        # h2/h4: Z of the dense layer, overwritten by X̂ of the batchnorm after it
        for name in ("h2", "a2", "h4", "a4", "a5", "d5", "d4", "d2", "t"):
            setattr(self, name, np.empty((batch, h), dtype))
        self.p = np.empty((batch, o), dtype)  # Z6, then Ŷ, then δ6
        self.m = np.empty((batch, h), bool)  # relu masks
        self.row = np.empty((batch, 1), dtype)

    def view(self, n: int) -> _BNBuffers:
        if n == self.n:
            return self
        v = object.__new__(_BNBuffers)
        v.n = n
        for name in self.NAMES:
            setattr(v, name, getattr(self, name)[:n])
        return v


class NumpyBNResidual:
    """W6 by hand: dense → batchnorm relu → dense → batchnorm relu → add (skip) → dense
    softmax, training-mode batchnorm (batch mean, biased variance; the running mean and
    unbiased variance updated as torch does), what a careful numpy programmer writes.

    Batchnorm's backward is the compact one: with δ = ∂L/∂Z (Z = γ ⊙ X̂ + β),
    ∂L/∂γ = 𝟏ᵀ(δ ⊙ X̂), ∂L/∂β = 𝟏ᵀδ, ∂L/∂X̂ = δ ⊙ γ, so 𝟏ᵀ∂L/∂X̂ = γ ⊙ ∂L/∂β and
    𝟏ᵀ(∂L/∂X̂ ⊙ X̂) = γ ⊙ ∂L/∂γ, and ∂L/∂A = (γ/√(σ² + ε)/N) ⊙ (N δ − 𝟏ᵀδ − X̂ ⊙ ∂L/∂γ):
    one elementwise product and two column sums beyond the update of δ itself."""

    def __init__(self, w: Workload, data: Data, dtype=np.float32, seed: int = 0) -> None:
        self.X, self.Y = data.as_dtype(dtype)
        self.batch, self.lr = w.batch_size, w.learning_rate
        (self.W1, self.W3, self.W6), (self.b1, self.b3, self.b6) = glorot(w.sizes, dtype, seed)
        h = w.sizes[1]
        self.gW1, self.gW3, self.gW6 = (np.empty_like(W) for W in (self.W1, self.W3, self.W6))
        self.gb1, self.gb3, self.gb6 = (np.empty_like(b) for b in (self.b1, self.b3, self.b6))
        self.gamma = [np.ones(h, dtype) for _ in range(2)]
        self.beta = [np.zeros(h, dtype) for _ in range(2)]
        self.running_mean = [np.zeros(h, dtype) for _ in range(2)]
        self.running_var = [np.ones(h, dtype) for _ in range(2)]
        self.ggamma = [np.empty(h, dtype) for _ in range(2)]
        self.gbeta = [np.empty(h, dtype) for _ in range(2)]
        self.mu = [np.empty(h, dtype) for _ in range(2)]
        self.var = [np.empty(h, dtype) for _ in range(2)]
        self.inv = [np.empty(h, dtype) for _ in range(2)]  # 1/√(σ² + ε)
        self.vec = np.empty(h, dtype)  # scratch row
        self.updates = [(self.W1, self.gW1), (self.b1, self.gb1), (self.W3, self.gW3),
                        (self.b3, self.gb3), (self.W6, self.gW6), (self.b6, self.gb6),
                        *zip(self.gamma, self.ggamma, strict=True),
                        *zip(self.beta, self.gbeta, strict=True)]
        self.buf = _BNBuffers(w.sizes, w.batch_size, dtype)
        self.bounds = batch_bounds(len(self.X), w.batch_size)
        last = self.bounds[-1][1] - self.bounds[-1][0]
        if last < 2:
            raise ValueError("batchnorm in training mode needs batches of 2 or more rows")
        self.last = self.buf.view(last)
        self.rng = np.random.default_rng(seed)

    def epoch(self) -> None:
        perm = self.rng.permutation(len(self.X))
        for s, e in self.bounds:
            self.step(perm[s:e], self.buf if e - s == self.batch else self.last)

    def _bn_forward(self, z: np.ndarray, k: int, out: np.ndarray, t: np.ndarray) -> None:
        """z ← X̂ = (z − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−½) in place, out ← relu(γ ⊙ X̂ + β); running
        statistics updated."""
        n, m = len(z), BN_MOMENTUM
        mu, var, inv, vec = self.mu[k], self.var[k], self.inv[k], self.vec
        np.mean(z, axis=0, out=mu)
        z -= mu
        np.multiply(z, z, out=t)
        np.mean(t, axis=0, out=var)
        rm, rv = self.running_mean[k], self.running_var[k]
        rm *= 1 - m
        np.multiply(mu, m, out=vec)
        rm += vec
        rv *= 1 - m
        np.multiply(var, m * n / (n - 1), out=vec)  # torch keeps the unbiased variance
        rv += vec
        np.add(var, BN_EPS, out=inv)
        np.sqrt(inv, out=inv)
        np.reciprocal(inv, out=inv)
        z *= inv
        np.multiply(z, self.gamma[k], out=out)
        out += self.beta[k]
        np.maximum(out, 0, out=out)

    def _bn_backward(self, d: np.ndarray, xhat: np.ndarray, k: int, t: np.ndarray) -> None:
        """d: δ = ∂L/∂Z of the batchnorm layer, replaced in place by ∂L/∂A of its input;
        ∂L/∂γ, ∂L/∂β into ggamma[k], gbeta[k]."""
        n = len(d)
        gg, gb, vec = self.ggamma[k], self.gbeta[k], self.vec
        np.multiply(d, xhat, out=t)
        np.sum(t, axis=0, out=gg)
        np.sum(d, axis=0, out=gb)
        np.multiply(xhat, gg, out=t)
        d *= n
        d -= gb
        d -= t
        np.multiply(self.gamma[k], self.inv[k], out=vec)
        vec *= 1 / n
        d *= vec

    def step(self, idx: np.ndarray, b: _BNBuffers) -> None:
        n = len(idx)
        np.take(self.X, idx, axis=0, out=b.x)
        np.take(self.Y, idx, axis=0, out=b.y)
        np.matmul(b.x, self.W1, out=b.h2)  # Z1 = X W1 + b1
        b.h2 += self.b1
        self._bn_forward(b.h2, 0, b.a2, b.t)  # A2 = relu(γ2 ⊙ X̂2 + β2)
        np.matmul(b.a2, self.W3, out=b.h4)  # Z3 = A2 W3 + b3
        b.h4 += self.b3
        self._bn_forward(b.h4, 1, b.a4, b.t)  # A4 = relu(γ4 ⊙ X̂4 + β4)
        np.add(b.a2, b.a4, out=b.a5)  # A5 = A2 + A4
        z, row = b.p, b.row
        np.matmul(b.a5, self.W6, out=z)  # Z6 = A5 W6 + b6, then softmax row-wise
        z += self.b6
        np.max(z, axis=1, keepdims=True, out=row)
        z -= row
        np.exp(z, out=z)
        np.sum(z, axis=1, keepdims=True, out=row)
        z /= row
        d6 = z  # δ6 = η (Ŷ − Y) / n: the learning rate folded in (every gradient is linear in it)
        d6 -= b.y
        d6 *= self.lr / n
        np.matmul(b.a5.T, d6, out=self.gW6)
        np.sum(d6, axis=0, out=self.gb6)
        np.matmul(d6, self.W6.T, out=b.d5)  # ∂L/∂A5, which reaches A4 and (the skip) A2
        np.greater(b.a4, 0, out=b.m)
        np.multiply(b.d5, b.m, out=b.d4)  # δ4
        self._bn_backward(b.d4, b.h4, 1, b.t)  # → δ3 = ∂L/∂Z3
        np.matmul(b.a2.T, b.d4, out=self.gW3)
        np.sum(b.d4, axis=0, out=self.gb3)
        np.matmul(b.d4, self.W3.T, out=b.d2)  # ∂L/∂A2 = δ3 W3ᵀ + ∂L/∂A5 (the skip)
        b.d2 += b.d5
        np.greater(b.a2, 0, out=b.m)
        b.d2 *= b.m  # δ2
        self._bn_backward(b.d2, b.h2, 0, b.t)  # → δ1 = ∂L/∂Z1
        np.matmul(b.x.T, b.d2, out=self.gW1)
        np.sum(b.d2, axis=0, out=self.gb1)
        for p, g in self.updates:
            p -= g


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
    cls = NumpyBNResidual if ctx.workload.arch == "bn_residual" else NumpyMLP
    return Prepared(cls(ctx.workload, ctx.data, seed=ctx.seed).epoch)


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
    if w.arch == "bn_residual":
        model = _torch_bn_residual(torch, w.sizes)
    else:
        act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[w.hidden_activation]
        mods: list[torch.nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(w.sizes, w.sizes[1:], strict=False)):
            mods.append(torch.nn.Linear(n_in, n_out))
            if i < len(w.sizes) - 2:
                mods.append(act())
        model = torch.nn.Sequential(*mods)  # logits; F.cross_entropy applies log-softmax
    model.train()
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


def _torch_bn_residual(torch, sizes: tuple[int, ...]):
    """W6 in torch: Linear → BatchNorm1d → relu → Linear → BatchNorm1d → relu, the skip
    added, → Linear (logits)."""
    import torch.nn.functional as F

    n_in, h, _, n_out = sizes

    class BNResidual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = torch.nn.Linear(n_in, h)
            self.bn2 = torch.nn.BatchNorm1d(h, eps=BN_EPS, momentum=BN_MOMENTUM)
            self.l3 = torch.nn.Linear(h, h)
            self.bn4 = torch.nn.BatchNorm1d(h, eps=BN_EPS, momentum=BN_MOMENTUM)
            self.l6 = torch.nn.Linear(h, n_out)

        def forward(self, x):
            a2 = F.relu(self.bn2(self.l1(x)))
            a4 = F.relu(self.bn4(self.l3(a2)))
            return self.l6(a2 + a4)

    return BNResidual()


def _jax_bn_residual(jax, jnp, w: Workload, seed: int = 0):
    """W6 in JAX: the state (params, running statistics), the loss with the batch
    statistics as aux, and the SGD step that also updates the running statistics."""
    Ws, bs = glorot(w.sizes, np.float32, seed)
    h = w.sizes[1]

    def ones():  # a new array each: the step donates its state, no buffer twice
        return jnp.ones(h, jnp.float32)

    def zeros():
        return jnp.zeros(h, jnp.float32)

    params = {"W1": jnp.asarray(Ws[0]), "b1": jnp.asarray(bs[0]), "gamma2": ones(),
              "beta2": zeros(), "W3": jnp.asarray(Ws[1]), "b3": jnp.asarray(bs[1]),
              "gamma4": ones(), "beta4": zeros(), "W6": jnp.asarray(Ws[2]),
              "b6": jnp.asarray(bs[2])}
    running = {"mean2": zeros(), "var2": ones(), "mean4": zeros(), "var4": ones()}

    def bn(z, gamma, beta):
        mu = jnp.mean(z, axis=0)
        var = jnp.mean(jnp.square(z - mu), axis=0)
        return gamma * (z - mu) * jax.lax.rsqrt(var + BN_EPS) + beta, (mu, var)

    def loss_fn(p, xb, yb):
        z2, s2 = bn(xb @ p["W1"] + p["b1"], p["gamma2"], p["beta2"])
        a2 = jax.nn.relu(z2)
        z4, s4 = bn(a2 @ p["W3"] + p["b3"], p["gamma4"], p["beta4"])
        a4 = jax.nn.relu(z4)
        logp = jax.nn.log_softmax((a2 + a4) @ p["W6"] + p["b6"], axis=1)
        return -jnp.mean(jnp.sum(yb * logp, axis=1)), (s2, s4)

    lr, m = w.learning_rate, BN_MOMENTUM

    def step(state, X, Y, idx):
        p, r = state
        xb = jnp.take(X, idx, axis=0)
        yb = jnp.take(Y, idx, axis=0)
        g, ((mu2, var2), (mu4, var4)) = jax.grad(loss_fn, has_aux=True)(p, xb, yb)
        p = jax.tree_util.tree_map(lambda q, gq: q - lr * gq, p, g)
        n = idx.shape[0]
        unbiased = n / (n - 1)
        r = {"mean2": (1 - m) * r["mean2"] + m * mu2,
             "var2": (1 - m) * r["var2"] + m * unbiased * var2,
             "mean4": (1 - m) * r["mean4"] + m * mu4,
             "var4": (1 - m) * r["var4"] + m * unbiased * var4}
        return p, r

    return (params, running), step


def _jax_pieces(ctx: Context):
    _require("jax", "jax")
    import jax
    import jax.numpy as jnp

    w = ctx.workload
    X = jnp.asarray(ctx.data.X)
    Y = jnp.asarray(ctx.data.Y)
    if w.arch == "bn_residual":
        state, bn_step = _jax_bn_residual(jax, jnp, w, ctx.seed)
        return jax, state, bn_step, X, Y
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

    return jax, params, step, X, Y


def prep_jax_step(ctx: Context, pieces=_jax_pieces) -> Prepared:
    jax, params, step, X, Y = pieces(ctx)
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


def prep_jax_scan(ctx: Context, pieces=_jax_pieces) -> Prepared:
    jax, params, step, X, Y = pieces(ctx)
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
    if ctx.workload.arch != "mlp":
        raise Skipped("MLPClassifier has no batchnorm or skip connections")
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
    preparers: dict[str, Callable[[Context], Prepared]] | None = None,
) -> dict[str, Any]:
    """Prepare every contender (one untimed warm-up epoch each), then ``reps``
    interleaved repetitions. Returns a JSON-able result; see ``format_workload``.

    ``pause`` seconds of sleep precede every timed epoch: the thread pools of the
    previous contender (OpenBLAS, OpenMP, XLA's) spin for a while after their last
    task, and on two cores that spinning would be charged to the next contender.
    ``preparers``: the contenders' set-up functions (default ``PREPARERS``; the CNN
    workloads of benchmarks/conv_bench.py bring their own)."""
    data = make_data(w, seed)
    ctx = Context(w, data, workdir, seed)
    prepared: dict[str, Prepared] = {}
    status: dict[str, str] = {}
    for name in contenders:
        try:
            p = (preparers or PREPARERS)[name](ctx)
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
