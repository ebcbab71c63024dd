"""Tests for ``symgrad verify`` (symgrad.verify): the catalogue of hand derivations,
the numpy-syntax printer, the evidence, bad input and the command line."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp
from verify_catalogue import CATALOGUE, NETWORKS, OK

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.verify import DIAGNOSES, NumpyPrinter, numpy_text, verify, verify_scalar

verify_mod = importlib.import_module("symgrad.verify")  # symgrad.verify is the function

TANH = NETWORKS["tanh"]


def _id(row) -> str:
    net, wrt, formula, want = row
    return f"{net}-{wrt}-{formula}-{want}"


# --------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------


def test_catalogue_size_and_coverage():
    assert len(CATALOGUE) >= 30
    assert {"tanh", "sigmoid", "relu"} <= {net for net, *_ in CATALOGUE}
    wanted = {want for *_, want in CATALOGUE}
    assert set(DIAGNOSES) <= wanted, set(DIAGNOSES) - wanted
    assert OK in wanted and None in wanted
    # right ones in several spellings for the same gradient
    right = [(net, wrt) for net, wrt, _, want in CATALOGUE if want == OK]
    assert max(right.count(k) for k in set(right)) >= 3


@pytest.mark.parametrize("row", CATALOGUE, ids=_id)
def test_catalogue(row):
    net, wrt, formula, want = row
    v = verify(NETWORKS[net], wrt, formula)
    got = OK if v.ok else v.diagnosis
    assert got == want, v.text()
    text = v.text()
    assert formula in text and v.correct in text
    if want == OK:
        assert v.numeric.startswith("equal on 3 random instances")
        assert v.symbolic.startswith("proved"), v.symbolic
    else:
        assert "WRONG" in text and v.message


# --------------------------------------------------------------------------
# Diagnoses in detail
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "wrt", "formula", "factor"),
    [
        ("tanh", "Z2", "Yhat - Y", "N"),
        ("tanh", "b1", "mean(dZ1, axis=0)", "1/N"),
        ("tanh", "W2", "2 * A1.T @ dZ2", "2"),
        ("tanh", "W1", "0.5 * X.T @ dZ1", "1/2"),
        ("tanh", "W1", "-X.T @ dZ1", "-1"),
        ("tanh", "W1", "X.T @ dZ1 * N", "N"),
        ("relu", "Z2", "-(Yhat - Y)", "-N"),
        ("sigmoid", "W2", "A1.T @ (Yhat - Y) + l2 * W2", "N"),  # one term off by N
    ],
)
def test_factor_is_named(net, wrt, formula, factor):
    v = verify(NETWORKS[net], wrt, formula)
    assert not v.ok and v.factor == factor, v.text()


def test_counterexample_names_entry_sizes_and_both_values():
    v = verify(TANH, "Z2", "Yhat - Y")
    assert v.counterexample.startswith("at N=3 n₀=")
    assert "entry [" in v.counterexample and "in yours" in v.counterexample
    assert "in ∂L/∂Z₂" in v.counterexample


def test_bias_counterexample_uses_a_1d_index():
    v = verify(TANH, "b1", "2 * sum(dZ1, axis=0)")
    assert v.diagnosis == "factor"
    assert "entry [" in v.counterexample and ", " not in v.counterexample.split("entry ")[1][:6]


def test_fix_keeps_the_users_spelling():
    v = verify(NETWORKS["deep"], "A1", "dZ2  @  np.transpose(W3)")
    assert v.diagnosis == "layer"
    assert v.fix == "dZ2  @  np.transpose(W2)"
    v = verify(TANH, "W1", "X @ dZ1")
    assert v.fix == "X.T @ dZ1" and "X needs a transpose" in v.message
    v = verify(TANH, "W1", "X.T @ dZ1.T")
    assert v.diagnosis == "transposed" and v.fix == "X.T @ dZ1"


def test_missing_activation_derivative_names_the_factor():
    v = verify(TANH, "Z1", "dZ2 @ W2.T")
    assert "(1 − A₁²)" in v.message and "(1 - A1**2)" in v.message


def test_missing_term_names_the_penalty():
    v = verify(NETWORKS["sigmoid"], "W1", "X.T @ dZ1")
    assert "l2 * W1" in v.message and "λ₂ W₁" in v.message


def test_shape_diagnosis_quotes_the_product():
    v = verify(TANH, "W1", "W1.T @ dZ1")
    assert v.diagnosis == "shape"
    assert "cannot multiply n₁×n₀ by N×n₁" in v.message


def test_scalar_formula_for_a_matrix_is_a_shape_error():
    v = verify(TANH, "W1", "2 * N")
    assert not v.ok and v.diagnosis == "shape" and "a scalar" in v.message


# --------------------------------------------------------------------------
# Evidence
# --------------------------------------------------------------------------


def test_instances_have_distinct_non_square_sizes():
    net = verify_mod._network(TANH)
    ns = set()
    for k in range(3):
        n, widths = net.instance_sizes(k)
        assert len({n, *widths}) == len(widths) + 1  # nothing square by accident
        ns.add(n)
    assert len(ns) == 3


def test_cross_entropy_labels_are_one_hot_and_bce_labels_in_0_1():
    for inst in verify_mod._instances(TANH, 0):
        Y = inst.env["Y"]
        assert ((Y == 0) | (Y == 1)).all() and (Y.sum(axis=1) == 1).all()
    for inst in verify_mod._instances(NETWORKS["relu"], 0):
        Y = inst.env["Y"]
        assert ((Y > 0) & (Y < 1)).all()


def test_symbolic_not_decided_within_budget_is_not_correct():
    """Exact numeric agreement with an undecided proof is "not proved" (exit 1), never
    "correct" (hardening issue, class 3)."""
    v = verify(NETWORKS["relu"], "Z1", "(dZ2 @ W2.T) * np.sign(A1)", budget=0.3)
    assert not v.ok and v.undecided and v.diagnosis is None
    assert v.symbolic.startswith("not decided")
    assert v.message.startswith("not proved: agrees numerically to ")
    assert " on 3 instances; " in v.message
    assert "  verdict:   not proved\n" in v.text()


def test_symbolic_can_be_skipped():
    v = verify(TANH, "W1", "X.T @ dZ1", symbolic=False)
    assert v.ok and v.symbolic == "not attempted"


def test_seed_changes_the_data_not_the_verdict():
    a = verify(TANH, "Z2", "Yhat - Y", seed=0)
    b = verify(TANH, "Z2", "Yhat - Y", seed=7)
    assert a.diagnosis == b.diagnosis == "factor" and a.counterexample != b.counterexample


# --------------------------------------------------------------------------
# The correct formula in numpy syntax
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "wrt", "expected"),
    [
        ("tanh", "W1", "X.T @ dZ1"),
        ("tanh", "b1", "sum(dZ1, axis=0)"),
        ("tanh", "Z1", "(dZ2 @ W2.T) * (1 - A1**2)"),
        ("tanh", "Z2", "(Yhat - Y) / N"),
        ("tanh", "A1", "dZ2 @ W2.T"),
        ("tanh", "Yhat", "-Y / Yhat / N"),
        ("sigmoid", "W1", "X.T @ dZ1 + l2 * W1"),
        ("sigmoid", "Z1", "(dZ2 @ W2.T) * A1 * (1 - A1)"),
        ("relu", "Z1", "(dZ2 @ W2.T) * where(A1 > 0, 1, 0)"),
    ],
)
def test_correct_formula_printed_in_numpy_syntax(net, wrt, expected):
    target = verify_mod._network(NETWORKS[net]).targets[wrt]
    assert numpy_text(target.node) == expected


def test_numpy_prefix_follows_the_user():
    assert verify(TANH, "b1", "np.sum(dZ1, axis=0)").correct == "np.sum(dZ1, axis=0)"
    assert verify(NETWORKS["relu"], "Z1", "dZ2 @ W2.T").correct == (
        "(dZ2 @ W2.T) * where(A1 > 0, 1, 0)")


@pytest.mark.parametrize("net", sorted(NETWORKS))
@pytest.mark.parametrize("prefix", ["", "np."])
def test_printed_correct_formulas_verify(net, prefix):
    """Every derived gradient, printed in numpy syntax, is accepted by verify."""
    spec = NETWORKS[net]
    for name, target in verify_mod._network(spec).targets.items():
        text = NumpyPrinter(prefix, maps=verify_mod._network(spec).map_names).doprint(target.node)
        v = verify(spec, name, text, symbolic=False)
        assert v.ok, v.text()


def test_scalar_printer():
    x = sp.Symbol("x", real=True)
    assert numpy_text(sp.exp(x) / (1 + sp.exp(x))) == "exp(x) / (1 + exp(x))"
    assert numpy_text(-x**2 + 1) == "1 - x**2"
    assert numpy_text(sp.Piecewise((1, x > 0), (0, True))) == "where(x > 0, 1, 0)"
    assert NumpyPrinter("np.").doprint(sp.Abs(x) * sp.tanh(x)) == "np.abs(x) * np.tanh(x)"


# --------------------------------------------------------------------------
# Bad input: SymgradError, one line
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrt", "formula", "where", "what"),
    [
        ("W1", "X.T @ W3", "formula", "unknown name 'W3' (the network has W1, b1, W2, b2)"),
        ("W1", "X.T @ dZ3", "formula", "unknown name 'dZ3' (the network has dZ1, dZ2)"),
        ("W1", "Yhta - Y", "formula", "unknown name 'Yhta' (did you mean 'Yhat'?)"),
        ("W1", "X.T @ dW1", "formula", "'dW1' is a parameter gradient"),
        ("W1", "X.T @ l2", "formula", "unknown name 'l2'"),  # no penalty in this network
        ("W1", "X.T @@ dZ1", "formula", "cannot parse: invalid syntax"),
        ("W1", "__import__('os')", "formula", "string literals are not allowed"),
        ("W1", "dZ1.__class__", "formula", "attribute access is not allowed"),
        ("W1", "dZ1.reshape(1)", "formula", "attribute access is not allowed"),
        ("W1", "np.linalg.sum(dZ1)", "formula", "attribute access is not allowed"),
        ("W1", "X.T @ dZ1 / 0", "formula", "division by zero"),
        ("W1", "X ** 1000", "formula", "exponent 1000 is too large"),
        ("W1", "ones(X)", "formula", "ones() takes a size"),
        ("W1", "tanh(X, axis=0)", "formula", "keyword argument 'axis=' is only allowed in sum()"),
        ("W1", "sums(dZ1, axis=0)", "formula", "unknown function 'sums' (did you mean 'sum'?)"),
        ("W9", "X", "--wrt", "unknown name 'W9'"),
        ("X", "X", "--wrt", "'X' is data"),
    ],
)
def test_bad_input(wrt, formula, where, what):
    with pytest.raises(SymgradError) as info:
        verify(TANH, wrt, formula)
    assert info.value.where == where
    assert info.value.what.startswith(what), info.value.what


def test_aliases():
    assert verify(TANH, "delta1", "(delta2 @ W2.T) * (1 - A1**2)").ok
    assert verify(TANH, "A2", "-Y / A2 / N").ok
    assert verify(TANH, "dW1", "X.T @ dZ1").ok


# --------------------------------------------------------------------------
# Scalar mode
# --------------------------------------------------------------------------


def test_scalar_right():
    v = verify_scalar("log(1 + exp(x))", "x", "1/(1 + exp(-x))")
    assert v.ok and v.symbolic.startswith("proved") and v.numeric.startswith("equal at")


def test_scalar_piecewise_proof():
    v = verify_scalar("maximum(x, 0)", "x", "where(x > 0, 1, 0)")
    assert v.ok and v.symbolic.startswith("proved") and "isolated points" in v.symbolic
    v = verify_scalar("abs(x)", "x", "sign(x)")
    assert v.ok and v.symbolic.startswith("proved")


@pytest.mark.parametrize(
    ("expr", "formula", "diagnosis", "factor"),
    [
        ("log(1 + exp(x))", "-1/(1 + exp(-x))", "sign", "-1"),
        ("x**3", "6*x**2", "factor", "2"),
        ("tanh(x)", "(1 - tanh(x)**2) / 2", "factor", "1/2"),
        ("x**2 * sin(x)", "2*x*cos(x)", None, None),
    ],
)
def test_scalar_wrong(expr, formula, diagnosis, factor):
    v = verify_scalar(expr, "x", formula)
    assert not v.ok and v.diagnosis == diagnosis and v.factor == factor
    assert v.counterexample.startswith("at x = ")


def test_scalar_prints_the_correct_derivative():
    v = verify_scalar("x**2 * sin(x)", "t" if False else "x", "2*x*cos(x)")
    assert v.correct == "x * (2 * sin(x) + x * cos(x))"
    assert verify_scalar("log(x)", "x", "1/x").ok  # only x > 0 is sampled


def test_scalar_bad_input():
    with pytest.raises(SymgradError) as info:
        verify_scalar("x + y", "x", "1")
    assert info.value.where == "--expr" and "unknown name 'y'" in info.value.what
    with pytest.raises(SymgradError) as info:
        verify_scalar("x", "1x", "1")
    assert info.value.where == "--wrt"


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

TOML = """
[network]
name = "tanh_softmax"
inputs = 4

