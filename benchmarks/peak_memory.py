"""Peak memory of a generated conv module's train() (issue 12's goal: peak within 2× of
data + parameters + one batch's im2col).

    python benchmarks/peak_memory.py MODULE.py N BATCH

Synthetic float32 data of N rows (made before tracing), one epoch of SGD under tracemalloc
(numpy reports its allocations to it); prints train's extra peak and the ratio
(data + peak) / (data + params + the batch's patch matrices).
"""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc

import numpy as np


def main(path: str, n: int, batch: int) -> None:
    spec = importlib.util.spec_from_file_location("peak_module", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, int(np.prod(m.INPUT_SHAPE)))).astype(np.float32)
    Y = np.eye(m.OUTPUTS, dtype=np.float32)[rng.integers(0, m.OUTPUTS, n)]
    params = m.init_params(0, np.float32)
    tracemalloc.start()
    m.train(params, X, Y, epochs=1, batch_size=batch, optimizer="sgd", verbose=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ws = m._workspace(batch, np.float32)
    patches = sum(a.nbytes for k, a in ws.items() if k.startswith("P") and k[1:].isdigit())
    data = X.nbytes + Y.nbytes
    par = sum(a.nbytes for a in params.values())
    print(f"train's extra peak {peak / 1e6:.1f} MB; data {data / 1e6:.1f} MB, params "
          f"{par / 1e6:.2f} MB, one batch's patch matrices {patches / 1e6:.1f} MB")
    print(f"(data + peak) / (data + params + patch matrices) = "
          f"{(data + peak) / (data + par + patches):.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python benchmarks/peak_memory.py MODULE.py N BATCH")
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
