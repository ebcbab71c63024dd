"""The torch module's training step on torch's own convolution and pooling kernels (issue 16):
_conv2d (Z = im2col(A) W + 𝟏b), _conv2d_weight (im2col(A)ᵀ δ), _conv2d_input (col2im(δ Wᵀ)),
_maxpool_first(_back) and _avgpool_mean(_back) equal the module's formula kernels (im2col,
col2im, first-maximum routing, the mean with the padding counted as zeros) on every
geometry: padding, stride 2, kernel [2, 3], ties; a layer whose input's memory is written
before its weight gradient keeps the patch matrix; the step trains as the numpy module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.backends import torch_kernels
from symgrad.codegen import generate_source, load_module
from symgrad.spec import spec_from_dict

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent

# conv [2, 3] stride 2 padding 1 → overlapping padded max pooling → a "same" conv →
# average pooling with padding → flatten → softmax: every rewritten kernel in one step
NET = {"network": {"name": "torch_conv", "inputs": [9, 8, 2]},
       "layer": [{"type": "conv2d", "filters": 3, "kernel": [2, 3], "stride": 2, "padding": 1,
                  "activation": "relu"},
                 {"type": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1},
                 {"type": "conv2d", "filters": 2, "kernel": 3, "padding": "same",
                  "activation": "tanh"},
                 {"type": "avgpool2d", "kernel": 2, "stride": 1, "padding": 1},
                 {"type": "flatten"}, {"units": 3, "activation": "softmax"}],
       "loss": {"kind": "cross_entropy"}, "training": {"optimizer": "sgd"}}

_made: dict[str, tuple] = {}


def made():
    """(numpy module, torch module, torch source) of NET, generated once."""
    if not _made:
        s = spec_from_dict(NET, "torch_conv.toml")
        source = generate_source(s, "torch")
        _made["net"] = (load_module(generate_source(s)), load_module(source), source)
    return _made["net"]


def kernels():
    """NET's torch module with hvp() (generate --hvp): its tangents keep the formula kernels
    (im2col, col2im, …) beside torch's."""
    if "hvp" not in _made:
        s = spec_from_dict(NET, "torch_conv.toml")
        _made["hvp"] = load_module(generate_source(s, "torch", products=True))
    return _made["hvp"]


def step_source(source: str) -> str:
    return source[source.index("\ndef _step("):source.index("\n    return L\n")]


def test_the_step_calls_torchs_kernels_and_keeps_no_patch_matrix() -> None:
    _, _, source = made()
    step = step_source(source)
    for call in ("_conv2d(", "_conv2d_weight(", "_conv2d_input(", "_maxpool_first(",
                 "_maxpool_first_back(", "_avgpool_mean(", "_avgpool_mean_back("):
        assert call in step, call
    code = "\n".join(line for line in step.splitlines() if not line.lstrip().startswith("#"))
    for gone in ("im2col(", "col2im(", " maxpool(", " avgpool(", "_matmul_tn(P"):
        assert gone not in code, gone
    workspace = source[source.index("def _workspace("):source.index("\ndef _step(")]
    assert '"P1"' not in workspace and "mask_arg" not in workspace
    assert '"arg2": torch.empty((6 * n, 3), dtype=torch.int64' in workspace
    # the derived formulas stay the comments
    assert "    # Z₁ = im2col(X) W₁ + b₁\n    _conv2d(X.reshape(-1, 2), W1, b1, (9, 8), (2, 3)" \
        in step
    assert "    # ∂L/∂W₃ = im2col(A₂)ᵀ δ₃\n    _conv2d_weight(A2, dZ3, (3, 2), (3, 3)" in step
    assert "    # δ₂ = ∂L/∂Z₂ = col2im(δ₃ W₃ᵀ)\n    _conv2d_input(dZ3, W3, (3, 2), (3, 3)" in step
    # loss_and_grad's readable statements too (its pooling keeps the formula kernels: their
    # int8 arg is what hvp's tangents read)
    assert "    dZ2 = _conv2d_input(dZ3, W3, (3, 2), (3, 3), (1, 1), (1, 1))\n" in source
    assert "    dW1 = _conv2d_weight(X.reshape(-1, 2), dZ1, (9, 8), (2, 3)" in source
    assert "    Z2, arg2 = maxpool(A1, (5, 4), (3, 3), (2, 2), (1, 1))\n" in source


