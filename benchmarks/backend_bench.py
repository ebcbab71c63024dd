"""Issue 16: the generated module's torch backend beside PyTorch eager (autograd), W1, W3, W5.

Rows (one epoch of mini-batch SGD each, float32, timed in paired, interleaved repetitions:
every repetition runs each row once, the order rotated; medians of 7 by default, and the
paired median of each row's time over PyTorch eager's in the same repetition):

- ``generated torch``: ``symgrad generate --backend torch``'s module, ``train(epochs=1,
  optimizer="sgd")`` on float32 tensors (its in-place step: ``torch.addmm(…, out=)``,
  ``torch.mv``, ``add_``; W5: the step's conv2d, ∂L/∂W, ∂L/∂A and pooling on torch's own
  kernels, aten convolution / convolution_backward / max_pool2d_with_indices, on
  channels_last views of the (N·H·W)×C maps).
- ``PyTorch eager autograd``: the same network as nn.Linear/nn.Conv2d/nn.MaxPool2d modules,
  F.cross_entropy, ``loss.backward()``, torch.optim.SGD, the same thread count.
- ``generated numpy``: the numpy module of the same spec (``generate``'s default backend).
- ``GEMM floor``: only the epoch's matrix products in numpy (training_bench's, conv_bench's).
- ``generated jax``: ``symgrad generate --backend jax``'s module, ``train(epochs=1,
  optimizer="sgd")`` on float32 JAX arrays: one jax.jit step per batch (loss_and_grad's
  readable statements and the update, fused by XLA; W5: its im2col/col2im and pooling
  kernels of strided slices and .at[].add, not XLA's convolution), compiled in a warm-up
  epoch; beside training_bench's ``JAX jit step`` (W1, W3: jax.grad of the same loss, one
  jitted step per batch, its own initial parameters and order).
- ``array-API torch f32`` (W1, W3): the design the backend was chosen over: the same formulas
  written once against the Array API standard (``array_api_compat.array_namespace``), which
  has no ``out=``: every statement allocates.

The same model (one set of initial parameters, the numpy module's Glorot draws, given to
every row), the same data and the same batches: every row visits the rows in the order the
generated torch module draws, ``torch.randperm(n, generator=torch.Generator().manual_seed(
seed))`` (the numpy module's data is permuted so that its own order, ``default_rng(seed)``,
gives the same batches). ``--smoke`` checks exactly that, without timing anything: one epoch
of each row in float64 from the same parameters, and the trained parameters and epoch loss
of the generated torch module and of PyTorch eager against the numpy module's, printed.

The load average (1, 5, 15 minutes) is recorded before and after every workload; results
go to benchmarks/results/backend_<workloads>.txt and .json.

    .venv/bin/python benchmarks/backend_bench.py --smoke                # correctness, no timing
    .venv/bin/python benchmarks/backend_bench.py --workloads W1,W3,W5   # on a quiet machine
    .venv/bin/python benchmarks/run.py --no-install --workloads W1,W3 \\
        --contenders numpy,torch,backends --no-derive --no-gradcheck
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import training_bench as tb
from bench_common import BENCH_DIR, ROOT, fmt_ratio, fmt_seconds, format_table

GEN_TORCH = "generated torch"
EAGER = "PyTorch eager autograd"
GEN_NUMPY = "generated numpy"
ARRAY_API = "array-API torch f32"
GEN_JAX = "generated jax"
JAX_STEP = "JAX jit step"  # training_bench's: jax.grad, one jitted step per batch
CONTENDERS = (GEN_TORCH, ARRAY_API)  # run.py's "backends" group (beside its own rows)
ROWS = (GEN_TORCH, EAGER, GEN_NUMPY, tb.FLOOR, ARRAY_API, GEN_JAX, JAX_STEP)  # this script's
RESULTS = BENCH_DIR / "results"
DEVICE = "cpu"  # --device: where the torch rows run (their tensors, their model)


# --------------------------------------------------------------------------
# The same model, data and batches for every row
# --------------------------------------------------------------------------


def _is_conv(w) -> bool:
    return getattr(w, "arch", "mlp") == "cnn"


def initial_params(w, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """The one set of initial parameters every row starts from (Glorot-uniform weights,
    zero biases; conv weights HWIO), by the spec's names."""
    if _is_conv(w):
        import conv_bench as cb

        return cb.init_params(w, seed, dtype)
    Ws, bs = tb.glorot(w.sizes, dtype, seed)
    params = {}
    for l, (W, b) in enumerate(zip(Ws, bs, strict=True), 1):
        params[f"W{l}"], params[f"b{l}"] = W, b
    return params


