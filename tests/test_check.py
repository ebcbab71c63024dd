"""Tests for ``symgrad check`` (symgrad.check): every example passes every method, wrong
gradients are caught and named, bad input is one line and exit 2.

Modules under test are files in a temporary directory: the generated digits module, and
wrappers around it whose ``loss_and_grad`` is perturbed (the untrusted-module path).  The
command line runs in-process through ``symgrad.cli.main``; only the timing test starts a
subprocess (a fresh interpreter, one BLAS thread: see its docstring).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from symgrad import check
from symgrad.check import DEFAULT_TOL, CheckReport, check_module, check_spec
from symgrad.cli import main
from symgrad.codegen import generate
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.toml")  # the dense ones; the new
                  if load_spec(p).is_chain)  # layer types: tests/test_layers_check.py
ANALYTIC = {"digits", "regression"}  # tanh, softmax, identity; cross-entropy, mse; no l1
PARAMS = {"W1", "b1", "W2", "b2"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def param_rows(report: CheckReport):
    return [r for r in report.rows if r.name in PARAMS]


def table_row(out: str, name: str, method: str | None = None) -> list[str]:
    """The cells of the table line for ``name`` (split on runs of two spaces)."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        if cells and cells[0] == name and (method is None or method in cells):
            return cells
    raise AssertionError(f"no row {name} in\n{out}")


# ------------------------------------------------------------------------------------------
# Modules on disk: the generated digits module and perturbed wrappers around it
# ------------------------------------------------------------------------------------------

WRAPPER = '''"""digits_mlp with a wrong gradient: {doc}."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_digits_{tag}", Path(__file__).with_name("digits_mlp.py"))
_inner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_inner)
INPUTS, OUTPUTS, PARAM_SHAPES = _inner.INPUTS, _inner.OUTPUTS, _inner.PARAM_SHAPES
init_params, loss = _inner.init_params, _inner.loss


def loss_and_grad(params, X, Y):
    L, grads = _inner.loss_and_grad(params, X, Y)
    {perturb}
    return L, grads
'''


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("modules")
    paths = {"correct": generate(load_spec(ROOT / "examples" / "digits.toml"), d / "digits_mlp.py")}
    for tag, doc, perturb in [
        ("entry", "dW1[2, 3] off by 1%", 'grads["W1"][2, 3] *= 1.01'),
        ("all", "all of dW1 off by 1%", 'grads["W1"] *= 1.01'),
    ]:
        paths[tag] = d / f"perturbed_{tag}.py"
        paths[tag].write_text(WRAPPER.format(doc=doc, tag=tag, perturb=perturb))
    return paths


HANDWRITTEN = '''"""A two-layer tanh regressor written by hand, without init_params; its loss keeps
complex parameters complex (no float(), no real-only ufuncs)."""
import numpy as np

INPUTS, OUTPUTS = 3, 2
PARAM_SHAPES = {{"W1": (3, 4), "b1": (4,), "W2": (4, 2), "b2": (2,)}}


def _forward(p, X):
    A1 = np.tanh(X @ p["W1"] + p["b1"])
    return A1, A1 @ p["W2"] + p["b2"]


def loss(p, X, Y):
    _, Yhat = _forward(p, X)
    return np.sum((Yhat - Y) ** 2) / (2 * len(X))


def loss_and_grad(p, X, Y):
    A1, Yhat = _forward(p, X)
    dZ2 = (Yhat - Y) / len(X)
    dZ1 = {dZ1}
    grads = {{"W1": X.T @ dZ1, "b1": dZ1.sum(axis=0), "W2": A1.T @ dZ2, "b2": dZ2.sum(axis=0)}}
    {extra}
    return loss(p, X, Y), grads
'''


def handwritten(tmp_path: Path, name: str, dZ1: str = '(dZ2 @ p["W2"].T) * (1 - A1**2)',
                extra: str = "pass") -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(HANDWRITTEN.format(dZ1=dZ1, extra=extra))
    return path


