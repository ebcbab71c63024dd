"""``symgrad verify`` for the layers beyond dense: the names (gamma, beta, mu, var, Xhat, M,
eps, n), right formulas (compact and long) proved, and the classic mistakes of batchnorm,
layernorm, dropout and residual connections named by the table (symgrad.verify.mistakes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, load_spec
from symgrad.verify import DIAGNOSES, verify

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BN = load_spec(EXAMPLES / "digits_bn_dropout.toml")  # dense → batchnorm relu → dropout 0.2 → softmax
RES = load_spec(EXAMPLES / "residual.toml")  # tanh → layernorm → relu → add(A1, A3) → softmax

BN_COMPACT = ("(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - dXhat2.sum(axis=0) - Xhat2 * "
              "(dXhat2*Xhat2).sum(axis=0))")
BN_LONG = ("dXhat2 / np.sqrt(var2 + eps)"
           " + (-0.5 * np.sum(dXhat2 * (A1 - mu2), axis=0) * (var2 + eps)**-1.5) * 2 * (A1 - mu2) / N"
           " + (np.sum(-dXhat2 / np.sqrt(var2 + eps), axis=0) + (-0.5 * np.sum(dXhat2 * (A1 - mu2),"
           " axis=0) * (var2 + eps)**-1.5) * np.sum(-2 * (A1 - mu2), axis=0) / N) / N")
LN = ("(1/n1) / np.sqrt(var2 + eps) * (n1*dXhat2 - dXhat2.sum(axis=1, keepdims=True) - Xhat2 *"
      " (dXhat2*Xhat2).sum(axis=1, keepdims=True))")

WHERE_BN = "(batchnorm of layer 2: μ₂ and σ₂² depend on every sample of the batch)"


@pytest.mark.parametrize("spec,wrt,formula", [
    (BN, "gamma2", "sum(dZ2 * Xhat2, axis=0)"),
    (BN, "beta2", "dZ2.sum(axis=0)"),
    (BN, "Xhat2", "dZ2 * gamma2"),
    (BN, "A1", BN_COMPACT),
    (BN, "A1", BN_LONG),  # the unsimplified sweep through σ² and μ: proved by unfolding X̂, μ
    (BN, "A2", "dZ3 * M3 / (1 - 0.2)"),
    (BN, "W1", "X.T @ (" + BN_COMPACT + ")"),
    (RES, "A1", "dZ4 + " + LN),
    (RES, "gamma2", "np.sum(dZ2 * Xhat2, axis=0)"),
], ids=["gamma", "beta", "Xhat", "bn-compact", "bn-long", "dropout", "W-through-bn",
        "layernorm+skip", "ln-gamma"])
def test_right_formulas_are_proved(spec, wrt, formula):
    v = verify(spec, wrt, formula, budget=20.0)
    assert v.ok, v.text()
    assert v.symbolic.startswith("proved at N=3" if spec is BN else "proved at N=2"), v.symbolic
    assert v.correct  # a numpy spelling of the right formula, itself checked


MISTAKES = [
    (BN, "A1", "(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - Xhat2 * (dXhat2*Xhat2).sum(axis=0))",
     "mean-path", f"missing the mean path: −𝟏𝟏ᵀ∂L/∂X̂₂/N {WHERE_BN}"),
    (BN, "A1", "(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - dXhat2.sum(axis=0))",
     "variance-path", f"missing the variance path: −X̂₂ ⊙ 𝟏𝟏ᵀ(∂L/∂X̂₂ ⊙ X̂₂)/N {WHERE_BN}"),
    # the same mistake seen from a parameter further down
    (BN, "W1", "X.T @ ((1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - dXhat2.sum(axis=0)))",
     "variance-path", f"missing the variance path: −X̂₂ ⊙ 𝟏𝟏ᵀ(∂L/∂X̂₂ ⊙ X̂₂)/N {WHERE_BN}"),
    (BN, "A1", "(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - dXhat2.sum(axis=0) - N/(N - 1) * Xhat2"
     " * (dXhat2*Xhat2).sum(axis=0))", "unbiased-variance",
     "the unbiased variance: N − 1 in place of N in the variance path −X̂₂ ⊙ 𝟏𝟏ᵀ(∂L/∂X̂₂ ⊙ X̂₂)/N; "
     "σ₂² is the biased variance (the mean of the squared deviations, over N); torch uses the "
     "unbiased one only for the running estimate"),
    (RES, "A1", "dZ4 + (1/n1) / np.sqrt(var2 + eps) * (n1*dXhat2 - dXhat2.sum(axis=0) - Xhat2 *"
     " (dXhat2*Xhat2).sum(axis=0))", "norm-axis",
     "layernorm summed over the wrong axis: its statistics are over the rows (axis=1) of layer "
     "2's input, so its sums are too; yours sums over the columns (axis=0)"),
    (BN, "A2", "dZ3 * M3", "dropout-scale",
     "dropout without 1/(1 − 0.2): the forward pass scales the kept values by 1/(1 − 0.2) = 1.25,"
     " so the backward pass does too (δ₃ ⊙ M₃/(1 − 0.2))"),
    (BN, "A2", "dZ3 / 0.8", "dropout-mask",
     "the dropout mask is forgotten in backward: a dropped unit (entry of M₃ = 0) passes no "
     "gradient, so the rule is δ₃ ⊙ M₃/(1 − 0.2)"),
    (RES, "A1", LN, "skip",
     "missing the skip's gradient: A₁ also feeds the add of layer 4 (the residual connection), "
     "so ∂L/∂A₁ includes its δ₄; gradients add where a value fans out"),
    (RES, "W1", f"X.T @ (({LN}) * (1 - A1**2))", "skip",
     "missing the skip's gradient: A₁ also feeds the add of layer 4 (the residual connection), "
     "so ∂L/∂A₁ includes its δ₄; gradients add where a value fans out"),
]


@pytest.mark.parametrize("spec,wrt,formula,code,line", MISTAKES,
                         ids=[f"{m[3]}-{m[1]}" for m in MISTAKES])
def test_classic_mistakes_are_named(spec, wrt, formula, code, line):
    v = verify(spec, wrt, formula, symbolic=False)
    assert not v.ok and not v.undecided
    assert code in DIAGNOSES
    assert f"  verdict:   WRONG ({code})\n" in v.text()
    assert f"  diagnosis: {line}\n" in v.text()


def test_the_cli_exits_0_for_right_and_1_for_wrong(capsys):
    spec = str(EXAMPLES / "digits_bn_dropout.toml")
    assert main(["verify", spec, "--wrt", "gamma2", "sum(dZ2 * Xhat2, axis=0)"]) == 0
    out = capsys.readouterr().out
    assert "verdict:   correct" in out and "∂L/∂γ₂ = 𝟏ᵀ (δ₂ ⊙ X̂₂)" in out
    assert main(["verify", spec, "--wrt", "A2", "dZ3 * M3"]) == 1
    assert "verdict:   WRONG (dropout-scale)" in capsys.readouterr().out


def test_instances_hold_the_masks_and_the_batch_statistics():
    from symgrad.verify import _instances

    for inst in _instances(BN, 0):
        env = inst.env
        assert set(env["M3"].ravel()) <= {0.0, 1.0}
        assert abs(env["mu2"] - env["A1"].mean(axis=0)).max() < 1e-12
        assert abs(env["var2"] - env["A1"].var(axis=0)).max() < 1e-12  # biased


@pytest.mark.parametrize("wrt,formula,message", [
    ("mu2", "dZ2", "'mu2' is a batch statistic, which the sweep does not differentiate (the "
     "normalization rule folds its paths into dA); choose a parameter (W1, b1, gamma2, beta2, "
     "W4, b4) or an intermediate (Z1, Xhat2, Z2, Z3, Z4, A1, A2, A3, Yhat)"),
    ("A1", "dXhat5 * 2", "formula: unknown name 'dXhat5' (the network has dXhat2)"),
    ("A1", "dmu2", "formula: 'dmu2' is not computed by the sweep: batchnorm's and layernorm's rule "
     "folds the paths through mu and var into dA (use dXhat), and a dropout mask is not "
     "differentiated"),
])
def test_bad_names_are_one_line_errors(wrt, formula, message):
    with pytest.raises(SymgradError) as e:
        verify(BN, wrt, formula)
    assert str(e.value).endswith(message)


def test_layernorm_names_its_missing_layers():
    with pytest.raises(SymgradError) as e:
        verify(RES, "A1", "M3 * dZ4")
    assert str(e.value).endswith("unknown name 'M3' (the network has no dropout layer)")


# --------------------------------------------------------------------------
# Red-team findings of issue 11: a gradient that is exactly 0 (F3), concat slices (F12), a
# literal width (F4), numpy's negative axes (F5)
# --------------------------------------------------------------------------

ZERO_NOTE = ("∂L/∂b₁ = 0 exactly: the loss does not depend on b₁ (layer 2's batchnorm subtracts "
             "the batch mean of each column, so b₁, added to every row, cancels)")


@pytest.mark.parametrize("formula", ["0 * b1", "0", "zeros_like(b1)", "np.zeros(n1)"])
def test_a_gradient_that_is_exactly_zero_is_correct_and_proved(formula):
    """∂L/∂b₁ = 𝟏ᵀδ₁ ≡ 0 before a batchnorm; float64 computes it as rounding noise (6e-17),
    which the floor at the problem's scale reads as 0; the proof decides."""
    v = verify(BN, "b1", formula)
    assert v.ok, v.text()
    assert v.symbolic.startswith("proved at N=3 n₀=2 n₁=2 n₄=3: every entry's difference is 0")
    assert f"  note:      {ZERO_NOTE}\n" in v.text()


