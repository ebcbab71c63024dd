"""Red team of issue 12's acceptance (conv nets), after its readable-code and printing gaps.

* Every geometry of the acceptance — kernel 1, 2, 3, [2, 3] × stride 1, 2 × padding 0, 1,
  "same" × channels 1, 3 — with max and average pooling (stride ≠ kernel, padded too) and
  flatten on a 5×6 image (H ≠ W: a swapped axis shows): the derived formulas against central
  differences of the loss, the layers' own claims of --prove (scalar expansion), and the
  generated module's loss_and_grad and fast train step (hypothesis draws; the whole table in
  make test-slow). The geometries torch refuses ("same" with stride 2 or an even kernel) are
  refused in one line.
* Hostile specs (zero sizes, kernels larger than the padded input, huge sizes past the
  budgets, wrong types) → one line ``symgrad: error: …``, exit 2; wrong X shapes at
  loss_and_grad/train/forward → one ValueError naming both shapes.
* What this round fixed: X read as a map by batchnorm, dropout, add and concat (the module
  read X's flat rows: broadcast errors); generate --hvp of a net that max-pools with no conv
  (im2col missing from the module's kernels); maxpool called once in loss_and_grad for the
  pooled map and its arg-max; a map's row count printed N·H₁·W₁ (text, LaTeX, Markdown) and
  arg₂ as \\operatorname{arg}_{2}.
* verify's classic-mistake diagnoses on a rectangular-kernel, stride-2, padded net (slow).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symgrad.cli import main
from symgrad.codegen import generate_source, load_module
from symgrad.crosscheck import prove_op, tiny_image
from symgrad.derive import derive
from symgrad.errors import SymgradError
from symgrad.graph import width
from symgrad.ops import N
from symgrad.spec import spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
KERNELS = (1, 2, 3, [2, 3])
STRIDES = (1, 2)
PADDINGS = (0, 1, "same")
CHANNELS = (1, 3)
H, W = 5, 6


def toml_value(v) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def layer(**keys) -> str:
    return "[[layer]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()) + "\n"


def net(name: str, inputs, layers: list[str], loss: str = "cross_entropy") -> str:
    return (f'[network]\nname = "{name}"\ninputs = {inputs}\n\n' + "".join(layers)
            + f'[loss]\nkind = "{loss}"\n')


def conv_out(size: int, k: int, s: int, p) -> int:
    pad = (k - 1) // 2 if p == "same" else p
    return (size + 2 * pad - k) // s + 1


def geometry_net(kernel, stride, padding, channels, pool: str, pool_stride: int = 1,
                 pool_padding: int = 0) -> str:
    """5×6×C → conv (2 filters, tanh) → pool (kernel 2 where it fits, the given stride and
    padding) → flatten → 3 softmax."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ho, wo = conv_out(H, kh, stride, padding), conv_out(W, kw, stride, padding)
    pk = [min(2, ho), min(2, wo)]
    pad = min(pool_padding, pk[0] // 2, pk[1] // 2)
    return net("geo", [H, W, channels], [
        layer(type="conv2d", filters=2, kernel=kernel, stride=stride, padding=padding,
              activation="tanh"),
        layer(type=pool, kernel=pk, stride=pool_stride, padding=pad),
        layer(type="flatten"), layer(units=3, activation="softmax")])


def refusal(kernel, stride, padding) -> str | None:
    """The one-line refusal torch's rules call for, or None for a valid geometry."""
    even = kernel == 2 or kernel == [2, 3]
    if padding == "same" and stride != 1:
        return ('layer[1].padding: padding = "same" needs stride 1 (as torch), got stride 2; '
                "give the padding as numbers")
    if padding == "same" and even:
        shown = "2×2" if kernel == 2 else "2×3"
        return (f'layer[1].padding: padding = "same" with the even kernel {shown} pads '
                "unevenly (torch adds the extra row or column at the bottom or right), which "
                "is not available; use an odd kernel or give the padding as numbers")
    return None


def spec_of(text: str, name: str = "geo.toml"):
    return spec_from_dict(tomllib.loads(text), name)


# --------------------------------------------------------------------------
# the derived formulas, evaluated with numpy, against central differences of the loss
# --------------------------------------------------------------------------


def sizes_env(d, n: int) -> dict:
    return {N: n, **{width(l): s for l, s in enumerate(d.spec.sizes)}}


def shape_of(sym, env) -> tuple[int, int]:
    return tuple(int(sp.sympify(s).xreplace(env)) for s in sym.shape)


def run_derivation(d, env: dict, backward: bool = True) -> dict:
    env = dict(env)
    for eq in [*d.forward, *(d.backward if backward else ())]:
        env[eq.target.name] = eq.rhs.numeric(env)
    return env


def derivation_gradient_errors(d, seed: int = 0, n: int = 2, directions: int = 2) -> list:
    """|⟨∇L, V⟩ − (L(θ + hV) − L(θ − hV))/2h| / scale along random directions V, with the
    gradient from the derivation's backward equations (the formulas derive prints)."""
    rng = np.random.default_rng(seed)
    sizes = sizes_env(d, n)
    x, y = d.graph.data
    base = {**sizes, x.name: rng.standard_normal(shape_of(x, sizes)),
            y.name: np.eye(shape_of(y, sizes)[1])[rng.integers(0, shape_of(y, sizes)[1], n)]}
    params = {p.name: 0.7 * rng.standard_normal(shape_of(p, sizes)) for p in d.graph.params}
    env = run_derivation(d, {**base, **params})
    grads = {p: env[f"d{p}"] for p in params}
    errors, h = [], 1e-6
    for _ in range(directions):
        V = {p: rng.standard_normal(v.shape) for p, v in params.items()}
        dot = sum(float(np.sum(grads[p] * V[p])) for p in params)
        plus = run_derivation(d, {**base, **{p: v + h * V[p] for p, v in params.items()}}, False)
        minus = run_derivation(d, {**base, **{p: v - h * V[p] for p, v in params.items()}}, False)
        fd = (float(plus["L"][0, 0]) - float(minus["L"][0, 0])) / (2 * h)
        errors.append(abs(dot - fd) / max(abs(dot), abs(fd), 1e-3))
    return errors


GEOMETRIES = [(k, s, p, c) for k in KERNELS for s in STRIDES for p in PADDINGS for c in CHANNELS]
POOLS = [("maxpool2d", 1, 0), ("avgpool2d", 1, 0), ("maxpool2d", 2, 1), ("avgpool2d", 2, 1)]


def check_geometry(kernel, stride, padding, channels, pool, pool_stride, pool_padding):
    text = geometry_net(kernel, stride, padding, channels, pool, pool_stride, pool_padding)
    refused = refusal(kernel, stride, padding)
    if refused is not None:
        with pytest.raises(SymgradError) as err:
            spec_of(text)
        assert str(err.value) == f"geo.toml: {refused}"
        return None
    d = derive(spec_of(text))
    errors = derivation_gradient_errors(d, seed=channels + 7 * stride)
    assert max(errors) < 1e-6, (text, errors)
    return d


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(GEOMETRIES), st.sampled_from(POOLS))
def test_derived_gradients_equal_differences_for_drawn_geometries(geometry, pool):
    check_geometry(*geometry, *pool)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_derived_gradients_equal_differences_for_every_geometry(geometry):
    for pool in POOLS:
        check_geometry(*geometry, *pool)


