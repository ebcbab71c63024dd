"""The window ops of symgrad.ops.conv (issue 12): their numeric forms against PyTorch
(torch.nn.functional.conv2d / max_pool2d / avg_pool2d on NCHW permutes), adjointness,
the explicit (SymPy) forms against the numeric ones, and whole small conv nets' gradients
(the derivation's backward equations evaluated with numpy) against finite differences and
torch autograd, for kernels 1–3 and rectangular, stride 1/2, padding 0/1/"same", channels
1/3, and ties in max-pool windows (torch routes to the first maximum)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from symgrad.derive import derive
from symgrad.errors import SymgradError
from symgrad.ops import (
    AvgPool,
    AvgPoolBack,
    Col2im,
    Flatten,
    Geometry,
    Im2col,
    MaxPool,
    MaxPoolBack,
    N,
    PoolArgmax,
    Sym,
    Unflatten,
)
from symgrad.spec import Layer, Spec


@pytest.fixture(autouse=True, scope="module")
def _float64_by_default():
    """torch tensors made from Python numbers are float64 here — and only here: the default
    is restored for the test files that run after this one in the same process."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def nchw(a: np.ndarray, g: Geometry) -> torch.Tensor:
    """The (N·H·W, C) map as torch's (N, C, H, W)."""
    return torch.tensor(a.reshape(-1, g.h, g.w, a.shape[1])).permute(0, 3, 1, 2)


def rows(t: torch.Tensor) -> np.ndarray:
    """torch's (N, C, H, W) as the (N·H·W, C) map."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).detach().numpy()


@st.composite
def geometries(draw, pool: bool = False):
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = (kh, kw) if pool and draw(st.booleans()) else (draw(st.integers(1, 2)),
                                                            draw(st.integers(1, 2)))
    top = (kh // 2, kw // 2) if pool else (1, 1)
    ph, pw = draw(st.integers(0, top[0])), draw(st.integers(0, top[1]))
    g = Geometry(h, w, kh, kw, sh, sw, ph, pw)
    assume(g.ho >= 1 and g.wo >= 1)
    return g


def conv_ref(a, w, g):
    """Cross-correlation of the map by torch (w in the graph's (kh·kw·C, F) layout)."""
    c = a.shape[1]
    wt = torch.tensor(w.reshape(g.kh, g.kw, c, -1)).permute(3, 2, 0, 1)
    return rows(F.conv2d(nchw(a, g), wt, stride=(g.sh, g.sw), padding=(g.ph, g.pw)))


@SETTINGS
@given(geometries(), st.sampled_from([1, 3]), st.integers(1, 2))
def test_im2col_times_the_weight_is_torchs_conv2d_and_col2im_is_its_adjoint(g, c, n):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n * g.h * g.w, c))
    w = rng.normal(size=(g.k * c, 2))
    x = Sym("A", (N * g.h * g.w, sp.Integer(c)))
    patches = Im2col(x, g).numeric({"A": a})
    assert patches.shape == (n * g.ho * g.wo, g.k * c)
    np.testing.assert_allclose(patches @ w, conv_ref(a, w, g), atol=1e-12)
    p = rng.normal(size=patches.shape)
    back = Col2im(Sym("P", (N * g.ho * g.wo, sp.Integer(g.k * c))), g).numeric({"P": p})
    assert back.shape == a.shape
    np.testing.assert_allclose(np.sum(patches * p), np.sum(a * back))  # ⟨im2col A, P⟩ = ⟨A, col2im P⟩


