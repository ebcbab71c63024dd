"""Generated modules for networks beyond dense chains (issue 11 §3 "generate"): batchnorm,
layernorm, dropout, add and concat through ``symgrad generate``.

The interface of DESIGN.md "Layers beyond dense": PARAM_SHAPES and BUFFER_SHAPES,
init_params with both, training mode (batch statistics, dropout masks drawn from
np.random.default_rng(seed)) in loss and loss_and_grad, inference (running statistics, no
dropout) in forward and predict, and train() updating the running statistics as torch does.
Gradients are compared with central differences of the module's own loss (same seed), the
in-place step of train() with loss_and_grad, the inference forward with a numpy reference.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from symgrad.codegen import generate_source, load_module
from symgrad.spec import load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parent.parent

# every new type: dense → batchnorm relu → dropout → dense tanh → layernorm → add (skip
# from A1) → concat with X → softmax
EVERY_TYPE = (Path(__file__).parent / "golden" / "layers" / "bn_mlp.toml").read_text(
    encoding="utf-8")

# batchnorm on the inputs (the first parameter is gamma1), a momentum of its own, dropout
# 0.5 before a concat that reads an earlier value, a regression with a penalty
BN_FIRST = """
[network]
name = "bn_first"
inputs = 3

[[layer]]
type = "batchnorm"
momentum = 0.25
eps = 1e-3

[[layer]]
units = 4
activation = "tanh"

[[layer]]
type = "dropout"
p = 0.5

[[layer]]
type = "concat"
inputs = ["A3", "A1"]

[[layer]]
units = 2

[loss]
kind = "mse"

[regularization]
l2 = 0.01
"""

# dropout on the inputs (the common 784-input MLP with dropout on the pixels, in small):
# nothing below the first dense layer has a gradient, so no δ₁ = δ₂W₂ᵀ is formed
DROP_X = """
[network]
name = "drop_x"
inputs = 5

[[layer]]
type = "dropout"
p = 0.2

[[layer]]
units = 4
activation = "relu"

[[layer]]
units = 3
activation = "softmax"

