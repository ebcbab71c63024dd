"""Tests for symgrad.codegen: the lowering, the generated module's numerics and its API.

Every distinct module is generated once (``built``); networks are tiny, so the whole file
runs in seconds, most of it SymPy deriving the activations' derivatives.
"""

from __future__ import annotations

import ast
import functools
import math
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import sympy as sp

from symgrad import codegen, ops
from symgrad.activations import ACTIVATIONS, sigmoid, softplus
from symgrad.codegen import NumpyPrinter, generate, generate_source, load_module, stabilize
from symgrad.derive import Derivation, derive
from symgrad.errors import SymgradError
from symgrad.spec import IMPORTED_MODULES, Layer, Spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
CUSTOM_ACTIVATION = "x * sigmoid(x) + 0.1 * x"
CUSTOM_LOSS = "log(cosh(yhat - y))"
KINKED = {"relu", "leaky_relu", "elu", "selu", "softsign"}


# ------------------------------------------------------------------------------------------
# Building modules (once each) and data away from kinks
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    spec: Spec
    derivation: Derivation
    source: str
    module: ModuleType


@functools.cache
def built(hidden: str | tuple[str, ...], output: str, loss: str, l1: float = 0.0,
          l2: float = 0.0, sizes: tuple[int, ...] | None = None) -> Built:
    """The generated module of a network with the ``hidden`` activations (one or a tuple)
    and ``sizes`` (default 3 inputs, 4 units per hidden layer, 3 outputs)."""
    kind = {"loss": None, "loss_expr": loss[5:]} if loss.startswith("expr:") else {"loss": loss}
    hidden = (hidden,) if isinstance(hidden, str) else hidden
    sizes = sizes or (3, *[4] * len(hidden), 3)
    acts = (*hidden, output)
    layers = tuple(Layer(u, act) for u, act in zip(sizes[1:], acts, strict=True))
    spec = Spec("net", sizes[0], layers, l1=l1, l2=l2, **kind)
    d = derive(spec)
    source = generate_source(d)
    return Built(spec, d, source, load_module(source))


def targets(spec: Spec, rng: np.random.Generator, n: int) -> np.ndarray:
    out, k = spec.layers[-1].fn.name, spec.outputs
    if spec.loss_fn.name == "cross_entropy" or out == "softmax":
        return np.eye(k)[rng.integers(0, k, n)]
    if spec.loss_fn.name == "binary_cross_entropy":
        return rng.integers(0, 2, (n, k)).astype(float)
    if out == "sigmoid":
        return rng.uniform(0.1, 0.9, (n, k))
    if out == "tanh":
        return rng.uniform(-0.9, 0.9, (n, k))
    return rng.standard_normal((n, k))


def reference_forward(b: Built, params, X, Y) -> dict:
    """The derivation's own forward equations, evaluated with ``Node.numeric``."""
    env = {"X": X, "Y": Y, ops.N: X.shape[0], ops.L1: b.spec.l1, ops.L2: b.spec.l2}
    for name, value in params.items():
        env[name] = value.reshape(1, -1) if name.startswith("b") else value
    for eq in b.derivation.forward:
        env[eq.target.name] = eq.rhs.numeric(env)
    return env


def sample(b: Built, seed: int = 0, n: int = 5, margin: float = 1e-2):
    """float64 params, X, Y with every kink at least ``margin`` away: no pre-activation
    near 0, no residual near 0 or ±1 (mae, huber), no weight near 0 (l1)."""
    for attempt in range(200):
        rng = np.random.default_rng(1000 * seed + attempt)
        params = b.module.init_params(seed=attempt)
        for name in params:
            if name.startswith("b"):
                params[name] = 0.3 * rng.standard_normal(params[name].shape)
        X = rng.standard_normal((n, b.spec.inputs))
        Y = targets(b.spec, rng, n)
        env = reference_forward(b, params, X, Y)
        z = np.concatenate([env[f"Z{l}"].ravel() for l in range(1, len(b.spec.layers) + 1)])
        r = np.abs(env["Yhat"] - Y).ravel()
        w = np.concatenate([params[k].ravel() for k in params if k.startswith("W")])
        if (
            np.min(np.abs(z)) > margin
            and np.min(r) > margin
            and np.min(np.abs(r - 1)) > margin
            and (b.spec.l1 == 0 or np.min(np.abs(w)) > margin)
        ):
            return params, X, Y
    raise AssertionError("no kink-free sample found")


def finite_differences(f, params: dict, h: float = 1e-5) -> dict:
    """Five-point central differences of f at params, entry by entry, in float64."""
    grads = {}
    for name, theta in params.items():
        flat, g = theta.reshape(-1), np.empty(theta.size)
        for i in range(flat.size):
            value, values = flat[i], []
            for step in (-2 * h, -h, h, 2 * h):
                flat[i] = value + step
                values.append(f(params))
            flat[i] = value
            g[i] = (8 * (values[2] - values[1]) - (values[3] - values[0])) / (12 * h)
        grads[name] = g.reshape(theta.shape)
    return grads