def torch_order(n: int, seed: int = 0):
    """The order of the rows the generated torch module's train(epochs=1, seed=seed) visits
    (torch.Generator().manual_seed(seed)): every row's batches."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def numpy_data(X: np.ndarray, Y: np.ndarray, seed: int = 0):
    """X, Y rearranged so that the numpy module's train(epochs=1, seed=seed), which visits
    the rows in np.random.default_rng(seed).permutation(n), takes the batches of torch_order."""
    n = len(X)
    mine, theirs = np.random.default_rng(seed).permutation(n), torch_order(n, seed).numpy()
    Xp, Yp = np.empty_like(X), np.empty_like(Y)
    Xp[mine], Yp[mine] = X[theirs], Y[theirs]
    return Xp, Yp


def _generated(ctx: tb.Context, backend: str):
    """The module of the workload's spec for backend (generated once per run)."""
    from symgrad.codegen import generate_source
    from symgrad.spec import load_spec

    w = ctx.workload
    key = (w.key, backend)
    if key not in ctx.modules:
        spec = getattr(w, "spec", None)  # a conv workload's committed spec (W4, W5)
        spec_path = ctx.workdir / f"bench_{w.key.lower()}.toml"
        spec_path.write_text((ROOT / spec).read_text(encoding="utf-8") if spec else w.toml(),
                             encoding="utf-8")
        out = ctx.workdir / f"bench_{w.key.lower()}_{backend}.py"
        out.write_text(generate_source(load_spec(spec_path), backend), encoding="utf-8")
        ctx.modules[key] = tb.import_file(out, f"_symgrad_bench_{w.key.lower()}_{backend}")
    return ctx.modules[key]


def _sync(torch) -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


class GeneratedTorch:
    """The generated torch module on the workload, from initial_params, on DEVICE."""

    def __init__(self, ctx: tb.Context, dtype=np.float32) -> None:
        tb._require("torch", "torch")
        import torch

        torch.set_num_threads(tb.TORCH_THREADS)
        self.torch, self.w, self.seed = torch, ctx.workload, ctx.seed
        self.mod = _generated(ctx, "torch")
        self.params = {k: torch.from_numpy(v).to(DEVICE) for k, v in
                       initial_params(self.w, ctx.seed, dtype).items()}
        X, Y = ctx.data.as_dtype(dtype)
        self.X, self.Y = torch.from_numpy(X).to(DEVICE), torch.from_numpy(Y).to(DEVICE)

    def epoch(self) -> float:
        h = self.mod.train(self.params, self.X, self.Y, epochs=1, batch_size=self.w.batch_size,
                           learning_rate=self.w.learning_rate, optimizer="sgd", seed=self.seed,
                           verbose=False)
        return h["loss"][0]  # (its one host read per epoch: the GPU is done)

    def trained(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.params.items()}


class GeneratedNumpy:
    """The numpy module on the workload, from initial_params, on numpy_data's batches."""

    def __init__(self, ctx: tb.Context, dtype=np.float32) -> None:
        self.w, self.seed = ctx.workload, ctx.seed
        self.mod = _generated(ctx, "numpy")
        self.params = initial_params(self.w, ctx.seed, dtype)
        self.X, self.Y = numpy_data(*ctx.data.as_dtype(dtype), ctx.seed)

    def epoch(self) -> float:
        h = self.mod.train(self.params, self.X, self.Y, epochs=1, batch_size=self.w.batch_size,
                           learning_rate=self.w.learning_rate, optimizer="sgd", seed=self.seed,
                           verbose=False)
        return h["loss"][0]

    def trained(self) -> dict[str, np.ndarray]:
        return self.params


