"""W4 and W5 of issue 12: one epoch of mini-batch SGD on a small CNN, float32, side by side.

- W4: the digits CNN: 8×8×1 → conv 3×3, 16 filters, padding 1, relu → maxpool 2 → flatten
  → dense 10 softmax, cross-entropy; the 1,437 training digits, batch 32, lr 0.1.
- W5: CIFAR-sized synthetic: 2,048 images 32×32×3 (seeded normal noise, random labels) →
  conv 3×3×32 pad 1 relu → maxpool 2 → conv 3×3×64 pad 1 relu → maxpool 2 → flatten →
  dense 10 softmax; batch 64, lr 0.01.

Feature maps are NHWC: a map of n images is the matrix of n·H·W rows and C columns, conv
weights HWIO, flatten row-major (h, w, c) — symgrad's layout (DESIGN.md, "Layers beyond
dense"). Contenders (each prepared once, then timed one epoch at a time by
``training_bench.run_workload``, paired and interleaved):

- ``GEMM floor``: only the matrix multiplications of the im2col formulation, per batch:
  forward P·W per conv layer and A·W for the dense one; backward Pᵀ·δ (and Aᵀ·δ) for
  every layer, δ·Wᵀ for every layer but the first.
- ``hand-written numpy``: what a careful person writes without the kernels' tricks:
  ``np.pad`` + ``sliding_window_view`` im2col (one reshaping copy), col2im as kh·kw
  slice-adds into a zeroed padded array, max pooling by reshape, argmax over the window
  axis and ``put_along_axis`` back, GEMMs and gradients into preallocated arrays.
- ``numpy + conv kernels``: the same network on the kernels every generated conv module
  contains (templates/conv_kernels.py.jinja), every buffer preallocated (out=, work=,
  mask=): nothing is allocated per batch. What the generated module can reach.
- ``generated f32``: the module symgrad generates for examples/digits_cnn.toml (W4) and
  benchmarks/specs/w5_cnn.toml (W5), ``train(epochs=1, optimizer="sgd")``; "not
  available" while symgrad cannot generate conv specs.
- ``PyTorch eager``: nn.Conv2d/MaxPool2d/Linear (NCHW, the data converted once),
  F.cross_entropy, torch.optim.SGD, 2 threads.
- ``JAX jit step``: ``lax.conv_general_dilated`` in NHWC/HWIO, ``reduce_window`` max
  pooling, one AOT-compiled step per batch (compile time reported apart). Not the epoch
  as one ``lax.scan``: on W5 (256 images) XLA's CPU loop took 36 s where the steps took 1.3 s.

``trajectory_check`` runs one epoch of every implementation from the same initial
parameters over the same batches and compares the per-batch losses (float32 rounding).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import training_bench as tb
from bench_common import BENCH_DIR, ROOT, has_module, spec_toml

KERNELS = "numpy + conv kernels"
SPECS_DIR = BENCH_DIR / "specs"
KERNEL_SIZE, PADDING, POOL = 3, 1, 2  # every conv layer: 3×3, padding 1, then relu, maxpool 2


# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvWorkload:
    """conv 3×3 (padding 1) relu → maxpool 2, once per entry of ``convs`` (its filters),
    then flatten → dense ``outputs`` softmax, cross-entropy."""

    key: str
    image: tuple[int, int, int]  # (H, W, C)
    convs: tuple[int, ...]
    outputs: int
    n: int
    batch_size: int
    learning_rate: float
    data: str = "synthetic"  # or "digits"
    spec: str | None = None  # the spec the generated contender loads (from the repository root)
    arch: str = "cnn"

    @property
    def inputs(self) -> int:
        return math.prod(self.image)

    @property
    def sizes(self) -> tuple[int, ...]:
        """(H, W, C, filters…, outputs): for the results file."""
        return (*self.image, *self.convs, self.outputs)

    def maps(self) -> list[tuple[int, int, int]]:
        """The (H, W, C) of every conv layer's input, then of the flattened map."""
        (H, W, C), out = self.image, []
        for f in self.convs:
            out.append((H, W, C))
            H, W, C = H // POOL, W // POOL, f
        return [*out, (H, W, C)]

    @property
    def title(self) -> str:
        H, W, C = self.image
        arch = " → ".join(f"conv3×3×{f} relu → pool2" for f in self.convs)
        return (f"{self.key}: {H}×{W}×{C} → {arch} → dense {self.outputs}, softmax+CE, "
                f"N={self.n:,}, batch {self.batch_size}, float32")

    def param_names(self) -> list[tuple[str, str]]:
        """(weight, bias) names per trainable layer, numbered as the spec numbers layers:
        conv l, its pooling l + 1, …, flatten, dense."""
        names = [(f"W{2 * k + 1}", f"b{2 * k + 1}") for k in range(len(self.convs))]
        d = 2 * len(self.convs) + 2
        return [*names, (f"W{d}", f"b{d}")]

    def toml(self) -> str:
        H, W, C = self.image
        tables: list[dict[str, Any]] = []
        for f in self.convs:
            tables += [{"type": "conv2d", "filters": f, "kernel": KERNEL_SIZE,
                        "padding": PADDING, "activation": "relu"},
                       {"type": "maxpool2d", "kernel": POOL}]
        tables += [{"type": "flatten"}, {"units": self.outputs, "activation": "softmax"}]
        text = spec_toml(f"bench_{self.key.lower()}", 0, tables,
                         learning_rate=self.learning_rate, batch_size=self.batch_size)
        return text.replace("inputs = 0", f"inputs = [{H}, {W}, {C}]", 1)