def test_the_step_trains_as_the_numpy_module() -> None:
    """float64: three full-batch epochs of SGD (the fast step) equal the numpy module's."""
    numpy_module, t, _ = made()
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((8, 9, 8, 2)), np.eye(3)[rng.integers(0, 3, 8)]
    mine = {k: torch.tensor(v) for k, v in numpy_module.init_params(1).items()}
    theirs = numpy_module.init_params(1)
    options = {"epochs": 3, "batch_size": 8, "learning_rate": 0.1, "verbose": False}
    h_t, h_n = t.train(mine, X, Y, **options), numpy_module.train(theirs, X, Y, **options)
    assert np.allclose(h_t["loss"], h_n["loss"], rtol=1e-12, atol=0)
    for k, v in theirs.items():
        assert np.allclose(mine[k].numpy(), v, rtol=1e-10, atol=1e-13), k
        assert not np.allclose(v, numpy_module.init_params(1)[k]), k  # it trained


def maps(draw, pool):
    """(N, H, W, C, kernel, stride, padding) of a window layer: kernel up to 3×3, stride up
    to 3, padding up to kernel // 2 (pooling, as torch) or 2 (convolution)."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph = draw(st.integers(0, kh // 2 if pool else 2))
    pw = draw(st.integers(0, kw // 2 if pool else 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 7))
    W = draw(st.integers(max(1, kw - 2 * pw), 7))
    return draw(st.integers(1, 3)), H, W, draw(st.integers(1, 3)), (kh, kw), (sh, sw), (ph, pw)


@st.composite
def conv_cases(draw):
    return (*maps(draw, False), draw(st.integers(1, 4)), draw(st.integers(0, 2**32 - 1)))


@st.composite
def pool_cases(draw):
    return (*maps(draw, True), draw(st.booleans()), draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_convolution_kernels_equal_the_patch_matrix_formulas(case) -> None:
    N, H, W, C, kernel, stride, padding, F, seed = case
    t = kernels()
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn((N * H * W, C), generator=gen, dtype=torch.float64)
    Wm = torch.randn((kernel[0] * kernel[1] * C, F), generator=gen, dtype=torch.float64)
    b = torch.randn((F,), generator=gen, dtype=torch.float64)
    hw = (H, W)
    P = t.im2col(A, hw, kernel, stride, padding)
    Z = torch.full((P.shape[0], F), torch.nan, dtype=torch.float64)
    assert t._conv2d(A, Wm, b, hw, kernel, stride, padding, out=Z) is Z
    assert torch.allclose(Z, P @ Wm + b, rtol=1e-12, atol=1e-12)
    G = torch.randn(Z.shape, generator=gen, dtype=torch.float64)
    dW = torch.full(Wm.shape, torch.nan, dtype=torch.float64)
    assert t._conv2d_weight(A, G, hw, kernel, stride, padding, out=dW) is dW
    assert torch.allclose(dW, P.T @ G, rtol=1e-12, atol=1e-12)
    dA = torch.full(A.shape, torch.nan, dtype=torch.float64)  # (pixels no window reads: 0)
    assert t._conv2d_input(G, Wm, hw, kernel, stride, padding, out=dA) is dA
    assert torch.allclose(dA, t.col2im(G @ Wm.T, hw, kernel, stride, padding), rtol=1e-12,
                          atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(pool_cases())
def test_pooling_kernels_equal_the_formula_kernels_with_ties(case) -> None:
    """Max pooling on small integers (ties in most windows): the same maxima, and the
    gradient routed to the same pixel, the window's first maximum in row-major order;
    padded borders never win (−∞). Average pooling counts the padding as zeros."""
    N, H, W, C, kernel, stride, padding, ties, seed = case
    t = kernels()
    gen = torch.Generator().manual_seed(seed)
    hw = (H, W)
    A = torch.randn((N * H * W, C), generator=gen, dtype=torch.float64)
    if ties:
        A = torch.randint(-1, 2, A.shape, generator=gen).to(torch.float64)
    pooled, arg = t.maxpool(A, hw, kernel, stride, padding)
    mine = (torch.full(pooled.shape, torch.nan, dtype=torch.float64),
            torch.empty(pooled.shape, dtype=torch.int64))
    assert t._maxpool_first(A, hw, kernel, stride, padding, out=mine) is mine
    assert torch.equal(mine[0], pooled)
    G = torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
    routed = torch.full(A.shape, torch.nan, dtype=torch.float64)
    assert t._maxpool_first_back(G, mine[1], hw, kernel, stride, padding, out=routed) is routed
    assert torch.allclose(routed, t.maxpool_back(G, arg, hw, kernel, stride, padding),
                          rtol=1e-12, atol=1e-13)  # (overlaps add in another order)
    mean = torch.full(pooled.shape, torch.nan, dtype=torch.float64)
    assert t._avgpool_mean(A, hw, kernel, stride, padding, out=mean) is mean
    assert torch.allclose(mean, t.avgpool(A, hw, kernel, stride, padding), rtol=1e-12,
                          atol=1e-14)
    spread = torch.full(A.shape, torch.nan, dtype=torch.float64)
    assert t._avgpool_mean_back(G, hw, kernel, stride, padding, out=spread) is spread
    assert torch.allclose(spread, t.avgpool_back(G, hw, kernel, stride, padding), rtol=1e-12,
                          atol=1e-14)


FORWARD = ("im2col(A2, (4, 4), (3, 3), (1, 1), (1, 1), out=P2, work=pad_A2_zeros)",
           "torch.addmm(b3, P2, W3, out=Z3)")
WEIGHT = ("_matmul_tn(P2, dZ3, out=dW3)",)


def test_a_layer_whose_input_is_overwritten_keeps_its_patch_matrix() -> None:
    """∂L/∂W on torch's kernel reads A at the backward pass: where A's memory (A itself or a
    name sharing it) is written in between, or P is read by something else, the layer keeps
    im2col and Pᵀ δ; otherwise the patch matrix and its padded copy are dropped."""
    step, dropped, _ = torch_kernels([FORWARD, ("torch.relu(Z3, out=A3)",), WEIGHT], [])
    assert step == [("_conv2d(A2, W3, b3, (4, 4), (3, 3), (1, 1), (1, 1), out=Z3)",),
                    ("torch.relu(Z3, out=A3)",),
                    ("_conv2d_weight(A2, dZ3, (4, 4), (3, 3), (1, 1), (1, 1), out=dW3)",)]
    assert dropped == {"P2", "pad_A2_zeros"}
    # two convolutions of one map with one geometry share the patch matrix: both rewritten
    shared = [FORWARD, ("torch.addmm(b4, P2, W4, out=Z4)",), WEIGHT,
              ("_matmul_tn(P2, dZ4, out=dW4)",)]
    step, dropped, _ = torch_kernels(shared, [])
    assert step[1:] == [("_conv2d(A2, W4, b4, (4, 4), (3, 3), (1, 1), (1, 1), out=Z4)",),
                        ("_conv2d_weight(A2, dZ3, (4, 4), (3, 3), (1, 1), (1, 1), out=dW3)",),
                        ("_conv2d_weight(A2, dZ4, (4, 4), (3, 3), (1, 1), (1, 1), out=dW4)",)]
    assert dropped == {"P2", "pad_A2_zeros"}
    for between, aliases in ((("torch.relu(Z3, out=A2)",), []),
                             (("A2 *= 2.0",), []),
                             (("S5.copy_(dZ4)",), ['ws["S5"] = ws["A2"]  # dead by then']),
                             (("torch.exp(P2, out=S1)",), []),
                             (("torch.addmm(b4, P2, W4, out=A2)",), [])):
        same = [FORWARD, between, WEIGHT]
        assert torch_kernels(same, aliases) == (same, set(), set()), between


def test_the_generated_module_is_ruff_clean_and_deterministic(tmp_path: Path) -> None:
    _, _, source = made()
    assert generate_source(spec_from_dict(NET, "torch_conv.toml"), "torch") == source
    path = tmp_path / "torch_conv.py"
    path.write_text(source, encoding="utf-8")
    ruff = [str(Path(sys.executable).with_name("ruff")), "--config", str(ROOT / "pyproject.toml")]
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run([ruff[0], *args, *ruff[1:], str(path)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
