"""``symgrad verify`` on networks on images (issue 12, "Verify"): the names (P{l}, arg{l},
the maps' Z/A and their adjoints), the functions (im2col/col2im/scatter, route/ties/spread,
flatten/unflatten and their NCHW forms, hwio/unhwio, np.flip/np.rot90 of a kernel), the
textbook formulas proved for W, b and A of each layer type, each classic mistake of the
table named (on the digits CNN and on a stride-2, padding-1 network with overlapping
windows), and hostile formulas refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.ops import Sym
from symgrad.ops.conv import Col2im, Geometry, Im2col
from symgrad.spec import load_spec
from symgrad.verify import DIAGNOSES, KernelPermute, Windowed, _kernel_perm, _placed, verify

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CNN = load_spec(EXAMPLES / "digits_cnn.toml")  # 8×8×1 → conv 3×3×16 pad 1 relu → maxpool 2 → flatten → 10

STRIDED_TOML = """
[network]
name = "strided"
inputs = [4, 4, 2]

[[layer]]
type = "conv2d"
filters = 3
kernel = 3
padding = 1
activation = "tanh"

[[layer]]
type = "conv2d"
filters = 2
kernel = 3
stride = 2
padding = 1
activation = "relu"

[[layer]]
type = "maxpool2d"
kernel = 2
stride = 1

[[layer]]
type = "avgpool2d"
kernel = 2
stride = 1
padding = 1

[[layer]]
type = "flatten"

[[layer]]
units = 3
activation = "softmax"