def make_workloads(quick: bool = False) -> dict[str, ConvWorkload]:
    """W4 and W5 as issue 12 defines them (W5 with 256 images for ``quick``)."""
    return {
        "W4": ConvWorkload("W4", (8, 8, 1), (16,), 10, 1_437, 32, 0.1, data="digits",
                           spec="examples/digits_cnn.toml"),
        "W5": ConvWorkload("W5", (32, 32, 3), (32, 64), 10, 256 if quick else 2_048, 64, 0.01,
                           spec="benchmarks/specs/w5_cnn.toml"),
    }


def tiny_workloads() -> dict[str, ConvWorkload]:
    """For tests: T4 W4's shape on 6×6×1 images, T5 W5's on 8×8×2 (specs written on the fly)."""
    return {
        "T4": ConvWorkload("T4", (6, 6, 1), (4,), 3, 70, 16, 0.1),
        "T5": ConvWorkload("T5", (8, 8, 2), (3, 4), 3, 70, 16, 0.05),
    }


def init_params(w: ConvWorkload, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Glorot-uniform weights (conv: fan_in = kh·kw·C, fan_out = kh·kw·F, as torch's
    xavier_uniform_), zero biases; conv weights HWIO, the dense one (H·W·C, outputs)."""
    rng = np.random.default_rng(seed)
    k2 = KERNEL_SIZE * KERNEL_SIZE
    params = {}
    maps = w.maps()
    for (wn, bn), (_, _, C), f in zip(w.param_names(), maps, w.convs, strict=False):
        lim = math.sqrt(6.0 / (k2 * C + k2 * f))
        params[wn] = rng.uniform(-lim, lim, (KERNEL_SIZE, KERNEL_SIZE, C, f)).astype(dtype)
        params[bn] = np.zeros(f, dtype)
    wn, bn = w.param_names()[-1]
    fan_in = math.prod(maps[-1])
    lim = math.sqrt(6.0 / (fan_in + w.outputs))
    params[wn] = rng.uniform(-lim, lim, (fan_in, w.outputs)).astype(dtype)
    params[bn] = np.zeros(w.outputs, dtype)
    return params


def load_kernels() -> dict[str, Any]:
    """The kernels of templates/conv_kernels.py.jinja, rendered and executed on their own."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROOT / "templates")),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    namespace: dict[str, Any] = {"np": np}
    src = env.get_template("conv_kernels.py.jinja").render()
    exec(compile(src, "conv_kernels.py", "exec"), namespace)
    return namespace


def _cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean −log p[label] of a batch's softmax outputs, in float64."""
    return float(-np.mean(np.log(probs[np.arange(len(y)), y].astype(np.float64))))


def _softmax_rows(z: np.ndarray, row: np.ndarray) -> None:
    """z ← softmax of each row, in place (row: an (n, 1) scratch)."""
    np.max(z, axis=1, keepdims=True, out=row)
    z -= row
    np.exp(z, out=z)
    np.sum(z, axis=1, keepdims=True, out=row)
    z /= row


# --------------------------------------------------------------------------
# numpy contenders
# --------------------------------------------------------------------------


class _NumpyCNN:
    """What both numpy contenders share: data, parameters, batches, the epoch loop."""

    def __init__(self, w: ConvWorkload, data: tb.Data, params=None, seed: int = 0) -> None:
        self.w, self.X, self.Y = w, *data.as_dtype(np.float32)
        self.y = data.y
        self.lr, self.batch = w.learning_rate, w.batch_size
        p = params if params is not None else init_params(w, seed)
        p = {k: v.astype(np.float32, copy=True) for k, v in p.items()}
        self.names = w.param_names()
        # conv weights as (kh·kw·C, F) matrices (views of the same memory)
        self.W = [p[wn].reshape(-1, p[wn].shape[-1]) for wn, _ in self.names]
        self.b = [p[bn] for _, bn in self.names]
        self.params = p
        self.gW = [np.empty_like(W) for W in self.W]
        self.gb = [np.empty_like(b) for b in self.b]
        self.rng = np.random.default_rng(seed)

    def epoch(self) -> None:
        self.run(self.rng.permutation(len(self.X)))

    def run(self, perm: np.ndarray, record: bool = False) -> list[float]:
        losses = []
        for s in range(0, len(perm), self.batch):
            loss = self.step(perm[s:s + self.batch], record)
            if record:
                losses.append(loss)
        return losses

    def update(self) -> None:
        for p, g in zip(self.W + self.b, self.gW + self.gb, strict=True):
            p -= g


class NumpyCNN(_NumpyCNN):
    """The hand-written reference: a careful person's numpy CNN without the kernels'
    tricks (see the module docstring). Max pooling: each 2×2 window copied to the last
    axis, argmax there (the first maximum, as torch: the digits tie often, and an
    equality mask would route the gradient to every tied pixel), the gradient put back
    with ``np.put_along_axis``."""

    def __init__(self, w: ConvWorkload, data: tb.Data, params=None, seed: int = 0) -> None:
        super().__init__(w, data, params, seed)
        B = w.batch_size
        self.Z = [np.empty((B * H * W_, f), np.float32)
                  for (H, W_, _), f in zip(w.maps(), w.convs, strict=False)]
        self.logits = np.empty((B, w.outputs), np.float32)
        self.row = np.empty((B, 1), np.float32)

    @staticmethod
    def im2col(x: np.ndarray) -> np.ndarray:
        """(n, H, W, C) → (n·H·W, 9·C): 3×3 windows of the zero-padded images."""
        n, H, W, C = x.shape
        xp = np.pad(x, ((0, 0), (PADDING, PADDING), (PADDING, PADDING), (0, 0)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (KERNEL_SIZE, KERNEL_SIZE),
                                                       axis=(1, 2))
        return win.transpose(0, 1, 2, 4, 5, 3).reshape(n * H * W, -1)  # copies

    @staticmethod
    def col2im(dP: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The adjoint of im2col: the 9 taps added back into a zeroed padded array."""
        n, H, W, C = shape
        k, p = KERNEL_SIZE, PADDING
        dP6 = dP.reshape(n, H, W, k, k, C)
        dxp = np.zeros((n, H + 2 * p, W + 2 * p, C), dP.dtype)
        for i in range(k):
            for j in range(k):
                dxp[:, i:i + H, j:j + W] += dP6[:, :, :, i, j]
        return dxp[:, p:p + H, p:p + W]

    def step(self, idx: np.ndarray, record: bool = False) -> float | None:
        w, n = self.w, len(idx)
        x = self.X[idx].reshape(n, *w.image)
        cache = []
        for l, (H, W_, _) in enumerate(w.maps()[:-1]):
            P = self.im2col(x)
            z = np.matmul(P, self.W[l], out=self.Z[l][:n * H * W_])
            z += self.b[l]
            np.maximum(z, 0, out=z)  # relu in place
            # maxpool 2: the windows on the last axis (a copy), their first maximum
            win = z.reshape(n, H // POOL, POOL, W_ // POOL, POOL, -1).transpose(0, 1, 3, 5, 2, 4)
            win = win.reshape(*win.shape[:4], POOL * POOL)
            arg = win.argmax(axis=-1)[..., None]
            cache.append((x.shape, P, z, win.shape, arg))
            x = np.take_along_axis(win, arg, axis=-1)[..., 0]
        flat = x.reshape(n, -1)  # NHWC flatten: a free reshape
        z = np.matmul(flat, self.W[-1], out=self.logits[:n])
        z += self.b[-1]
        _softmax_rows(z, self.row[:n])
        loss = _cross_entropy(z, self.y[idx]) if record else None
        d = z
        d -= self.Y[idx]
        d *= self.lr / n  # δ = η (Ŷ − Y)/n: the learning rate folded in
        np.matmul(flat.T, d, out=self.gW[-1])
        np.sum(d, axis=0, out=self.gb[-1])
        g = (d @ self.W[-1].T).reshape(x.shape)  # ∂/∂ the last pooled map
        for l in range(len(cache) - 1, -1, -1):
            shape, P, z, wshape, arg = cache[l]
            dwin = np.zeros(wshape, np.float32)  # the gradient to each window's arg-max
            np.put_along_axis(dwin, arg, g[..., None], axis=-1)
            n_, ho, wo, f, _ = wshape
            dz = dwin.reshape(n_, ho, wo, f, POOL, POOL).transpose(0, 1, 4, 2, 5, 3)
            dz = dz.reshape(z.shape)  # a copy, back to (n·H·W, F)
            dz *= z > 0  # relu′
            np.matmul(P.T, dz, out=self.gW[l])
            np.sum(dz, axis=0, out=self.gb[l])
            if l > 0:
                g = self.col2im(dz @ self.W[l].T, shape)
        self.update()
        return loss


class KernelCNN(_NumpyCNN):
    """The network on the generated modules' conv kernels, every buffer preallocated
    (out=, work=, mask=): per batch only views are made."""

    def __init__(self, w: ConvWorkload, data: tb.Data, params=None, seed: int = 0,
                 kernels: dict[str, Any] | None = None) -> None:
        super().__init__(w, data, params, seed)
        k = kernels or load_kernels()
        self.im2col, self.col2im = k["im2col"], k["col2im"]
        self.maxpool, self.maxpool_back = k["maxpool"], k["maxpool_back"]
        B, f32 = w.batch_size, np.float32
        kk = KERNEL_SIZE * KERNEL_SIZE
        self.layers = []
        for (H, W_, C), f in zip(w.maps(), w.convs, strict=False):
            Ho, Wo = H // POOL, W_ // POOL
            self.layers.append({
                "hw": (H, W_),
                "pad": np.zeros((B, H + 2 * PADDING, W_ + 2 * PADDING, C), f32),
                "P": np.empty((B * H * W_, kk * C), f32),
                "Z": np.empty((B * H * W_, f), f32),
                "relu": np.empty((B * H * W_, f), bool),
                "pooled": np.empty((B * Ho * Wo, f), f32),
                "arg": np.empty((B * Ho * Wo, f), np.int8),
                "mask": np.empty((2, B * Ho * Wo, f), bool),
                "dZ": np.empty((B * H * W_, f), f32),
                "dP": np.empty((B * H * W_, kk * C), f32),
                "dpooled": np.empty((B * Ho * Wo, f), f32),
            })
        self.x = np.empty((B, w.inputs), f32)
        self.yb = np.empty((B, w.outputs), f32)
        self.logits = np.empty((B, w.outputs), f32)
        self.row = np.empty((B, 1), f32)
        self.geo = {"kernel": (KERNEL_SIZE,) * 2, "stride": (1, 1), "padding": (PADDING,) * 2}
        self.pool = {"kernel": (POOL, POOL), "stride": (POOL, POOL), "padding": (0, 0)}

    def step(self, idx: np.ndarray, record: bool = False) -> float | None:
        w, n = self.w, len(idx)
        x, yb = self.x[:n], self.yb[:n]
        np.take(self.X, idx, axis=0, out=x)
        np.take(self.Y, idx, axis=0, out=yb)
        A = x.reshape(-1, w.image[2])  # the (n·H·W, C) feature map
        views = []
        for l, L in enumerate(self.layers):
            H, W_ = L["hw"]
            rows, prow = n * H * W_, n * H * W_ // (POOL * POOL)
            v = {k: L[k][:rows] for k in ("P", "Z", "relu", "dZ", "dP")}
            v.update({k: L[k][:prow] for k in ("pooled", "arg", "dpooled")})
            v["mask"] = L["mask"]  # the kernels take their rows of it
            self.im2col(A, L["hw"], **self.geo, out=v["P"], work=L["pad"])
            np.matmul(v["P"], self.W[l], out=v["Z"])  # Z = im2col(A) W + b
            v["Z"] += self.b[l]
            np.maximum(v["Z"], 0, out=v["Z"])  # relu in place
            self.maxpool(v["Z"], L["hw"], **self.pool, out=(v["pooled"], v["arg"]),
                         mask=v["mask"])
            views.append(v)
            A = v["pooled"]
        flat = A.reshape(n, -1)  # NHWC flatten: a free reshape
        z = self.logits[:n]
        np.matmul(flat, self.W[-1], out=z)
        z += self.b[-1]
        _softmax_rows(z, self.row[:n])
        loss = _cross_entropy(z, self.y[idx]) if record else None
        d = z
        d -= yb
        d *= self.lr / n
        np.matmul(flat.T, d, out=self.gW[-1])
        np.sum(d, axis=0, out=self.gb[-1])
        g = views[-1]["dpooled"]
        np.matmul(d, self.W[-1].T, out=g.reshape(n, -1))
        for l in range(len(views) - 1, -1, -1):
            v, L = views[l], self.layers[l]
            self.maxpool_back(g, v["arg"], L["hw"], **self.pool, out=v["dZ"], mask=v["mask"])
            np.greater(v["Z"], 0, out=v["relu"])
            v["dZ"] *= v["relu"]  # relu′
            np.matmul(v["P"].T, v["dZ"], out=self.gW[l])  # ∂L/∂W = im2col(A)ᵀ δ
            np.sum(v["dZ"], axis=0, out=self.gb[l])
            if l > 0:
                np.matmul(v["dZ"], self.W[l].T, out=v["dP"])
                g = views[l - 1]["dpooled"]  # ∂L/∂A = col2im(δ Wᵀ)
                self.col2im(v["dP"], L["hw"], **self.geo, out=g)
        self.update()
        return loss


class ConvGemmFloor:
    """Only the matrix multiplications of one epoch of the im2col formulation."""

    def __init__(self, w: ConvWorkload, data: tb.Data, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        B, kk = w.batch_size, KERNEL_SIZE * KERNEL_SIZE
        params = init_params(w, seed)
        self.layers = []
        for (H, W_, C), f, (wn, _) in zip(w.maps(), w.convs, w.param_names(), strict=False):
            r = B * H * W_
            self.layers.append((rng.standard_normal((r, kk * C), np.float32),  # P
                                params[wn].reshape(kk * C, f),  # W
                                np.empty((r, f), np.float32),  # Z
                                np.full((r, f), 0.01, np.float32),  # δ
                                np.empty((kk * C, f), np.float32),  # ∂L/∂W
                                np.empty((r, kk * C), np.float32)))  # ∂L/∂P
        fan_in = math.prod(w.maps()[-1])
        Wd = params[w.param_names()[-1][0]]
        self.dense = (rng.standard_normal((B, fan_in), np.float32), Wd,
                      np.empty((B, w.outputs), np.float32),
                      np.full((B, w.outputs), 0.01, np.float32), np.empty_like(Wd),
                      np.empty((B, fan_in), np.float32))
        self.bounds = tb.batch_bounds(len(data.X), B)
        self.batch = B

    def epoch(self) -> None:
        for s, e in self.bounds:
            n = e - s
            everything = [*self.layers, self.dense]
            for P, W, Z, _, _, _ in everything:
                rows = len(P) * n // self.batch
                np.matmul(P[:rows], W, out=Z[:rows])
            for k in range(len(everything) - 1, -1, -1):
                P, W, _, d, gW, dP = everything[k]
                rows = len(P) * n // self.batch
                np.matmul(P[:rows].T, d[:rows], out=gW)
                if k > 0:
                    np.matmul(d[:rows], W.T, out=dP[:rows])


# --------------------------------------------------------------------------
# torch and JAX
# --------------------------------------------------------------------------


def torch_model(torch, w: ConvWorkload, params: dict[str, np.ndarray]):
    """nn.Sequential in NCHW with our parameters: HWIO → OIHW, and the dense weight's
    rows reordered from our (h, w, c) flatten to torch's (c, h, w)."""
    mods: list[Any] = []
    for (_, _, C), f, (wn, bn) in zip(w.maps(), w.convs, w.param_names(), strict=False):
        conv = torch.nn.Conv2d(C, f, KERNEL_SIZE, padding=PADDING)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(params[wn].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(params[bn]))
        mods += [conv, torch.nn.ReLU(), torch.nn.MaxPool2d(POOL)]
    H, W_, C = w.maps()[-1]
    wn, bn = w.param_names()[-1]
    dense = torch.nn.Linear(H * W_ * C, w.outputs)
    Wt = params[wn].reshape(H, W_, C, w.outputs).transpose(3, 2, 0, 1).reshape(w.outputs, -1)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(Wt.copy()))
        dense.bias.copy_(torch.from_numpy(params[bn]))
    return torch.nn.Sequential(*mods, torch.nn.Flatten(), dense)


class TorchCNN:
    def __init__(self, w: ConvWorkload, data: tb.Data, params=None, seed: int = 0) -> None:
        tb._require("torch", "torch")
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(tb.TORCH_THREADS)
        torch.manual_seed(seed)
        self.torch, self.F, self.w = torch, F, w
        self.model = torch_model(torch, w, params if params is not None else init_params(w, seed))
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=w.learning_rate, momentum=0.0)
        H, W_, C = w.image
        # the data in torch's layout, converted once (as a torch user stores it)
        self.X = torch.from_numpy(data.X.reshape(-1, H, W_, C)).permute(0, 3, 1, 2).contiguous()
        self.y = torch.from_numpy(data.y.astype(np.int64))

    def run(self, perm, record: bool = False) -> list[float]:
        losses, B = [], self.w.batch_size
        for s in range(0, len(perm), B):
            idx = perm[s:s + B]
            self.opt.zero_grad(set_to_none=True)
            loss = self.F.cross_entropy(self.model(self.X[idx]), self.y[idx])
            loss.backward()
            self.opt.step()
            if record:
                losses.append(float(loss.detach()))
        return losses

    def epoch(self) -> None:
        self.run(self.torch.randperm(len(self.X)))


def jax_pieces(w: ConvWorkload, data: tb.Data, params=None, seed: int = 0):
    """(jax, params, step, X, Y, loss_fn) for ``training_bench``'s JAX runners: NHWC
    images, HWIO weights, SAME-padded 3×3 convolutions, 2×2 max pooling."""
    tb._require("jax", "jax")
    import jax
    import jax.numpy as jnp

    p0 = params if params is not None else init_params(w, seed)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in p0.items()}
    names, H, W_, C = w.param_names(), *w.image
    X, Y = jnp.asarray(data.X), jnp.asarray(data.Y)
    pad = ((PADDING, PADDING), (PADDING, PADDING))

    def loss_fn(q, xb, yb):
        a = xb.reshape(-1, H, W_, C)
        for wn, bn in names[:-1]:
            z = jax.lax.conv_general_dilated(a, q[wn], (1, 1), pad,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            a = jax.nn.relu(z + q[bn])
            a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, POOL, POOL, 1),
                                      (1, POOL, POOL, 1), "VALID")
        wn, bn = names[-1]
        logp = jax.nn.log_softmax(a.reshape(a.shape[0], -1) @ q[wn] + q[bn], axis=1)
        return -jnp.mean(jnp.sum(yb * logp, axis=1))

    lr = w.learning_rate

    def step(q, X, Y, idx):
        g = jax.grad(loss_fn)(q, jnp.take(X, idx, axis=0), jnp.take(Y, idx, axis=0))
        return jax.tree_util.tree_map(lambda a, ga: a - lr * ga, q, g)

    return jax, p, step, X, Y, loss_fn


