"""``symgrad check``, ``exercise``/``grade`` and ``examples`` on the new layer types (issue 11
§3 "check"): batchnorm, layernorm, dropout, add and concat, in specs and generated modules.

Training mode is what is checked: the dropout masks are held fixed by the seed (the same
masks in the module's loss, its loss_and_grad and the derivation's equations), and the
batch statistics are part of the function differentiated.  A broken VJP (batchnorm without
its variance path, dropout without 1/(1 − p)) fails the check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from symgrad import check
from symgrad.check import check_module, check_spec, training_masks
from symgrad.cli import main
from symgrad.codegen import generate_source
from symgrad.derive import derive
from symgrad.exercise import grade, load_answers, load_sheet, worksheet, write_worksheet
from symgrad.ops import Hadamard, InvStd, Scale, Sub
from symgrad.ops.normalization import Dropout, Standardize
from symgrad.sandbox import load
from symgrad.spec import load_spec

REPO = Path(__file__).resolve().parent.parent

EXAMPLES = ("digits_bn_dropout", "residual")

# every new type (tests/golden/layers/bn_mlp.toml): dense → batchnorm relu → dropout → dense tanh →
# layernorm → add (skip from A1) → concat with X → softmax
_BN_RELU = 'type = "batchnorm"\nactivation = "relu"'
EVERY_TYPE = (Path(__file__).parent / "golden" / "layers" / "bn_mlp.toml").read_text(
    encoding="utf-8").replace(_BN_RELU, _BN_RELU.replace('"relu"', '"{act}"'))
assert "{act}" in EVERY_TYPE

# batchnorm + dropout, analytic throughout: the complex step goes through the batch's σ²
SMALL_BN = """
[network]
name = "small_bn"
inputs = 3

[[layer]]
units = 4

[[layer]]
type = "batchnorm"
activation = "tanh"

[[layer]]
type = "dropout"
p = 0.5

[[layer]]
units = 2
activation = "softmax"

[loss]
kind = "cross_entropy"
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def every(tmp_path):
    return write(tmp_path, "every", EVERY_TYPE.format(act="relu"))


@pytest.fixture
def analytic(tmp_path):
    return write(tmp_path, "analytic", EVERY_TYPE.format(act="tanh"))


# ------------------------------------------------------------------------------------------
# check SPEC: every method, the masks and the note
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["central", "complex", "directional", "taylor"])
def test_every_type_passes_each_method(analytic, method) -> None:
    report = check_spec(analytic, method=method, samples=16)
    assert report.ok, report.text()
    assert report.method == method  # analytic: the complex step is not replaced
    names = {r.name for r in report.rows}
    assert {"gamma2", "beta2", "gamma5", "beta5", "W8"} <= names
    assert not names & {"mean2", "var2"}  # buffers are not parameters
    assert report.row("loss", "derivation").ok  # the module's masks are the derivation's


def test_complex_step_goes_through_batchnorm(analytic) -> None:
    report = check_spec(analytic, method="complex", samples=16)
    assert report.row("gamma2").error < 1e-12
    assert not any("does not apply" in n for n in report.notes)


def test_relu_falls_back_to_central_for_the_complex_step(every) -> None:
    report = check_spec(every, method="complex", samples=16)
    assert report.ok, report.text()
    assert report.method == "central"
    assert ("complex step does not apply: relu (layer 2) is not analytic; central differences "
            "are used for the whole check") in report.notes


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("method", ["central", "taylor"])
def test_examples_pass(name, method) -> None:
    report = check_spec(REPO / "examples" / f"{name}.toml", method=method, samples=16)
    assert report.ok, report.text()