[loss]
kind = "cross_entropy"
"""


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "strided.toml"
    path.write_text(STRIDED_TOML)
    return load_spec(path)


def _spec(which, strided):
    return CNN if which == "cnn" else strided


CNN_TITLE = ("verify ∂L/∂W₁ — digits_cnn: 8×8×1 → conv 3×3×16 pad 1 relu → maxpool 2 → flatten "
             "→ 10 softmax; cross_entropy")


def test_the_textbook_weight_gradient_is_proved_and_printed_as_verify_reads_it():
    v = verify(CNN, "W1", "im2col(X, 1).T @ dZ1")
    lines = v.text().splitlines()
    assert lines[0] == CNN_TITLE
    assert lines[2] == "  verdict:   correct"
    assert lines[3].startswith("  numeric:   agrees on 3 random instances (N=2 n₀=3 n₁=5 n₄=5; "
                               "N=3 n₀=5 n₁=4 n₄=4; N=1 n₀=4 n₁=2 n₄=4) to 0.0e+00")
    assert lines[4].startswith("  symbolic:  proved at N=1 n₀=2 n₁=2 n₄=3: every entry's "
                               "difference is 0 (36 entries")
    assert "  correct:   im2col(X, 1).T @ dZ1" in lines
    assert "  textbook:  ∂L/∂W₁ = im2col(X)ᵀ δ₁" in lines
    assert v.ok and v.correct == "im2col(X, 1).T @ dZ1"


@pytest.mark.parametrize("which,wrt,formula,correct", [
    ("cnn", "W1", "P1.T @ dZ1", "im2col(X, 1).T @ dZ1"),  # the patch matrix by its name
    ("cnn", "W1", "hwio(im2col(X, 1).T @ dZ1, 1)", "im2col(X, 1).T @ dZ1"),  # HWIO form
    ("cnn", "b1", "dZ1.sum(axis=0)", "sum(dZ1, axis=0)"),
    ("cnn", "A1", "route(dZ2, 2)", "route(dZ2, 2)"),  # maxpool: δ to the first maximum
    ("cnn", "A2", "unflatten(dZ3, 3)", "unflatten(dZ3, 3)"),  # flatten
    ("cnn", "W4", "A3.T @ dZ4", "A3.T @ dZ4"),  # the dense layer after flatten
    ("strided", "A1", "col2im(dZ2 @ W2.T, 2)", "col2im(dZ2 @ W2.T, 2)"),  # conv: overlaps add
    ("strided", "W2", "im2col(A1, 2).T @ dZ2", "im2col(A1, 2).T @ dZ2"),  # stride 2, padding 1
    ("strided", "b2", "sum(dZ2, axis=0)", "sum(dZ2, axis=0)"),
    ("strided", "A3", "spread(dZ4, 4)", "spread(dZ4, 4)"),  # avgpool (padding 1, stride 1)
    ("strided", "A2", "route(dZ3, 3)", "route(dZ3, 3)"),  # overlapping max-pool windows
])
def test_right_formulas_are_proved(strided, which, wrt, formula, correct):
    v = verify(_spec(which, strided), wrt, formula)
    assert v.ok, v.text()
    assert v.symbolic.startswith("proved at N=1 "), v.symbolic
    assert v.correct == correct


T1 = "im2col(X, 1).T @ "
CNN_MISTAKES = [
    ("W1", "np.rot90(hwio(im2col(X, 1).T @ dZ1, 1), 2)", "flipped-kernel",
     "the kernel rotated 180° (np.rot90(…, 2): convolution instead of cross-correlation): "
     "conv2d is cross-correlation, as torch (Z₁ = im2col(A) W₁ + 𝟏b₁, no flip), so ∂L/∂W₁ = "
     "im2col(A)ᵀ δ₁ is read in the kernel's own (kh, kw) order"),
    ("W1", "np.flip(hwio(P1.T @ dZ1, 1), 0)", "flipped-kernel",
     "the kernel flipped upside down (np.flip(…, 0)): conv2d is cross-correlation, as torch "
     "(Z₁ = im2col(A) W₁ + 𝟏b₁, no flip), so ∂L/∂W₁ = im2col(A)ᵀ δ₁ is read in the kernel's "
     "own (kh, kw) order"),
    ("W1", "im2col(X, 1, 1, 0).T @ dZ1", "padding",
     "the wrong padding in the backward pass: im2col with padding 0 in place of layer 1's "
     "padding 1 (the windows of the forward pass are the ones δ₁ belongs to: row oh·1 + i − 1, "
     "column ow·1 + j − 1)"),
    ("W1", T1 + "(spread(dZ2, 2) * (Z1 > 0))", "maxpool-average",
     "the max-pool gradient spread over the whole window, as average pooling (δ/4 to each of "
     "its 4 positions): max pooling passes each entry of δ₂ only to the first maximum of its "
     "window, route(δ₂, arg₂)"),
    ("W1", T1 + "(4 * spread(dZ2, 2) * (Z1 > 0))", "maxpool-average",
     "the max-pool gradient copied to every position of its window: max pooling passes each "
     "entry of δ₂ only to the first maximum of its window, route(δ₂, arg₂)"),
    ("W1", T1 + "(ties(dZ2, 2) * (Z1 > 0))", "maxpool-ties",
     "the max-pool gradient sent to every tied maximum: where several entries of a window "
     "equal its maximum, torch (and symgrad) route δ₂ to the first one in row-major order only "
     "(route(δ₂, arg₂); arg₂ is that offset); ties are common after relu and with quantized "
     "inputs"),
    ("W1", T1 + "(route(unflatten_nchw(dZ3, 3), 2) * (Z1 > 0))", "flatten-order",
     "flatten in NCHW order (c, h, w) instead of NHWC (h, w, c): symgrad's maps are NHWC, so a "
     "flat row holds pixel p's C channels side by side (entry p·C + c) and unflatten reads it "
     "back that way; yours reads it as torch's flatten of an NCHW tensor (entry c·H·W + p)"),
]
STRIDED_MISTAKES = [
    ("A1", "scatter(dZ2 @ W2.T, 2)", "col2im-overwrite",
     "col2im without summing overlaps: a pixel under several windows of layer 2 (kernel 3×3, "
     "stride 2) receives the sum of their entries (+=, np.add.at); yours writes them with = (a "
     "scatter that overwrites: the last window wins)"),
    ("A1", "col2im(dZ2 @ W2.T, 2, 1, 1)", "stride",
     "the wrong stride in the backward pass: col2im with stride 1 in place of layer 2's stride "
     "2 (the windows of the forward pass are the ones δ₂ belongs to: row oh·2 + i − 1, column "
     "ow·2 + j − 1)"),
    ("A1", "col2im(dZ2 @ W2.T, 2, 2, 0)", "padding",
     "the wrong padding in the backward pass: col2im with padding 0 in place of layer 2's "
     "padding 1 (the windows of the forward pass are the ones δ₂ belongs to: row oh·2 + i − 1, "
     "column ow·2 + j − 1)"),
    ("A1", "col2im(dZ2 @ unhwio(np.rot90(hwio(W2, 2), 2)).T, 2)", "flipped-kernel",
     "the kernel rotated 180° in ∂L/∂A: with cross-correlation forward (as torch) the rule is "
     "col2im(δ₂ W₂ᵀ) with W₂ as it is; the flip belongs to the convolution written as a 'full' "
     "correlation, not to the im2col form"),
    ("W2", "im2col(A1, 2, 1, 1).T @ dZ2", "stride",
     "the wrong stride in the backward pass: im2col with stride 1 in place of layer 2's stride "
     "2 (the windows of the forward pass are the ones δ₂ belongs to: row oh·2 + i − 1, column "
     "ow·2 + j − 1)"),
    ("W2", "np.flip(hwio(P2.T @ dZ2, 2), axis=1)", "flipped-kernel",
     "the kernel flipped left to right (np.flip(…, 1)): conv2d is cross-correlation, as torch "
     "(Z₂ = im2col(A) W₂ + 𝟏b₂, no flip), so ∂L/∂W₂ = im2col(A)ᵀ δ₂ is read in the kernel's "
     "own (kh, kw) order"),
    ("A2", "spread(dZ3, 3)", "maxpool-average",
     "the max-pool gradient spread over the whole window, as average pooling (δ/4 to each of "
     "its 4 positions): max pooling passes each entry of δ₃ only to the first maximum of its "
     "window, route(δ₃, arg₃)"),
    ("A2", "ties(dZ3, 3)", "maxpool-ties",
     "the max-pool gradient sent to every tied maximum: where several entries of a window "
     "equal its maximum, torch (and symgrad) route δ₃ to the first one in row-major order only "
     "(route(δ₃, arg₃); arg₃ is that offset); ties are common after relu and with quantized "
     "inputs"),
    ("A3", "4 * spread(dZ4, 4)", "avgpool-scale",
     "average pooling's gradient without 1/(kh·kw) = 1/4: the forward pass divides each "
     "window's sum by it, so spread(δ) does too"),
    ("A4", "unflatten_nchw(dZ5, 5)", "flatten-order",
     "flatten in NCHW order (c, h, w) instead of NHWC (h, w, c): symgrad's maps are NHWC, so a "
     "flat row holds pixel p's C channels side by side (entry p·C + c) and unflatten reads it "
     "back that way; yours reads it as torch's flatten of an NCHW tensor (entry c·H·W + p)"),
]


@pytest.mark.parametrize("which,wrt,formula,code,line",
                         [("cnn", *m) for m in CNN_MISTAKES]
                         + [("strided", *m) for m in STRIDED_MISTAKES])
def test_classic_mistakes_are_named(strided, which, wrt, formula, code, line):
    assert code in DIAGNOSES
    v = verify(_spec(which, strided), wrt, formula)
    lines = v.text().splitlines()
    assert lines[2] == f"  verdict:   WRONG ({code})"
    assert lines[3] == f"  diagnosis: {line}"
    assert lines[4].startswith("  numeric:   differs on "), lines[4]
    assert f"  correct:   {v.correct}" in lines and v.correct


def test_the_tied_maxima_are_in_the_instances():
    """Without ties routing to every maximum equals routing to the first (after relu the
    windows of zeros tie, but relu′ = 0 masks them in δ₁): one instance has ties among
    positive entries (whole-number data), so ∂L/∂W₁ differs there and only there."""
    v = verify(CNN, "W1", T1 + "(ties(dZ2, 2) * (Z1 > 0))")
    assert v.diagnosis == "maxpool-ties"
    assert v.numeric.startswith("differs on 1 of 3 random instances (")


def test_the_cli_exits_0_for_right_and_1_for_wrong(capsys):
    spec = str(EXAMPLES / "digits_cnn.toml")
    assert main(["verify", spec, "--wrt", "b1", "sum(dZ1, axis=0)"]) == 0
    assert "  verdict:   correct\n" in capsys.readouterr().out
    assert main(["verify", spec, "--wrt", "A2", "unflatten_nchw(dZ3, 3)"]) == 1
    assert "  verdict:   WRONG (flatten-order)\n" in capsys.readouterr().out


@pytest.mark.parametrize("formula,message", [
    ("im2col(X, 4).T @ dZ1", "formula: im2col(X, 4): layer 4 is not a conv2d layer (the "
     "network's: 1)"),
    ("route(dZ2, 1)", "formula: route(dZ2, 1): layer 1 is not a maxpool2d layer (the "
     "network's: 2)"),
    ("im2col(X, N).T @ dZ1", "formula: im2col(X, N): the second argument is a layer number "
     "(e.g. im2col(…, 1)), whose geometry it uses"),
    ("im2col(X, 1, 99, 0).T @ dZ1", "formula: im2col(X, 1, 99, 0): the stride is a whole "
     "number from 1 to 16"),
    ("im2col(X, 1, 0, 0).T @ dZ1", "formula: im2col(X, 1, 0, 0): the stride is a whole number "
     "from 1 to 16"),
    ("im2col(X, 1, stride=2).T @ dZ1", "formula: keyword argument 'stride=' is not allowed "
     "(allowed: axis=, keepdims=)"),
    ("im2col(X, '1').T @ dZ1", "formula: string literals are not allowed"),
    ("np.flip(hwio(P1.T @ dZ1, 1))", "formula: np.flip: give the axis (0: the kernel's rows, "
     "1: its columns); without it numpy flips the channels too"),
    ("np.flip(hwio(P1.T @ dZ1, 1), 2)", "formula: np.flip: the axis is 0 (the kernel's rows) "
     "or 1 (its columns)"),
    ("np.rot90(hwio(P1.T @ dZ1, 1), 99)", "formula: np.rot90: k is a whole number (quarter "
     "turns)"),
    ("__import__('os').system('true')", "formula: attribute access is not allowed"),
    ("__import__('os')", "formula: string literals are not allowed"),
    ("im2col(X, 1).__class__", "formula: attribute access is not allowed"),
])
def test_hostile_formulas_are_refused_in_one_line(formula, message):
    with pytest.raises(SymgradError) as e:
        verify(CNN, "W1", formula)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("formula,why", [
    ("im2col(dZ2, 1).T @ dZ1", "layer 1 reads maps of 64·N rows (8×8 pixels per image)"),
    ("hwio(P1.T @ dZ1, 1) @ dZ1", "a kernel in HWIO form (hwio(…)) can be scaled, added to "
     "another, np.flip-ped or np.rot90-ed; do the rest on the (kh·kw·C)×F matrix"),
])
def test_shapes_that_cannot_match_are_wrong_formulas(formula, why):
    v = verify(CNN, "W1", formula)
    assert not v.ok and v.diagnosis == "shape"
    assert why in v.message


def test_exercise_asks_conv_questions_and_grade_names_the_mistakes(tmp_path):
    """symgrad exercise on the digits CNN: questions on the conv and pooling layers (the
    shapes of feature maps and of the kernel matrix), keys in verify's spelling, and the
    sheet's TOML read back; grade names each classic mistake with its next step."""
    from symgrad import exercise

    ws = exercise.worksheet(CNN, count=6)
    assert [(q.wrt, q.shape) for q in ws.questions] == [
        ("Z3", "N×256"), ("A2", "16N×16"), ("A1", "64N×16"), ("Z1", "64N×16"),
        ("W1", "9×16"), ("b1", "(16,)")]
    exercise.write_worksheet(ws, tmp_path / "sheet.md")
    key = (tmp_path / "sheet.key.md").read_text()
    for answer in ("`unflatten(dZ3, 3)`", "`route(dZ2, 2)`", "`im2col(X, 1).T @ dZ1`"):
        assert answer in key
    sheet = (tmp_path / "sheet.md").read_text()
    assert "8×8×1 images → conv 3×3×16 pad 1 relu" in sheet and "X is 64N×1" in sheet
    answers = exercise.Answers("s", {"q2": "unflatten_nchw(dZ3, 3)", "q3": "spread(dZ2, 2)",
                                     "q5": "np.rot90(hwio(P1.T @ dZ1, 1), 2)",
                                     "q6": "sum(dZ1, axis=0)"})
    g = exercise.grade(exercise.load_sheet(tmp_path / "sheet.toml"), answers)
    got = {r.question.id: (r.status, r.diagnosis) for r in g.results}
    assert got == {"q1": ("blank", None), "q2": ("wrong", "flatten-order"),
                   "q3": ("wrong", "maxpool-average"), "q4": ("blank", None),
                   "q5": ("wrong", "flipped-kernel"), "q6": ("right", None)}
    text = g.text()
    assert "next step: " + exercise.NEXT_STEP["flipped-kernel"] in text