[loss]
kind = "cross_entropy"
"""

DIGITS_BN = ROOT / "examples" / "digits_bn_dropout.toml"
RESIDUAL = ROOT / "examples" / "residual.toml"


def _spec(text: str, name: str):
    import tomllib

    return spec_from_dict(tomllib.loads(text), source=f"{name}.toml")


SPECS = {
    "every_type": lambda: _spec(EVERY_TYPE, "bn"),
    "bn_first": lambda: _spec(BN_FIRST, "bn_first"),
    "drop_x": lambda: _spec(DROP_X, "drop_x"),
    "digits_bn": lambda: load_spec(DIGITS_BN),
    "residual": lambda: load_spec(RESIDUAL),
}


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return {key: generate_source(make()) for key, make in SPECS.items()}


@pytest.fixture(scope="module")
def modules(sources):
    return {key: load_module(src) for key, src in sources.items()}


def data(m, n: int, seed: int = 0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, m.INPUTS)).astype(dtype)
    if "Y holds the targets" in m.train.__doc__:
        Y = rng.standard_normal((n, m.OUTPUTS)).astype(dtype)
    else:
        Y = np.eye(m.OUTPUTS, dtype=dtype)[rng.integers(0, m.OUTPUTS, n)]
    return X, Y


def generic(m, seed: int = 1, dtype=np.float64):
    """init_params, moved to a generic point (gamma off 1, biases off 0)."""
    rng = np.random.default_rng(seed)
    params = m.init_params(seed, dtype)
    for name in m.PARAM_SHAPES:
        if not name.startswith("W"):
            params[name] = params[name] + (0.3 * rng.standard_normal(params[name].shape)).astype(
                dtype)
    return params


# ------------------------------------------------------------------------------------------
# The interface
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", SPECS)
def test_interface(modules, key):
    spec = SPECS[key]()
    m = modules[key]
    assert m.PARAM_SHAPES == spec.param_shapes()
    assert m.BUFFER_SHAPES == spec.buffer_shapes()
    assert "BUFFER_SHAPES" in m.__all__
    params = m.init_params(0)
    assert list(params) == [k for k in params if k in m.PARAM_SHAPES or k in m.BUFFER_SHAPES]
    assert set(params) == set(m.PARAM_SHAPES) | set(m.BUFFER_SHAPES)
    for name, value in params.items():
        if name.startswith(("gamma", "var")):
            assert np.array_equal(value, np.ones(value.shape)), name
        elif name.startswith(("beta", "mean", "b")):
            assert np.array_equal(value, np.zeros(value.shape)), name
    for l, layer in enumerate(spec.layers, 1):  # dense weights: fan_in = spec.fan_in(l)
        if layer.type == "dense":
            assert params[f"W{l}"].shape == (spec.fan_in(l), spec.sizes[l])
            if layer.fn.init != "he":  # Glorot-uniform: within √(6/(fan_in + fan_out))
                bound = np.sqrt(6 / (spec.fan_in(l) + spec.sizes[l]))
                assert 0 < np.abs(params[f"W{l}"]).max() <= bound
    value, grads = m.loss_and_grad(params, *data(m, 6))
    assert set(grads) == set(m.PARAM_SHAPES)  # no gradient for a buffer


def test_buffers_empty_without_batchnorm(sources, modules):
    assert modules["residual"].BUFFER_SHAPES == {}
    assert "BUFFER_SHAPES = {}  # no batchnorm: no running statistics" in sources["residual"]


def test_dense_chain_module_has_no_new_members() -> None:
    """A dense chain keeps the first wave's module: no BUFFER_SHAPES, no training=/seed=."""
    src = generate_source(load_spec(ROOT / "examples" / "digits.toml"))
    assert "BUFFER_SHAPES" not in src and "training=" not in src
    assert "def loss_and_grad(params, X, Y):" in src and "def _sgd_epoch(" in src


def test_members_beyond_a_dense_chain_are_documented(modules):
    """BUFFER_SHAPES, training= and seed= exist exactly where the network is not a dense
    chain, and the module's docstring says so (DESIGN: "empty without batchnorm")."""
    statement = ("BUFFER_SHAPES (batchnorm's running statistics; {} without batchnorm) and the\n"
                 "keywords training= of loss and seed= of loss and loss_and_grad are members of "
                 "every\nmodule whose network is not a dense chain (a layer of another type, or "
                 "an input=\nother than the previous layer); a dense chain's module has none of "
                 "them.\n")
    for key, m in modules.items():
        assert statement in m.__doc__, key
    assert ("Here, without batchnorm or dropout, training= and seed= change nothing."
            in modules["residual"].__doc__)
    assert "change nothing" not in modules["digits_bn"].__doc__


def test_no_gradient_below_the_first_parameters(sources):
    """A layer without parameters on X (dropout, batchnorm's X̂) gets no cotangent: derive,
    loss_and_grad and train()'s step stop at the first parameters, as at a dense layer on X."""
    from symgrad.derive import derive

    text = derive(SPECS["drop_x"]()).text()
    assert "δ₁" not in text and "∂L/∂W₂ = A₁ᵀ δ₂" in text
    assert "dZ1" not in sources["drop_x"]  # neither dZ1 = dZ2 @ W2.T nor its workspace
    assert "np.dot(dZ2, W2.T" not in sources["drop_x"]
    text = derive(SPECS["bn_first"]()).text()  # batchnorm on X: ∂L/∂γ₁, ∂L/∂β₁, no ∂L/∂X̂₁
    assert "∂L/∂γ₁ = 𝟏ᵀ (δ₁ ⊙ X̂₁)" in text and "∂L/∂X̂₁" not in text
    assert "dXhat1" not in sources["bn_first"] and "dgamma1" in sources["bn_first"]


def test_non_chain_module_has_no_fused_sgd(sources):
    for src in sources.values():
        assert "_sgd_epoch" not in src and "_sgd_workspace" not in src


