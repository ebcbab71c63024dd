"""The convolution kernels every generated conv module contains (templates/conv_kernels.py.jinja,
issue 12), rendered and executed on their own, against torch.nn.functional: conv2d as
im2col(A) @ W, col2im as im2col's exact adjoint, max pooling's values and gradient routing
(first maximum on ties, as torch), average pooling and its backward pass; float32 stays
float32; out=, work= and mask= are honoured (the result is the array passed, and nothing
batch-sized is allocated)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
KERNELS = ("im2col", "col2im", "maxpool", "maxpool_back", "avgpool", "avgpool_back")


def render(**context) -> str:
    """The include as the module template renders it (codegen's Environment options)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("conv_kernels.py.jinja").render(**context)


def load(**context) -> dict:
    namespace = {"np": np}
    exec(compile(render(**context), "conv_kernels.py", "exec"), namespace)
    return namespace


K = load()
TOL = {np.float32: 2e-5, np.float64: 1e-12}


# --------------------------------------------------------------------------
# geometries and torch references
# --------------------------------------------------------------------------


@st.composite
def geometries(draw):
    """A small feature map and window: H, W 1–9, C 1–3, kernel 1–3 (rectangular),
    stride 1–3, padding 0 … kernel // 2 (torch refuses more), windows that fit."""
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    assume(H + 2 * ph >= kh and W + 2 * pw >= kw)  # torch: output size ≥ 1
    return {"N": draw(st.integers(1, 2)), "C": draw(st.integers(1, 3)),
            "geo": {"hw": (H, W), "kernel": (kh, kw), "stride": (sh, sw),
                    "padding": (ph, pw)}}


dtypes = st.sampled_from((np.float32, np.float64))


def nchw(A: np.ndarray, N: int, hw: tuple[int, int]) -> torch.Tensor:
    """The (N·H·W, C) matrix as torch's contiguous (N, C, H, W) tensor."""
    return torch.from_numpy(A.reshape(N, *hw, -1)).permute(0, 3, 1, 2).contiguous()


def rows(T: torch.Tensor) -> np.ndarray:
    """torch's (N, C, H, W) as the (N·H·W, C) matrix."""
    return T.detach().permute(0, 2, 3, 1).reshape(-1, T.shape[1]).numpy()


def feature_map(rng, N, C, hw, dtype, ties=False) -> np.ndarray:
    shape = (N * hw[0] * hw[1], C)
    if ties:  # small integers: many windows hold equal maxima
        return rng.integers(-2, 3, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------
# the include
# --------------------------------------------------------------------------


def test_include_renders_every_kernel_or_the_ones_asked_for(tmp_path):
    """With no context every kernel; `conv_kernels` selects (their helpers always come);
    the text is ruff-clean and ruff-formatted as a generated module must be."""
    src = render()
    for name in KERNELS:
        assert f"\ndef {name}(" in src
    only = load(conv_kernels=["im2col", "col2im"])
    assert {"im2col", "col2im", "_conv_sizes"} <= set(only)
    assert not {"maxpool", "avgpool", "maxpool_back", "avgpool_back"} & set(only)
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency"
    path = tmp_path / "conv_kernels.py"
    path.write_text("import numpy as np\n\n" + src, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    for cmd in ([ruff, "check", "--config", str(root / "pyproject.toml"), str(path)],
                [ruff, "format", "--check", "--config", str(root / "pyproject.toml"), str(path)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in src.splitlines():  # every kernel's steps are commented for the reader
        assert len(line) <= 100


# --------------------------------------------------------------------------
# conv2d: im2col and col2im
# --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(geometries(), dtypes, st.integers(1, 3), st.integers(0, 2**32 - 1))
@example({"N": 2, "C": 1, "geo": {"hw": (2, 3), "kernel": (3, 3), "stride": (1, 2),
                                   "padding": (1, 0)}}, np.float32, 1, 0)
def test_im2col_matmul_is_torch_conv2d(g, dtype, filters, seed):
    """im2col(A) @ W.reshape(kh·kw·C, F) + b (W in HWIO) is F.conv2d (cross-correlation,
    zero padding, stride), in the input's dtype."""
    rng = np.random.default_rng(seed)
    N, C, geo = g["N"], g["C"], g["geo"]
    kh, kw = geo["kernel"]
    A = feature_map(rng, N, C, geo["hw"], dtype)
    W = rng.standard_normal((kh, kw, C, filters)).astype(dtype)
    b = rng.standard_normal(filters).astype(dtype)
    P = K["im2col"](A, **geo)
    assert P.dtype == dtype and P.flags.c_contiguous
    Z = P @ W.reshape(-1, filters) + b
    # the reference in float64: torch 2.13's float32 CPU conv2d returns garbage for some
    # small strided inputs (hw (2, 3), kernel 3, stride (1, 2), padding (1, 0))
    ref = F.conv2d(nchw(A, N, geo["hw"]).double(),
                   torch.from_numpy(W).permute(3, 2, 0, 1).double(),
                   torch.from_numpy(b).double(), stride=geo["stride"], padding=geo["padding"])
    assert P.shape == (ref.shape[0] * ref.shape[2] * ref.shape[3], kh * kw * C)
    np.testing.assert_allclose(Z, rows(ref), rtol=TOL[dtype], atol=TOL[dtype] * 10)


@settings(max_examples=40, deadline=None)
@given(geometries(), dtypes, st.integers(0, 2**32 - 1))
def test_col2im_is_the_adjoint_of_im2col(g, dtype, seed):
    """⟨im2col(A), P⟩ = ⟨A, col2im(P)⟩ for every A and P: overlapping windows add, the
    padding's share is dropped; col2im keeps the dtype. And torch agrees: col2im(δ Wᵀ) is
    conv2d's gradient with respect to its input."""
    rng = np.random.default_rng(seed)
    N, C, geo = g["N"], g["C"], g["geo"]
    A = feature_map(rng, N, C, geo["hw"], dtype)
    im = K["im2col"](A, **geo)
    P = rng.standard_normal(im.shape).astype(dtype)
    back = K["col2im"](P, **geo)
    assert back.dtype == dtype and back.shape == A.shape
    lhs, rhs = np.vdot(im.astype(np.float64), P), np.vdot(A.astype(np.float64), back)
    assert lhs == pytest.approx(rhs, rel=TOL[dtype] * 10, abs=TOL[dtype] * 10)
    # conv2d's input gradient from torch: δ (N, F, Ho, Wo) back through the convolution
    kh, kw = geo["kernel"]
    W = rng.standard_normal((kh, kw, C, 2)).astype(dtype)
    X = nchw(A, N, geo["hw"]).double().requires_grad_()  # float64: see above
    Z = F.conv2d(X, torch.from_numpy(W).permute(3, 2, 0, 1).double(), stride=geo["stride"],
                 padding=geo["padding"])
    delta = rng.standard_normal(rows(Z).shape).astype(dtype)
    Z.backward(nchw(delta, N, Z.shape[2:]).double())
    dA = K["col2im"](delta @ W.reshape(-1, 2).T, **geo)
    np.testing.assert_allclose(dA, rows(X.grad), rtol=TOL[dtype], atol=TOL[dtype] * 10)


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------


def test_torch_routes_a_tied_maximum_to_the_first():
    """The claim the kernels follow: on a window of equal values torch's max_pool2d sends
    the whole gradient to the first one in row-major order (and so does maxpool_back)."""
    X = torch.full((1, 1, 2, 3), 5.0, requires_grad=True)
    F.max_pool2d(X, (2, 3)).backward(torch.tensor([[[[7.0]]]]))
    assert X.grad.tolist() == [[[[7.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]]
    pooled, arg = K["maxpool"](np.full((6, 1), 5.0), (2, 3), (2, 3), (2, 3), (0, 0))
    assert pooled.tolist() == [[5.0]] and arg.tolist() == [[0]]
    back = K["maxpool_back"](np.array([[7.0]]), arg, (2, 3), (2, 3), (2, 3), (0, 0))
    assert back.ravel().tolist() == [7.0, 0, 0, 0, 0, 0]


@settings(max_examples=50, deadline=None)
@given(geometries(), dtypes, st.booleans(), st.integers(0, 2**32 - 1))
def test_maxpool_and_its_gradient_are_torch(g, dtype, ties, seed):
    """Values = F.max_pool2d (padding −∞); arg names the first maximum of each window
    (row-major tap index); maxpool_back routes G where torch's backward does, ties
    included, overlapping windows adding."""
    rng = np.random.default_rng(seed)
    N, C, geo = g["N"], g["C"], g["geo"]
    kh, kw = geo["kernel"]
    A = feature_map(rng, N, C, geo["hw"], dtype, ties)
    X = nchw(A, N, geo["hw"]).requires_grad_()
    ref = F.max_pool2d(X, geo["kernel"], geo["stride"], geo["padding"])
    pooled, arg = K["maxpool"](A, **geo)
    assert pooled.dtype == dtype and np.issubdtype(arg.dtype, np.integer)
    np.testing.assert_array_equal(pooled, rows(ref))
    assert arg.min() >= 0 and arg.max() < kh * kw
    G = rng.standard_normal(pooled.shape).astype(dtype)
    ref.backward(nchw(G, N, ref.shape[2:]))
    back = K["maxpool_back"](G, arg, **geo)
    assert back.dtype == dtype and back.shape == A.shape
    np.testing.assert_allclose(back, rows(X.grad), rtol=TOL[dtype], atol=TOL[dtype])


@settings(max_examples=40, deadline=None)
@given(geometries(), dtypes, st.integers(0, 2**32 - 1))
def test_avgpool_and_its_gradient_are_torch(g, dtype, seed):
    """Values = F.avg_pool2d (count_include_pad: the padding counts as zeros, the sum is
    divided by kh·kw); avgpool_back spreads G/(kh·kw) over each window as torch's
    backward does; avgpool_back is avgpool's adjoint."""
    rng = np.random.default_rng(seed)
    N, C, geo = g["N"], g["C"], g["geo"]
    A = feature_map(rng, N, C, geo["hw"], dtype)
    X = nchw(A, N, geo["hw"]).requires_grad_()
    ref = F.avg_pool2d(X, geo["kernel"], geo["stride"], geo["padding"],
                       count_include_pad=True)
    pooled = K["avgpool"](A, **geo)
    assert pooled.dtype == dtype
    np.testing.assert_allclose(pooled, rows(ref), rtol=TOL[dtype], atol=TOL[dtype])
    G = rng.standard_normal(pooled.shape).astype(dtype)
    ref.backward(nchw(G, N, ref.shape[2:]))
    back = K["avgpool_back"](G, **geo)
    assert back.dtype == dtype and back.shape == A.shape
    np.testing.assert_allclose(back, rows(X.grad), rtol=TOL[dtype], atol=TOL[dtype])


# --------------------------------------------------------------------------
# out=, work=, mask=: the training loop's buffers
# --------------------------------------------------------------------------

# (name, geometry): overlapping windows with padding, and the common tiled 2×2 pooling
BUFFER_CASES = [
    ((8, 9), (3, 3), (1, 1), (1, 1)),
    ((8, 8), (2, 2), (2, 2), (0, 0)),
    ((7, 9), (3, 2), (2, 1), (1, 1)),
]


def _buffers(N, C, hw, kernel, stride, padding, dtype) -> dict[str, np.ndarray]:
    """Every array a training loop keeps for one layer: inputs, results and scratch."""
    (H, W), (kh, kw), (ph, pw) = hw, kernel, padding
    Ho = (H + 2 * ph - kh) // stride[0] + 1
    Wo = (W + 2 * pw - kw) // stride[1] + 1
    rng = np.random.default_rng(0)
    return {
        "A": rng.standard_normal((N * H * W, C)).astype(dtype),
        "P": rng.standard_normal((N * Ho * Wo, kh * kw * C)).astype(dtype),
        "G": rng.standard_normal((N * Ho * Wo, C)).astype(dtype),
        "patches": np.empty((N * Ho * Wo, kh * kw * C), dtype),
        "pooled": np.empty((N * Ho * Wo, C), dtype),
        "arg": np.empty((N * Ho * Wo, C), np.int8),
        "mask": np.empty((2, N * Ho * Wo, C), bool),
        "back": np.empty((N * H * W, C), dtype),
        "zeros": np.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype),
        "ninf": np.full((N, H + 2 * ph, W + 2 * pw, C), -np.inf, dtype),
    }


def _calls(b, geo):
    """Each kernel called with its buffers (out=, work=, mask=) and without, and the
    buffer(s) it must return."""
    return {
        "im2col": (lambda: K["im2col"](b["A"], **geo, out=b["patches"], work=b["zeros"]),
                   lambda: K["im2col"](b["A"], **geo), "patches"),
        "col2im": (lambda: K["col2im"](b["P"], **geo, out=b["back"]),
                   lambda: K["col2im"](b["P"], **geo), "back"),
        "maxpool": (lambda: K["maxpool"](b["A"], **geo, out=(b["pooled"], b["arg"]),
                                         work=b["ninf"], mask=b["mask"]),
                    lambda: K["maxpool"](b["A"], **geo), ("pooled", "arg")),
        "maxpool_back": (lambda: K["maxpool_back"](b["G"], b["arg"], **geo, out=b["back"],
                                                   mask=b["mask"]),
                         lambda: K["maxpool_back"](b["G"], b["arg"], **geo), "back"),
        "avgpool": (lambda: K["avgpool"](b["A"], **geo, out=b["pooled"], work=b["zeros"]),
                    lambda: K["avgpool"](b["A"], **geo), "pooled"),
        "avgpool_back": (lambda: K["avgpool_back"](b["G"], **geo, out=b["back"]),
                         lambda: K["avgpool_back"](b["G"], **geo), "back"),
    }


def _peak_bytes(call) -> int:
    call()  # warm-up: first calls may cache
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", BUFFER_CASES)
def test_out_and_work_are_honoured_and_nothing_batch_sized_is_allocated(case, dtype):
    """With out=, work= and mask= each kernel writes into the arrays it is given, returns
    them and gives the results it gives without them. It allocates no result (the same
    call without buffers allocates at least the result more) and nothing batch-sized:
    at most numpy's fixed-size ufunc buffers (four operands of np.getbufsize() items)."""
    hw, kernel, stride, padding = case
    geo = {"hw": hw, "kernel": kernel, "stride": stride, "padding": padding}
    b = _buffers(400, 3, *case, dtype)
    calls = _calls(b, geo)
    ufunc_buffers = 4 * np.getbufsize() * 8 + 8192
    for name, (with_out, fresh, key) in calls.items():
        peak, peak_fresh = _peak_bytes(with_out), _peak_bytes(fresh)
        result = sum(b[k].nbytes for k in (key if isinstance(key, tuple) else (key,)))
        assert peak <= ufunc_buffers and peak + result <= peak_fresh + 4096, (name, peak)
        for arr in ("patches", "pooled", "back"):
            b[arr].fill(np.nan)  # stale contents must not leak into a result
        b["arg"].fill(-1)
        got, expected = with_out(), fresh()
        if isinstance(key, tuple):
            assert all(g is b[k] for g, k in zip(got, key, strict=True)), name
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_array_equal(g, e, err_msg=name)
        else:
            assert got is b[key], name
            np.testing.assert_array_equal(got, expected, err_msg=name)
    # the padded buffers kept their border: another image batch is pooled correctly
    b["A"] *= -3
    np.testing.assert_array_equal(calls["maxpool"][0]()[0], calls["maxpool"][1]()[0])
    np.testing.assert_array_equal(calls["im2col"][0](), calls["im2col"][1]())


def test_a_full_batch_work_buffer_serves_the_last_smaller_batch():
    """work= and mask= sized for the full batch, A of a smaller last batch: the kernels
    use the buffers' first images (views), the results are right."""
    geo = {"hw": (5, 6), "kernel": (3, 3), "stride": (1, 1), "padding": (1, 1)}
    A = np.random.default_rng(3).standard_normal((2 * 30, 2)).astype(np.float32)
    work = np.zeros((7, 7, 8, 2), np.float32)
    np.testing.assert_array_equal(K["im2col"](A, **geo, work=work), K["im2col"](A, **geo))
    ninf = np.full((7, 7, 8, 2), -np.inf, np.float32)
    mask = np.empty((2, 7 * 30, 2), bool)
    for got, exp in zip(K["maxpool"](A, **geo, work=ninf, mask=mask), K["maxpool"](A, **geo),
                        strict=True):
        np.testing.assert_array_equal(got, exp)