# ------------------------------------------------------------------------------------------
# Every example passes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_examples_pass_central(capsys, spec):
    code, out, err = run(capsys, spec)
    assert (code, err) == (0, ""), out
    for name in PARAMS:
        cells = table_row(out, name)
        assert cells[-2:] == ["central", "pass"]
        assert float(cells[2]) <= DEFAULT_TOL["central"]
    assert table_row(out, "loss", "derivation")[-1] == "pass"
    assert out.splitlines()[-1] == "ok: 6 of 6 checks passed"


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_examples_complex_step_where_analytic(spec):
    report = check_spec(spec, method="complex")
    assert report.ok, report.text()
    if spec.stem in ANALYTIC:
        assert report.method == "complex" and not report.notes
        for row in param_rows(report):
            assert row.method == "complex"
            assert row.error <= 1e-12, report.text()
            # entries 10⁴× smaller than their neighbours may be compared absolutely (to
            # 64 ε max|∂L/∂θ|): few, and said so in a note
            assert row.below_resolution <= math.prod(row.shape) // 100
    else:  # relu / l1 penalty: a note, and central differences for the whole check
        assert report.method == "central"
        assert report.notes[0].startswith("complex step does not apply: ")
        assert "not analytic" in report.notes[0]
        assert {row.method for row in param_rows(report)} == {"central"}


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method", ["directional", "taylor"])
def test_examples_pass_directional_and_taylor(spec, method):
    report = check_spec(spec, method=method, directions=4)
    assert report.ok, report.text()
    rows = param_rows(report)
    if method == "taylor":
        assert all(1.8 <= row.error <= 2.2 for row in rows), report.text()


@pytest.mark.parametrize("hidden, output, loss", [
    ("sigmoid", "softmax", "cross_entropy"),
    ("softplus", "sigmoid", "binary_cross_entropy"),
    ("gelu", "identity", "expr:log(cosh(yhat - y))"),
    ("mish", "tanh", "mse"),
])
def test_complex_step_through_the_derivation(hidden, output, loss):
    """σ, softplus and erf have no complex numpy form in the derivation's evaluator; the
    check's complex-safe forms keep the complex step exact."""
    kind = {"loss": None, "loss_expr": loss[5:]} if loss.startswith("expr:") else {"loss": loss}
    spec = Spec("net", 3, (Layer(5, hidden), Layer(4, hidden), Layer(3, output)), l2=1e-3,
                **kind)
    report = check_spec(spec, method="complex", samples=16)
    assert report.ok and report.method == "complex", report.text()
    assert max(row.error for row in report.rows) <= 1e-12, report.text()


# ------------------------------------------------------------------------------------------
# Wrong gradients are caught, and named
# ------------------------------------------------------------------------------------------


def test_one_entry_off_by_one_percent_is_named(capsys, modules):
    code, out, err = run(capsys, modules["entry"])
    assert (code, err) == (1, "")
    assert table_row(out, "W1") == ["W1", "(64, 32)", table_row(out, "W1")[2], "[2, 3]",
                                    "central", "FAIL"]
    assert 0.009 < float(table_row(out, "W1")[2]) < 0.011  # 1.01 a vs a: 1 − 1/1.01
    for name in PARAMS - {"W1"}:
        assert table_row(out, name)[-1] == "pass"
    detail = [line.strip() for line in out.splitlines() if line.strip().startswith("W1[2, 3]:")]
    assert len(detail) == 1 and "loss_and_grad" in detail[0] and "finite differences" in detail[0]
    assert out.splitlines()[-1] == "FAILED: W1 (1 of 5 checks)"


def test_correct_module_passes_every_method(capsys, modules):
    for method in ("central", "directional", "taylor"):
        code, out, err = run(capsys, modules["correct"], "--method", method)
        assert (code, err) == (0, ""), out
        assert {table_row(out, name)[-2] for name in PARAMS} == {method}