def max_relative_error(a: np.ndarray, n: np.ndarray) -> float:
    return float(np.max(np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), 1e-12)))


# The table of networks: every hidden activation; every loss with each output it allows;
# penalties on and off.
HIDDEN = [(act, "identity", "mse", pen) for act in ACTIVATIONS for pen in (0.0, 0.05)]
HIDDEN += [(CUSTOM_ACTIVATION, "identity", "mse", 0.05)]
LOSSES = [
    (hid, out, loss, pen)
    for out in ("identity", "tanh", "sigmoid", "softmax")
    for loss in ("mse", "mae", "huber", f"expr:{CUSTOM_LOSS}")
    for hid, pen in (("tanh", 0.0), ("relu", 0.05))
]
LOSSES += [("tanh", "softmax", "cross_entropy", pen) for pen in (0.0, 0.05)]
LOSSES += [("relu", "sigmoid", "binary_cross_entropy", pen) for pen in (0.0, 0.05)]
LOSSES += [(CUSTOM_ACTIVATION, "sigmoid", "binary_cross_entropy", 0.05)]
SHAPES = [  # deeper and shallower networks
    (("elu", "softmax", "gelu", "tanh"), "softmax", "cross_entropy", 0.05),
    (("relu", "relu", "sigmoid"), "identity", "mse", 0.0),
    ((), "softmax", "cross_entropy", 0.05),
    ((), "identity", "huber", 0.0),
]
TABLE = HIDDEN + LOSSES + SHAPES


def case_id(case) -> str:
    hid, out, loss, pen = case
    hid = "custom" if hid == CUSTOM_ACTIVATION else hid
    hid = hid if isinstance(hid, str) else "+".join(hid) or "none"
    loss = "custom" if loss.startswith("expr:") else loss
    return f"{hid}-{out}-{loss}" + ("-l1l2" if pen else "")


def build_case(case) -> Built:
    hid, out, loss, pen = case
    return built(hid, out, loss, l1=pen, l2=2 * pen)


# ------------------------------------------------------------------------------------------
# The generated module against finite differences and against the derivation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", TABLE, ids=case_id)
def test_gradient_matches_finite_differences(case) -> None:
    b = build_case(case)
    params, X, Y = sample(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grads = b.module.loss_and_grad(params, X, Y)
        numeric = finite_differences(lambda p: b.module.loss(p, X, Y), params)
    assert set(grads) == set(params)
    for name in params:
        assert grads[name].shape == params[name].shape
        assert grads[name].dtype == np.float64
        assert max_relative_error(grads[name], numeric[name]) <= 1e-6, name
    # the loss is the derivation's loss, evaluated numerically from its equations
    env = reference_forward(b, params, X, Y)
    expected = float(env["L"].item())
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert b.module.loss(params, X, Y) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(b.module.forward(params, X), env["Yhat"], rtol=1e-10, atol=1e-12)
    # and the module's own check agrees
    errors = b.module.check_gradients(params, X, Y)
    assert max(errors.values()) <= 1e-6


@pytest.mark.parametrize("case", TABLE, ids=case_id)
def test_training_step_computes_loss_and_grad(case) -> None:
    """The in-place step of train() computes what loss_and_grad computes, in both dtypes,
    and keeps the dtype."""
    b = build_case(case)
    params64, X64, Y64 = sample(b, seed=1, n=6)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-4)):
        params = {k: v.astype(dtype) for k, v in params64.items()}
        X, Y = X64.astype(dtype), Y64.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value, expected = b.module.loss_and_grad(params, X, Y)
            ws = b.module._workspace(len(X), dtype)
            ws["X"][...], ws["Y"][...] = X, Y
            grads = {k: np.full_like(v, np.nan) for k, v in params.items()}
            step_value = b.module._step(params, grads, ws)
        assert float(step_value) == pytest.approx(value, rel=rtol)
        for name in params:
            assert grads[name].dtype == dtype and expected[name].dtype == dtype
            scale = np.max(np.abs(expected[name])) + 1e-30
            assert np.max(np.abs(grads[name] - expected[name])) <= rtol * scale, name


def _sgd_reference(m, params, X, Y, epochs, batch_size, lr, seed):
    """Plain SGD on loss_and_grad, batch by batch in train()'s order (float64 or float32)."""
    p = {k: v.copy() for k, v in params.items()}
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order, total = rng.permutation(len(X)), 0.0
        for start in range(0, len(X), batch_size):
            idx = order[start : start + batch_size]
            value, grads = m.loss_and_grad(p, X[idx], Y[idx])
            total += value * len(idx)
            p = {k: p[k] - lr * grads[k] for k in p}
        losses.append(total / len(X))
    return p, losses