def test_the_refused_geometries_are_the_ones_torch_refuses():
    refused = [g for g in GEOMETRIES if refusal(*g[:3])]
    assert len(refused) == 2 * 2 * 2 + 2 * 2 * 1  # "same": stride 2 (any kernel), even kernels
    for g in refused[:2] + refused[-2:]:
        check_geometry(*g, "maxpool2d", 1, 0)


# --------------------------------------------------------------------------
# --prove: each window layer's own claim by scalar expansion (tiny image)
# --------------------------------------------------------------------------


def prove_layers(kernel, stride, padding, channels, pool, pool_stride, pool_padding):
    if refusal(kernel, stride, padding):
        return
    spec = spec_of(geometry_net(kernel, stride, padding, channels, pool, pool_stride,
                                pool_padding))
    d = derive(tiny_image(spec))
    for l in (1, 2, 3):  # conv2d, the pooling, flatten
        claim = prove_op(d, l)
        assert claim.ok and not claim.skipped, (geometry_net.__name__, l, claim.detail)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([g for g in GEOMETRIES if g[3] == 1 and not refusal(*g[:3])]),
       st.sampled_from(POOLS))
def test_the_window_layers_are_proved_for_drawn_geometries(geometry, pool):
    prove_layers(*geometry, *pool)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if not refusal(*g[:3])], ids=str)