def _ctx_jax_pieces(ctx: tb.Context):
    return jax_pieces(ctx.workload, ctx.data, seed=ctx.seed)[:5]


def jax_losses(w: ConvWorkload, data: tb.Data, params, perm) -> list[float]:
    """One epoch of the JAX step over the batches of ``perm``, the loss of each batch."""
    jax, p, _, X, Y, loss_fn = jax_pieces(w, data, params)
    lr = w.learning_rate

    @jax.jit
    def step(q, idx):
        loss, g = jax.value_and_grad(loss_fn)(q, X[idx], Y[idx])
        return jax.tree_util.tree_map(lambda a, ga: a - lr * ga, q, g), loss

    losses = []
    for s in range(0, len(perm), w.batch_size):
        p, loss = step(p, perm[s:s + w.batch_size].astype(np.int32))
        losses.append(float(loss))
    return losses


# --------------------------------------------------------------------------
# The generated module
# --------------------------------------------------------------------------


_NOT_AVAILABLE: dict[str, str] = {}  # spec text → why it could not be generated


def generated_module(ctx: tb.Context):
    """The module symgrad generates for the workload's spec (the committed file for W4/W5,
    one written from ``toml()`` otherwise); ``tb.Skipped`` "not available" when symgrad
    cannot generate it (yet)."""
    w = ctx.workload
    if w.key in ctx.modules:
        return ctx.modules[w.key]
    if w.spec is not None:
        spec_path = ROOT / w.spec
        if not spec_path.exists():
            raise tb.Skipped(f"not available: {w.spec} does not exist yet")
    else:
        spec_path = ctx.workdir / f"bench_{w.key.lower()}.toml"
        spec_path.write_text(w.toml(), encoding="utf-8")
    text = spec_path.read_text(encoding="utf-8")
    if text in _NOT_AVAILABLE:  # tried in this run already (the preparer, then the check)
        raise tb.Skipped(_NOT_AVAILABLE[text])
    try:
        from symgrad.codegen import generate_source

        source = generate_source(spec_path)
    except Exception as e:  # the symgrad of this checkout cannot generate conv specs yet
        first = (str(e).splitlines() or [type(e).__name__])[0]
        _NOT_AVAILABLE[text] = f"not available: {type(e).__name__}: {first[:120]}"
        raise tb.Skipped(_NOT_AVAILABLE[text]) from None
    out = ctx.workdir / f"bench_{w.key.lower()}.py"
    out.write_text(source, encoding="utf-8")
    mod = tb.import_file(out, f"_symgrad_bench_{w.key.lower()}")
    ctx.modules[w.key] = mod
    return mod