def test_the_note_says_what_is_held_fixed(every, capsys) -> None:
    assert main(["check", str(every), "--method", "directional", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert ("note: training mode: dropout masks held fixed by the seed (M3 drawn from seed 3, "
            "as loss(…, seed=3) draws them); batch statistics μ, σ² differentiated through "
            "(batchnorm 2, layernorm 5 per row)\n") in out
    assert out.rstrip().endswith("checks passed")


def test_no_note_without_masks_or_statistics(tmp_path) -> None:
    spec = write(tmp_path, "skip", EVERY_TYPE.format(act="tanh")
                 .replace('type = "batchnorm"', "units = 5")
                 .replace('type = "dropout"\np = 0.2', "units = 5")
                 .replace('type = "layernorm"', "units = 5"))
    report = check_spec(spec, method="directional", samples=8)
    assert report.ok, report.text()
    assert not any(n.startswith("training mode") for n in report.notes)


def test_masks_are_the_same_for_the_same_seed(every) -> None:
    graph = derive(load_spec(every)).graph
    a, b, c = (training_masks(graph, 50, s) for s in (4, 4, 5))
    assert list(a) == ["M3"] and a["M3"].shape == (50, 5)
    assert np.array_equal(a["M3"], b["M3"]) and not np.array_equal(a["M3"], c["M3"])
    assert set(np.unique(a["M3"])) == {0.0, 1.0}
    assert abs(a["M3"].mean() - 0.8) < 0.1  # kept with probability 1 − p
    # the generated module draws the same ones: loss(seed=4) uses them, seed=5 does not
    d = derive(load_spec(every))
    module = load_module_from(generate_source(d))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    Y = np.eye(3)[rng.integers(0, 3, 50)]
    params = module.init_params(0)
    trainable = {k: params[k] for k in module.PARAM_SHAPES}
    ours = check._derivation_loss(d, trainable, X, Y, 4)
    assert module.loss(params, X, Y, seed=4) == pytest.approx(ours, rel=1e-12)
    assert module.loss(params, X, Y, seed=5) != pytest.approx(ours, rel=1e-6)


def test_other_masks_in_the_derivation_fail_its_loss_row(every, monkeypatch) -> None:
    real = check.training_masks
    monkeypatch.setattr(check, "training_masks", lambda g, n, seed=0: real(g, n, seed + 1))
    report = check_spec(every, method="directional", samples=16)
    assert not report.ok
    assert not report.row("loss", "derivation").ok
    assert report.row("gamma2").ok  # the module itself is consistent


def load_module_from(source: str):
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="symgrad-layers-check-"))
    path = folder / "module.py"
    path.write_text(source, encoding="utf-8")
    return load(path)


# ------------------------------------------------------------------------------------------
# A broken VJP fails (exit 1)
# ------------------------------------------------------------------------------------------


def _no_variance_path(self, g, out):
    m = self.count
    inner = Sub(Scale(m, g), self.spread_sum(g))  # the −X̂ ⊙ 𝟏𝟏ᵀ(G ⊙ X̂) term dropped
    return (Scale(1 / m, Hadamard(InvStd(self.var, self.eps, self.shape), inner)),)


def _no_inverse_keep(self, g, out):
    return (Dropout(g, self.mask, 0.0),)  # G ⊙ M: the 1/(1 − p) dropped


@pytest.mark.parametrize("op, broken, wrong", [
    (Standardize, _no_variance_path, "gamma2"),
    (Dropout, _no_inverse_keep, "gamma2"),
])
@pytest.mark.parametrize("method", ["central", "taylor"])
def test_a_broken_vjp_fails(every, monkeypatch, capsys, op, broken, wrong, method) -> None:
    monkeypatch.setattr(op, "vjp", broken)
    assert main(["check", str(every), "--method", method]) == 1
    out = capsys.readouterr().out
    assert "FAILED: " in out and wrong in out.splitlines()[-1]
    report = check_spec(every, method=method, samples=16)
    assert not report.row(wrong).ok
    assert report.row("loss", "derivation").ok  # the forward pass is unchanged
    assert report.row("W8").ok  # above the broken op, the gradient is right


# ------------------------------------------------------------------------------------------
# check MODULE.py: default keywords, buffers passed along and never perturbed
# ------------------------------------------------------------------------------------------


def test_a_generated_module_passes_in_its_sandbox(every, tmp_path, capsys) -> None:
    path = tmp_path / "bn_mlp.py"
    path.write_text(generate_source(derive(load_spec(every))), encoding="utf-8")
    assert main(["check", str(path), "--method", "directional"]) == 0
    out = capsys.readouterr().out
    assert ("note: training mode: loss and loss_and_grad are called with their defaults "
            "(training=True, seed=0), so any dropout masks are held fixed by that seed and "
            "batch statistics are differentiated through; the buffers mean2, var2 are passed "
            "along, not perturbed\n") in out
    assert "mean2" not in out.split("\n", 2)[2].replace("mean2, var2", "")