def test_a_tiny_answer_to_a_zero_gradient_is_still_wrong():
    v = verify(BN, "b1", "1e-20 * np.ones(n1)")
    assert not v.ok and not v.undecided
    assert v.message.startswith("close but not equal: yours differs from ∂L/∂b₁ by up to ")
    assert "WRONG" in verify(BN, "b1", "sum(dZ1, axis=0) + 1e-3 * ones_like(b1)").text()


def test_the_floor_is_the_problems_scale_not_the_matrixs():
    from symgrad.verify import RTOL, _instances, _relerr

    inst = _instances(BN, 0)[0]
    noise = inst.env["db1"]
    assert 1e-18 < abs(noise).max() < 1e-15  # rounding of an exact 0
    assert _relerr(np.zeros_like(noise), noise).max() > 1e-5  # judged alone: 100 % off
    assert _relerr(np.zeros_like(noise), noise, inst.floor).max() <= RTOL
    small = 1e-12 * inst.env["dW1"]  # a small gradient, twice over: the screen still tells
    assert _relerr(2 * small, small, inst.floor).max() > RTOL


CAT = Spec("cat2", 3, (Layer(2, "tanh"), Layer(4, input="X"),
                       Layer(type="concat", inputs=("A1", "A2", "X")), Layer(2)), loss="mse")


