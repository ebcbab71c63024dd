"""The second-order optimizers of the generated module (issue 15): newton_cg (truncated
Newton on damped Gauss–Newton or Hessian products) and lbfgs, selected by [training]
optimizer or train(optimizer=…).

Convex problems whose optimum is computed here independently (least squares by the normal
equations, logistic regression by Newton's method with the dense Hessian): both reach the
optimum's loss to 1e-8. The digits MLP: the loss decreases monotonically, full batch.
Spec validation of the new keys: exact one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from symgrad.codegen import generate_source, load_module
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, Training, load_spec

_MODULES: dict[str, object] = {}


def module(name: str, inputs: int, layers: tuple[Layer, ...], loss: str, l2: float,
           training: Training):
    """The generated module of a network (generated once per test session)."""
    if name not in _MODULES:
        spec = Spec(name, inputs, layers, loss=loss, l2=l2, training=training)
        _MODULES[name] = load_module(generate_source(spec), name)
    return _MODULES[name]


def linear():
    """Ridge regression: one identity layer, mse, l2 = 0.01."""
    return module("lin_second", 3, (Layer(2, "identity"),), "mse", 0.01, Training("newton_cg"))


def logistic():
    """L2-regularized logistic regression: one sigmoid unit, binary cross-entropy."""
    return module("logit_second", 4, (Layer(1, "sigmoid"),), "binary_cross_entropy", 0.01,
                  Training("lbfgs"))


def digits_mlp():
    """A 64-16-10 tanh/softmax network with cross-entropy (the digits, fewer units)."""
    return module("digits_second", 64, (Layer(16, "tanh"), Layer(10, "softmax")),
                  "cross_entropy", 1e-4, Training("newton_cg", epochs=5))


def regression_data(dtype=np.float64):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    Y = X @ rng.normal(size=(3, 2)) + 0.5 + 0.1 * rng.normal(size=(50, 2))
    return X.astype(dtype), Y.astype(dtype)


def ridge_optimum(X, Y, l2):
    """min (1/2N) ‖X W + b − Y‖² + (l2/2) ‖W‖², by the normal equations (b not penalized)."""
    n = len(X)
    A = np.hstack([X, np.ones((n, 1))])
    M = A.T @ A / n + np.diag([l2] * X.shape[1] + [0.0])
    solution = np.linalg.solve(M, A.T @ Y / n)
    return {"W1": solution[:-1], "b1": solution[-1]}


def classification_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 4))
    p = 1 / (1 + np.exp(-(X @ np.array([1.5, -2.0, 0.5, 0.0]) + 0.3)))
    return X, (rng.random(80) < p).astype(float)[:, None]


def logistic_optimum(X, Y, l2):
    """Newton's method with the dense Hessian Aᵀ diag(p (1 − p)) A / N + diag(l2, …, 0)."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.diag([l2] * d + [0.0])
    for _ in range(50):
        p = 1 / (1 + np.exp(-A @ w))
        grad = A.T @ (p - Y[:, 0]) / n + penalty @ w
        hess = A.T @ (A * (p * (1 - p))[:, None]) / n + penalty
        w -= np.linalg.solve(hess, grad)
    return {"W1": w[:-1, None], "b1": w[-1:]}


def trained(mod, X, Y, **options):
    """The history of train() from init_params, with the training loss after each epoch
    (as val_loss: X_val, Y_val = X, Y), and the trained parameters."""
    params = mod.init_params(seed=0, dtype=X.dtype)
    history = mod.train(params, X, Y, X_val=X, Y_val=Y, verbose=False, **options)
    return history, params


# ------------------------------------------------------------------------------------------
# Convex problems: the optimum's loss to 1e-8
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("curvature", ["gauss_newton", "hessian"])
def test_newton_cg_solves_ridge_regression_in_a_few_updates(curvature):
    mod = linear()
    X, Y = regression_data()
    best = mod.loss(ridge_optimum(X, Y, 0.01), X, Y)
    history, params = trained(mod, X, Y, epochs=3, damping=1e-4, curvature=curvature)
    # linear mse: G = H, 8 parameters, 10 CG steps: each update is a (damped) Newton step
    assert history["val_loss"][-1] - best < 1e-8
    assert history["val_loss"][0] - best < 1e-3  # already the first update
    # per update: the gradient, 1 to cg_steps = 10 products, the trial's loss
    steps = np.diff([0.0, *history["passes"]])
    assert ((3 <= steps) & (steps <= 12)).all()
    np.testing.assert_allclose(params["W1"], ridge_optimum(X, Y, 0.01)["W1"], atol=1e-4)


