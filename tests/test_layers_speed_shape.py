"""The shape of the generated training step for the layers beyond dense (issue 11 §4): what
makes it as fast as the hand-written numpy of benchmarks/training_bench.py, held as
properties of the code and of its run, not as timings.

- the step allocates nothing per batch (tracemalloc around repeated steps);
- every array statement of the step writes into a buffer (out= or an in-place operator);
- batchnorm's backward never forms ∂L/∂X̂ (its column sums come from ∂L/∂γ, ∂L/∂β) and
  computes A − 𝟏μ once for σ² and X̂;
- _step(params, grads, ws, lr) writes η ∂L/∂θ (η riding in the δ's), equal to η times
  loss_and_grad's gradient; a non-finite loss leaves grads as they were (train() passes
  the spare set of parameters as grads under plain SGD).
"""

from __future__ import annotations

import ast
import re
import tracemalloc

import numpy as np
import pytest

from symgrad.codegen import generate_source, load_module
from symgrad.spec import load_spec

# W6's shape, small: dense → batchnorm relu → dense → batchnorm relu → add (skip) → softmax
SPEC = """
[network]
name = "w6_small"
inputs = 12

[[layer]]
units = 160

[[layer]]
type = "batchnorm"
activation = "relu"

[[layer]]
units = 160

[[layer]]
type = "batchnorm"
activation = "relu"

[[layer]]
type = "add"
inputs = ["A2", "A4"]

[[layer]]
units = 5
activation = "softmax"

[loss]
kind = "cross_entropy"

[training]
optimizer = "sgd"
learning_rate = 0.05
batch_size = 64
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("speed") / "w6_small.toml"
    path.write_text(SPEC, encoding="utf-8")
    source = generate_source(load_spec(path))
    return source, load_module(source, "w6_small_speed")


def _batch(n=64, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 12))
    Y = np.eye(5)[rng.integers(0, 5, n)]
    return X, Y


def _step_source(source: str) -> list[str]:
    """The code lines of _step's body (comments and blank lines dropped)."""
    body = source.split("\ndef _step(", 1)[1].split("\n    return L\n", 1)[0]
    body = body.split('\n    """\n', 1)[1]  # after the docstring
    return [ln.strip() for ln in body.splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def test_step_allocates_nothing_per_batch(built) -> None:
    _, m = built
    params = m.init_params(seed=0)
    X, Y = _batch()
    ws = m._workspace(len(X), np.float64)
    ws["X"][...], ws["Y"][...] = X, Y
    current = {k: params[k] for k in m.PARAM_SHAPES}
    grads = {k: np.empty_like(v) for k, v in current.items()}
    m._step(current, grads, ws, 0.1)  # warm: any lazy state of numpy's
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(5):
            m._step(current, grads, ws, 0.1)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1024  # nothing kept
    # nothing made either: the only transient memory is numpy's own ufunc buffer (a row
    # broadcast over a matrix, z -= μ, goes through it: at most getbufsize() values), less
    # than one N×n array of the step (64 × 160 float64 values)
    smallest = 64 * 160 * 8
    transient = np.getbufsize() * 8 + 4096
    assert transient < smallest
    assert peak - before < transient, f"the step allocated {peak - before} bytes"


def test_step_statements_write_into_buffers(built) -> None:
    """Each line of the step is a call with out=, an in-place operator, an unpacking of
    the dicts, the scalar loss, or the early return: nothing builds a new array."""
    source, _ = built
    allowed = re.compile(
        r"^(np\.\w+(\.\w+)?\(.*out=\w+\)"  # np.f(…, out=buffer)
        r"|\w+ [-+*/]= (\w+|lr / N)"  # dest op= operand
        r"|np\.dot\(.*out=\w+\)"
        r"|np\.copyto\(\w+, \w+\)"
        r"|(\w+, )*\w+ = (\w+\[\"\w+\"\], )*\w+\[\"\w+\"\]"  # X, Y = ws["X"], ws["Y"]
        r"|N = X\.shape\[0\]"
        r"|L = .*"  # the loss: a scalar
        r"|if not -np\.inf < L < np\.inf:|return L)$"
    )
    lines = _step_source(source)
    assert len(lines) > 40
    bad = [ln for ln in lines if not allowed.match(ln)]
    assert not bad, bad
    for ln in lines:  # and no fancy indexing or temporaries inside the calls
        if ln.startswith("np.") and "out=" in ln:
            tree = ast.parse(ln)
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
            assert len(calls) == 1, ln


def test_batchnorm_backward_is_compact(built) -> None:
    source, _ = built
    lines = _step_source(source)
    code = "\n".join(lines)
    assert "dXhat" not in code  # ∂L/∂X̂ is never formed
    assert code.count("np.subtract(A1, mu2") == 1 and code.count("np.subtract(A3, mu4") == 1
    # δ₁ from δ₂, ∂L/∂γ₂, ∂L/∂β₂: four passes over N×n (one product, one subtraction, the
    # column-sum row, the γ(σ² + ε)^(−½) row)
    delta1 = [ln for ln in lines if re.match(r"(np\.\w+\(.*out=dZ1\)|dZ1 [-*]=)", ln)]
    assert delta1 == [
        "np.multiply(Xhat2, S4, out=dZ1)",
        "np.subtract(dZ2, dZ1, out=dZ1)",
        "dZ1 -= S4",
        "dZ1 *= S2",
    ]
    assert "#   since 𝟏ᵀ∂L/∂X̂₂ = γ₂ ⊙ ∂L/∂β₂ and 𝟏ᵀ(∂L/∂X̂₂ ⊙ X̂₂) = γ₂ ⊙ ∂L/∂γ₂" in source


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-11), (np.float32, 3e-4)])
def test_step_gives_eta_times_the_gradient(built, dtype, rtol) -> None:
    _, m = built
    params = {k: v.astype(dtype) for k, v in m.init_params(seed=1).items()}
    rng = np.random.default_rng(5)
    for k in params:  # γ, β away from 1, 0: every term of the rule counts
        if k.startswith(("gamma", "beta")):
            params[k] += rng.standard_normal(params[k].shape).astype(dtype) * 0.3
    X, Y = (a.astype(dtype) for a in _batch())
    value, expected = m.loss_and_grad(params, X, Y)
    ws = m._workspace(len(X), dtype)
    ws["X"][...], ws["Y"][...] = X, Y
    current = {k: params[k] for k in m.PARAM_SHAPES}
    lr = 0.125
    grads = {k: np.full_like(v, np.nan) for k, v in current.items()}
    assert float(m._step(current, grads, ws, lr)) == pytest.approx(value, rel=rtol)
    for name in m.PARAM_SHAPES:
        if name in ("b1", "b3"):  # 𝟏ᵀ of batchnorm's ∂L/∂A: zero up to rounding
            assert np.max(np.abs(grads[name])) <= 1e-5 if dtype == np.float32 else 1e-12
            continue
        scale = np.max(np.abs(expected[name]))
        assert scale > 0, name
        assert np.max(np.abs(grads[name] - lr * expected[name])) <= rtol * lr * scale, name


