"""``symgrad verify`` for the layers beyond dense: the names (gamma, beta, mu, var, Xhat, M,
eps, n), right formulas (compact and long) proved, and the classic mistakes of batchnorm,
layernorm, dropout and residual connections named by the table (symgrad.verify.mistakes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.spec import load_spec
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