@pytest.mark.parametrize("method", ["directional", "taylor"])
@pytest.mark.parametrize("tag", ["all", "entry"])
def test_directional_and_taylor_catch_a_wrong_parameter(capsys, modules, method, tag):
    """All of dW1 off by 1% moves ⟨∇L, v⟩ by 1% along every direction.  One entry off by 1%
    moves it by ~1%·|v₂₃| ~ 1%/√2048 ≈ 2·10⁻⁴ relative for a typical entry — far above the
    tolerance here, but a direction cannot resolve an entry much smaller than its
    neighbours; per-entry central differences are the test for single entries."""
    code, out, err = run(capsys, modules[tag], "--method", method)
    assert (code, err) == (1, "")
    assert table_row(out, "W1")[-1] == "FAIL"
    for name in PARAMS - {"W1"}:
        assert table_row(out, name)[-1] == "pass"
    assert out.splitlines()[-1] == "FAILED: W1 (1 of 5 checks)"
    if method == "taylor":  # the remainder keeps a first-order term
        assert float(table_row(out, "W1")[2].split()[1]) < 1.3
        assert "a correct gradient gives 2" in out
    elif tag == "all":
        assert 0.009 < float(table_row(out, "W1")[2]) < 0.011
    else:
        assert 1e-5 < float(table_row(out, "W1")[2]) < 1e-2


def test_a_classic_bug_in_a_handwritten_module(capsys, tmp_path):
    """δ₁ without the tanh derivative: W1 and b1 fail, W2 and b2 pass."""
    code, out, _ = run(capsys, handwritten(tmp_path, "no_tanh_prime", dZ1='dZ2 @ p["W2"].T'))
    assert code == 1
    assert {name: table_row(out, name)[-1] for name in PARAMS} == {
        "W1": "FAIL", "b1": "FAIL", "W2": "pass", "b2": "pass"}


def test_missing_and_misshapen_gradients_fail_their_rows(capsys, tmp_path):
    path = handwritten(tmp_path, "misshapen", extra='del grads["b2"]; grads["W2"] = grads["W2"].T')
    code, out, _ = run(capsys, path)
    assert code == 1
    assert table_row(out, "b2")[-1] == "FAIL" and table_row(out, "W2")[-1] == "FAIL"
    assert "b2: loss_and_grad returned no gradient for it" in out
    assert "W2: loss_and_grad's gradient has the shape (2, 4), the parameter (4, 2)" in out
    assert table_row(out, "W1")[-1] == "pass"


def test_loss_and_grad_loss_must_match_loss(capsys, tmp_path):
    path = handwritten(tmp_path, "offset", extra="return loss(p, X, Y) * (1 + 1e-6), grads")
    code, out, _ = run(capsys, path)
    assert code == 1
    assert table_row(out, "loss", "loss()")[-1] == "FAIL"


def test_loss_must_match_the_derivation(monkeypatch):
    real = check._derivation_loss
    monkeypatch.setattr(check, "_derivation_loss", lambda *a: real(*a) * (1 + 1e-8))
    report = check_spec(ROOT / "examples" / "regression.toml", method="directional")
    assert not report.ok
    assert [r.name for r in report.failed] == ["loss"]
    assert report.row("loss", "derivation").detail.startswith(
        "loss: the module's loss ")


# ------------------------------------------------------------------------------------------
# The complex step on modules
# ------------------------------------------------------------------------------------------


def test_complex_step_falls_back_on_a_generated_module(capsys, modules):
    code, out, err = run(capsys, modules["correct"], "--method", "complex")
    assert (code, err) == (0, "")
    # the generated module refuses complex parameters (or drops the imaginary part)
    note = next(line for line in out.splitlines() if line.startswith("note: "))
    assert note.startswith("note: complex step does not apply: the module's loss ")
    assert note.endswith("; central differences are used for the whole check")
    assert table_row(out, "W1")[-2] == "central"