def test_newton_cg_default_damping_shrinks_by_two_thirds_while_the_model_is_good():
    mod = linear()
    X, Y = regression_data()
    best = mod.loss(ridge_optimum(X, Y, 0.01), X, Y)
    history, _ = trained(mod, X, Y, epochs=12)
    # ρ = 1 on a quadratic with G = H: λ ← ⅔ λ at every update, from damping = 0.1 (the
    # default, benchmarks/newton_cg_damping.py), until the loss is the optimum's to rounding
    assert history["damping"][:4] == pytest.approx([0.1 * (2 / 3) ** k for k in range(1, 5)])
    assert min(history["damping"]) >= 1e-3  # the floor
    assert history["val_loss"][-1] - best < 1e-8
    assert all(b <= a for a, b in zip(history["loss"], history["loss"][1:], strict=False))


def test_lbfgs_solves_ridge_regression():
    mod = linear()
    X, Y = regression_data()
    best = mod.loss(ridge_optimum(X, Y, 0.01), X, Y)
    history, params = trained(mod, X, Y, optimizer="lbfgs", epochs=15)
    assert min(history["val_loss"]) - best < 1e-8
    assert all(b <= a for a, b in zip(history["loss"], history["loss"][1:], strict=False))
    np.testing.assert_allclose(params["b1"], ridge_optimum(X, Y, 0.01)["b1"], atol=1e-4)


@pytest.mark.parametrize("optimizer, epochs", [("newton_cg", 8), ("lbfgs", 25)])
def test_logistic_regression_reaches_the_optimum(optimizer, epochs):
    mod = logistic()
    X, Y = classification_data()
    optimum = logistic_optimum(X, Y, 0.01)
    best = mod.loss(optimum, X, Y)
    damping = {"damping": 1e-3} if optimizer == "newton_cg" else {}  # lbfgs: refused
    history, params = trained(mod, X, Y, optimizer=optimizer, epochs=epochs, **damping)
    assert abs(min(history["val_loss"]) - best) < 1e-8
    np.testing.assert_allclose(params["W1"], optimum["W1"], atol=1e-3)


def test_float32_newton_cg_trains_in_float32():
    mod = linear()
    X, Y = regression_data(np.float32)
    best = mod.loss(ridge_optimum(X.astype(float), Y.astype(float), 0.01), X, Y)
    history, params = trained(mod, X, Y, epochs=4, damping=1e-4)
    assert params["W1"].dtype == np.float32
    assert abs(history["val_loss"][-1] - best) < 1e-5 * best


# ------------------------------------------------------------------------------------------
# The digits MLP: full batch, the loss decreases at every update
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from symgrad.datasets import digits_split

    d = digits_split(np.float64)
    return d["X_train"][:300], d["Y_train"][:300]


@pytest.mark.parametrize("optimizer", ["newton_cg", "lbfgs"])
def test_digits_mlp_loss_decreases_monotonically(digits, optimizer):
    mod = digits_mlp()
    X, Y = digits
    history, _ = trained(mod, X, Y, optimizer=optimizer, epochs=6)
    after = history["val_loss"]  # the loss after each update
    assert all(b < a for a, b in zip(after, after[1:], strict=False)), after
    assert history["loss"][1:] == pytest.approx(after[:-1])  # the loss before each update
    assert after[-1] < 0.5 * history["loss"][0]


def test_digits_mlp_large_batches_are_deterministic(digits):
    mod = digits_mlp()
    X, Y = digits
    first, params = trained(mod, X, Y, epochs=2, batch_size=100, seed=3)
    again, same = trained(mod, X, Y, epochs=2, batch_size=100, seed=3)
    assert first == again
    for name in params:
        np.testing.assert_array_equal(params[name], same[name])
    assert first["val_loss"][-1] < first["loss"][0]
    assert first["passes"][-1] > 2 * 2  # every batch: a gradient, its products, a trial