def prep_generated(ctx: tb.Context) -> tb.Prepared:
    mod = generated_module(ctx)
    w = ctx.workload
    X, Y = ctx.data.as_dtype(np.float32)
    params = mod.init_params(seed=ctx.seed, dtype=np.float32)

    def epoch() -> None:
        mod.train(params, X, Y, epochs=1, batch_size=w.batch_size,
                  learning_rate=w.learning_rate, optimizer="sgd", verbose=False)

    return tb.Prepared(epoch, note=w.spec or "")


def generated_losses(mod, w: ConvWorkload, data: tb.Data, params, perm) -> list[float]:
    """One epoch of SGD on the generated module's ``loss_and_grad`` over ``perm``'s batches."""
    p = {k: np.array(v, np.float32) for k, v in params.items()}
    X, Y = data.as_dtype(np.float32)
    losses = []
    for s in range(0, len(perm), w.batch_size):
        idx = perm[s:s + w.batch_size]
        loss, grads = mod.loss_and_grad(p, X[idx], Y[idx])
        for k, g in grads.items():
            p[k] -= w.learning_rate * g
        losses.append(float(loss))
    return losses


# --------------------------------------------------------------------------
# Preparers and the trajectory check
# --------------------------------------------------------------------------


def prep_floor(ctx: tb.Context) -> tb.Prepared:
    return tb.Prepared(ConvGemmFloor(ctx.workload, ctx.data, ctx.seed).epoch)