@pytest.mark.parametrize("wrt,formula,correct", [
    ("A1", "dZ3[:, :n1]", "dZ3[:, :n1]"),
    ("A1", "dZ3[:, 0:n_1]", "dZ3[:, :n1]"),
    ("Z2", "dZ3[:, n1:n1+n2]", "dZ3[:, n1:n1 + n2]"),
    ("Z1", "dZ3[:, :n1] * (1 - A1**2)", "dZ3[:, :n1] * (1 - A1**2)"),
    ("W2", "X.T @ dZ3[:, n3 - n0 - n2:n3 - n0]", "X.T @ dZ2"),
])
def test_concat_slices_are_read(wrt, formula, correct):
    v = verify(CAT, wrt, formula)
    assert v.ok, v.text()
    assert v.correct == correct
    assert verify(CAT, wrt, v.correct).ok


def test_literal_slice_bounds_are_read_as_the_spec_widths():
    v = verify(CAT, "Z2", "dZ3[:, 2:6]")
    assert v.ok and v.symbolic.startswith("proved"), v.text()
    assert ("  note:      read 2 as n₁ and 6 as n₁ + n₂ (this spec's widths): verify checks the "
            "formula at other widths too, so write a width by its name, n1 or n_1: "
            "dZ3[:, n1:n1 + n2]\n") in v.text()


def test_a_slice_of_the_wrong_input_is_named():
    v = verify(CAT, "A1", "dZ3[:, n1:n1 + n2]")
    assert "  verdict:   WRONG (other-gradient)\n  diagnosis: yours is ∂L/∂Z₂, not ∂L/∂A₁\n" in v.text()
    assert "  numeric:   not evaluated: yours is N×n₂, ∂L/∂A₁ is N×n₁ (the shape of A1)\n" in v.text()
    assert "yours is N×(n₀ + n₁ + n₂)," in verify(CAT, "A1", "dZ3").text()