[[layer]]
units = 5
activation = "tanh"

[[layer]]
units = 3
activation = "softmax"

[loss]
kind = "cross_entropy"
"""


@pytest.fixture()
def spec_file(tmp_path: Path) -> str:
    path = tmp_path / "net.toml"
    path.write_text(TOML)
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_right_and_wrong(capsys, spec_file):
    code, out, err = run(capsys, "--wrt", "W1", spec_file, "X.T @ dZ1")
    assert code == 0 and "verdict:   correct" in out and err == ""
    code, out, err = run(capsys, "--wrt", "W1", spec_file, "dZ1.T @ X")
    assert code == 1 and "WRONG (transposed)" in out and "correct:   X.T @ dZ1" in out


def test_cli_shape_mismatch_is_a_wrong_formula_not_an_error(capsys, spec_file):
    code, out, err = run(capsys, "--wrt", "W1", spec_file, "W1.T @ dZ1")
    assert code == 1 and "WRONG (shape)" in out and err == ""


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--wrt", "W1", "{spec}", "X.T @ W3"],
         "symgrad: error: formula: unknown name 'W3' (the network has W1, b1, W2, b2)"),
        (["--wrt", "W1", "{spec}", "Yhta - Y"],
         "symgrad: error: formula: unknown name 'Yhta' (did you mean 'Yhat'?)"),
        (["--wrt", "W1", "{spec}", "X.T @@ dZ1"],
         "symgrad: error: formula: cannot parse: invalid syntax at column 6"),
        (["--wrt", "W1", "{spec}", "lambda: 0"],
         "symgrad: error: formula: lambda is not allowed"),
        (["--wrt", "W7", "{spec}", "X"],
         "symgrad: error: --wrt: unknown name 'W7' (the network has W1, b1, W2, b2; "
         "intermediates Z1, Z2, A1, Yhat)"),
        (["--wrt", "W1", "missing.toml", "X"], "symgrad: error: missing.toml: no such file"),
        (["--wrt", "x", "y"],
         "symgrad: error: verify: missing SPEC (a network spec), or use --expr \"…\" for a "
         "scalar function"),
        (["--expr", "x + y", "--wrt", "x", "1"],
         "symgrad: error: --expr: unknown name 'y' (allowed: x, pi, e)"),
    ],
)
def test_cli_bad_input_one_line(capsys, spec_file, argv, line):
    code, out, err = run(capsys, *[a.format(spec=spec_file) for a in argv])
    assert code == 2 and out == ""
    assert err == line + "\n"


def test_cli_scalar_mode(capsys):
    code, out, _ = run(capsys, "--expr", "log(1 + exp(x))", "--wrt", "x", "1/(1 + exp(-x))")
    assert code == 0 and "verdict:   correct" in out
    code, out, _ = run(capsys, "--expr", "log(1 + exp(x))", "--wrt", "x", "exp(x)")
    assert code == 1 and "correct:   exp(x) / (1 + exp(x))" in out


def test_cli_documented_argument_order(capsys, spec_file):
    code, out, _ = run(capsys, spec_file, "--wrt", "W1", "X.T @ dZ1")
    assert code == 0
    code, out, _ = run(capsys, spec_file, "--wrt", "W1", "X @ dZ1")
    assert code == 1 and "WRONG (transposed)" in out


def test_cli_process_exit_code(spec_file):
    """The real entry point, once: exit 1 and the verdict on stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "symgrad", "verify", "--wrt", "Z2", spec_file, "Yhat - Y"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "WRONG (factor)" in proc.stdout and "off by a constant factor N" in proc.stdout


