"""Generated modules of convolutional networks (issue 12, "Generated code").

The readable loss_and_grad of small conv nets (strides 1 and 2, padding 0, 1 and "same",
both poolings, batchnorm and dropout on a map, a residual add of maps) against finite
differences and against torch autograd, in float64 and float32; train()'s fast path
against a reference loop over loss_and_grad (SGD, momentum, Adam); X as images and as
rows; the shape errors' text; nothing allocated per batch; train's peak memory; max
pooling before relu (the fusion's identity, ties included).
"""

from __future__ import annotations

import tomllib
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.codegen import generate_source, load_module
from symgrad.spec import spec_from_dict

HEAD = '[network]\nname = "{name}"\ninputs = {inputs}\n'
TAIL = '[loss]\nkind = "cross_entropy"\n'


def layer(**keys) -> str:
    body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())
    return f"[[layer]]\n{body}\n"


# name: (inputs [H, W, C], layers, torch forward(params, x NCHW) -> logits)
def conv(p, x, l, stride=1, padding=0):
    return F.conv2d(x, p[f"W{l}"].permute(3, 2, 0, 1), p[f"b{l}"], stride=stride,
                    padding=padding)


def flat(x):  # NCHW → rows in NHWC order
    return x.permute(0, 2, 3, 1).reshape(len(x), -1)


def dense(p, a, l):
    return a @ p[f"W{l}"] + p[f"b{l}"]


CASES = {
    "k3_s1_p1_max": (
        [6, 6, 2],
        [layer(type="conv2d", filters=3, kernel=3, padding=1, activation="relu"),
         layer(type="maxpool2d", kernel=2), layer(type="flatten"), layer(units=4,
                                                                        activation="softmax")],
        lambda p, x: dense(p, flat(F.max_pool2d(F.relu(conv(p, x, 1, 1, 1)), 2)), 4),
    ),
    "k2_s2_p0_avg": (
        [7, 7, 1],
        [layer(type="conv2d", filters=2, kernel=2, stride=2, activation="tanh"),
         layer(type="avgpool2d", kernel=2, stride=1), layer(type="flatten"),
         layer(units=3, activation="softmax")],
        lambda p, x: dense(p, flat(F.avg_pool2d(torch.tanh(conv(p, x, 1, 2)), 2, 1)), 4),
    ),
    "k23_same_bn_max_s2_p1": (
        [5, 5, 3],
        [layer(type="conv2d", filters=2, kernel=[2, 3], padding=[1, 1]),
         layer(type="batchnorm", activation="relu"),
         layer(type="maxpool2d", kernel=3, stride=2, padding=1), layer(type="flatten"),
         layer(units=3, activation="softmax")],
        lambda p, x: dense(p, flat(F.max_pool2d(F.relu(F.batch_norm(
            conv(p, x, 1, 1, (1, 1)), None, None, p["gamma2"], p["beta2"], training=True,
            eps=1e-5)), 3, 2, 1)), 5),
    ),
    "same_residual_k1": (
        [4, 4, 2],
        [layer(type="conv2d", filters=2, kernel=3, padding="same", activation="relu"),
         layer(type="conv2d", filters=2, kernel=1, activation="sigmoid"),
         layer(type="add", inputs=["A1", "A2"]), layer(type="maxpool2d", kernel=2),
         layer(type="flatten"), layer(units=3, activation="softmax")],
        lambda p, x: (lambda a1: dense(p, flat(F.max_pool2d(
            a1 + torch.sigmoid(conv(p, a1, 2)), 2)), 6))(F.relu(conv(p, x, 1, 1, 1))),
    ),
}
DROPOUT = ([6, 6, 1], [layer(type="conv2d", filters=2, kernel=3, stride=2, padding=1,
                             activation="relu"),
                       layer(type="dropout", p=0.25), layer(type="avgpool2d", kernel=3),
                       layer(type="flatten"), layer(units=3, activation="softmax")])


def source(name, inputs, layers, training="") -> str:
    return HEAD.format(name=name, inputs=inputs) + "\n" + "".join(layers) + TAIL + training


_MODULES: dict = {}