@pytest.mark.parametrize("case", TABLE, ids=case_id)
def test_fused_sgd_is_sgd_on_loss_and_grad(case) -> None:
    """train() with "sgd" runs _sgd_epoch: η folded into the δ's, the update fused into the
    products; it must be plain SGD on loss_and_grad, the last smaller batch included."""
    b = build_case(case)
    params64, X64, Y64 = sample(b, seed=2, n=10)
    for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        params = {k: v.astype(dtype) for k, v in params64.items()}
        X, Y = X64.astype(dtype), Y64.astype(dtype)
        expected, losses = _sgd_reference(b.module, params, X, Y, 2, 4, 0.05, seed=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history = b.module.train(params, X, Y, epochs=2, batch_size=4, learning_rate=0.05,
                                     optimizer="sgd", seed=3, verbose=False)
        assert history["loss"] == pytest.approx(losses, rel=rtol)
        for name in params:
            assert params[name].dtype == dtype
            scale = np.max(np.abs(expected[name])) + 1e-30
            assert np.max(np.abs(params[name] - expected[name])) <= rtol * scale, name


@pytest.mark.parametrize(
    ("hidden", "output", "loss", "pen"),
    [("relu", "softmax", "cross_entropy", 0.0), ("tanh", "identity", "mse", 0.05),
     (("relu", "gelu"), "sigmoid", "binary_cross_entropy", 0.05)],
)
def test_fused_sgd_in_rows_is_sgd_on_loss_and_grad(hidden, output, loss, pen) -> None:
    """A first layer holding most of the work keeps _sgd_epoch's batch in rows (the other
    layout of the fused step): the same check as above, on such a network."""
    depth = 1 if isinstance(hidden, str) else len(hidden)
    b = built(hidden, output, loss, l1=pen, l2=2 * pen, sizes=(300, 256, *[4] * (depth - 1), 3))
    assert not codegen.transposed_layout(b.derivation)
    assert "Y_data.take(idx, axis=0" in b.source
    rng = np.random.default_rng(4)
    params64 = b.module.init_params(seed=4)
    X64 = rng.standard_normal((10, 300))
    Y64 = targets(b.spec, rng, 10)
    for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        params = {k: v.astype(dtype) for k, v in params64.items()}
        X, Y = X64.astype(dtype), Y64.astype(dtype)
        expected, losses = _sgd_reference(b.module, params, X, Y, 2, 4, 0.05, seed=3)
        history = b.module.train(params, X, Y, epochs=2, batch_size=4, learning_rate=0.05,
                                 optimizer="sgd", seed=3, verbose=False)
        assert history["loss"] == pytest.approx(losses, rel=rtol)
        for name in params:
            scale = np.max(np.abs(expected[name])) + 1e-30
            assert np.max(np.abs(params[name] - expected[name])) <= rtol * scale, name


@pytest.mark.parametrize("rows", [36, 40])  # an odd and an even number of updates
def test_sgd_on_parameters_made_by_init_params_or_not(rows) -> None:
    """init_params makes each W and b views of one array [W; b], which train() updates in
    place; separate arrays are copied into such blocks and back: the same training."""
    b = built(("tanh", "relu"), "softmax", "cross_entropy", l2=0.01, sizes=(3, 5, 4, 3))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((rows, 3)), rng.integers(0, 3, rows)
    blocked = b.module.init_params(seed=2)
    assert blocked["W2"].base is blocked["b2"].base is not None
    separate = {k: v.copy() for k, v in blocked.items()}
    arrays = {k: v for k, v in separate.items()}
    runs = []
    for params in (blocked, separate):
        runs.append(b.module.train(params, X, y, epochs=1, batch_size=4, learning_rate=0.1,
                                   verbose=False))
    assert runs[0] == runs[1]
    for k in blocked:
        np.testing.assert_array_equal(blocked[k], separate[k])
        assert separate[k] is arrays[k]  # updated in place, not replaced
    assert not np.array_equal(blocked["W2"], b.module.init_params(seed=2)["W2"])
    block = np.array(np.arange(12.0).reshape(4, 3))  # owns its memory, as in init_params
    assert b.module._block(block[:-1], block[-1]) is block
    for W, bias in ((block[1:], block[0]), (block[:-1], block[-2]), (block[:-1], block[-1].copy())):
        joined = b.module._block(W, bias)
        assert joined is not block and np.array_equal(joined, np.vstack((W, bias)))


def test_sgd_layout_follows_the_work_of_the_first_layer() -> None:
    def derivation(sizes):
        layers = tuple(Layer(u, "relu") for u in sizes[1:-1]) + (Layer(sizes[-1], "softmax"),)
        return derive(Spec("net", sizes[0], layers, loss="cross_entropy"))

    assert not codegen.transposed_layout(derivation((784, 256, 128, 10)))  # W1: rows
    assert codegen.transposed_layout(derivation((512, 512, 512, 512, 512, 10)))  # W3
    assert codegen.transposed_layout(derivation((64, 32, 10)))  # digits: small
    src = built("tanh", "softmax", "cross_entropy").source
    assert "YT_data.take(idx, axis=1" in src and "np.dot(Wb2.T, A1Tx, out=Z2T)" in src


def test_float32_in_float32_out() -> None:
    b = built("tanh", "softmax", "cross_entropy", l1=0.01, l2=0.01)
    params = b.module.init_params(seed=0, dtype=np.float32)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 3)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    value, grads = b.module.loss_and_grad(params, X, np.eye(3, dtype=np.float32)[y])
    assert isinstance(value, float)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert b.module.forward(params, X).dtype == np.float32
    b.module.train(params, X, y, epochs=2, batch_size=8, verbose=False)
    assert all(p.dtype == np.float32 for p in params.values())
    for act in ("gelu", "silu", "elu", "softplus"):
        m = built(act, "sigmoid", "mse").module
        p = m.init_params(seed=0, dtype=np.float32)
        _, g = m.loss_and_grad(p, X, rng.uniform(size=(20, 3)).astype(np.float32))
        assert all(v.dtype == np.float32 for v in g.values()), act