def test_exported_members():
    assert set(verify_mod.__all__) == {
        "Verdict", "verify", "verify_scalar", "NumpyPrinter", "numpy_text", "FormulaBuilder",
        "DIAGNOSES",
    }


# --------------------------------------------------------------------------
# Comparisons as numbers: numpy's boolean mask (Z1 > 0) is relu′
# --------------------------------------------------------------------------


@pytest.mark.parametrize("formula", [
    "(dZ2 @ W2.T) * (Z1 > 0)", "dZ2 @ W2.T * (Z1 > 0)", "(dZ2 @ W2.T) * (A1 > 0)",
    "dA1 * (0 < Z1)", "where(Z1 > 0, dA1, 0) * (A1 > 0)",
])
def test_comparison_mask_is_relu_derivative(formula):
    v = verify(NETWORKS["relu"], "Z1", formula)
    assert v.ok and v.symbolic.startswith("proved"), v.text()


def test_comparison_mask_at_zero_is_not_called_wrong():
    """[Z1 >= 0] differs from relu′ (relu′(0) = 0) only at 0: never WRONG on random data."""
    v = verify(NETWORKS["relu"], "Z1", "dA1 * (Z1 >= 0)", budget=0.5)
    assert v.numeric.startswith("equal on 3 random instances") and v.diagnosis is None