def module(name, inputs=None, layers=None, training=""):
    if name not in _MODULES:
        if inputs is None:
            inputs, layers, _ = CASES[name]
        spec = spec_from_dict(tomllib.loads(source(name, inputs, layers, training)),
                              f"{name}.toml")
        _MODULES[name] = load_module(generate_source(spec), name=f"c3_{name}")
    return _MODULES[name]


def data(m, n, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, *m.INPUT_SHAPE)).astype(dtype)
    return X, rng.integers(0, m.OUTPUTS, n)


def biased(params):
    """The biases away from 0: zero-initialized, they put relu's kink at the padded border
    (Z = b there), where central differences straddle it."""
    rng = np.random.default_rng(9)
    return {k: v + 0.3 * rng.standard_normal(v.shape) if k.startswith("b") else v
            for k, v in params.items()}


def torch_loss_and_grad(name, params, X, y):
    forward = CASES[name][2]
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()
         if not k.startswith(("mean", "var"))}
    x = torch.tensor(X, dtype=torch.float64).permute(0, 3, 1, 2)
    loss = F.cross_entropy(forward(p, x), torch.tensor(y))
    loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in p.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_grad_equals_torch_autograd(name, dtype):
    m = module(name)
    params = m.init_params(seed=1, dtype=dtype)
    X, y = data(m, 6, dtype)
    value, grads = m.loss_and_grad(params, X, y)
    ref_value, ref = torch_loss_and_grad(name, params, X.astype(np.float64), y)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    assert value == pytest.approx(ref_value, rel=tol)
    assert set(grads) == set(m.PARAM_SHAPES)
    for k, g in grads.items():
        assert g.dtype == dtype and g.shape == m.PARAM_SHAPES[k]
        scale = max(np.abs(ref[k]).max(), 1e-3)
        assert np.abs(g - ref[k]).max() <= tol * scale * 10, k


@pytest.mark.parametrize("name", [*CASES, "dropout"])
def test_loss_and_grad_equals_finite_differences(name):
    m = module(name, *DROPOUT) if name == "dropout" else module(name)
    X, y = data(m, 5, seed=3)
    errors = m.check_gradients(biased(m.init_params(seed=2)), X, y, seed=4)
    assert set(errors) == set(m.PARAM_SHAPES) and max(errors.values()) < 1e-6, errors