def test_the_window_layers_are_proved_for_every_geometry(geometry):
    for pool in POOLS[:2]:
        prove_layers(*geometry, *pool)


# --------------------------------------------------------------------------
# the generated module: loss_and_grad against differences, the fast step against it
# --------------------------------------------------------------------------


def module_checks(text: str, name: str, seed: int = 0, n: int = 3):
    m = load_module(generate_source(spec_of(text, f"{name}.toml")), name=name)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, *m.INPUT_SHAPE))
    Y = rng.integers(0, m.OUTPUTS, n)
    params = {k: v + (0.3 * rng.standard_normal(v.shape) if k.startswith(("b", "beta")) else 0)
              for k, v in m.init_params(seed=seed + 1).items()}
    L, grads = m.loss_and_grad(params, X, Y)
    h = 1e-6
    for k, g in grads.items():
        V = rng.standard_normal(g.shape)
        plus = m.loss({**params, k: params[k] + h * V}, X, Y)
        minus = m.loss({**params, k: params[k] - h * V}, X, Y)
        fd, dot = (plus - minus) / (2 * h), float(np.sum(g * V))
        assert abs(fd - dot) <= 1e-6 * max(1.0, abs(fd)), (name, k, fd, dot)
    # train's fast step (its own kernels, workspace and fusions) is the readable gradient:
    # one SGD step on the whole batch, the flat rows of X as the images
    step = {k: v.copy() for k, v in params.items()}
    m.train(step, X.reshape(n, -1), Y, epochs=1, batch_size=n, optimizer="sgd",
            learning_rate=0.5, verbose=False)
    for k, g in grads.items():
        np.testing.assert_allclose(step[k], params[k] - 0.5 * g, rtol=1e-9, atol=1e-11,
                                   err_msg=f"{name}: {k}")
    return m, params, X, Y


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([g for g in GEOMETRIES if not refusal(*g[:3])]), st.sampled_from(POOLS))
def test_generated_gradients_and_train_for_drawn_geometries(geometry, pool):
    module_checks(geometry_net(*geometry, *pool), "geo_mod")


# --------------------------------------------------------------------------
# hostile specs: one line, exit 2
# --------------------------------------------------------------------------