def test_complex_step_through_a_module_that_allows_it(tmp_path):
    report = check_module(handwritten(tmp_path, "complex_ok"), method="complex")
    assert report.ok and report.method == "complex", report.text()
    assert max(row.error for row in param_rows(report)) <= 1e-12
    bug = check_module(handwritten(tmp_path, "complex_bug", dZ1='dZ2 @ p["W2"].T'),
                       method="complex")
    assert {r.name for r in bug.failed} == {"W1", "b1"}


# ------------------------------------------------------------------------------------------
# The report and the API
# ------------------------------------------------------------------------------------------


def test_report_table_and_determinism():
    a = check_spec(ROOT / "examples" / "regression.toml", seed=3)
    b = check_spec(load_spec(ROOT / "examples" / "regression.toml"), seed=3)
    assert a.text() == b.text()
    lines = a.text().splitlines()
    assert lines[0] == (f"symgrad check {ROOT / 'examples' / 'regression.toml'}: central "
                        "differences, tol 1e-06, seed 3, N = 64, float64")
    assert lines[1].split() == ["parameter", "shape", "max", "rel.", "error", "worst", "entry",
                                "method", "result"]
    assert [r.name for r in a.rows] == ["W1", "b1", "W2", "b2", "loss", "loss"]
    assert a.row("W1").shape == (8, 16) and a.row("b2").shape == (1,)
    assert a.ok and a.seconds > 0
    assert check_spec(ROOT / "examples" / "regression.toml", seed=4).text() != a.text()


@pytest.mark.parametrize("method, error, worst", [
    ("central", "max rel. error", "worst entry"),
    ("complex", "max rel. error", "worst entry"),
    ("directional", "max rel. error", "worst direction"),
    ("taylor", "min order / rel. error", "worst direction"),
])
def test_column_titles_say_what_the_column_holds(method, error, worst):
    """taylor rows hold an order, loss rows a relative error: a column holding both says
    so in its title and in every cell."""
    report = check_spec(ROOT / "examples" / "regression.toml", method=method, directions=2)
    lines = report.text().splitlines()
    assert [c.strip() for c in lines[1].split("  ") if c.strip()] == [
        "parameter", "shape", error, worst, "method", "result"]
    for name in ("W1", "b1", "W2", "b2"):
        cell = table_row(report.text(), name)[2]
        if method == "taylor":
            assert cell.startswith("order ") and 1.8 <= float(cell.split()[1]) <= 2.2
        else:
            assert float(cell) <= DEFAULT_TOL[method]
    loss = table_row(report.text(), "loss", "loss()")[2]
    assert loss == ("rel. 0.0e+00" if method == "taylor" else "0.0e+00")


def test_public_surface():
    assert set(check.__all__) == {"DEFAULT_TOL", "LOSS_TOL", "METHODS", "CheckReport", "Row",
                                  "check_module", "check_spec", "cmd_check"}
    assert check.METHODS == ("central", "complex", "directional", "taylor")


def test_tol_is_respected(capsys, modules):
    code, out, _ = run(capsys, modules["entry"], "--tol", "0.02")
    assert code == 0 and table_row(out, "W1")[-1] == "pass"
    code, out, _ = run(capsys, modules["correct"], "--method", "taylor", "--tol", "2.5")
    assert code == 1  # no gradient gives order 2.5


def test_check_module_accepts_an_imported_module(modules):
    from symgrad.codegen import load_module

    report = check_module(load_module(modules["correct"]), method="directional", directions=2)
    assert report.ok and report.target.endswith(".py")


# ------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, nothing on stdout
# ------------------------------------------------------------------------------------------


MODULE_WITHOUT_GRAD = "INPUTS = 2\nOUTPUTS = 1\nPARAM_SHAPES = {'W1': (2, 1)}\n\ndef loss(p, X, Y):\n    return 0.0\n"