# ------------------------------------------------------------------------------------------
# Gradients: central differences of the module's own loss, the same seed
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", SPECS)
def test_gradient_equals_central_differences(modules, key):
    m = modules[key]
    params = generic(m)
    X, Y = data(m, 7, seed=3)
    for seed in (0, 5):
        value, grads = m.loss_and_grad(params, X, Y, seed=seed)
        assert value == m.loss(params, X, Y, seed=seed)
        rng = np.random.default_rng(seed + 10)
        for name in m.PARAM_SHAPES:
            theta = params[name].reshape(-1)
            for i in rng.choice(theta.size, size=min(theta.size, 6), replace=False):
                h, old = 1e-5, theta[i]
                theta[i] = old + h
                up = m.loss(params, X, Y, seed=seed)
                theta[i] = old - h
                down = m.loss(params, X, Y, seed=seed)
                theta[i] = old
                numeric = (up - down) / (2 * h)
                analytic = grads[name].reshape(-1)[i]
                assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, i)


@pytest.mark.parametrize("key", ["every_type", "bn_first"])
def test_check_gradients(modules, key):
    errors = modules[key].check_gradients(seed=0)
    assert set(errors) == set(modules[key].PARAM_SHAPES)
    assert max(errors.values()) <= 1e-6


def test_float32_computes_in_float32(modules):
    m = modules["every_type"]
    X, Y = data(m, 9)
    p64 = generic(m)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    v64, g64 = m.loss_and_grad(p64, X, Y)
    v32, g32 = m.loss_and_grad(p32, X.astype(np.float32), Y.astype(np.float32))
    assert {g.dtype for g in g32.values()} == {np.dtype(np.float32)}
    assert m.forward(p32, X).dtype == np.float32
    assert abs(v32 - v64) <= 1e-5 * abs(v64)
    for name in g64:
        assert np.allclose(g32[name], g64[name], rtol=1e-3, atol=1e-5), name


# ------------------------------------------------------------------------------------------
# Training mode: masks by seed, batches of one
# ------------------------------------------------------------------------------------------


def test_same_seed_same_masks(modules):
    m = modules["digits_bn"]
    params, (X, Y) = generic(m), data(m, 16)
    assert m.loss(params, X, Y, seed=3) == m.loss(params, X, Y, seed=3)
    assert m.loss(params, X, Y, seed=3) != m.loss(params, X, Y, seed=4)
    assert m.loss(params, X, Y) == m.loss_and_grad(params, X, Y)[0]  # both seed 0
    g3, g4 = m.loss_and_grad(params, X, Y, seed=3)[1], m.loss_and_grad(params, X, Y, seed=4)[1]
    assert not np.array_equal(g3["W1"], g4["W1"])
    # the masks are those of np.random.default_rng(seed), an entry kept where u >= p
    mask = np.random.default_rng(3).random((16, 64)) >= 0.2
    Z1 = X @ params["W1"] + params["b1"]
    xhat = (Z1 - Z1.mean(axis=0)) / np.sqrt(Z1.var(axis=0) + 1e-5)
    A2 = np.maximum(xhat * params["gamma2"] + params["beta2"], 0)
    Z4 = (A2 * mask / 0.8) @ params["W4"] + params["b4"]
    Z4 -= Z4.max(axis=1, keepdims=True)
    logp = Z4 - np.log(np.exp(Z4).sum(axis=1, keepdims=True))
    assert np.isclose(m.loss(params, X, Y, seed=3), -np.sum(Y * logp) / 16, rtol=1e-12)


def test_no_stochastic_layers_same_loss_either_mode(modules):
    m = modules["residual"]
    params, (X, Y) = generic(m), data(m, 5)
    assert m.loss(params, X, Y) == m.loss(params, X, Y, training=False, seed=9)
    assert m.loss_and_grad(params, X, Y, seed=4)[0] == m.loss(params, X, Y)


