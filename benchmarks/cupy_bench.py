"""Issue 16 on a GPU: the generated CuPy and torch modules beside PyTorch eager on CUDA.

benchmarks/backend_bench.py's rows and batches (one epoch of mini-batch SGD, float32, paired
repetitions, medians, the paired ratio over PyTorch eager), its torch rows on ``cuda``, and
one more row:

- ``generated cupy``: ``symgrad generate --backend cupy``'s module, ``train(epochs=1,
  optimizer="sgd")`` on float32 CuPy arrays (the numpy module's statements in CuPy's
  spelling; its batches are the numpy module's, the data permuted as backend_bench does).

Absolute times mean something only on a quiet GPU machine; benchmarks/gpu_check.sh runs this.

    .venv/bin/python benchmarks/cupy_bench.py --workloads W1,W5 [--quick] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import sys

import backend_bench as bb
import numpy as np
import training_bench as tb

GEN_CUPY = "generated cupy"


class GeneratedCupy(bb.GeneratedNumpy):
    """The CuPy module on the workload: the numpy module's parameters and batches, on the
    device."""

    def __init__(self, ctx: tb.Context, dtype=np.float32) -> None:
        import cupy

        self.cp, self.w, self.seed = cupy, ctx.workload, ctx.seed
        self.mod = bb._generated(ctx, "cupy")
        self.params = {k: cupy.asarray(v) for k, v in
                       bb.initial_params(self.w, ctx.seed, dtype).items()}
        self.X, self.Y = (cupy.asarray(a) for a in bb.numpy_data(*ctx.data.as_dtype(dtype),
                                                                   ctx.seed))

    def epoch(self) -> float:
        loss = super().epoch()
        self.cp.cuda.Device().synchronize()
        return loss

    def trained(self) -> dict[str, np.ndarray]:
        return {k: self.cp.asnumpy(v) for k, v in self.params.items()}


def prep_generated_cupy(ctx: tb.Context) -> tb.Prepared:
    return tb.Prepared(GeneratedCupy(ctx).epoch, note="cupy")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W1,W5")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small N (a first look)")
    ap.add_argument("--device", default="cuda", help="the torch rows' device (default cuda)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    bb.DEVICE = args.device
    bb.PREPARERS = {**bb.PREPARERS, GEN_CUPY: prep_generated_cupy}
    bb.ROWS = (bb.GEN_TORCH, GEN_CUPY, bb.EAGER, bb.GEN_NUMPY)
    results = bb.run(args.workloads.split(","), args.reps, args.quick)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
