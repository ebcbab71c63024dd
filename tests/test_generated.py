"""The committed modules in generated/: current with their specs, ruff-clean, and working.

Golden copies, as openapi-python-client's end-to-end tests keep them: compare the full
text with what the spec generates now (``make generated`` refreshes them), then import
and run each one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from symgrad.codegen import generate_source, is_generated, load_module
from symgrad.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "examples").glob("*.toml"))  # image specs (conv, issue 12) too


def module_path(spec_path: Path) -> Path:
    return ROOT / "generated" / f"{load_spec(spec_path).name}.py"


def ruff() -> list[str]:
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        exe = shutil.which("ruff")
        if exe is None:
            pytest.skip("ruff is not installed (pip install ruff, or make test)")
        return [exe]
    return [str(find_ruff_bin())]


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_committed_module_is_current(spec_path: Path) -> None:
    path = module_path(spec_path)
    assert path.exists(), f"{path} is missing: run make generated"
    expected = generate_source(load_spec(spec_path))
    assert path.read_text(encoding="utf-8") == expected, (
        f"{path.relative_to(ROOT)} differs from what {spec_path.name} generates: "
        "run make generated"
    )
    assert is_generated(path)


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_committed_module_runs(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    m = load_module(module_path(spec_path))
    assert m.INPUTS == spec.inputs and m.OUTPUTS == spec.outputs
    assert m.PARAM_SHAPES == spec.param_shapes()
    errors = m.check_gradients(seed=0)
    assert set(errors) == set(m.PARAM_SHAPES)
    assert max(errors.values()) <= 1e-6
    params = m.init_params(seed=1, dtype=np.float32)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, spec.inputs)).astype(np.float32)
    Y = m._as_targets(m.predict(m.init_params(seed=2), X), np.float32)
    value, grads = m.loss_and_grad(params, X, Y)
    assert np.isfinite(value)
    assert {k: (g.shape, g.dtype) for k, g in grads.items()} == {
        k: (p.shape, np.dtype(np.float32)) for k, p in params.items() if k in m.PARAM_SHAPES
    }
    for optimizer in m.OPTIMIZERS:  # each of them, whatever the widths (regression: 1 output)
        history = m.train(params, X, Y, epochs=3, batch_size=16, optimizer=optimizer,
                          verbose=False)
        assert len(history["loss"]) == 3 and all(np.isfinite(history["loss"])), optimizer


def test_generated_dir_is_ruff_clean() -> None:
    config = ["--config", str(ROOT / "pyproject.toml")]
    for args in (["check", *config], ["format", "--check", *config]):
        proc = subprocess.run([*ruff(), *args, str(ROOT / "generated")], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_script_check_and_train(tmp_path: Path) -> None:
    from symgrad.datasets import digits_split

    script = ROOT / "generated" / "digits_mlp.py"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the module stands alone
    proc = subprocess.run([sys.executable, str(script), "check"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gradient check passed" in proc.stdout
    d = digits_split()
    np.savez(tmp_path / "digits.npz", X=d["X_train"], y=d["y_train"], X_val=d["X_test"],
             y_val=d["y_test"])
    cmd = [sys.executable, str(script), "train", "digits.npz", "--epochs", "5", "--save",
           "params.npz"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 5 and "val_accuracy" in proc.stderr
    m = load_module(script)
    params = m.load_params(tmp_path / "params.npz")
    assert params["W1"].dtype == np.float32
    assert np.mean(m.predict(params, d["X_test"]) == d["y_test"]) > 0.8