def test_batch_of_one_in_training_mode(modules):
    m = modules["digits_bn"]
    params, (X, Y) = generic(m), data(m, 4)
    message = (r"^X has 1 row; batchnorm in training mode needs at least 2 \(the batch variance "
               r"of one sample is 0\): give more rows, or use loss\(\.\.\., training=False\)$")
    with pytest.raises(ValueError, match=message):
        m.loss_and_grad(params, X[:1], Y[:1])
    with pytest.raises(ValueError, match=message):
        m.loss(params, X[:1], Y[:1])
    assert np.isfinite(m.loss(params, X[:1], Y[:1], training=False))
    assert m.forward(params, X[:1]).shape == (1, 10)
    with pytest.raises(TypeError, match=r"^training must be True or False, not 'yes'$"):
        m.loss(params, X, Y, training="yes")


def test_buffers_optional_for_training_required_for_inference(modules):
    m = modules["digits_bn"]
    params, (X, Y) = generic(m), data(m, 4)
    trained = {k: params[k] for k in m.PARAM_SHAPES}
    assert m.loss(trained, X, Y) == m.loss(params, X, Y)
    with pytest.raises(ValueError, match=r"has no mean2, var2: inference and train\(\) read"):
        m.forward(trained, X)


# ------------------------------------------------------------------------------------------
# Inference: the running statistics, no dropout
# ------------------------------------------------------------------------------------------


def test_forward_uses_running_statistics(modules):
    m = modules["digits_bn"]
    rng = np.random.default_rng(4)
    params = generic(m)
    params["mean2"] = rng.standard_normal(64)
    params["var2"] = rng.uniform(0.5, 2.0, 64)
    X, Y = data(m, 6)
    Z1 = X @ params["W1"] + params["b1"]
    A2 = np.maximum((Z1 - params["mean2"]) / np.sqrt(params["var2"] + 1e-5) * params["gamma2"]
                    + params["beta2"], 0)
    Z4 = A2 @ params["W4"] + params["b4"]  # dropout: the identity
    E = np.exp(Z4 - Z4.max(axis=1, keepdims=True))
    Yhat = E / E.sum(axis=1, keepdims=True)
    assert np.allclose(m.forward(params, X), Yhat, rtol=1e-12, atol=1e-15)
    assert np.array_equal(m.predict(params, X), Yhat.argmax(axis=1))
    assert np.isclose(m.loss(params, X, Y, training=False), -np.sum(Y * np.log(Yhat)) / 6,
                      rtol=1e-12)