def prep_hand(ctx: tb.Context) -> tb.Prepared:
    return tb.Prepared(NumpyCNN(ctx.workload, ctx.data, seed=ctx.seed).epoch)


def prep_kernels(ctx: tb.Context) -> tb.Prepared:
    return tb.Prepared(KernelCNN(ctx.workload, ctx.data, seed=ctx.seed).epoch)


def prep_torch(ctx: tb.Context) -> tb.Prepared:
    net = TorchCNN(ctx.workload, ctx.data, seed=ctx.seed)
    return tb.Prepared(net.epoch, note=f"torch {net.torch.__version__}, "
                                       f"{net.torch.get_num_threads()} threads")


PREPARERS = {
    tb.FLOOR: prep_floor,
    tb.HAND: prep_hand,
    KERNELS: prep_kernels,
    "generated f32": prep_generated,
    "PyTorch eager": prep_torch,
    "JAX jit step": lambda ctx: tb.prep_jax_step(ctx, pieces=_ctx_jax_pieces),
}


def trajectory_check(w: ConvWorkload, data: tb.Data, workdir: Path, seed: int = 0,
                     log=lambda _: None, generated: bool = True) -> dict[str, Any]:
    """One epoch of every implementation from the same initial parameters over the same
    batches: the per-batch losses, and the largest relative difference of each from the
    hand-written numpy's (float32 rounding: well below 1e-3). ``generated``: include the
    generated module (SGD on its ``loss_and_grad``)."""
    params = init_params(w, seed)
    perm = np.random.default_rng(seed + 1).permutation(w.n)
    runs: dict[str, Any] = {}
    t0 = time.perf_counter()
    runs[tb.HAND] = NumpyCNN(w, data, params).run(perm, record=True)
    runs[KERNELS] = KernelCNN(w, data, params).run(perm, record=True)
    if has_module("torch"):
        import torch

        runs["PyTorch eager"] = TorchCNN(w, data, params).run(torch.from_numpy(perm), True)
    else:
        runs["PyTorch eager"] = "skipped: torch not installed"
    runs["JAX"] = (jax_losses(w, data, params, perm) if has_module("jax")
                   else "skipped: jax not installed")
    try:
        if generated:
            mod = generated_module(tb.Context(w, data, workdir, seed))
            runs["generated f32"] = generated_losses(mod, w, data, params, perm)
    except tb.Skipped as e:
        runs["generated f32"] = f"skipped: {e}"
    except Exception as e:  # a broken module must not sink the report
        runs["generated f32"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
    ref = np.array(runs[tb.HAND])
    out: dict[str, Any] = {"workload": w.key, "batches": len(ref), "seconds":
                           time.perf_counter() - t0, "first_loss": float(ref[0]),
                           "last_loss": float(ref[-1]), "rows": []}
    for name, losses in runs.items():
        if isinstance(losses, str):
            out["rows"].append({"contender": name, "status": losses})
            continue
        diff = float(np.max(np.abs(np.array(losses) - ref) / np.abs(ref)))
        out["rows"].append({"contender": name, "max_rel_diff": diff, "ok": diff < 1e-3,
                            "losses": losses})
    log(f"  {w.key} trajectory check: {time.perf_counter() - t0:.1f} s")
    return out


def format_trajectory(res: dict[str, Any]) -> str:
    lines = [f"{res['workload']}: epoch-1 losses, same initial parameters and batches "
             f"({res['batches']} batches, hand-written numpy {res['first_loss']:.4f} → "
             f"{res['last_loss']:.4f}); largest relative difference from it:"]
    for r in res["rows"]:
        if "status" in r:
            lines.append(f"  {r['contender']}: {r['status']}")
        else:
            mark = "ok" if r["ok"] else "DIFFERS"
            lines.append(f"  {r['contender']}: {r['max_rel_diff']:.1e} [{mark}]")
    return "\n".join(lines)