@SETTINGS
@given(geometries(pool=True), st.sampled_from([1, 3]))
def test_pooling_is_torchs_and_its_rules_are_torchs_gradients(g, c):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2 * g.h * g.w, c))
    x = Sym("A", (N * g.h * g.w, sp.Integer(c)))
    arg = PoolArgmax(x, g).numeric({"A": a})
    env = {"A": a, "arg": arg}
    t = nchw(a, g).clone().requires_grad_(True)
    kw = {"kernel_size": (g.kh, g.kw), "stride": (g.sh, g.sw), "padding": (g.ph, g.pw)}
    for op, ref in ((MaxPool(x, Sym("arg", x.shape), g), F.max_pool2d(t, **kw)),
                    (AvgPool(x, g), F.avg_pool2d(t, **kw, count_include_pad=True))):
        np.testing.assert_allclose(op.numeric(env), rows(ref), atol=1e-12)
        grad = rng.normal(size=op.numeric(env).shape)
        (expected,) = torch.autograd.grad(ref, t, nchw(grad, Geometry(g.ho, g.wo, 1, 1)))
        gs = Sym("G", (N * g.ho * g.wo, sp.Integer(c)))
        rule = op.vjp(gs, None)[0]
        assert isinstance(rule, MaxPoolBack | AvgPoolBack)
        np.testing.assert_allclose(rule.numeric({**env, "G": grad}), rows(expected), atol=1e-12)


def test_max_pool_ties_go_to_the_first_maximum_as_torch():
    g = Geometry(4, 4, 2, 2, 1, 1, 0, 0)  # overlapping windows, many ties
    a = np.array([[1, 1, 0, 2], [1, 1, 2, 2], [0, 3, 3, 0], [3, 3, 0, 0]], float).reshape(-1, 1)
    x = Sym("A", (N * 16, sp.Integer(1)))
    arg = PoolArgmax(x, g).numeric({"A": a})
    assert arg.ravel().tolist() == [0, 3, 1, 3, 2, 2, 1, 0, 0]
    t = nchw(a, g).clone().requires_grad_(True)
    out = F.max_pool2d(t, 2, stride=1)
    grad = np.arange(1.0, 10.0).reshape(-1, 1)
    (expected,) = torch.autograd.grad(out, t, nchw(grad, Geometry(3, 3, 1, 1)))
    got = MaxPoolBack(Sym("G", (N * 9, sp.Integer(1))), Sym("arg", (N * 9, 1)), g).numeric(
        {"G": grad, "arg": arg})
    np.testing.assert_array_equal(got, rows(expected))
    # a spread over the window, or to every tied maximum, is not this
    assert got.sum() == grad.sum() and np.count_nonzero(got) == 5


@settings(max_examples=12, deadline=None, derandomize=True)
@given(geometries(pool=True), st.integers(1, 2))
def test_explicit_forms_are_the_numeric_ones(g, c):
    """The SymPy expansions (the proof's) index the same entries as the numpy forms."""
    rng = np.random.default_rng(2)
    a = rng.integers(-9, 9, size=(g.h * g.w, c)).astype(float) + rng.permutation(g.h * g.w * c
                                                                                 ).reshape(-1, c) / 100
    x = Sym("A", (N * g.h * g.w, sp.Integer(c)))
    gp = Sym("G", (N * g.ho * g.wo, sp.Integer(c)))
    gc = Sym("P", (N * g.ho * g.wo, sp.Integer(g.k * c)))
    arg = Sym("arg", gp.shape)
    env_np = {"A": a, "G": rng.normal(size=(g.ho * g.wo, c)), "P": rng.normal(size=(g.ho * g.wo, g.k * c))}
    env_np["arg"] = PoolArgmax(x, g).numeric(env_np)
    env_sp = {N: 1, **{k: sp.Matrix(v) for k, v in env_np.items()}}
    env_sp["arg"] = PoolArgmax(x, g).explicit(env_sp)
    for op in (Im2col(x, g), Col2im(gc, g), PoolArgmax(x, g), MaxPool(x, arg, g),
               MaxPoolBack(gp, arg, g), AvgPool(x, g), AvgPoolBack(gp, g), Flatten(x, g.h * g.w)):
        got = np.array(op.explicit(env_sp), dtype=float)
        np.testing.assert_allclose(got, op.numeric(env_np), atol=1e-12, err_msg=type(op).__name__)
    flat = Flatten(x, g.h * g.w).numeric(env_np)
    np.testing.assert_array_equal(flat, a.reshape(1, -1))  # NHWC row-major
    back = Unflatten(Sym("F", (N, sp.Integer(g.h * g.w * c))), g.h * g.w).numeric({"F": flat})
    np.testing.assert_array_equal(back, a)