def jax_data(mod, X: np.ndarray, Y: np.ndarray, seed: int = 0):
    """X, Y rearranged so that the jax module's train(epochs=1, seed=seed), which visits the
    rows in jax.random.permutation of its first key (mod._keys(seed)), takes the batches of
    torch_order."""
    import jax

    n = len(X)
    mine = np.asarray(jax.random.permutation(next(mod._keys(seed)), n))
    theirs = torch_order(n, seed).numpy()
    Xp, Yp = np.empty_like(X), np.empty_like(Y)
    Xp[mine], Yp[mine] = X[theirs], Y[theirs]
    return Xp, Yp


class GeneratedJax:
    """The generated jax module on the workload, from initial_params, on jax_data's batches
    (float64 turns on jax_enable_x64)."""

    def __init__(self, ctx: tb.Context, dtype=np.float32) -> None:
        tb._require("jax", "jax")
        self.w, self.seed = ctx.workload, ctx.seed
        self.mod = _generated(ctx, "jax")
        X, Y = jax_data(self.mod, *ctx.data.as_dtype(dtype), ctx.seed)
        # JAX arrays once, as the module's train() checks them (float64: jax_enable_x64)
        self.params, self.X, self.Y = self.mod._arguments(
            initial_params(self.w, ctx.seed, dtype), X, Y)

    def epoch(self) -> float:  # (train() reads the epoch's loss: the steps are done)
        h = self.mod.train(self.params, self.X, self.Y, epochs=1, batch_size=self.w.batch_size,
                           learning_rate=self.w.learning_rate, optimizer="sgd", seed=self.seed,
                           verbose=False)
        return h["loss"][0]

    def trained(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.params.items()}


class Eager:
    """PyTorch's own: nn modules holding initial_params, F.cross_entropy on the logits,
    loss.backward(), torch.optim.SGD, over torch_order's batches, on DEVICE."""

    def __init__(self, ctx: tb.Context, dtype=np.float32) -> None:
        tb._require("torch", "torch")
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(tb.TORCH_THREADS)
        self.torch, self.F, w = torch, F, ctx.workload
        self.w, params = w, initial_params(w, ctx.seed, dtype)
        X = torch.from_numpy(ctx.data.as_dtype(dtype)[0])
        default = torch.get_default_dtype()
        torch.set_default_dtype(X.dtype)  # the modules' parameters made in dtype, then copied
        try:
            self.model = self._model(torch, w, params)
        finally:
            torch.set_default_dtype(default)
        if _is_conv(w):
            H, W_, C = w.image
            X = X.reshape(-1, H, W_, C).permute(0, 3, 1, 2).contiguous()  # NCHW, converted once
        self.model.to(device=DEVICE).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=w.learning_rate, momentum=0.0)
        self.X = X.to(DEVICE)
        self.y = torch.from_numpy(ctx.data.y.astype(np.int64)).to(DEVICE)
        self.order = torch_order(len(X), ctx.seed).to(DEVICE)

    @staticmethod
    def _model(torch, w, params):
        """nn.Sequential holding params: conv_bench's CNN (HWIO → OIHW, the dense weight's
        rows in torch's (c, h, w) flatten order), or Linear/activation pairs (weight = Wₗᵀ)."""
        if _is_conv(w):
            import conv_bench as cb

            return cb.torch_model(torch, w, params)
        mods: list[Any] = []
        act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[w.hidden_activation]
        for l in range(1, len(w.sizes)):
            linear = torch.nn.Linear(w.sizes[l - 1], w.sizes[l])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(params[f"W{l}"].T.copy()))
                linear.bias.copy_(torch.from_numpy(params[f"b{l}"]))
            mods += [linear, act()] if l < len(w.sizes) - 1 else [linear]
        return torch.nn.Sequential(*mods)  # logits: F.cross_entropy's log-softmax

    def epoch(self) -> float:
        total, B = self.torch.zeros((), dtype=self.X.dtype, device=DEVICE), self.w.batch_size
        for s in range(0, len(self.order), B):
            idx = self.order[s:s + B]
            self.opt.zero_grad(set_to_none=True)
            loss = self.F.cross_entropy(self.model(self.X[idx]), self.y[idx])
            loss.backward()
            self.opt.step()
            total += loss.detach() * len(idx)
        return float(total) / len(self.order)  # one host read per epoch, as the module's

    def trained(self) -> dict[str, np.ndarray]:
        """The parameters in the spec's layout (Wₗ (fan_in, fan_out); conv HWIO, the dense
        weight's rows in symgrad's (h, w, c) flatten order)."""
        out, w = {}, self.w
        layers = [m for m in self.model if hasattr(m, "weight")]
        names = w.param_names() if _is_conv(w) else [
            (f"W{l}", f"b{l}") for l in range(1, len(w.sizes))]
        for (wn, bn), m in zip(names, layers, strict=True):
            W = m.weight.detach().cpu().numpy()
            if W.ndim == 4:  # OIHW → HWIO
                W = W.transpose(2, 3, 1, 0)
            elif _is_conv(w):  # (outputs, C·H·W) → (H·W·C, outputs)
                H, W_, C = w.maps()[-1]
                W = W.reshape(-1, C, H, W_).transpose(2, 3, 1, 0).reshape(H * W_ * C, -1)
            else:
                W = W.T
            out[wn], out[bn] = np.ascontiguousarray(W), m.bias.detach().cpu().numpy()
        return out