BASE = dict(inputs="[4, 4, 1]", conv='kernel = 3\nfilters = 2\n', extra="")
HOSTILE = [
    (dict(inputs="[0, 4, 1]"), "network.inputs[1] (H): must be between 1 and 1000000, got 0"),
    (dict(inputs="[4, 4, 0]"), "network.inputs[3] (C): must be between 1 and 1000000, got 0"),
    (dict(inputs="[4, 4]"), "network.inputs: an image input is [H, W, C] (three integers), "
                            "got [4, 4]; a flat input is one integer"),
    (dict(conv="kernel = 3\nfilters = 0\n"),
     "layer[1].filters: must be between 1 and 1000000, got 0"),
    (dict(conv="kernel = 0\nfilters = 2\n"), "layer[1].kernel: must be between 1 and 1024, got 0"),
    (dict(conv="kernel = 7\nfilters = 2\npadding = 1\n"),
     "layer[1].kernel: the kernel's height 7 is larger than the padded input's 6 (X is 4×4×1, "
     "padding 1); use a smaller kernel or more padding"),
    (dict(conv="kernel = [1, 2, 3]\nfilters = 2\n"),
     "layer[1].kernel: must be one integer or a list of two ([kh, kw]), got [1, 2, 3]"),
    (dict(conv="kernel = 2.5\nfilters = 2\n"), "layer[1].kernel: must be an integer, got 2.5"),
    (dict(conv="kernel = true\nfilters = 2\n"), "layer[1].kernel: must be an integer, got True"),
    (dict(conv="kernel = 3\nfilters = 2\nstride = 0\n"),
     "layer[1].stride: must be between 1 and 1024, got 0"),
    (dict(conv='kernel = 3\nfilters = 2\npadding = "valid"\n'),
     "layer[1].padding: must be a number, [ph, pw] or \"same\", got 'valid'"),
    (dict(conv="kernel = 3\nfilters = 2\npadding = -1\n"),
     "layer[1].padding: must be between 0 and 1024, got -1"),
    (dict(inputs="[100000, 100000, 3]"),
     "network.inputs: H·W·C = 30000000000 is more than 1000000"),
    (dict(inputs="[512, 512, 3]", conv="kernel = 3\nfilters = 64\n"),
     "layer[1]: its output 510×510×64 has more than 1000000 values per sample"),
    (dict(conv="kernel = 3\nfilters = 1000000000\n"),
     "layer[1].filters: must be between 1 and 1000000, got 1000000000"),
    (dict(extra='[[layer]]\ntype = "maxpool2d"\nkernel = 9\n\n'),
     "layer[2].kernel: the kernel's height 9 is larger than the padded input's 2 (A1 is 2×2×2, "
     "padding 0); use a smaller kernel or more padding"),
    (dict(extra='[[layer]]\ntype = "maxpool2d"\nkernel = 2\npadding = 2\n\n'),
     "layer[2].padding: must be at most half the kernel (1×1 for kernel 2×2, as torch), got 2"),
    (dict(extra='[[layer]]\ntype = "avgpool2d"\nkernel = 3\npadding = "same"\n\n'),
     "layer[2].padding: avgpool2d takes no padding = \"same\" (torch's pooling has none); "
     "give padding = 0 … 1"),
    (dict(extra='[[layer]]\ntype = "flatten"\nkernel = 2\n\n'),
     "layer[2].kernel: only conv2d, maxpool2d and avgpool2d layers take kernel; remove it from "
     "this flatten layer"),
]


def hostile_text(inputs, conv, extra) -> str:
    return (f'[network]\nname = "h"\ninputs = {inputs}\n\n[[layer]]\ntype = "conv2d"\n{conv}\n'
            f'{extra}[[layer]]\ntype = "flatten"\n\n[[layer]]\nunits = 2\n'
            'activation = "softmax"\n\n[loss]\nkind = "cross_entropy"\n')


@pytest.mark.parametrize("keys,message", HOSTILE, ids=[m[:40] for _, m in HOSTILE])
def test_hostile_specs_are_one_line_errors(tmp_path, capsys, keys, message):
    path = tmp_path / "h.toml"
    path.write_text(hostile_text(**{**BASE, **keys}), encoding="utf-8")
    for command in (["derive", str(path)], ["generate", str(path), "-o", str(tmp_path / "h.py")]):
        assert main(command) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"symgrad: error: {path}: {message}\n"


def test_strides_that_do_not_divide_and_windows_of_padding_only_are_computed_as_torch():
    """Stride 3 over 7 pixels (the last columns unread, floor mode), padding 3 around a 3×3
    kernel (windows all padding: Z = b there), stride 5 (one window): torch's sizes, and the
    formulas against differences."""
    for conv, size in (({"kernel": 3, "stride": 3}, (2, 2)), ({"kernel": 3, "padding": 3}, (11, 11)),
                       ({"kernel": 2, "stride": 5}, (2, 2))):
        spec = spec_of(net("odd", [7, 7, 2], [layer(type="conv2d", filters=2, **conv,
                                                    activation="tanh"),
                                              layer(type="flatten"), layer(units=2)], "mse"))
        assert spec.image("A1")[:2] == size
        assert max(derivation_gradient_errors(derive(spec))) < 1e-6