@pytest.mark.parametrize(("wrt", "formula"), [
    ("Z1", "(dZ2 @ W2.T) * (A1 > 0)"), ("Z1", "dA1 * (Z1 > 0)"),
    ("W1", "X.T @ ((dZ2 @ W2.T) * (Z1 > 0))"),
])
def test_relu_mask_on_a_tanh_layer_is_diagnosed(wrt, formula):
    v = verify(TANH, wrt, formula)
    assert not v.ok and v.diagnosis == "activation-derivative"
    assert v.message == (
        "wrong activation derivative: yours uses relu′ (the 0/1 mask [Z₁ > 0]) for layer 1, "
        "but layer 1 is tanh: use the factor ⊙ (1 − A₁²) (numpy: * (1 - A1**2))")


def test_comparison_mask_cli(tmp_path, capsys):
    digits = Path(__file__).resolve().parents[1] / "examples" / "digits.toml"
    assert main(["verify", str(digits), "--wrt", "Z1", "(dZ2 @ W2.T) * (A1 > 0)"]) == 1
    assert "verdict:   WRONG (activation-derivative)" in capsys.readouterr().out
    relu = tmp_path / "relu.toml"
    relu.write_text(digits.read_text(encoding="utf-8").replace('"tanh"', '"relu"'),
                    encoding="utf-8")
    assert main(["verify", str(relu), "--wrt", "Z1", "(dZ2 @ W2.T) * (Z1 > 0)"]) == 0
    assert "verdict:   correct" in capsys.readouterr().out


def test_comparison_in_scalar_mode():
    assert verify_scalar("x * (x > 0)", "x", "x > 0").ok
    assert verify_scalar("maximum(x, 0)", "x", "(x > 0) * 1.0").ok