def _note() -> str:
    import torch

    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {DEVICE}"


def prep_generated_torch(ctx: tb.Context) -> tb.Prepared:
    run = GeneratedTorch(ctx)
    return tb.Prepared(run.epoch, note=_note())


def prep_eager(ctx: tb.Context) -> tb.Prepared:
    run = Eager(ctx)

    def epoch() -> None:
        run.epoch()

    return tb.Prepared(epoch, note=_note())


def prep_generated_numpy(ctx: tb.Context) -> tb.Prepared:
    return tb.Prepared(GeneratedNumpy(ctx).epoch, note="numpy")


def prep_array_api(ctx: tb.Context) -> tb.Prepared:
    tb._require("torch", "torch")
    tb._require("array_api_compat", "array-api-compat")
    import array_api_compat
    import torch

    w = ctx.workload
    if getattr(w, "arch", "mlp") != "mlp" or w.hidden_activation != "relu":
        raise tb.Skipped("written for the relu MLPs (W1, W3) only")
    torch.set_num_threads(tb.TORCH_THREADS)
    X, Y = (torch.from_numpy(a) for a in ctx.data.as_dtype(np.float32))
    xp = array_api_compat.array_namespace(X)
    params = initial_params(w, ctx.seed)
    L = len(w.sizes) - 1
    Ws = [xp.asarray(params[f"W{l}"].copy()) for l in range(1, L + 1)]
    bs = [xp.asarray(params[f"b{l}"].copy()) for l in range(1, L + 1)]
    n, B, lr = X.shape[0], w.batch_size, w.learning_rate
    order = torch_order(n, ctx.seed)

    def step(Xb, Yb) -> None:
        N = Xb.shape[0]
        A, As, masks = Xb, [Xb], []
        for W, b in zip(Ws[:-1], bs[:-1], strict=True):
            Z = A @ W + b  # Zₗ = Aₗ₋₁ Wₗ + bₗ
            masks.append(Z > 0)
            A = xp.where(masks[-1], Z, xp.zeros_like(Z))  # Aₗ = relu(Zₗ)
            As.append(A)
        Z = A @ Ws[-1] + bs[-1]
        E = xp.exp(Z - xp.max(Z, axis=1, keepdims=True))
        Yhat = E / xp.sum(E, axis=1, keepdims=True)  # Ŷ = softmax(Z_L)
        dZ = (Yhat - Yb) / N  # δ_L = (Ŷ − Y)/N
        for l in range(len(Ws) - 1, -1, -1):
            dW, db = xp.matrix_transpose(As[l]) @ dZ, xp.sum(dZ, axis=0)  # Aᵀδ, 𝟏ᵀδ
            if l:
                dZ = (dZ @ xp.matrix_transpose(Ws[l])) * xp.astype(masks[l - 1], xp.float32)
            Ws[l] -= lr * dW
            bs[l] -= lr * db

    def epoch() -> None:
        for s in range(0, n, B):
            idx = order[s:s + B]
            step(xp.take(X, idx, axis=0), xp.take(Y, idx, axis=0))

    return tb.Prepared(epoch, note=f"array-api-compat {array_api_compat.__version__}")