@pytest.mark.parametrize("name, content, message", [
    ("missing.py", None, "no such file"),
    ("missing.toml", None, "no such file"),
    ("spec.txt", "x", "not a spec (.toml) or a module (.py)"),
    ("empty.py", "", "not a symgrad module: no INPUTS, OUTPUTS, PARAM_SHAPES, loss, loss_and_grad"),
    ("nograd.py", MODULE_WITHOUT_GRAD, "not a symgrad module: no loss_and_grad"),
    ("syntax.py", "def f(:\n", "cannot import: SyntaxError: invalid syntax (line 1)"),
    ("boom.py", "raise RuntimeError('boom')\n", "cannot import: RuntimeError: boom"),
    ("exits.py", "import sys\nsys.exit(3)\n", "cannot import: SystemExit: 3"),
    ("shapes.py", MODULE_WITHOUT_GRAD.replace("{'W1': (2, 1)}", "{'W1': (2, -1)}")
     + "def loss_and_grad(p, X, Y):\n    return 0.0, {}\n",
     "not a symgrad module: PARAM_SHAPES must map parameter names to shapes "
     "(tuples of positive integers)"),
    ("inputs.py", MODULE_WITHOUT_GRAD.replace("INPUTS = 2", "INPUTS = 'two'")
     + "def loss_and_grad(p, X, Y):\n    return 0.0, {}\n",
     "not a symgrad module: INPUTS must be a positive integer, not 'two'"),
    ("raises.py", MODULE_WITHOUT_GRAD + "def loss_and_grad(p, X, Y):\n    return 1 / 0\n",
     "loss_and_grad raised ZeroDivisionError: division by zero"),
    ("returns.py", MODULE_WITHOUT_GRAD + "def loss_and_grad(p, X, Y):\n    return 0.0\n",
     "loss_and_grad returned 0.0, not (loss, gradients)"),
    ("notanumber.py", MODULE_WITHOUT_GRAD.replace("return 0.0", "return 'zero'")
     + "def loss_and_grad(p, X, Y):\n    return 0.0, {}\n",
     "loss returned 'zero', not a number"),
    ("bad.toml", "[network\n", "invalid TOML: "),
])
def test_bad_targets(capsys, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, path)
    assert (code, out) == (2, "")
    assert err.endswith("\n") and err.count("\n") == 1
    expected = f"symgrad: error: {path}: {message}"
    if message.endswith(": "):  # the TOML parser's own words follow
        assert err.startswith(expected)
    else:
        assert err == expected + "\n"


def test_a_directory_is_bad_input(capsys, tmp_path):
    code, out, err = run(capsys, tmp_path)
    assert (code, out) == (2, "")
    assert err == f"symgrad: error: {tmp_path}: is a directory; give a spec (.toml) or a module (.py)\n"


@pytest.mark.parametrize("args, message", [
    (["--tol", "-1"], "check: --tol: must be a positive number, not -1.0"),
    (["--tol", "nan"], "check: --tol: must be a positive number, not nan"),
    (["--directions", "0"], "check: --directions: must be between 1 and 10000, not 0"),
    (["--seed", "-2"], "check: --seed: must be a non-negative integer, not -2"),
])
def test_bad_options(capsys, args, message):
    code, out, err = run(capsys, ROOT / "examples" / "regression.toml", *args)
    assert (code, out, err) == (2, "", f"symgrad: error: {message}\n")


def test_bad_method_is_a_usage_error(capsys):
    code, out, err = run(capsys, ROOT / "examples" / "regression.toml", "--method", "forward")
    assert (code, out) == (2, "")
    assert err.startswith("symgrad: error: check: --method: invalid choice 'forward'")
    assert err.count("\n") == 1


def test_api_errors_are_symgrad_errors(tmp_path):
    with pytest.raises(SymgradError, match="not a module"):
        check_module(ROOT / "examples" / "digits.toml")
    with pytest.raises(SymgradError, match="not a spec"):
        check_spec(handwritten(tmp_path, "m"))
    with pytest.raises(SymgradError, match="unknown method 'exact'"):
        check_spec(ROOT / "examples" / "digits.toml", method="exact")


# ------------------------------------------------------------------------------------------
# Performance
# ------------------------------------------------------------------------------------------