# --------------------------------------------------------------------------
# the module's X: images or rows, anything else one ValueError
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cnn():
    return load_module((ROOT / "generated" / "digits_cnn.py").read_text(), name="rt_digits")


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 8, 4, 2), (5, 65), (5, 8, 8), (64,),
                                   (5, 8, 8, 1, 1), (5, 8, 8, 2), ()])
def test_wrong_x_shapes_are_one_error_at_every_entry_point(digits_cnn, shape):
    m, rng = digits_cnn, np.random.default_rng(0)
    params, X, Y = m.init_params(), rng.standard_normal(shape), rng.integers(0, 10, 5)
    message = re.escape(f"X has shape {shape}; this network takes (N, 8, 8, 1) images or "
                        "(N, 64) rows")
    for call in (lambda: m.loss_and_grad(params, X, Y), lambda: m.loss(params, X, Y),
                 lambda: m.forward(params, X), lambda: m.predict(params, X),
                 lambda: m.train(dict(params), X, Y, epochs=1, verbose=False)):
        with pytest.raises(ValueError, match=f"^{message}$"):
            call()


def test_x_as_images_and_as_rows_are_the_same_batch(digits_cnn):
    m, rng = digits_cnn, np.random.default_rng(1)
    params, X, Y = m.init_params(), rng.standard_normal((4, 8, 8, 1)), rng.integers(0, 10, 4)
    L1, g1 = m.loss_and_grad(params, X, Y)
    L2, g2 = m.loss_and_grad(params, X.reshape(4, 64), Y)
    assert L1 == L2 and all(np.array_equal(g1[k], g2[k]) for k in g1)
    with pytest.raises(ValueError, match="^Y has 4 rows; X has 3$"):
        m.loss_and_grad(params, X[:3], Y)


# --------------------------------------------------------------------------
# fixed this round
# --------------------------------------------------------------------------

ON_X = {  # layers that read the image X itself as a map (not through a window op)
    "bn": [layer(type="batchnorm")],
    "dropout": [layer(type="dropout", p=0.25)],
    "add": [layer(type="conv2d", filters=2, kernel=3, padding=1),
            layer(type="add", inputs=["X", "A1"])],
    "concat": [layer(type="conv2d", filters=1, kernel=3, padding=1, activation="relu"),
               layer(type="concat", inputs=["X", "A1"])],
}
POOLED = [layer(type="maxpool2d", kernel=2), layer(type="flatten"),
          layer(units=3, activation="softmax")]