def test_forward_layernorm_reference(modules):
    m = modules["residual"]
    params, (X, _) = generic(m), data(m, 5)
    A1 = np.tanh(X @ params["W1"] + params["b1"])
    mu, var = A1.mean(axis=1, keepdims=True), A1.var(axis=1, keepdims=True)
    A2 = (A1 - mu) / np.sqrt(var + 1e-5) * params["gamma2"] + params["beta2"]
    A4 = A1 + np.maximum(A2 @ params["W3"] + params["b3"], 0)
    Z5 = A4 @ params["W5"] + params["b5"]
    E = np.exp(Z5 - Z5.max(axis=1, keepdims=True))
    assert np.allclose(m.forward(params, X), E / E.sum(axis=1, keepdims=True), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# train(): the in-place step, the running statistics, the masks
# ------------------------------------------------------------------------------------------


def test_train_step_equals_loss_and_grad(modules):
    """One SGD step on the whole data as one batch: params − lr ∂L/∂params, with dropout
    p = 0 (every entry kept), so train()'s masks and loss_and_grad's agree."""
    text = EVERY_TYPE.replace("p = 0.2", "p = 0.0")
    m = load_module(generate_source(_spec(text, "bn_p0")))
    params, (X, Y) = generic(m), data(m, 12)
    start = {k: v.copy() for k, v in params.items()}
    _, grads = m.loss_and_grad(start, X, Y)
    history = m.train(params, X, Y, epochs=1, batch_size=12, optimizer="sgd",
                      learning_rate=0.1, verbose=False)
    assert np.isclose(history["loss"][0], m.loss(start, X, Y), rtol=1e-12)
    for name in m.PARAM_SHAPES:
        assert np.allclose(params[name], start[name] - 0.1 * grads[name], rtol=1e-10,
                           atol=1e-13), name
    for optimizer in ("momentum", "adam"):  # the other update rules read the same gradient
        again = {k: v.copy() for k, v in start.items()}
        m.train(again, X, Y, epochs=1, batch_size=12, optimizer=optimizer, learning_rate=0.1,
                momentum=0.0, verbose=False)
        if optimizer == "momentum":
            assert np.allclose(again["W1"], start["W1"] - 0.1 * grads["W1"], rtol=1e-10)


def test_train_updates_running_statistics_as_torch(modules):
    m = modules["digits_bn"]
    params, (X, Y) = generic(m), data(m, 20)
    params["mean2"] += 0.5
    params["var2"] *= 2.0
    start = {k: v.copy() for k, v in params.items()}
    m.train(params, X, Y, epochs=1, batch_size=20, optimizer="sgd", verbose=False)
    A1 = X @ start["W1"] + start["b1"]
    mu, var = A1.mean(axis=0), A1.var(axis=0)
    assert np.allclose(params["mean2"], 0.9 * start["mean2"] + 0.1 * mu, rtol=1e-12)
    assert np.allclose(params["var2"], 0.9 * start["var2"] + 0.1 * var * 20 / 19, rtol=1e-12)


def test_train_skips_a_last_batch_of_one(modules):
    """33 rows in batches of 16: 16 + 16 + 1, the single sample skipped (torch refuses it);
    a momentum of 0.25 of the spec's own."""
    m = modules["bn_first"]
    params, (X, Y) = generic(m), data(m, 33)
    start = {k: v.copy() for k, v in params.items()}
    history = m.train(params, X, Y, epochs=1, batch_size=16, optimizer="adam", seed=7,
                      verbose=False)
    assert "stopped" not in history and np.isfinite(history["loss"][0])
    order = np.random.default_rng(7).permutation(33)  # train()'s first order
    mean, var = start["mean1"].copy(), start["var1"].copy()
    for batch in (order[:16], order[16:32]):  # the statistics of X: batchnorm reads X
        mean = 0.75 * mean + 0.25 * X[batch].mean(axis=0)
        var = 0.75 * var + 0.25 * X[batch].var(axis=0) * 16 / 15
    assert np.allclose(params["mean1"], mean, rtol=1e-12)
    assert np.allclose(params["var1"], var, rtol=1e-12)
    assert "A last\n    batch of a single sample is skipped" in m.train.__doc__ or (
        "single sample is skipped" in m.train.__doc__)
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match=r"^batchnorm trains on batches of at least 2 samples, "
                                         r"not 1: raise batch_size$"):
        m.train(params, X, Y, batch_size=1, verbose=False)
    with pytest.raises(ValueError, match=r"not 1: raise batch_size \(X has 1 row\)$"):
        m.train(params, X[:1], Y[:1], verbose=False)
    assert all(np.array_equal(params[k], before[k]) for k in params)  # refused before training


def test_train_masks_follow_the_seed(modules):
    m = modules["digits_bn"]
    X, Y = data(m, 24)
    runs = []
    for seed in (0, 0, 1):
        params = m.init_params(0)
        m.train(params, X, Y, epochs=2, batch_size=8, seed=seed, verbose=False)
        runs.append(params)
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not np.array_equal(runs[0]["W1"], runs[2]["W1"])