@pytest.mark.parametrize("formula,message", [
    ("dZ3[:, ::2]", "dZ3[:, ::2]: a slice with a step is not allowed; write the columns as "
     "x[:, a:b]"),
    ("dZ3[:, -2:]", "dZ3[:, -2:]: negative slice bounds (counting from the end) are not allowed; "
     "write the columns as x[:, a:b] with widths, e.g. x[:, n1:n1 + n2]"),
    ("dZ3[1:, :n1]", "dZ3[1:, :n1]: verify reads column slices x[:, a:b] (every row, the columns "
     "a … b−1; a and b whole numbers or widths such as n1, n1 + n2) and v[:, None]; not this "
     "subscript"),
    ("dZ3[:, 0]", "dZ3[:, 0]: verify reads column slices x[:, a:b] (every row, the columns "
     "a … b−1; a and b whole numbers or widths such as n1, n1 + n2) and v[:, None]; not this "
     "subscript"),
    ("dZ3[:, :N]", "dZ3[:, :N]: a slice bound is a whole number or a width (n0, n1, n1 + n2, "
     "2*n0), not N"),
    ("dZ3[:, :n1/2]", "dZ3[:, :n1 / 2]: a slice bound is a whole number or a width (n0, n1, "
     "n1 + n2, 2*n0), not n1 / 2"),
])
def test_other_subscripts_are_one_line_errors(formula, message, capsys):
    with pytest.raises(SymgradError) as e:
        verify(CAT, "A1", formula)
    assert str(e.value) == f"formula: {message}"


LN_32 = ("dZ4 + 1 / sqrt(var2 + 1e-05) * (32 * dXhat2 - sum(dXhat2, axis=1, keepdims=True) - "
         "Xhat2 * sum(dXhat2 * Xhat2, axis=1, keepdims=True)) / 32")


def test_a_literal_width_is_read_as_the_width_it_equals(capsys):
    spec = str(EXAMPLES / "residual.toml")  # layer 1 has 32 units: the layernorm's 1/n₁ is 1/32
    assert main(["verify", spec, "--wrt", "A1", LN_32]) == 0
    out = capsys.readouterr().out
    assert "  verdict:   correct\n" in out
    assert ("  note:      read 32 as n₁ (this spec's width): verify checks the formula at other "
            "widths too, so write a width by its name, n1 or n_1: " + LN_32.replace("32", "n1")
            + "\n") in out
    assert "  correct:   dZ4 + 1 / sqrt(var2 + 1e-05) * (n1 * dXhat2" in out


def test_a_literal_that_is_right_as_written_is_not_reread():
    v = verify(CAT, "A1", "dZ3[:, :n1] * 2 / 2")  # 2 is also n₁ and n₄ here
    assert v.ok and not any(n.startswith("read ") for n in v.notes)


@pytest.mark.parametrize("formula", [
    "dZ4 + (dXhat2 - mean(dXhat2, axis=-1, keepdims=True) - Xhat2 * mean(dXhat2 * Xhat2, "
    "axis=-1, keepdims=True)) / sqrt(var2 + 1e-5)",
    "dZ4 + (dXhat2 - mean(dXhat2, -1)[:, None] - Xhat2 * (dXhat2 * Xhat2).mean(axis=-1)"
    "[:, np.newaxis]) / sqrt(var2 + 1e-5)",
])
def test_negative_axes_as_numpy(formula):
    assert verify(RES, "A1", formula, symbolic=False).ok


def test_negative_axes_on_a_matrix_and_a_vector():
    assert verify(BN, "gamma2", "sum(dZ2 * Xhat2, axis=-2)", symbolic=False).ok
    v = verify(BN, "gamma2", "sum(dZ2 * Xhat2, axis=-1)", symbolic=False)
    assert "  fixed:     sum(dZ2 * Xhat2, axis=0)\n" in v.text() and v.diagnosis == "axis"
    v = verify(BN, "gamma2", "sum(sum(dZ2 * Xhat2, axis=0), axis=-2)", symbolic=False)
    assert v.message == ("the shapes cannot match: sum(sum(dZ2 * Xhat2, axis=0), axis=-2): axis "
                         "-2 is out of bounds for a 1-D vector")
    with pytest.raises(SymgradError) as e:
        verify(BN, "gamma2", "sum(dZ2, axis=-3)")
    assert str(e.value) == "formula: axis must be 0, 1, -1, -2 or None"


def test_a_zero_gradient_elsewhere_names_no_mix_up():
    """Two batchnorms in a row: ∂L/∂β₂ ≡ 0 (proved), but ∂L/∂γ₂ is small, not 0 (ε), and an
    answer 0 for it is wrong without being called 'yours is ∂L/∂β₂'."""
    spec = Spec("bb", 3, (Layer(4), Layer(type="batchnorm"),
                          Layer(type="batchnorm", activation="relu"), Layer(2)), loss="mse")
    v = verify(spec, "beta2", "0")
    assert v.ok and v.notes[0] == (
        "∂L/∂β₂ = 0 exactly: the loss does not depend on β₂ (layer 3's batchnorm subtracts the "
        "batch mean of each column, so β₂, added to every row, cancels)")
    v = verify(spec, "gamma2", "0", symbolic=False)
    assert not v.ok and v.diagnosis is None, v.text()