# ------------------------------------------------------------------------------------------
# Numerical stability
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hidden", "output", "loss"),
    [("tanh", "softmax", "cross_entropy"), ("relu", "sigmoid", "binary_cross_entropy"),
     (CUSTOM_ACTIVATION, "sigmoid", "binary_cross_entropy")],
)
def test_extreme_logits_stay_finite(hidden, output, loss) -> None:
    m = built(hidden, output, loss, l2=0.01).module
    params = m.init_params(seed=0)
    params["W2"] *= 0.0
    params["b2"] = np.array([1000.0, -1000.0, 1000.0])  # logits of ±1000 in every row
    rng = np.random.default_rng(0)
    X = 3 * rng.standard_normal((6, 3))
    Y = np.eye(3)[[1, 1, 0, 2, 1, 0]] if loss == "cross_entropy" else np.array(
        [[0.0, 1.0, 0.0]] * 6
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grads = m.loss_and_grad(params, X, Y)
        assert math.isfinite(value) and value > 100
        assert value == pytest.approx(m.loss(params, X, Y))
        assert all(np.all(np.isfinite(g)) for g in grads.values())
        ws = m._workspace(6, np.float64)
        ws["X"][...], ws["Y"][...] = X, Y
        assert float(m._step(params, {k: np.empty_like(v) for k, v in params.items()}, ws)) == (
            pytest.approx(value)
        )
        assert np.all(np.isfinite(m.forward(params, X)))
        # and huge pre-activations in the hidden layer too
        params["W1"] *= 1e4
        assert math.isfinite(m.loss(params, X, Y))
        assert all(np.all(np.isfinite(g)) for g in m.loss_and_grad(params, X, Y)[1].values())


def test_activations_do_not_overflow() -> None:
    z = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]] * 2)
    for act in ACTIVATIONS:
        if act == "softmax":
            continue
        m = built(act, "identity", "mse", sizes=(5, 5, 1)).module
        params = {"W1": np.eye(5), "b1": np.zeros(5), "W2": np.ones((5, 1)), "b2": np.zeros(1)}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                _, grads = m.loss_and_grad(params, z, np.zeros((2, 1)))
            except RuntimeWarning as e:  # pragma: no cover - reported below
                pytest.fail(f"{act}: {e}")
        assert np.all(np.isfinite(grads["W1"])), act


def test_erf_is_accurate() -> None:
    m = built("gelu", "identity", "mse").module
    x = np.concatenate([np.linspace(-8, 8, 20001), np.geomspace(1e-300, 3, 500), [0.0, np.inf]])
    reference = np.array([math.erf(v) for v in x])
    error = np.abs(m._erf(x) - reference) / np.maximum(np.abs(reference), 1e-300)
    assert error.max() < 1e-15
    assert m._erf(np.float32(0.5) * np.ones(3, np.float32)).dtype == np.float32
    assert np.isnan(m._erf(np.array([np.nan]))[0])


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


@functools.cache
def digits() -> tuple[ModuleType, dict]:
    from symgrad.datasets import digits_split

    return load_module(generate_source(load_spec(ROOT / "examples" / "digits.toml"))), (
        digits_split(dtype=np.float32)
    )


@pytest.mark.parametrize(
    ("optimizer", "learning_rate"),
    [("sgd", 0.1), ("momentum", 0.05), ("nesterov", 0.05), ("adam", 0.003), ("rmsprop", 0.002)],
)
def test_every_optimizer_learns_digits(optimizer, learning_rate) -> None:
    m, d = digits()
    params = m.init_params(seed=0, dtype=np.float32)
    history = m.train(params, d["X_train"], d["Y_train"], epochs=25, optimizer=optimizer,
                      learning_rate=learning_rate, seed=0, X_val=d["X_test"],
                      Y_val=d["y_test"], verbose=False)
    accuracy = np.mean(m.predict(params, d["X_test"]) == d["y_test"])
    assert accuracy >= 0.90
    assert history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert len(history["loss"]) == len(history["val_loss"]) == 25
    assert history["loss"][-1] < history["loss"][0]
    assert all(p.dtype == np.float32 for p in params.values())