@settings(max_examples=4, deadline=None)
@given(kernel=st.sampled_from([1, 2, 3, [2, 3]]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from([0, 1, "same"]), channels=st.sampled_from([1, 3]),
       pool=st.sampled_from(["maxpool2d", "avgpool2d"]))
def test_random_small_conv_nets_equal_finite_differences(kernel, stride, padding, channels,
                                                         pool):
    if padding == "same" and (stride != 1):
        padding = 1
    if padding == "same" and kernel == 2 or padding == "same" and kernel == [2, 3]:
        padding = 0  # "same" with an even kernel: pads unevenly, which the spec refuses
    layers = [layer(type="conv2d", filters=2, kernel=kernel, stride=stride, padding=padding,
                    activation="relu"), layer(type=pool, kernel=2, stride=1),
              layer(type="flatten"), layer(units=3, activation="softmax")]
    name = f"h_{kernel}_{stride}_{padding}_{channels}_{pool}".replace(" ", "")
    m = module(name.replace("[", "").replace("]", "").replace(",", "x"), [5, 5, channels],
               layers)
    X, y = data(m, 4, seed=5)
    errors = m.check_gradients(biased(m.init_params(seed=6)), X, y)
    assert max(errors.values()) < 1e-6, errors


def test_x_in_both_shapes_and_the_shape_errors():
    m = module("k3_s1_p1_max")
    params = m.init_params(seed=0)
    X, y = data(m, 4)
    assert m.INPUT_SHAPE == (6, 6, 2) and m.INPUTS == 72
    assert m.loss(params, X, y) == m.loss(params, X.reshape(4, -1), y)
    assert np.array_equal(m.forward(params, X), m.forward(params, X.reshape(4, 72)))
    for bad in (X[:, :5], X.reshape(4, 6, 12), X.reshape(-1)[:71][None, :]):
        with pytest.raises(ValueError) as e:
            m.forward(params, bad)
        assert str(e.value) == (f"X has shape {bad.shape}; this network takes (N, 6, 6, 2) "
                                "images or (N, 72) rows")
    with pytest.raises(ValueError) as e:
        m.loss(params, X, np.zeros((4, 5)))
    assert str(e.value) == ("Y has shape (4, 5); this network takes class labels of shape (N,) "
                            "or one-hot rows (N, 4)")


def reference_train(m, params, X, Y, epochs, size, lr, optimizer):
    """train() by hand: torch.optim's rules over loss_and_grad, the same batch orders."""
    p = {k: v.copy() for k, v in params.items()}
    rng = np.random.default_rng(0)
    state: dict = {k: [np.zeros_like(v), np.zeros_like(v)] for k, v in p.items()}
    t = 0
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for start in range(0, len(X), size):
            idx = order[start : start + size]
            _, g = m.loss_and_grad(p, X[idx], Y[idx])
            t += 1
            for k, gk in g.items():
                if optimizer == "sgd":
                    p[k] = p[k] - lr * gk
                elif optimizer == "momentum":
                    buf = state[k][0] = gk if t == 1 else 0.9 * state[k][0] + gk
                    p[k] = p[k] - lr * buf
                else:  # adam
                    mom, sq = state[k]
                    mom[...] = 0.9 * mom + 0.1 * gk
                    sq[...] = 0.999 * sq + 0.001 * gk * gk
                    mhat, vhat = mom / (1 - 0.9**t), sq / (1 - 0.999**t)
                    p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + 1e-8)
    return p


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("name", ["k3_s1_p1_max", "k2_s2_p0_avg", "same_residual_k1"])
def test_train_equals_a_reference_loop(name, optimizer):
    m = module(name)
    params = m.init_params(seed=3)
    X, y = data(m, 21, seed=7)
    Y = np.eye(m.OUTPUTS)[y]
    lr = 0.05 if optimizer != "adam" else 0.01
    expected = reference_train(m, params, X.reshape(21, -1), Y, 2, 8, lr, optimizer)
    m.train(params, X, y, epochs=2, batch_size=8, learning_rate=lr, optimizer=optimizer,
            seed=0, verbose=False)
    for k in m.PARAM_SHAPES:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-9, atol=1e-12, err_msg=k)


def _step_peak(m, n, dtype):
    """The bytes one training step allocates (tracemalloc's peak) at a batch of n rows."""
    params = m.init_params(seed=0, dtype=dtype)
    grads = {k: np.empty_like(params[k]) for k in m.PARAM_SHAPES}
    ws = m._workspace(n, dtype)
    X, y = data(m, n, dtype)
    ws["X"][...] = X.reshape(n, -1)
    ws["Y"][...] = np.eye(m.OUTPUTS, dtype=dtype)[y]
    assert all(a.dtype in (dtype, np.int8, bool) for a in ws.values())
    m._step(params, grads, ws, 0.1)  # warm-up
    tracemalloc.start()
    try:
        m._step(params, grads, ws, 0.1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _, ref = m.loss_and_grad(params, X, y)
    for k in grads:  # the step wrote lr times the gradient
        np.testing.assert_allclose(grads[k], 0.1 * ref[k], rtol=1e-4 if dtype == np.float32
                                   else 1e-10, atol=1e-6 if dtype == np.float32 else 1e-14)
    return peak


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["k3_s1_p1_max", "k23_same_bn_max_s2_p1"])
def test_the_training_step_allocates_nothing_batch_sized(name, dtype):
    """At most numpy's fixed-size ufunc buffers (a few operands of np.getbufsize() items,
    for strided operands: full from a batch of 512 on) and, at a batch 4 times larger, no
    more than two (N, OUTPUTS) arrays more (numpy's row reductions of the softmax copy the
    logits, as in every dense module): nothing of the size of a map or a patch matrix."""
    m = module(name)
    small, large = _step_peak(m, 512, dtype), _step_peak(m, 2048, dtype)
    itemsize = np.dtype(dtype).itemsize
    ufunc = 4 * np.getbufsize() * itemsize
    assert large - small <= 2 * (2048 - 512) * m.OUTPUTS * itemsize + 4096, (small, large)
    assert large <= ufunc + 2 * 2048 * m.OUTPUTS * itemsize + 16384, large