@pytest.mark.parametrize("kind", list(ON_X))
def test_a_map_layer_on_x_reads_x_as_the_map(kind):
    """The module keeps X as its (N, H·W·C) rows; a batchnorm, dropout, add or concat on X
    read those rows as the map (broadcast errors, or the wrong statistics) — now through
    X.reshape(-1, C)."""
    text = net(f"on_x_{kind}", [4, 4, 2], ON_X[kind] + POOLED)
    if kind == "dropout":  # masks: loss and loss_and_grad draw the same for the same seed
        m = load_module(generate_source(spec_of(text)), name="on_x_dropout")
        rng = np.random.default_rng(0)
        X, Y, params = rng.standard_normal((3, 4, 4, 2)), rng.integers(0, 3, 3), m.init_params()
        L, g = m.loss_and_grad(params, X, Y, seed=3)
        assert L == m.loss(params, X, Y, seed=3)
        h, V = 1e-6, rng.standard_normal(g["W4"].shape)
        fd = (m.loss({**params, "W4": params["W4"] + h * V}, X, Y, seed=3)
              - m.loss({**params, "W4": params["W4"] - h * V}, X, Y, seed=3)) / (2 * h)
        assert abs(fd - np.sum(g["W4"] * V)) < 1e-7
        return
    m, params, X, _ = module_checks(text, f"on_x_{kind}")
    source = generate_source(spec_of(text))
    assert "X.reshape(-1, 2)" in source[source.index("def loss_and_grad("):]
    if kind == "bn":  # torch's BatchNorm2d: statistics over the N·H·W pixels of a channel
        m.train(params, X, np.arange(3) % 3, epochs=1, batch_size=3, optimizer="sgd",
                verbose=False)
        pixels = X.reshape(-1, 2)
        np.testing.assert_allclose(params["mean1"], 0.1 * pixels.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(params["var1"], 0.9 + 0.1 * pixels.var(axis=0, ddof=1),
                                   rtol=1e-12)


def test_hvp_of_a_net_that_max_pools_with_no_conv():
    """The tangent of max pooling picks the tangent's entries at the arg-max through im2col:
    the module carries im2col although no layer convolves; H V equals differences of the
    gradient."""
    text = net("pool_hvp", [4, 4, 2], [layer(type="batchnorm")] + POOLED)
    source = generate_source(spec_of(text), products=True)
    assert "\ndef im2col(" in source
    m = load_module(source, name="pool_hvp")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((4, 32)), rng.integers(0, 3, 4)
    params = {k: v + 0.2 * rng.standard_normal(v.shape) if k[0] in "gbW" else v
              for k, v in m.init_params(seed=1).items()}
    V = {k: rng.standard_normal(m.PARAM_SHAPES[k]) for k in m.PARAM_SHAPES}
    Hv, h = m.hvp(params, X, Y, V), 1e-5
    plus = m.loss_and_grad({**params, **{k: params[k] + h * V[k] for k in V}}, X, Y)[1]
    minus = m.loss_and_grad({**params, **{k: params[k] - h * V[k] for k in V}}, X, Y)[1]
    for k in V:
        np.testing.assert_allclose(Hv[k], (plus[k] - minus[k]) / (2 * h), rtol=1e-5, atol=1e-7)


def test_loss_and_grad_and_hvp_call_maxpool_once_per_layer():
    text = net("two_pools", [8, 8, 1], [
        layer(type="conv2d", filters=2, kernel=3, padding=1, activation="relu"),
        layer(type="maxpool2d", kernel=2),
        layer(type="conv2d", filters=2, kernel=3, padding=1, activation="relu"),
        layer(type="maxpool2d", kernel=2, stride=1),
        layer(type="flatten"), layer(units=3, activation="softmax")])
    source = generate_source(spec_of(text), products=True)
    def function(name: str) -> str:
        start = source.index(f"\ndef {name}(")
        return source[start:source.index("\n\n\ndef ", start)]

    def calls(code: str) -> int:  # lines that call maxpool (not the formulas above them)
        return len(re.findall(r"^ +[^#\n]*\bmaxpool\(", code, re.M))

    readable = function("loss_and_grad")
    assert calls(readable) == 2
    assert ("    # arg₂ = argmax(A₁)\n    # Z₂ = maxpool(A₁)\n"
            "    Z2, arg2 = maxpool(A1, (8, 8), (2, 2), (2, 2), (0, 0))\n") in readable
    assert "    Z4, arg4 = maxpool(A3, (4, 4), (2, 2), (1, 1), (0, 0))\n" in readable
    for product in ("hvp", "gnvp"):
        assert calls(function(product)) == 2
        assert "Z2, arg2 = maxpool(A1, (8, 8), (2, 2), (2, 2), (0, 0))" in function(product)
    forward = function("_forward")
    assert calls(forward) == 2 and "arg2" not in forward  # inference routes nothing
    m = load_module(source, name="two_pools")
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((3, 64)), rng.integers(0, 3, 3)
    params = m.init_params(seed=2)
    assert np.isclose(m.loss_and_grad(params, X, Y)[0], m.loss(params, X, Y))


BN_MAP = net("bn_map", [4, 6, 2], [layer(type="conv2d", filters=2, kernel=3, padding=1),
                                    layer(type="batchnorm"), layer(type="maxpool2d", kernel=2),
                                    layer(type="flatten"), layer(units=3, activation="softmax")])


def test_a_maps_row_count_prints_with_its_sizes():
    d = derive(spec_of(BN_MAP))
    text = d.text()
    for line in ("  μ₂ = (1/(N·H₁·W₁)) 𝟏ᵀA₁",
                 "  σ₂² = (1/(N·H₁·W₁)) 𝟏ᵀ(A₁ − 𝟏μ₂)²",
                 "  δ₁ = ∂L/∂Z₁ = (1/(N·H₁·W₁)) 𝟏(σ₂² + ε)^(−½) ⊙ (N·H₁·W₁ ∂L/∂X̂₂ − 𝟏𝟏ᵀ∂L/∂X̂₂ − "
                 "X̂₂ ⊙ 𝟏𝟏ᵀ(∂L/∂X̂₂ ⊙ X̂₂))",
                 "  var₂ ← 0.9 var₂ + 0.1 σ₂² N·H₁·W₁/(N·H₁·W₁ − 1)"):
        assert line + "\n" in text
    assert "24" not in text.split("Notation:")[0].split("\n", 1)[1]  # no 24·N, no 24 ⊙ N
    assert "N·H₁·W₁ the rows of the feature map A₁ (N images of H₁×W₁ = 4×6 pixels)" in text
    latex = d.latex()
    assert r"\mu_{2} &= \frac{1}{N H_{1} W_{1}} \mathbf{1}^{\top}A_{1}" in latex
    assert (r"\operatorname{var}_{2} &\leftarrow 0.9 \, \operatorname{var}_{2} + 0.1 \, "
            r"\sigma_{2}^{2} \frac{N H_{1} W_{1}}{N H_{1} W_{1} - 1}") in latex
    assert r"\operatorname{route}\left(\delta_{3}, \operatorname{arg}_{3}\right)" in latex
    assert r"\operatorname{arg}_{3} &= \operatorname{argmax}\left(A_{2}\right)" in latex
    md = d.markdown()
    assert r"\frac{1}{N H_{1} W_{1}}" in md and "N·H₁·W₁ the rows of the feature map A₁" in md


# --------------------------------------------------------------------------
# verify: the classic mistakes on a rectangular-kernel, stride-2, padded net
# --------------------------------------------------------------------------

RECT = net("rect", [5, 6, 3], [
    layer(type="conv2d", filters=2, kernel=[2, 3], stride=2, padding=1, activation="relu"),
    layer(type="maxpool2d", kernel=2, stride=1, padding=1),
    layer(type="avgpool2d", kernel=[2, 1], stride=[1, 2]),
    layer(type="flatten"), layer(units=3, activation="softmax")])
RECT_MISTAKES = [
    ("W1", "im2col(X, 1).T @ dZ1", None),
    ("W1", "np.flip(hwio(P1.T @ dZ1, 1), axis=1)", "flipped-kernel"),
    ("W1", "np.rot90(hwio(P1.T @ dZ1, 1), 2)", "flipped-kernel"),
    ("W1", "im2col(X, 1, 1, 1).T @ dZ1", "stride"),
    ("W1", "im2col(X, 1, 2, 0).T @ dZ1", "padding"),
    ("A1", "spread(dZ2, 2)", "maxpool-average"),
    ("A1", "ties(dZ2, 2)", "maxpool-ties"),
    ("A2", "2 * spread(dZ3, 3)", "avgpool-scale"),
    ("A3", "unflatten_nchw(dZ4, 4)", "flatten-order"),
]


@pytest.mark.slow
@pytest.mark.parametrize("wrt,formula,code", RECT_MISTAKES, ids=[m[2] or "right" for m in
                                                                 RECT_MISTAKES])
def test_verify_names_the_classic_mistakes_on_a_rectangular_strided_net(wrt, formula, code):
    from symgrad.verify import verify

    v = verify(spec_of(RECT, "rect.toml"), wrt, formula)
    lines = v.text().splitlines()
    if code is None:
        assert v.ok and lines[2] == "  verdict:   correct", v.text()
    else:
        assert lines[2] == f"  verdict:   WRONG ({code})", v.text()
        assert lines[4].startswith("  numeric:   differs on ")