def _torch_reference(optimizer, params, grads_of, steps, lr, hp):
    """The update rules as torch.optim documents them, written out plainly (float64)."""
    p = {k: v.copy() for k, v in params.items()}
    state = {k: {"b": None, "m": np.zeros_like(v), "v": np.zeros_like(v)} for k, v in p.items()}
    for t in range(1, steps + 1):
        grads = grads_of(p)
        for k in p:
            g, s = grads[k], state[k]
            if optimizer == "sgd":
                p[k] = p[k] - lr * g
            elif optimizer in ("momentum", "nesterov"):
                s["b"] = g.copy() if s["b"] is None else hp["momentum"] * s["b"] + g
                step = g + hp["momentum"] * s["b"] if optimizer == "nesterov" else s["b"]
                p[k] = p[k] - lr * step
            elif optimizer == "adam":
                s["m"] = hp["beta1"] * s["m"] + (1 - hp["beta1"]) * g
                s["v"] = hp["beta2"] * s["v"] + (1 - hp["beta2"]) * g * g
                m_hat = s["m"] / (1 - hp["beta1"] ** t)
                v_hat = s["v"] / (1 - hp["beta2"] ** t)
                p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + hp["eps"])
            elif optimizer == "rmsprop":
                s["v"] = hp["alpha"] * s["v"] + (1 - hp["alpha"]) * g * g
                p[k] = p[k] - lr * g / (np.sqrt(s["v"]) + hp["eps"])
    return p


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam", "rmsprop"])
def test_update_rules_are_torch_optims(optimizer) -> None:
    b = built("tanh", "softmax", "cross_entropy", l2=0.01)
    params, X, Y = sample(b, n=12)
    hp = {"momentum": 0.8, "beta1": 0.85, "beta2": 0.99, "eps": 1e-6, "alpha": 0.95}
    expected = _torch_reference(optimizer, params, lambda p: b.module.loss_and_grad(p, X, Y)[1],
                                steps=7, lr=0.05, hp=hp)
    history = b.module.train(params, X, Y, epochs=7, batch_size=12, learning_rate=0.05,
                             optimizer=optimizer, verbose=False, **hp)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-10, atol=1e-12)
    assert len(history["loss"]) == 7 and "val_loss" not in history


def test_training_is_seeded_and_reports(capsys) -> None:
    b = built("relu", "softmax", "cross_entropy")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 3)), rng.integers(0, 3, 50)
    runs = []
    for verbose in (True, False):
        params = b.module.init_params(seed=3)
        history = b.module.train(params, X, y, epochs=4, batch_size=16, learning_rate=0.1,
                                 seed=5, X_val=X[:10], Y_val=y[:10], verbose=verbose)
        runs.append((params, history))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and err[0].startswith("epoch 1/4") and "val_accuracy" in err[0]
    (p1, h1), (p2, h2) = runs
    assert h1 == h2 and all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert set(h1) == {"loss", "val_loss", "val_accuracy"}
    params = b.module.init_params(seed=3)
    b.module.train(params, X, y, epochs=4, batch_size=16, learning_rate=0.1, seed=6,
                   verbose=False)
    assert not np.array_equal(params["W1"], p1["W1"])