def test_a_step_that_raises_the_loss_is_not_taken_and_the_damping_grows():
    mod = linear()
    X, Y = regression_data()
    start = mod.loss(mod.init_params(seed=0), X, Y)
    # η = 3 overshoots a quadratic's Newton step: q(3d) − q(0) = 3gᵀd + (9/2)dᵀAd > 0; the
    # rise is not taken, λ grows, and η d/4 (3/4 of the Newton step) is taken instead
    history, params = trained(mod, X, Y, epochs=1, damping=1e-4, learning_rate=3.0)
    assert history["damping"] == [1e-4 * 3 / 2]
    assert history["loss"] == [start] and history["val_loss"][0] < start
    first = trained(mod, X, Y, epochs=1, damping=1e-4, learning_rate=3.0 / 4)[1]
    for name, p in first.items():
        np.testing.assert_allclose(params[name], p, rtol=1e-12, atol=1e-12)
    # 100 rows: too large a learning rate for every trial (η, η/4, η/16) takes no step
    history, params = trained(mod, X, Y, epochs=1, damping=1e-4, learning_rate=100.0)
    assert history["loss"] == history["val_loss"] == [start]
    for name, p in mod.init_params(seed=0).items():
        np.testing.assert_array_equal(params[name], p)


def test_cg_solves_a_positive_definite_system_and_stops_at_negative_curvature():
    mod = linear()
    rng = np.random.default_rng(2)
    a = {"W1": rng.uniform(0.5, 2.0, (3, 2)), "b1": rng.uniform(0.5, 2.0, 2)}  # C = diag(a)
    g = {"W1": rng.normal(size=(3, 2)), "b1": rng.normal(size=2)}
    d, gd, dAd, products = mod._cg(lambda v: {k: a[k] * v[k] for k in v}, g, 0.1, 10)
    for name in g:  # (C + λI) d = −g, entry by entry
        np.testing.assert_allclose(d[name], -g[name] / (a[name] + 0.1), rtol=1e-10)
    assert gd == pytest.approx(mod._dot(g, d)) and dAd == pytest.approx(-gd)
    assert products <= 8  # at most as many as the distinct eigenvalues (8 entries)
    # C = −I: no minimum along the first direction, so d = −g with its curvature −(1 − λ)‖g‖²
    d, gd, dAd, products = mod._cg(lambda v: {k: -v[k] for k in v}, g, 0.1, 10)
    norm2 = mod._dot(g, g)
    for name in g:
        np.testing.assert_array_equal(d[name], -g[name])
    assert (gd, products) == (-norm2, 1) and dAd == pytest.approx(-0.9 * norm2)