MNIST_MLP = """\
[network]
name = "mnist_mlp"
inputs = 784

[[layer]]
units = 256
activation = "relu"

[[layer]]
units = 128
activation = "relu"

[[layer]]
units = 10
activation = "softmax"

[loss]
kind = "cross_entropy"
"""


def test_directional_on_a_784_256_128_10_network(tmp_path):
    """The whole command in a fresh interpreter: import, derive, generate, 8 directions per
    parameter (N = 64 samples).  Its time is measured by benchmarks/run.py (no timing
    assertion here: tests assert properties, benchmarks measure)."""
    spec = tmp_path / "mnist_mlp.toml"
    spec.write_text(MNIST_MLP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "symgrad", "check", str(spec), "--method",
                           "directional"], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert table_row(proc.stdout, "W1")[:2] == ["W1", "(784, 256)"]
    print(f"directional check of 784-256-128-10, N = 64: {elapsed:.2f} s")


def test_a_large_spec_is_sampled_and_evaluated_in_its_own_process(monkeypatch):
    """120-60-2: all 7,382 entries would cost over FULL_WORK; W1 and W2 are sampled (64
    entries, the largest claimed among them, plus 8 directions), b1 and b2 checked whole;
    the module runs in the evaluating process (one BLAS thread, the time limit)."""
    started = []
    real = check._Isolated.__init__

    def spy(self, *args, **kwargs):
        started.append(args[0].name)
        real(self, *args, **kwargs)

    monkeypatch.setattr(check._Isolated, "__init__", spy)
    spec = Spec("wide", 120, (Layer(60, "tanh"), Layer(2, "identity")), loss="mse")
    report = check_spec(spec)
    assert report.ok, report.text()
    assert started == ["wide.py"]
    assert [(r.name, r.method_text) for r in report.rows] == [
        ("W1", "central, 64 of 7,200 entries"), ("W1", "directional, 8 directions"),
        ("b1", "central"),
        ("W2", "central, 64 of 120 entries"), ("W2", "directional, 8 directions"),
        ("b2", "central"), ("loss", "loss()"), ("loss", "derivation")]
    small = check_spec(ROOT / "examples" / "regression.toml")
    assert started == ["wide.py"] and all(not r.coverage for r in small.rows)


def test_finite_difference_helpers():
    """The five-point difference is exact for quartics; the resolution rule compares tiny
    entries absolutely."""
    entry = check._differentiate(lambda t: (1 + t) ** 4, 4.0, 1e-12, 1.0)
    assert entry.ok and entry.resolved and entry.rel < 1e-12
    assert check._agree(1e-15, 3e-15, 1e-6, 1e-12) == (True, False)
    assert check._agree(1e-3, 1.01e-3, 1e-6, 1e-12) == (False, False)
    assert math.isnan(check._rel(np.nan, 1.0))


@pytest.mark.parametrize("value", ["2.2e6", "1e7", "1e300", "86400.5", "0", "-1", "nan", "inf"])
def test_a_time_limit_outside_a_day_is_one_line(capsys, value):
    """poll()'s milliseconds and time's range overflowed past ~25 days (exit 3): refused."""
    for target in (ROOT / "examples" / "regression.toml", ROOT / "generated" / "regression_mlp.py"):
        assert main(["check", str(target), "--time-limit", value]) == 2
        out, err = capsys.readouterr()
        assert (out, err) == ("", "symgrad: error: check: --time-limit: must be a number of "
                              f"seconds in (0, 86400], not {float(value)!r}\n")


def test_the_time_limit_applies_to_a_spec(capsys):
    """On a SPEC the generated module is evaluated under it, as a MODULE.py is."""
    spec = ROOT / "examples" / "regression.toml"
    assert main(["check", str(spec), "--time-limit", "0.001"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"symgrad: check failed: {spec}: module did not answer within "
                          "the time limit of 0.001 s (during import); it was stopped and no "
                          "gradient was checked\n")