def test_calls_reuse_generator_and_arrays_safely() -> None:
    """train() keeps its workspaces and seeded generator for the next call: the same seed
    still gives the same run, seed=None fresh orders, and calls from several threads at
    once the results of the same calls one after the other."""
    import threading

    b = built("tanh", "softmax", "cross_entropy")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((37, 3)), rng.integers(0, 3, 37)

    def run(seed, optimizer="sgd", out=None):
        params = b.module.init_params(seed=1)
        history = b.module.train(params, X, y, epochs=3, batch_size=8, learning_rate=0.1,
                                 seed=seed, optimizer=optimizer, verbose=False)
        if out is not None:
            out.append((seed, optimizer, params, history))
        return params, history

    first = {(seed, opt): run(seed, opt) for seed in (2, 3) for opt in ("sgd", "adam")}
    for (seed, opt), (params, history) in first.items():  # again, from the kept objects
        p, h = run(seed, opt)
        assert h == history and all(np.array_equal(p[k], params[k]) for k in p)
    assert run(None)[1] != run(None)[1]
    results: list = []
    threads = [threading.Thread(target=run, args=(seed, opt, results))
               for _ in range(3) for seed in (2, 3) for opt in ("sgd", "adam")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == len(threads)
    for seed, opt, params, history in results:
        expected_params, expected_history = first[seed, opt]
        assert history == expected_history
        assert all(np.array_equal(params[k], expected_params[k]) for k in params)


@pytest.mark.parametrize(("optimizer", "learning_rate"), [("sgd", 1e6), ("momentum", 1e6)])
def test_non_finite_loss_stops_and_keeps_finite_parameters(capsys, optimizer,
                                                           learning_rate) -> None:
    b = built("relu", "identity", "mse")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((40, 3)), rng.standard_normal((40, 3))
    params = b.module.init_params(seed=0)
    history = b.module.train(params, X, Y, epochs=50, batch_size=8,
                             learning_rate=learning_rate, optimizer=optimizer, verbose=False)
    assert "stopped" in history and "non-finite loss" in history["stopped"]
    assert "non-finite loss" in capsys.readouterr().err
    assert all(np.all(np.isfinite(p)) for p in params.values())
    assert math.isfinite(b.module.loss(params, X, Y))
    assert len(history["loss"]) < 50
    # the parameters kept are exactly those of the last finite batch loss: replay SGD
    if optimizer == "sgd":
        p = b.module.init_params(seed=0)
        rng = np.random.default_rng(b.module.SEED)
        last = {k: v.copy() for k, v in p.items()}
        for _ in range(50):
            order, stop = rng.permutation(40), False
            for start in range(0, 40, 8):
                idx = order[start : start + 8]
                with np.errstate(all="ignore"):
                    value, grads = b.module.loss_and_grad(p, X[idx], Y[idx])
                if not math.isfinite(value):
                    stop = True
                    break
                last = {k: v.copy() for k, v in p.items()}
                p = {k: p[k] - learning_rate * grads[k] for k in p}
            if stop:
                break
        for k in params:
            np.testing.assert_allclose(params[k], last[k], rtol=1e-9)


def test_predict() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 3))
    m = built("tanh", "softmax", "cross_entropy").module
    p = m.init_params()
    assert np.array_equal(m.predict(p, X), np.argmax(m.forward(p, X), axis=1))
    m = built("relu", "sigmoid", "binary_cross_entropy").module
    p = m.init_params()
    labels = m.predict(p, X)
    assert labels.shape == (7, 3) and set(np.unique(labels)) <= {0, 1}
    assert np.array_equal(labels, (m.forward(p, X) > 0.5).astype(int))
    m = built("tanh", "identity", "mse").module
    p = m.init_params()
    assert np.array_equal(m.predict(p, X), m.forward(p, X))


def test_init_by_activation() -> None:
    m = built("relu", "softmax", "cross_entropy", sizes=(400, 300, 3)).module
    p = m.init_params(seed=1)
    assert p["W1"].std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)  # He
    limit = math.sqrt(6 / (300 + 3))  # Glorot uniform
    assert p["W2"].max() <= limit and p["W2"].max() > 0.95 * limit
    assert not p["b1"].any() and p["b1"].shape == (300,)
    assert np.array_equal(m.init_params(seed=1)["W1"], p["W1"])
    assert np.array_equal(m.init_params(seed=1, dtype=np.float32)["W1"], p["W1"].astype(np.float32))
    assert m.PARAM_SHAPES == {"W1": (400, 300), "b1": (300,), "W2": (300, 3), "b2": (3,)}
    assert (m.INPUTS, m.OUTPUTS) == (400, 3)