# --------------------------------------------------------------------------
# Whole small conv nets: the derivation's gradients
# --------------------------------------------------------------------------


def evaluate(d, X: np.ndarray, Y: np.ndarray, params: dict) -> tuple[float, dict]:
    """L and ∂L/∂param from the derivation's forward and backward equations (numpy)."""
    env = {N: len(Y), **d.graph.sizes(), "X": X, "Y": Y, **params}
    for eq in (*d.forward, *d.backward):
        env[eq.target.name] = eq.rhs.numeric(env)
    return float(env["L"][0, 0]), {p: env["d" + p] for p in params}


def graph_params(d, rng) -> dict:
    """Parameters in the graph's layout: W as its (fan_in, F) matrix, b as a 1×F row."""
    sizes = {N: 1, **d.graph.sizes()}
    return {p.name: rng.normal(size=tuple(int(s.xreplace(sizes)) for s in p.shape)) * 0.5
            for p in d.graph.params}


def torch_loss(spec: Spec, X: np.ndarray, Y: np.ndarray, params: dict) -> tuple[float, dict]:
    """The same network written in torch (NCHW permutes; flatten in NHWC order)."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    h, w, c = spec.input_shape
    t = torch.tensor(X).reshape(-1, h, w, c).permute(0, 3, 1, 2)
    for l, layer in enumerate(spec.layers, 1):
        if layer.type == "conv2d":
            kh, kw = layer.kernel
            weight = tp[f"W{l}"].reshape(kh, kw, t.shape[1], -1).permute(3, 2, 0, 1)
            pad = "same" if layer.padding == "same" else layer.padding
            t = F.conv2d(t, weight, tp[f"b{l}"].reshape(-1), stride=layer.stride, padding=pad)
        elif layer.type in ("maxpool2d", "avgpool2d"):
            kw_ = {"kernel_size": layer.kernel, "stride": layer.stride, "padding": layer.padding}
            t = F.max_pool2d(t, **kw_) if layer.type == "maxpool2d" else F.avg_pool2d(t, **kw_)
        elif layer.type == "flatten":
            t = t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
        elif layer.type == "batchnorm":
            t = F.batch_norm(t, None, None, tp[f"gamma{l}"].reshape(-1), tp[f"beta{l}"].reshape(-1),
                             training=True, eps=layer.eps)
        else:
            t = t @ tp[f"W{l}"] + tp[f"b{l}"]
        t = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda v: v,
             "softmax": lambda v: torch.softmax(v, dim=1)}[layer.fn.name](t)
    loss = -(torch.tensor(Y) * torch.log(t)).sum() / len(Y)
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in tp.items()}


KERNELS = [1, 2, 3, [2, 3], [3, 1]]


@st.composite
def conv_nets(draw):
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(3, 6)), draw(st.integers(3, 6))
    kernel = draw(st.sampled_from(KERNELS))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, "same"] if stride == 1 else [0, 1]))
    activation = draw(st.sampled_from(["tanh", "relu"]))
    pool = draw(st.sampled_from(["", "maxpool2d", "avgpool2d"]))
    pool_stride, pool_padding = draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1]))
    try:
        layers = [Layer(type="conv2d", filters=2, kernel=kernel, stride=stride, padding=padding,
                        activation=activation)]
        if pool:
            layers.append(Layer(type=pool, kernel=2, stride=pool_stride, padding=pool_padding))
        layers += [Layer(type="flatten"), Layer(3, "softmax")]
        return Spec("net", [h, w, c], tuple(layers), "cross_entropy")
    except SymgradError:
        assume(False)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(conv_nets())
def test_gradients_equal_torch_and_finite_differences(spec):
    rng = np.random.default_rng(3)
    n = 2
    X = rng.normal(size=(n * spec.input_shape[0] * spec.input_shape[1], spec.input_shape[2]))
    Y = np.eye(3)[[0, 2]]
    d = derive(spec)
    params = graph_params(d, rng)
    loss, grads = evaluate(d, X, Y, params)
    t_loss, t_grads = torch_loss(spec, X, Y, params)
    assert loss == pytest.approx(t_loss, rel=1e-10)
    for name in params:
        np.testing.assert_allclose(grads[name], t_grads[name], rtol=1e-8, atol=1e-10, err_msg=name)
    v = {k: rng.normal(size=p.shape) for k, p in params.items()}  # a random direction
    eps = 1e-6
    moved = [evaluate(d, X, Y, {k: params[k] + s * eps * v[k] for k in params})[0]
             for s in (1, -1)]
    assert (moved[0] - moved[1]) / (2 * eps) == pytest.approx(
        sum(np.sum(grads[k] * v[k]) for k in params), rel=1e-6, abs=1e-9)


def test_max_pool_ties_in_a_net_route_as_torch():
    """relu zeros and repeated inputs tie in the windows; the whole gradient is torch's."""
    spec = Spec("ties", [4, 4, 1], (Layer(type="maxpool2d", kernel=2, stride=1),
                                    Layer(type="flatten"), Layer(3, "softmax")), "cross_entropy")
    rng = np.random.default_rng(4)
    X = rng.integers(0, 2, size=(2 * 16, 1)).astype(float)
    Y = np.eye(3)[[1, 2]]
    d = derive(spec)
    params = graph_params(d, rng)
    loss, grads = evaluate(d, X, Y, params)
    t_loss, t_grads = torch_loss(spec, X, Y, params)
    assert loss == pytest.approx(t_loss)
    for name in params:
        np.testing.assert_allclose(grads[name], t_grads[name], rtol=1e-10, atol=1e-12)