def test_train_masks_do_not_depend_on_the_dtype(modules):
    """The same seed draws the same dropout masks in float32 and float64 (uniforms drawn in
    float64 for both), as loss() and loss_and_grad() do; so the two runs stay together."""
    m = modules["digits_bn"]
    masks = []
    for dtype in (np.float32, np.float64):
        noise, ws = m._noise(5), m._workspace(16, np.dtype(dtype))
        assert ws["U3"].dtype == np.float64 and ws["X"].dtype == dtype
        m._draw_masks(noise, ws)
        first = ws["M3"].copy()
        m._draw_masks(noise, ws)
        masks.append((first, ws["M3"].copy()))
    assert np.array_equal(masks[0][0], masks[1][0]) and np.array_equal(masks[0][1], masks[1][1])
    assert not np.array_equal(masks[0][0], masks[0][1])  # a fresh mask per batch
    X, Y = data(m, 48)
    runs = {}
    for dtype in (np.float32, np.float64):
        params = m.init_params(0, dtype)
        runs[dtype] = m.train(params, X.astype(dtype), Y.astype(dtype), epochs=3, batch_size=16,
                              seed=1, verbose=False)["loss"]
    assert np.allclose(runs[np.float32], runs[np.float64], rtol=1e-4)


def test_train_validation_in_inference_mode(modules):
    m = modules["every_type"]
    params, (X, Y) = generic(m), data(m, 16)
    history = m.train(params, X, Y, epochs=2, batch_size=8, X_val=X, Y_val=Y, verbose=False)
    assert np.isclose(history["val_loss"][-1], m.loss(params, X, Y, training=False), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# The files: deterministic, golden, runnable as a script
# ------------------------------------------------------------------------------------------


def test_deterministic_bytes(sources):
    assert generate_source(SPECS["every_type"]()) == sources["every_type"]


@pytest.mark.parametrize("spec_path, golden", [(DIGITS_BN, "digits_bn_mlp.py"),
                                                (RESIDUAL, "residual_mlp.py")])
def test_golden_modules(spec_path, golden, sources):
    key = "digits_bn" if spec_path == DIGITS_BN else "residual"
    assert (ROOT / "generated" / golden).read_text(encoding="utf-8") == sources[key], (
        f"generated/{golden} is not what {spec_path.name} generates: run make generated")


def test_script_check_and_train(tmp_path, sources):
    path = tmp_path / "bn_mlp.py"
    path.write_text(sources["every_type"], encoding="utf-8")
    done = subprocess.run([sys.executable, str(path), "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "gradient check passed" in done.stdout and "gamma2" in done.stdout
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((30, 4)), y=rng.integers(0, 3, 30))
    done = subprocess.run([sys.executable, str(path), "train", str(tmp_path / "data.npz"),
                           "--epochs", "2", "--batch-size", "8", "--save",
                           str(tmp_path / "p.npz")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "training accuracy" in done.stdout
    m = load_module(path)
    saved = m.load_params(tmp_path / "p.npz")
    assert set(saved) == set(m.PARAM_SHAPES) | set(m.BUFFER_SHAPES)
    assert not np.array_equal(saved["var2"], np.ones(5))  # the running statistics, trained


def test_script_train_batch_of_one(tmp_path, sources):
    """batchnorm with batches of one sample: the script's one line and exit status 2, as for
    every other bad argument (train() refuses it among its argument checks)."""
    path = tmp_path / "bn_mlp.py"
    path.write_text(sources["every_type"], encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((30, 4)), y=rng.integers(0, 3, 30))
    np.savez(tmp_path / "one.npz", X=rng.standard_normal((1, 4)), y=rng.integers(0, 3, 1))
    message = "bn_mlp: error: batchnorm trains on batches of at least 2 samples, not 1: raise "
    for args, tail in ((["data.npz", "--batch-size", "1"], "batch_size\n"),
                       (["one.npz"], "batch_size (X has 1 row)\n"),
                       (["one.npz", "--save", "p.npz"], "batch_size (X has 1 row)\n")):
        done = subprocess.run([sys.executable, str(path), "train", *args],
                              capture_output=True, text=True, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", message + tail), args
    assert not (tmp_path / "p.npz").exists()
    done = subprocess.run([sys.executable, str(path), "train", "data.npz", "--batch-size", "0"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2, "bn_mlp: error: batch_size must be a whole number >= 1, not 0\n")