BUFFERED = '''
from pathlib import Path

import numpy as np

INPUTS, OUTPUTS = 2, 1
PARAM_SHAPES = {"W1": (2, 1)}
BUFFER_SHAPES = {"s1": (1,)}


def init_params(seed=0, dtype=np.float64):
    return {"W1": np.full((2, 1), 0.5), "s1": np.array([3.0])}


def _residual(params, X, Y):
    if params["s1"].tolist() != [3.0]:
        raise ValueError("the buffer s1 was perturbed")
    return X @ params["W1"] * params["s1"] - Y


def loss(params, X, Y, *, training=True, seed=0):
    r = _residual(params, X, Y)
    return float(0.5 * np.sum(r * r) / len(X))


def loss_and_grad(params, X, Y, *, seed=0):
    r = _residual(params, X, Y)
    return loss(params, X, Y), {"W1": X.T @ (r * params["s1"]) / len(X)}
'''


@pytest.mark.parametrize("method", ["central", "directional"])
def test_buffers_reach_the_loss_unperturbed(tmp_path, method) -> None:
    path = tmp_path / "buffered.py"
    path.write_text(BUFFERED, encoding="utf-8")
    report = check_module(load(path), method=method)
    assert report.ok, report.text()
    assert [r.name for r in report.rows] == ["W1", "loss"]


def test_a_buffer_that_is_also_a_parameter_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "both.py"
    path.write_text(BUFFERED.replace('{"s1": (1,)}', '{"W1": (2, 1)}'), encoding="utf-8")
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"symgrad: error: {path}: not a symgrad module: W1 is in both PARAM_SHAPES and "
        "BUFFER_SHAPES; a buffer is not a parameter\n")


# ------------------------------------------------------------------------------------------
# exercise / grade / examples
# ------------------------------------------------------------------------------------------


def test_an_exercise_asks_for_gamma_and_grades_it(tmp_path, capsys) -> None:
    spec = write(tmp_path, "small_bn", SMALL_BN)
    ws = worksheet(spec, count=14)  # all: the reverse sweep's order
    wrts = [q.wrt for q in ws.questions]
    assert wrts == ["Z4", "W4", "b4", "A3", "Z3", "A2", "Z2", "gamma2", "beta2", "Xhat2", "A1",
                    "Z1", "W1", "b1"]
    paths = write_worksheet(ws, tmp_path / "sheet.md")
    key = paths["key"].read_text(encoding="utf-8")
    assert "numpy: `sum(dZ2 * Xhat2, axis=0)`" in key  # ∂L/∂γ₂
    assert "numpy: `dZ3 * M3 / 0.5`" in key  # ∂L/∂A₂ through the dropout
    sheet = load_sheet(paths["toml"])
    assert sheet.spec.layers == ws.spec.layers and sheet.questions == ws.questions
    answers = tmp_path / "answers.txt"
    answers.write_text("q8: sum(dZ2 * Xhat2, axis=0)\nq9: sum(dZ2 * Xhat2, axis=0)\n",
                       encoding="utf-8")
    result = grade(sheet, load_answers(answers, sheet))
    labels = {r.question.wrt: r.label for r in result.results}
    assert labels["gamma2"] == "right"
    assert labels["beta2"] == "WRONG (other-gradient)"
    assert main(["grade", str(paths["toml"]), str(answers)]) == 1


@pytest.mark.slow
def test_an_exercise_of_every_type_writes_only_checked_keys(every, tmp_path) -> None:
    ws = worksheet(every, count=4, seed=1)
    assert len(ws.questions) == 4
    assert main(["exercise", str(every), "-o", str(tmp_path / "s.md"), "--seed", "1"]) == 0


def test_examples_lists_the_new_specs(tmp_path, capsys) -> None:
    assert main(["examples", str(tmp_path / "ex")]) == 0
    err = capsys.readouterr().err
    for name in EXAMPLES:
        assert f"  {tmp_path / 'ex' / name}.toml\n" in err