def test_batchnorm_on_a_feature_map_is_torchs_batchnorm2d():
    """Per-channel statistics over the N·H·W rows (BatchNorm2d), gradients included."""
    spec = Spec("bn2d", [4, 3, 2], (Layer(type="conv2d", filters=3, kernel=2, padding=1),
                                    Layer(type="batchnorm", activation="relu"),
                                    Layer(type="flatten"), Layer(3, "softmax")), "cross_entropy")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3 * 12, 2))
    Y = np.eye(3)[[0, 1, 2]]
    d = derive(spec)
    params = graph_params(d, rng)
    params["gamma2"] = 1 + params["gamma2"]
    loss, grads = evaluate(d, X, Y, params)
    t_loss, t_grads = torch_loss(spec, X, Y, params)
    assert loss == pytest.approx(t_loss, rel=1e-10)
    for name in params:
        np.testing.assert_allclose(grads[name], t_grads[name], rtol=1e-7, atol=1e-10, err_msg=name)


def test_jvps_are_directional_derivatives():
    """Each op's forward-mode rule (issue 15's R-operator) against a difference quotient."""
    g = Geometry(5, 4, 3, 2, 2, 1, 1, 1)
    rng = np.random.default_rng(6)
    a, t = rng.normal(size=(2 * 20, 3)), rng.normal(size=(2 * 20, 3))
    x, tx = Sym("A", (N * 20, sp.Integer(3))), Sym("T", (N * 20, sp.Integer(3)))
    arg = Sym("arg", (N * g.ho * g.wo, sp.Integer(3)))
    env = {"A": a, "T": t, "arg": PoolArgmax(x, g).numeric({"A": a})}
    eps = 1e-7
    for op in (Im2col(x, g), AvgPool(x, g), MaxPool(x, arg, g), Flatten(x, 20)):
        rule = op.jvp((tx,), None)
        moved = {"A": a + eps * t}  # no arg-max given: MaxPool takes each window's maximum
        quotient = (op.numeric(moved) - op.numeric({"A": a})) / eps
        np.testing.assert_allclose(rule.numeric(env), quotient, rtol=1e-5, atol=1e-6,
                                   err_msg=type(op).__name__)
    assert PoolArgmax(x, g).jvp((tx,), None) is None