def test_peak_memory_of_train():
    m = module("digits_like", [8, 8, 1],
               [layer(type="conv2d", filters=16, kernel=3, padding=1, activation="relu"),
                layer(type="maxpool2d", kernel=2), layer(type="flatten"),
                layer(units=10, activation="softmax")])
    params = m.init_params(seed=0, dtype=np.float32)
    X, y = data(m, 1440, np.float32)
    X = X.reshape(1440, -1)
    Y = np.eye(10, dtype=np.float32)[y]
    m.train(params, X, Y, epochs=1, batch_size=32, optimizer="adam", verbose=False)
    m._KEPT.clear()
    tracemalloc.start()
    try:
        m.train(params, X, Y, epochs=1, batch_size=32, optimizer="adam", verbose=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    im2col = 32 * 64 * 9 * 4
    budget = X.nbytes + Y.nbytes + sum(p.nbytes for p in params.values()) + im2col
    assert peak <= 2 * budget, (peak, budget)


def test_dead_buffers_share_memory_and_the_peak_of_a_two_conv_net():
    """W5's shape in small (conv 3×3 pad 1 relu → maxpool 2, twice → flatten → dense): the
    step's δ₁ and δ₃ live in the memory of Z₁ and Z₃ (dead once pooled), δ₃W₃ᵀ in that of
    the patch matrix P₂ (dead once ∂L/∂W₃ has read it); the step still computes the
    gradient (train equals the reference loop of loss_and_grad), and the data plus train's
    peak (tracemalloc: the workspace, the last batch's check) stay within 2× of data +
    parameters + one batch's patch matrices, computed from the sizes."""
    convs = [layer(type="conv2d", filters=8, kernel=3, padding=1, activation="relu"),
             layer(type="maxpool2d", kernel=2),
             layer(type="conv2d", filters=16, kernel=3, padding=1, activation="relu"),
             layer(type="maxpool2d", kernel=2), layer(type="flatten"),
             layer(units=10, activation="softmax")]
    m = module("two_conv", [8, 8, 3], convs)
    batch, n = 32, 1024
    ws = m._workspace(batch, np.float32)
    assert np.shares_memory(ws["dZ1"], ws["Z1"]) and np.shares_memory(ws["dZ3"], ws["Z3"])
    col2im_input = [k for k, v in ws.items() if k != "P2" and np.shares_memory(v, ws["P2"])]
    assert len(col2im_input) == 1 and ws[col2im_input[0]].shape == ws["P2"].shape
    params = m.init_params(seed=3)
    X, y = data(m, 20, seed=7)
    expected = reference_train(m, params, X.reshape(20, -1), np.eye(10)[y], 1, 8, 0.05, "sgd")
    m.train(params, X, y, epochs=1, batch_size=8, learning_rate=0.05, seed=0, verbose=False)
    for k in m.PARAM_SHAPES:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-9, atol=1e-12, err_msg=k)
    params = m.init_params(seed=0, dtype=np.float32)
    X, y = data(m, n, np.float32)
    X, Y = X.reshape(n, -1), np.eye(10, dtype=np.float32)[y]
    m.train(params, X, Y, epochs=1, batch_size=batch, verbose=False)
    m._KEPT.clear()
    tracemalloc.start()
    try:
        m.train(params, X, Y, epochs=1, batch_size=batch, verbose=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (H, W, C), patches = m.INPUT_SHAPE, 0
    for filters in (8, 16):  # each conv layer: (batch·H·W) rows × 3·3·C, then pooled by 2
        patches += batch * H * W * 9 * C * 4
        H, W, C = H // 2, W // 2, filters
    budget = X.nbytes + Y.nbytes + sum(p.nbytes for p in params.values()) + patches
    assert X.nbytes + Y.nbytes + peak <= 2 * budget, (peak, budget)


def test_maxpool_before_relu_is_exact_on_ties():
    """relu(max(window)) = max(relu(window)) entry by entry, and the first arg-max of the
    window after relu routes the same δ ⊙ [A > 0]: where the max is > 0 both pick the
    first maximum of the same positive entries; where it is ≤ 0, relu′ = 0 kills δ."""
    m = module("k3_s1_p1_max")
    rng = np.random.default_rng(0)
    A = rng.integers(-2, 3, (4 * 36, 3)).astype(np.float64)  # many ties, zeros and negatives
    geo = ((6, 6), (2, 2), (2, 2), (0, 0))
    pooled, arg = m.maxpool(A, *geo)
    relu_pooled, relu_arg = m.maxpool(np.maximum(A, 0), *geo)
    assert np.array_equal(np.maximum(pooled, 0), relu_pooled)
    G = rng.standard_normal(pooled.shape)
    routed = m.maxpool_back(G * (pooled > 0), arg, *geo)
    expected = m.maxpool_back(G, relu_arg, *geo) * (np.maximum(A, 0) > 0)
    assert np.array_equal(routed, expected)


def test_the_step_pools_before_the_relu_and_the_readable_code_does_not():
    """The committed digits module: _step max-pools Z₁ and applies the relu (and relu′) on
    the pooled map; loss_and_grad keeps the derivation's order, line by line."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "generated" / "digits_cnn.py").read_text()
    step = text[text.index("def _step("):text.index("\n\n\n", text.index("def _step("))]
    readable = text[text.index("def loss_and_grad("):text.index("def predict(")]
    assert "maxpool(Z1, (8, 8), (2, 2), (2, 2), (0, 0), out=(S1, arg2), mask=mask_arg2)" in step
    assert "np.maximum(S1, 0.0, out=Z2)" in step and "np.greater(Z2, 0.0, out=M1)" in step
    assert "np.greater(Z1" not in step and "mask1" not in step
    assert "A1 = np.maximum(Z1, 0)" in readable
    # one call for the pooled map and its arg-max, under both formulas
    assert ("    # arg₂ = argmax(A₁)\n    # Z₂ = maxpool(A₁)\n"
            "    Z2, arg2 = maxpool(A1, (8, 8), (2, 2), (2, 2), (0, 0))\n") in readable
    assert readable.count("maxpool(A1, ") == 1


def test_hvp_of_a_conv_net_equals_differences_of_the_gradient():
    """generate --hvp: H V through conv, relu and max pooling (the tangent picked at the
    arg-max, not pooled by its own maximum) equals central differences of loss_and_grad."""
    inputs, layers, _ = CASES["k3_s1_p1_max"]
    spec = spec_from_dict(tomllib.loads(source("hvp", inputs, layers)), "hvp.toml")
    m = load_module(generate_source(spec, products=True), name="c3_hvp")
    rng = np.random.default_rng(0)
    params = biased(m.init_params(seed=1))
    X, y = data(m, 4, seed=2)
    V = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    Hv, h = m.hvp(params, X, y, V), 1e-5
    plus = m.loss_and_grad({k: params[k] + h * V[k] for k in params}, X, y)[1]
    minus = m.loss_and_grad({k: params[k] - h * V[k] for k in params}, X, y)[1]
    for k in params:
        assert Hv[k].shape == m.PARAM_SHAPES[k]
        np.testing.assert_allclose(Hv[k], (plus[k] - minus[k]) / (2 * h), rtol=1e-5, atol=1e-6)


def test_batchnorm_on_a_map_keeps_torchs_running_statistics():
    """The running variance takes the unbiased factor of the N·H·W rows it averaged over
    (torch's BatchNorm2d), in the module and in derive's update line."""
    from symgrad.derive import derive
    from symgrad.printing import render

    name = "k23_same_bn_max_s2_p1"
    m = module(name)
    params = m.init_params(seed=1)
    X, y = data(m, 6, seed=8)
    p = {k: torch.tensor(v) for k, v in params.items()}
    x = torch.tensor(X).permute(0, 3, 1, 2)
    mean, var = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    F.batch_norm(conv(p, x, 1, 1, (1, 1)), mean, var, p["gamma2"], p["beta2"], training=True,
                 momentum=0.1, eps=1e-5)
    m.train(params, X, y, epochs=1, batch_size=6, optimizer="sgd", verbose=False)
    np.testing.assert_allclose(params["mean2"], mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(params["var2"], var.numpy(), rtol=1e-12)
    inputs, layers, _ = CASES[name]
    d = derive(spec_from_dict(tomllib.loads(source(name, inputs, layers)), "bn.toml"))
    assert "var₂ ← 0.9 var₂ + 0.1 σ₂² N·H₁·W₁/(N·H₁·W₁ − 1)" in render(d, "text")
