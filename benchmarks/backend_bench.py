"""Issue 16: the generated module's torch backend beside PyTorch eager (autograd), W1, W3, W5.

Contenders added to training_bench's (run.py's ``backends`` group):

- ``generated torch f32``: ``symgrad generate --backend torch``'s module, ``train(epochs=1,
  optimizer="sgd")`` on float32 CPU tensors (its in-place step: ``torch.matmul(…, out=)``,
  ``torch.mv``, ``add_``).
- ``array-API torch f32``: the design this backend was chosen over: the same formulas written
  once against the Array API standard (``array_api_compat.array_namespace``), which has no
  ``out=``: every statement allocates, as loss_and_grad does. The step is loss_and_grad's
  statements for a relu MLP with softmax + cross-entropy, spelled with ``xp.`` only.

W5 (and W4): conv_bench's workloads (benchmarks/specs/w5_cnn.toml), the generated torch
module (its torch convolution kernels: Tensor.unfold im2col, slice-add adjoints, first-max
routing) beside conv_bench's ``PyTorch eager`` (nn.Conv2d/MaxPool2d, autograd) and the numpy
module (``generated f32``).

Same data, batch, learning rate and thread count (training_bench.TORCH_THREADS) as PyTorch
eager; paired, interleaved repetitions (training_bench.run_workload).

    .venv/bin/python benchmarks/backend_bench.py --quick --threads 1   # a short development run
    .venv/bin/python benchmarks/run.py --no-install --workloads W1,W3 \\
        --contenders numpy,torch,backends --no-derive --no-gradcheck
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import training_bench as tb
from bench_common import ROOT

GEN_TORCH = "generated torch f32"
ARRAY_API = "array-API torch f32"
CONTENDERS = (GEN_TORCH, ARRAY_API)


def _torch_data(ctx: tb.Context):
    import torch

    X, Y = ctx.data.as_dtype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(Y))


def prep_generated_torch(ctx: tb.Context) -> tb.Prepared:
    tb._require("torch", "torch")
    import torch

    w = ctx.workload
    torch.set_num_threads(tb.TORCH_THREADS)
    from symgrad.codegen import generate_source
    from symgrad.spec import load_spec

    spec = getattr(w, "spec", None)  # a conv workload's committed spec (W4, W5)
    spec_path = ctx.workdir / f"bench_{w.key.lower()}_torch.toml"
    spec_path.write_text((ROOT / spec).read_text(encoding="utf-8") if spec else w.toml(),
                         encoding="utf-8")
    out = ctx.workdir / f"bench_{w.key.lower()}_torch.py"
    out.write_text(generate_source(load_spec(spec_path), "torch"), encoding="utf-8")
    mod = tb.import_file(out, f"_symgrad_bench_{w.key.lower()}_torch")
    X, Y = _torch_data(ctx)
    params = mod.init_params(seed=ctx.seed, dtype=torch.float32)

    def epoch() -> None:
        mod.train(params, X, Y, epochs=1, batch_size=w.batch_size,
                  learning_rate=w.learning_rate, optimizer="sgd", verbose=False)

    return tb.Prepared(epoch, note=f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def prep_array_api(ctx: tb.Context) -> tb.Prepared:
    tb._require("torch", "torch")
    tb._require("array_api_compat", "array-api-compat")
    import array_api_compat
    import torch

    w = ctx.workload
    if w.arch != "mlp" or w.hidden_activation != "relu":
        raise tb.Skipped("written for the relu MLPs (W1, W3) only")
    torch.set_num_threads(tb.TORCH_THREADS)
    X, Y = _torch_data(ctx)
    xp = array_api_compat.array_namespace(X)
    Ws = [xp.asarray(W) for W in tb.glorot(w.sizes, np.float32, ctx.seed)[0]]
    bs = [xp.zeros((n,), dtype=xp.float32) for n in w.sizes[1:]]
    n, B, lr = X.shape[0], w.batch_size, w.learning_rate
    gen = torch.Generator().manual_seed(ctx.seed)

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
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, B):
            idx = order[s:s + B]
            step(xp.take(X, idx, axis=0), xp.take(Y, idx, axis=0))

    return tb.Prepared(epoch, note=f"array-api-compat {array_api_compat.__version__}")


PREPARERS = {GEN_TORCH: prep_generated_torch, ARRAY_API: prep_array_api}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, 3 repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--workloads", default="W1,W3,W5")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit numpy BLAS and torch to this many threads (a busy machine)")
    args = ap.parse_args(argv)
    if args.threads:
        print(tb.limit_threads(args.threads), file=sys.stderr)
    import conv_bench as cb

    workloads = tb.make_workloads(quick=args.quick)
    conv = cb.make_workloads(quick=args.quick)
    contenders = (tb.FLOOR, tb.HAND, "generated f32", "PyTorch eager", *CONTENDERS)
    with tempfile.TemporaryDirectory(prefix="symgrad-backends-") as tmp:
        for key in args.workloads.split(","):
            if key in conv:  # W5 row: generated torch vs PyTorch eager autograd (and numpy)
                w, names = conv[key], ("generated f32", "PyTorch eager", GEN_TORCH)
                preparers = {**cb.PREPARERS, GEN_TORCH: prep_generated_torch}
            else:
                w, names, preparers = workloads[key], contenders, {**tb.PREPARERS, **PREPARERS}
            res = tb.run_workload(w, args.reps or (3 if args.quick else 5), Path(tmp), names,
                                  preparers=preparers, log=lambda m: print(m, file=sys.stderr))
            print(tb.format_workload(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