# The index-table nodes verify builds for hand formulas and mistakes, against the ops and
# against numpy, on geometries hypothesis draws.

@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h, w = draw(st.integers(max(kh - 2 * ph, 1), 5)), draw(st.integers(max(kw - 2 * pw, 1), 5))
    return Geometry(h, w, kh, kw, sh, sw, ph, pw)


@settings(max_examples=25, deadline=None)
@given(g=geometries(), n=st.integers(1, 2), c=st.integers(1, 3), seed=st.integers(0, 99),
       stride=st.sampled_from([None, (1, 1), (2, 2)]), padding=st.sampled_from([None, (0, 0), (1, 1)]))
def test_windowed_nodes_are_the_ops_and_adjoint(g, n, c, seed, stride, padding):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n * g.h * g.w, c))
    p = rng.normal(size=(n * g.ho * g.wo, g.k * c))
    env = {"A": a, "P": p}
    A, P = Sym("A", (1, 1), "value"), Sym("P", (1, 1), "value")
    # the layer's own geometry: the same numbers as the ops
    assert np.array_equal(Windowed(A, g, "im2col").numeric(env), Im2col(A, g).numeric(env))
    assert np.allclose(Windowed(P, g, "col2im").numeric(env), Col2im(P, g).numeric(env))
    # any placement: col2im is the adjoint of im2col, <im2col(A), P> = <A, col2im(P)>
    q = _placed(g, stride, padding)
    lhs = np.sum(Windowed(A, q, "im2col").numeric(env) * p)
    rhs = np.sum(a * Windowed(P, q, "col2im").numeric(env))
    assert np.isclose(lhs, rhs)
    # the scatter equals col2im exactly where no two windows share a pixel
    overlap = g.kh > g.sh or g.kw > g.sw
    if not overlap:
        assert np.allclose(Windowed(P, g, "scatter").numeric(env), Col2im(P, g).numeric(env))


@settings(max_examples=20, deadline=None)
@given(kh=st.integers(1, 3), kw=st.integers(1, 3), c=st.integers(1, 2), f=st.integers(1, 2),
       op=st.sampled_from([("flip", 0), ("flip", 1), ("rot90", 1), ("rot90", 2), ("rot90", -1)]),
       seed=st.integers(0, 99))
def test_kernel_permutations_are_numpys_on_the_hwio_kernel(kh, kw, c, f, op, seed):
    w = np.random.default_rng(seed).normal(size=(kh, kw, c, f))
    perm, kh2, kw2 = _kernel_perm(kh, kw, *op)
    want = np.flip(w, op[1]) if op[0] == "flip" else np.rot90(w, op[1])
    got = KernelPermute(Sym("W", (1, 1), "param"), perm).numeric({"W": w.reshape(-1, f)})
    assert want.shape == (kh2, kw2, c, f)
    assert np.array_equal(got, want.reshape(-1, f))