def test_save_and_load_params(tmp_path: Path) -> None:
    m = built("tanh", "identity", "mse").module
    p = m.init_params(seed=2, dtype=np.float32)
    m.save_params(p, tmp_path / "p.npz")
    q = m.load_params(tmp_path / "p.npz")
    assert all(np.array_equal(p[k], q[k]) and q[k].dtype == np.float32 for k in p)
    np.savez(tmp_path / "bad.npz", W1=np.zeros((2, 2)))
    with pytest.raises(ValueError):
        m.load_params(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------------
# The module's source: imports, comments, determinism, style
# ------------------------------------------------------------------------------------------


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("case", TABLE[::5], ids=case_id)
def test_imports_nothing_but_numpy(case) -> None:
    names = imported_modules(build_case(case).source)
    assert "numpy" in names
    assert {n for n in names if n not in sys.stdlib_module_names} == {"numpy"}
    # the spec refuses these as network names (the module would import itself)
    assert names <= set(IMPORTED_MODULES) == {"numpy", "argparse", "os", "sys", "tempfile"}


def test_backward_statements_carry_their_formulas() -> None:
    b = built("tanh", "softmax", "cross_entropy", l2=0.01)
    src = b.source
    grad = src[src.index("def loss_and_grad"):src.index("def predict")]
    for comment, code in [
        ("# δ₂ = ∂L/∂Z₂ = (Ŷ − Y)/N", "dZ2 = (Yhat - Y) / N"),
        ("# ∂L/∂W₂ = A₁ᵀ δ₂ + λ₂ W₂", "dW2 = A1.T @ dZ2 + L2 * W2"),
        ("# ∂L/∂b₂ = 𝟏ᵀ δ₂", "db2 = dZ2.sum(axis=0)"),
        ("# δ₁ = ∂L/∂Z₁ = (δ₂ W₂ᵀ) ⊙ (1 − A₁²)", "dZ1 = (dZ2 @ W2.T) * (1 - A1**2)"),
        ("# ∂L/∂W₁ = Xᵀ δ₁ + λ₂ W₁", "dW1 = X.T @ dZ1 + L2 * W1"),
    ]:
        assert f"    {comment}\n    {code}\n" in grad
    step = src[src.index("def _step"):src.index("def _sgd")]
    assert "    # δ₁ = ∂L/∂Z₁ = (δ₂ W₂ᵀ) ⊙ (1 − A₁²)\n    np.dot(dZ2, W2.T, out=dZ1)\n" in step
    assert src.startswith(codegen.MARKER)
    assert "  δ₁ = ∂L/∂Z₁ = (δ₂ W₂ᵀ) ⊙ (1 − A₁²)" in src.split('"""')[1]  # the docstring


def test_only_needed_helpers_are_emitted() -> None:
    src = built("tanh", "identity", "mse").source
    for helper in ("_erf", "_sigmoid", "_softmax", "_logsumexp", "_he("):
        assert f"def {helper}" not in src
    assert "def _erf(" in built("gelu", "identity", "mse").source
    assert "def _sigmoid(" in built("silu", "identity", "mse").source
    assert "def _he(" in built("relu", "identity", "mse").source


def test_generated_sources_are_ruff_clean(tmp_path: Path) -> None:
    """Every module of the table is already formatted: generate never depends on ruff."""
    from test_generated import ruff

    for case in TABLE:
        (tmp_path / f"{case_id(case).replace('-', '_')}.py").write_text(build_case(case).source)
    config = ["--config", str(ROOT / "pyproject.toml")]
    for args in (["check", *config, str(tmp_path)], ["format", "--check", *config, str(tmp_path)]):
        proc = subprocess.run(ruff() + args, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


DETERMINISM = """
import sys
from symgrad.codegen import generate_source
from symgrad.spec import load_spec
sys.stdout.buffer.write(generate_source(load_spec(sys.argv[1])).encode())
"""


@pytest.mark.slow
def test_output_is_byte_identical_across_hash_seeds() -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", DETERMINISM, "examples/custom.toml"], cwd=ROOT,
                         env=dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT)),
                         stdout=subprocess.PIPE)
        for seed in ("0", "4242")
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs[0] == outputs[1]
    assert outputs[0].decode() == generate_source(load_spec(ROOT / "examples" / "custom.toml"))


# ------------------------------------------------------------------------------------------
# generate(), the command line, load_module
# ------------------------------------------------------------------------------------------


def test_generate_writes_and_refuses_foreign_files(tmp_path: Path) -> None:
    spec = built("tanh", "identity", "mse").spec
    path = generate(spec, tmp_path / "net.py")
    assert path.read_text() == built("tanh", "identity", "mse").source
    assert generate(spec, path) == path  # a file symgrad wrote may be regenerated
    foreign = tmp_path / "mine.py"
    foreign.write_text("print('hand-written')\n")
    with pytest.raises(SymgradError, match="not generated by symgrad; use --force"):
        generate(spec, foreign)
    assert foreign.read_text() == "print('hand-written')\n"
    generate(spec, foreign, force=True)
    assert foreign.read_text().startswith(codegen.MARKER)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.py", "net.py"]  # no temp files


def test_generate_default_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = built("tanh", "identity", "mse").spec
    assert generate(spec) == Path("generated") / "net.py"
    assert (tmp_path / "generated" / "net.py").exists()


def test_cli_generate(tmp_path: Path, capsys) -> None:
    from symgrad.cli import main

    spec = str(ROOT / "examples" / "digits.toml")
    out = tmp_path / "digits.py"
    assert main(["generate", spec, "-o", str(out)]) == 0
    first = out.read_bytes()
    assert main(["generate", spec, "-o", str(out)]) == 0
    assert out.read_bytes() == first
    assert "is up to date" in capsys.readouterr().err
    foreign = tmp_path / "foreign.py"
    foreign.write_text("x = 1\n")
    assert main(["generate", spec, "-o", str(foreign)]) == 2
    assert capsys.readouterr().err == (
        f"symgrad: error: {foreign}: exists and was not generated by symgrad; "
        "use --force to overwrite\n"
    )
    assert foreign.read_text() == "x = 1\n"
    assert main(["generate", spec, "-o", str(foreign), "--force"]) == 0
    assert foreign.read_bytes() == first
    assert main(["generate", str(tmp_path / "missing.toml")]) == 2