def prep_generated_jax(ctx: tb.Context) -> tb.Prepared:
    import jax

    run = GeneratedJax(ctx)
    start = time.perf_counter()
    run.epoch()  # the warm-up: jax.jit compiles the step (and a last, smaller batch's)
    return tb.Prepared(run.epoch, time.perf_counter() - start,
                       note=f"jax {jax.__version__}, {jax.default_backend()}")


PREPARERS = {GEN_TORCH: prep_generated_torch, EAGER: prep_eager, GEN_NUMPY: prep_generated_numpy,
             ARRAY_API: prep_array_api, GEN_JAX: prep_generated_jax,
             JAX_STEP: tb.PREPARERS[JAX_STEP]}


# --------------------------------------------------------------------------
# The smoke check: same model, data and batches; trajectories after one epoch
# --------------------------------------------------------------------------


def trajectory_check(w, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """One epoch of SGD of the generated torch module, PyTorch eager and the numpy module in
    float64 from initial_params over torch_order's batches: each one's epoch loss and its
    trained parameters' largest difference from the numpy module's, relative to the largest
    entry of each parameter (float64 rounding: far below 1e-9)."""
    ctx = tb.Context(w, tb.make_data(w, seed), workdir, seed)
    start = time.perf_counter()
    runs = {GEN_NUMPY: GeneratedNumpy(ctx, np.float64), GEN_TORCH: GeneratedTorch(ctx, np.float64),
            EAGER: Eager(ctx, np.float64)}
    if tb.has_module("jax"):
        runs[GEN_JAX] = GeneratedJax(ctx, np.float64)
    losses = {name: run.epoch() for name, run in runs.items()}
    ref = runs[GEN_NUMPY].trained()
    rows = []
    for name, run in runs.items():
        mine = run.trained()
        assert set(mine) == set(ref), (name, sorted(mine), sorted(ref))
        diff = max(float(np.max(np.abs(mine[k] - ref[k])) / max(np.max(np.abs(ref[k])), 1e-30))
                   for k in ref)
        loss_diff = abs(losses[name] - losses[GEN_NUMPY]) / abs(losses[GEN_NUMPY])
        rows.append({"contender": name, "epoch_loss": losses[name], "max_rel_param_diff": diff,
                     "rel_loss_diff": loss_diff, "ok": diff < 1e-9 and loss_diff < 1e-12})
    start_params = initial_params(w, seed, np.float64)
    moved = max(float(np.max(np.abs(ref[k] - start_params[k]))) for k in ref)
    return {"workload": w.key, "title": w.title.replace("float32", "float64"), "n": w.n,
            "batches": -(-w.n // w.batch_size), "largest_update": moved, "rows": rows,
            "seconds": time.perf_counter() - start}


def format_trajectory(res: dict[str, Any]) -> str:
    head = (f"{res['title']}: one epoch of SGD, the same initial parameters and the same "
            f"{res['batches']} batches (largest parameter change {res['largest_update']:.3g})")
    rows = [[r["contender"], f"{r['epoch_loss']:.12g}", f"{r['rel_loss_diff']:.1e}",
             f"{r['max_rel_param_diff']:.1e}", "ok" if r["ok"] else "DIFFERS"]
            for r in res["rows"]]
    return head + "\n" + format_table(
        ["row", "epoch loss", "Δ loss (rel.)", "Δ params (rel. to numpy)", "agree"], rows)


# --------------------------------------------------------------------------
# The timing run
# --------------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def format_result(res: dict[str, Any]) -> str:
    """A workload's table: median seconds per epoch, range, and the paired medians of each
    row's time over PyTorch eager's and over the GEMM floor's."""
    headers = ["row", "median s/epoch", "min – max", "× PyTorch eager", "× GEMM floor", "note"]
    rows = []
    for r in res["rows"]:
        if "median" in r:
            rows.append([r["contender"], fmt_seconds(r["median"]),
                         f"{fmt_seconds(r['min'])} – {fmt_seconds(r['max'])}",
                         fmt_ratio(r.get("ratio_eager")), fmt_ratio(r.get("ratio_floor")),
                         r.get("note", "")])
        else:
            rows.append([r["contender"], "-", "-", "-", "-", r["status"][:80]])
    la0, la1 = res["load_average"]["start"], res["load_average"]["end"]
    head = (f"{res['title']} — {res['reps']} paired, interleaved repetitions, medians; "
            f"load average (1, 5, 15 min) {la0} at the start, {la1} at the end")
    warn = ("\n  (warning: load average above 0.5 at the start: the machine is not quiet)"
            if la0[0] > 0.5 else "")
    return head + warn + "\n" + format_table(headers, rows)


def run(keys: list[str], reps: int, quick: bool, log=lambda m: print(m, file=sys.stderr)):
    """The timing run of the workloads keys: a result per workload (JSON-able)."""
    import conv_bench as cb

    workloads, conv = tb.make_workloads(quick=quick), cb.make_workloads(quick=quick)
    results = []
    with tempfile.TemporaryDirectory(prefix="symgrad-backends-") as tmp:
        for key in keys:
            if key in conv:
                w, floor = conv[key], cb.PREPARERS[tb.FLOOR]
            else:
                w, floor = workloads[key], tb.PREPARERS[tb.FLOOR]
            preparers = {**PREPARERS, tb.FLOOR: floor}
            names = tuple(n for n in ROWS if not (key in conv and n in (ARRAY_API, JAX_STEP)))
            before = load_average()
            res = tb.run_workload(w, reps, Path(tmp), names, preparers=preparers, log=log)
            times = {r["contender"]: r["times"] for r in res["rows"] if "times" in r}
            for r in res["rows"]:
                if "times" in r:
                    r["ratio_eager"] = tb._paired_ratio(times, r["contender"], EAGER)
            res["load_average"] = {"start": before, "end": load_average()}
            res["device"] = DEVICE
            results.append(res)
            print(format_result(res), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="check the rows agree (float64, one epoch, quick sizes); no timing")
    ap.add_argument("--quick", action="store_true", help="small N (a development run)")
    ap.add_argument("--reps", type=int, default=7, help="paired repetitions (default 7)")
    ap.add_argument("--workloads", default="W1,W3,W5")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit numpy BLAS and torch to this many threads (a busy machine)")
    ap.add_argument("--device", default="cpu", help="the torch rows' device (cpu, cuda)")
    ap.add_argument("--out", default=None, help="results' base name (default backend_<workloads>)")
    args = ap.parse_args(argv)
    DEVICE = args.device
    if args.threads:
        print(tb.limit_threads(args.threads), file=sys.stderr)
    keys = args.workloads.split(",")
    if args.smoke:
        import conv_bench as cb

        workloads, conv = tb.make_workloads(quick=True), cb.make_workloads(quick=True)
        ok = True
        with tempfile.TemporaryDirectory(prefix="symgrad-backends-") as tmp:
            for key in keys:
                res = trajectory_check(conv.get(key) or workloads[key], Path(tmp))
                print(format_trajectory(res), flush=True)
                ok &= all(r["ok"] for r in res["rows"])
        print("smoke: the rows agree" if ok else "smoke: the rows DIFFER")
        return 0 if ok else 1
    results = run(keys, args.reps, args.quick)
    base = RESULTS / (args.out or f"backend_{'_'.join(keys)}{'_quick' if args.quick else ''}")
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "device": DEVICE, "threads": tb.TORCH_THREADS,
            "reps": args.reps, "quick": args.quick}
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    RESULTS.mkdir(exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "workloads": results},
                                                    indent=1) + "\n", encoding="utf-8")
    base.with_suffix(".txt").write_text(
        json.dumps(meta) + "\n\n" + "\n\n".join(format_result(r) for r in results) + "\n",
        encoding="utf-8")
    print(f"wrote {base}.txt and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
