"""Reference accuracies of scikit-learn's MLPClassifier on symgrad's digits split.

Trains a 64-32-10 tanh MLP (plain SGD and Adam) on ``symgrad.datasets.digits_split()``
for seeds 0..4 and prints the held-out accuracy. Exits 0 with a message if
scikit-learn is not installed.

Usage: ``python benchmarks/sklearn_digits.py``
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

try:
    from symgrad.datasets import digits_split
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from symgrad.datasets import digits_split

SEEDS = range(5)
CONFIGS: dict[str, dict[str, Any]] = {
    "sgd": dict(
        solver="sgd",
        learning_rate_init=0.1,
        batch_size=32,
        max_iter=100,
        momentum=0.0,
        alpha=0.0,
    ),
    "adam (defaults)": dict(solver="adam"),
}


def main() -> int:
    """Run the benchmark and print per-seed and mean±std test accuracy."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        print("skipped: scikit-learn not installed")
        return 0

    d = digits_split()
    for name, kwargs in CONFIGS.items():
        accs = []
        for seed in SEEDS:
            clf = MLPClassifier(
                hidden_layer_sizes=(32,), activation="tanh", random_state=seed, **kwargs
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(d["X_train"], d["y_train"])
            accs.append(float(clf.score(d["X_test"], d["y_test"])))
            print(f"{name:16s} seed={seed} test_acc={accs[-1]:.4f} epochs={clf.n_iter_}")
        a = np.array(accs)
        print(f"{name:16s} mean={a.mean():.4f} ± {a.std():.4f} (std over {len(a)} seeds)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