def test_the_generated_second_order_module_is_ruff_clean(tmp_path):
    import subprocess

    from ruff.__main__ import find_ruff_bin

    spec = Spec("digits_second", 64, (Layer(16, "tanh"), Layer(10, "softmax")),
                loss="cross_entropy", l2=1e-4, training=Training("lbfgs"))
    path = tmp_path / "digits_second.py"
    path.write_text(generate_source(spec), encoding="utf-8")
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(find_ruff_bin()), "check", "--config", str(root / "pyproject.toml"),
                           str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_the_script_trains_with_newton_cg_and_lbfgs_on_all_rows(tmp_path):
    import subprocess
    import sys

    mod = logistic()
    X, Y = classification_data()
    spec = Spec("logit_second", 4, (Layer(1, "sigmoid"),), loss="binary_cross_entropy",
                l2=0.01, training=Training("lbfgs"))
    path = tmp_path / "logit_second.py"
    path.write_text(generate_source(spec), encoding="utf-8")
    np.savez(tmp_path / "data.npz", X=X, Y=Y)
    for optimizer in ("lbfgs", "newton_cg"):
        proc = subprocess.run(
            [sys.executable, str(path), "train", str(tmp_path / "data.npz"), "--epochs", "2",
             "--optimizer", optimizer, "--dtype", "float64"],
            capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        history, _ = trained(mod, X, Y, optimizer=optimizer, epochs=2)
        assert proc.stderr.splitlines()[-1] == f"epoch 2/2  loss {history['loss'][-1]:.6g}"


def test_a_non_finite_loss_stops_with_the_message_and_keeps_params():
    mod = linear()
    X, Y = regression_data()
    params = mod.init_params(seed=0)
    params["W1"][...] = 1e200  # the squares overflow
    given = {k: v.copy() for k, v in params.items()}
    for optimizer in ("newton_cg", "lbfgs"):
        history = mod.train(params, X, Y, optimizer=optimizer, epochs=3, verbose=False)
        assert history["stopped"] == (
            "non-finite loss (inf) in epoch 1, batch 1: stopped, no parameters with a finite "
            "loss on X, Y to keep: params are as given")
        assert history["loss"] == []
        for name in params:
            np.testing.assert_array_equal(params[name], given[name])


@pytest.mark.parametrize("option, value, error", [
    ("curvature", "newton", "curvature must be gauss_newton or hessian, not 'newton'"),
    ("cg_steps", 0, "cg_steps must be a whole number from 1 to 10000, not 0"),
    ("cg_steps", 10**9, "cg_steps must be a whole number from 1 to 10000, not 1000000000"),
    ("memory", 2.5, "memory must be a whole number from 1 to 1000, not 2.5"),
    ("memory", 1001, "memory must be a whole number from 1 to 1000, not 1001"),
    ("damping", 0.0, "damping must be a number > 0 and <= 1e+06, not 0.0"),
    ("damping", 1e7, "damping must be a number > 0 and <= 1e+06, not 10000000.0"),
    ("optimizer", "bfgs", "optimizer must be one of sgd, momentum, nesterov, adam, rmsprop, "
                          "newton_cg, lbfgs, not 'bfgs'"),
])
def test_train_refuses_bad_second_order_options(option, value, error):
    mod = linear()
    X, Y = regression_data()
    with pytest.raises((TypeError, ValueError)) as e:
        mod.train(mod.init_params(), X, Y, verbose=False, **{option: value})
    assert str(e.value) == error


def test_first_order_optimizers_of_a_second_order_module_batch_by_32():
    mod = linear()
    assert mod.BATCH_SIZE is None and mod.OPTIMIZER == "newton_cg"
    X, Y = regression_data()
    history, _ = trained(mod, X, Y, optimizer="adam", epochs=2, learning_rate=0.05)
    assert len(history["loss"]) == 2 and "passes" not in history


# ------------------------------------------------------------------------------------------
# Spec validation of the new keys
# ------------------------------------------------------------------------------------------

SPEC = """[network]
name = "net"
inputs = 4

[[layer]]
units = 3
activation = "tanh"
{extra_layer}
[[layer]]
units = 2
activation = "softmax"

[loss]
kind = "cross_entropy"

[training]
{training}
"""


@pytest.mark.parametrize("training, extra_layer, message", [
    ('optimizer = "newton_cg"\ncurvature = "fisher"', "",
     "training.curvature: unknown curvature 'fisher'; use gauss_newton (gnvp, positive "
     "semi-definite) or hessian (hvp)"),
    ('optimizer = "newton_cg"\ncurvature = "hesian"', "",
     "training.curvature: unknown curvature 'hesian' (did you mean 'hessian'?); use "
     "gauss_newton (gnvp, positive semi-definite) or hessian (hvp)"),
    ('optimizer = "newton_cg"\ncg_steps = 0', "",
     "training.cg_steps: must be between 1 and 10000, got 0"),
    ('optimizer = "newton_cg"\ndamping = 0.0', "",
     "training.damping: must be a finite number > 0.0 and <= 1000000.0, got 0.0 (the damping "
     "λ keeps CG's matrix G + λI positive definite)"),
    ('optimizer = "lbfgs"\nmemory = 0', "",
     "training.memory: must be between 1 and 1000, got 0"),
    ('optimizer = "lbfgs"\nbatch_size = 64', "",
     "training.batch_size: lbfgs trains on all rows at once (its pairs (s, y) compare "
     "gradients of one loss); leave batch_size out, or use newton_cg for large batches"),
    ('optimizer = "newtoncg"', "",
     "training.optimizer: unknown optimizer 'newtoncg' (did you mean 'newton_cg'?); use one "
     "of sgd, momentum, nesterov, adam, rmsprop, newton_cg, lbfgs"),
    ('optimizer = "newton_cg"', '\n[[layer]]\ntype = "dropout"\np = 0.2\n',
     "layer[2].type: newton_cg needs a loss that stays the same from one evaluation to the "
     "next, and dropout's is not (batch statistics, random masks); use a first-order "
     "optimizer such as adam"),
])
def test_spec_errors_for_the_second_order_keys(tmp_path, training, extra_layer, message):
    path = tmp_path / "net.toml"
    path.write_text(SPEC.format(training=training, extra_layer=extra_layer), encoding="utf-8")
    with pytest.raises(SymgradError) as e:
        load_spec(path)
    assert e.value.one_line() == f"symgrad: error: {path}: {message}"


def test_spec_defaults_of_the_second_order_optimizers(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(SPEC.format(training='optimizer = "newton_cg"', extra_layer=""), "utf-8")
    t = load_spec(path).training
    assert (t.batch_size, t.learning_rate, t.curvature, t.cg_steps, t.damping, t.memory) == (
        None, 1.0, "gauss_newton", 10, 0.1, 10)
    assert Training("adam").batch_size == 32  # the first-order default is unchanged


# ------------------------------------------------------------------------------------------
# An option of one optimizer given to another: refused by the spec, train() and the script
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training, key, owner, optimizer", [
    ('optimizer = "adam"\ncg_steps = 5', "cg_steps", "newton_cg", "adam"),
    ('optimizer = "lbfgs"\ndamping = 0.5', "damping", "newton_cg", "lbfgs"),
    ('optimizer = "newton_cg"\nmemory = 4', "memory", "lbfgs", "newton_cg"),
    ('optimizer = "sgd"\ncurvature = "hessian"', "curvature", "newton_cg", "sgd"),
])
def test_an_option_of_another_optimizer_is_refused(training, key, owner, optimizer, tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(SPEC.format(training=training, extra_layer=""), "utf-8")
    with pytest.raises(SymgradError) as e:
        load_spec(path)
    assert e.value.one_line() == (
        f"symgrad: error: {path}: training.{key}: an option of {owner}, not of {optimizer}; "
        f'leave it out or set optimizer = "{owner}"')
    mod = linear()
    X, Y = regression_data()
    value = {"cg_steps": 5, "damping": 0.5, "memory": 4, "curvature": "hessian"}[key]
    with pytest.raises(ValueError) as err:
        mod.train(mod.init_params(), X, Y, verbose=False, optimizer=optimizer, **{key: value})
    assert str(err.value) == f"{key} is an option of {owner}, not of {optimizer}"
    # the defaults themselves pass with any optimizer
    mod.train(mod.init_params(), X, Y, verbose=False, optimizer=optimizer, epochs=1,
              **{key: getattr(mod, key.upper())})


def test_the_script_takes_the_second_order_options(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "net_mlp.py"
    path.write_text(generate_source(Spec("net_mlp", 3, (Layer(2, "identity"),), loss="mse",
                                         l2=0.01, training=Training("newton_cg", epochs=2))),
                    encoding="utf-8")
    X, Y = regression_data()
    np.savez(tmp_path / "d.npz", X=X, Y=Y)

    def run(*flags):
        return subprocess.run([sys.executable, str(path), "train", str(tmp_path / "d.npz"),
                               *flags], capture_output=True, text=True, check=False)

    ok = run("--cg-steps", "3", "--damping", "0.01", "--curvature", "hessian")
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.splitlines()[0].startswith("epoch 1/2  loss ")
    for flags, message in (
        (("--cg-steps", "20000"), "cg_steps must be a whole number from 1 to 10000, not 20000"),
        (("--memory", "3"), "memory is an option of lbfgs, not of newton_cg"),
        (("--optimizer", "adam", "--damping", "2"),
         "damping is an option of newton_cg, not of adam"),
    ):
        bad = run(*flags)
        assert (bad.returncode, bad.stdout, bad.stderr) == (
            2, "", f"net_mlp: error: {message}\n")


def test_a_value_beyond_float32_is_one_line_without_a_warning(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "net_mlp.py"
    path.write_text(generate_source(Spec("net_mlp", 3, (Layer(2, "identity"),), loss="mse",
                                         training=Training("newton_cg", epochs=1))),
                    encoding="utf-8")
    X, Y = regression_data()
    X[0, 0] = 1e39  # finite in float64, inf in float32
    np.savez(tmp_path / "d.npz", X=X, Y=Y)
    run = subprocess.run([sys.executable, "-W", "error", str(path), "train",
                          str(tmp_path / "d.npz")], capture_output=True, text=True, check=False)
    assert (run.returncode, run.stderr) == (
        2, "net_mlp: error: X has 1 NaN or infinite entry in float32\n")


def test_the_damping_study_runs_a_variant_by_passes():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import newton_cg_damping as study

    mod = linear()
    X, Y = regression_data()
    before = (mod._DAMPING_FLOOR, mod._CG_DECAY, mod._CURVATURE_SHARE)
    res = study.run_variant(mod, X, Y, {"damping": 0.5, "decay": 0.0}, passes=20)
    passes, losses = zip(*res["points"], strict=True)
    assert passes[0] == 0 and passes[-2] < 20 <= passes[-1]  # stopped at the budget
    assert losses[-1] < losses[0] and res["damping"][0] == pytest.approx(0.5 * 2 / 3)
    assert (mod._DAMPING_FLOOR, mod._CG_DECAY, mod._CURVATURE_SHARE) == before  # restored
    assert study.passes_to(res["points"], losses[-1]) <= passes[-1]