def test_non_finite_loss_leaves_grads_alone(built) -> None:
    _, m = built
    params = m.init_params(seed=0)
    X, Y = _batch()
    X[3, 2] = np.nan
    ws = m._workspace(len(X), np.float64)
    ws["X"][...], ws["Y"][...] = X, Y
    current = {k: params[k] for k in m.PARAM_SHAPES}
    spare = {k: np.full_like(v, 7.0) for k, v in current.items()}
    with np.errstate(invalid="ignore"):
        loss = float(m._step(current, spare, ws, 0.1))
    assert np.isnan(loss)
    assert all(np.all(v == 7.0) for v in spare.values())


def test_sgd_train_is_plain_sgd_on_loss_and_grad(built) -> None:
    """train(optimizer="sgd") (η in the step, the spare set as grads) takes the steps of
    θ ← θ − η ∂L/∂θ on loss_and_grad, batch by batch in train()'s order."""
    _, m = built
    X, Y = _batch(n=96, seed=8)
    params = m.init_params(seed=2)
    ref = {k: v.copy() for k, v in params.items()}
    m.train(params, X, Y, epochs=2, batch_size=32, learning_rate=0.05, optimizer="sgd",
            seed=4, verbose=False)
    rng = np.random.default_rng(4)
    for _ in range(2):
        order = rng.permutation(len(X))
        for s in range(0, len(X), 32):
            idx = order[s:s + 32]
            _, g = m.loss_and_grad(ref, X[idx], Y[idx])
            for k in g:
                ref[k] = ref[k] - 0.05 * g[k]
    for k in m.PARAM_SHAPES:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