def test_load_module_from_source_and_path(tmp_path: Path) -> None:
    b = built("tanh", "identity", "mse")
    (tmp_path / "net.py").write_text(b.source)
    for m in (load_module(b.source), load_module(tmp_path / "net.py"),
              load_module(str(tmp_path / "net.py"))):
        assert m.PARAM_SHAPES == b.module.PARAM_SHAPES


def test_templates_dir_exists() -> None:
    assert (codegen.templates_dir() / "module.py.jinja").is_file()


# ------------------------------------------------------------------------------------------
# Lowering pieces: stable forms and the printer
# ------------------------------------------------------------------------------------------

x, y, a = sp.symbols("x y a", real=True)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (1 / (1 + sp.exp(-x)), sigmoid(x)),
        (sp.log(1 + sp.exp(x)), softplus(x)),
        (x * sp.exp(-x) / (1 + sp.exp(-x)) ** 2, x * sigmoid(x) * (1 - sigmoid(x))),
        (sp.exp(x) - 1, codegen.expm1(x)),
        (1 - sp.exp(-a), -codegen.expm1(-a)),
        (sp.Piecewise((x, x > 0), (0, True)), sp.Max(x, 0)),
        (sp.Piecewise((x, x > 0), (sp.exp(x) - 1, True)),
         sp.Piecewise((x, x > 0), (codegen.expm1(sp.Min(x, 0)), True))),
    ],
)
def test_stabilize(expr, expected) -> None:
    assert stabilize(expr) == expected
    for v in (-3.0, -0.5, 0.25, 2.0):
        values = {x: v, a: v}
        assert float(expected.subs(values).evalf()) == pytest.approx(
            float(expr.subs(values).evalf()), rel=1e-12
        )


@pytest.mark.parametrize(
    ("expr", "source"),
    [
        (1 - a**2, "1 - A1**2"),
        (a * (1 - a), "A1 * (1 - A1)"),
        (sp.tanh(x) ** 2, "np.tanh(Z1) ** 2"),
        (-(x**2) / 2, "-(Z1**2) / 2"),
        (sp.sqrt(2) * x / 2, "0.7071067811865476 * Z1"),
        (x / 100, "Z1 / 100"),
        (sp.Rational(8943, 200000) * x**3, "0.044715 * Z1**3"),
        (sigmoid(x), "_sigmoid(Z1)"),
        (softplus(x), "np.logaddexp(0, Z1)"),
        (sp.Abs(x), "np.abs(Z1)"),
        (sp.Max(x, 0), "np.maximum(Z1, 0)"),
        (sp.Piecewise((1, a > 0), (a + 1, True)), "np.where(A1 > 0, 1, A1 + 1)"),
        (sp.Piecewise((1, a > 0), (sp.Rational(1, 100), True)),
         "np.where(A1 > 0, 1, 0.01).astype(A1.dtype)"),
    ],
)
def test_numpy_printer(expr, source) -> None:
    names = {x: "Z1", a: "A1"}
    printer = NumpyPrinter({s: n for s, n in names.items()}, dtype_ref="A1")
    assert printer.doprint(expr) == source


def test_printer_never_prints_numpy_scalars() -> None:
    printer = NumpyPrinter({x: "Z1"})
    for e in (sp.pi * x, sp.sqrt(2) * x, sp.E * x, sp.exp(x) / sp.sqrt(sp.pi)):
        assert "np.float" not in printer.doprint(e) and "np.sqrt(2)" not in printer.doprint(e)


@pytest.mark.parametrize(("output", "loss"), [("softmax", "cross_entropy"),
                                              ("sigmoid", "binary_cross_entropy")])
def test_stable_loss_forms_equal_the_loss(output, loss) -> None:
    b = built("tanh", output, loss)
    params, X, Y = sample(b)
    env = reference_forward(b, params, X, Y)
    mean = next(eq.rhs for eq in b.derivation.forward if isinstance(eq.rhs, ops.MeanLoss))
    node, note = codegen.loss_node(mean, b.derivation)
    assert "stable for any logits" in note
    assert node.numeric(env).item() == pytest.approx(mean.numeric(env).item(), rel=1e-12)


def test_packaged_templates_are_preferred(tmp_path: Path) -> None:
    """In a wheel, templates/ is installed inside the package (pyproject's force-include)."""
    import shutil

    shutil.copytree(ROOT / "symgrad", tmp_path / "symgrad",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "templates", tmp_path / "symgrad" / "templates")
    script = (
        "import symgrad.codegen as c; from symgrad.spec import load_spec; import sys;"
        "print(c.templates_dir());"
        "sys.stdout.write(c.generate_source(load_spec(sys.argv[1])))"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT / "examples" / "digits.toml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    where, _, source = proc.stdout.partition("\n")
    assert Path(where) == tmp_path / "symgrad" / "templates"
    assert source == generate_source(load_spec(ROOT / "examples" / "digits.toml"))
