"""Scalar-expansion proofs for every built-in hidden activation × every loss with
each valid output activation (and softmax before mse), plus L1/L2 penalties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.activations import ACTIVATIONS
from symgrad.cli import main
from symgrad.crosscheck import instances, prove, shorten, spot_check, tiny_sizes
from symgrad.derive import derive
from symgrad.spec import Layer, Spec

HIDDEN = sorted(ACTIVATIONS)  # softmax included: allowed in any layer
OUTPUTS = [
    (loss, out)
    for loss in ("mse", "mae", "huber")
    for out in ("identity", "tanh", "sigmoid", "softmax")
] + [("cross_entropy", "softmax"), ("binary_cross_entropy", "sigmoid")]


def spec_for(hidden: str, loss: str, out: str, **kw) -> Spec:
    return Spec("p", 3, (Layer(4, hidden), Layer(3, out)), loss=loss, **kw)


@pytest.mark.parametrize("loss,out", OUTPUTS, ids=[f"{o}-{l}" for l, o in OUTPUTS])
@pytest.mark.parametrize("hidden", HIDDEN)
def test_proof_for_every_combination(hidden, loss, out):
    report = prove(spec_for(hidden, loss, out), spot=False)
    assert report.ok, report.text()
    whats = [c.what for c in report.claims]
    assert whats[0].startswith("chain rule")
    if loss == "cross_entropy":
        assert any(w.startswith("softmax∘cross-entropy") for w in whats)
    if loss == "binary_cross_entropy":
        assert "sigmoid∘binary_cross_entropy: ∂ℓ(f(z), y)/∂z = ŷ − y" in whats


@pytest.mark.parametrize("l1,l2", [(0.1, 0.0), (0.0, 0.2), (0.1, 0.2)])
def test_proof_with_penalties(l1, l2):
    report = prove(spec_for("tanh", "cross_entropy", "softmax", l1=l1, l2=l2), spot=False)
    assert report.ok, report.text()
    assert "penalties" in report.claims[0].what


def test_custom_activation_and_loss_are_proved():
    spec = Spec("c", 3, (Layer(4, "x * tanh(x)"), Layer(2, "sigmoid")),
                loss=None, loss_expr="log(cosh(yhat - y))")
    report = prove(spec)
    assert report.ok, report.text()


@pytest.mark.parametrize("hidden,loss,out", [
    ("tanh", "cross_entropy", "softmax"),
    ("relu", "binary_cross_entropy", "sigmoid"),
    ("softmax", "mse", "identity"),
    ("elu", "huber", "tanh"),
])
def test_concrete_spot_check(hidden, loss, out):
    """The fully concrete scalar loss differentiated exactly, at a random point."""
    spec = spec_for(hidden, loss, out, l2=0.5)
    sizes = tiny_sizes(spec)
    claim = spot_check(spec, derive(spec.with_sizes(sizes)), sizes)
    assert claim.ok, claim.detail


def test_a_wrong_rule_is_caught(monkeypatch):
    """Break MatMul's rule for ∂L/∂B (a factor 2 too many): the proof must fail."""
    import sympy as sp

    from symgrad import ops

    def wrong(self, g, out):
        return ops.MatMul(g, ops.Transpose(self.b)), ops.MatMul(
            ops.Transpose(self.a), ops.Scale(sp.Integer(2), g))

    monkeypatch.setattr(ops.MatMul, "vjp", wrong)
    import symgrad.crosscheck as cc

    monkeypatch.setattr(cc, "_structure_cache", {})
    report = prove(spec_for("tanh", "mse", "identity"), spot=False)
    assert not report.ok
    assert "differs" in report.claims[0].detail


def test_cli_prove(capsys):
    assert main(["derive", "examples/digits.toml", "--prove"]) == 0
    out = capsys.readouterr().out
    assert "all formulas proved" in out
    assert "[proved] softmax∘cross-entropy" in out


# --------------------------------------------------------------------------
# Depth: the proof at tiny sizes, runs of like layers shortened, a bound on the rest
# --------------------------------------------------------------------------


def _write(tmp_path, widths, acts, loss="mse"):
    text = f'[network]\nname = "deep"\ninputs = {widths[0]}\n'
    for w, a in zip(widths[1:], acts, strict=True):
        text += f'\n[[layer]]\nunits = {w}\nactivation = "{a}"\n'
    path = tmp_path / "deep.toml"
    path.write_text(text + f'\n[loss]\nkind = "{loss}"\n', encoding="utf-8")
    return path


def test_200_layers_derive_and_prove(tmp_path, capsys):
    """The spec's deepest network: the proof is done in a 4-layer network whose formulas
    the other layers are shown to repeat (generate on it takes 6 s: checked by hand)."""
    path = _write(tmp_path, [784] + [3] * 199 + [10], ["tanh"] * 199 + ["softmax"],
                  "cross_entropy")
    assert main(["derive", str(path), "--prove"]) == 0
    captured = capsys.readouterr()
    assert "[proved] layers 1–200 repeat the formulas of a 4-layer network" in captured.out
    assert "all formulas proved" in captured.out
    assert "δ₂₀₀ = ∂L/∂Z₂₀₀ = (Ŷ − Y)/N" in captured.out


def test_shortened_layers_map_to_the_layer_they_repeat():
    spec = Spec("s", 2, tuple(Layer(2, a) for a in
                              ["relu"] * 5 + ["tanh"] * 2 + ["sigmoid"] * 4), loss="mse")
    short, where = shorten(spec)
    assert [l.activation for l in short.layers] == ["relu"] * 3 + ["tanh"] * 2 + ["sigmoid"] * 3
    assert where == [1, 2, 2, 2, 3, 4, 5, 6, 7, 7, 8]
    d, ds = derive(spec), derive(short)
    assert instances(d, ds, where) == ""
    # a wrong correspondence is caught: a relu layer taken for the tanh one, the first
    # layer (whose input is X) for a middle one
    assert instances(d, ds, [1, 2, 4, 2, 3, 4, 5, 6, 7, 7, 8]) == "A3 does not repeat the proved A4"
    assert instances(d, ds, [2, 2, 2, 2, 3, 4, 5, 6, 7, 7, 8]) != ""


def test_a_network_over_the_proof_depth_is_proved_equation_by_equation(tmp_path, capsys):
    """10 alternating layers (nothing to shorten) are over PROOF_LAYERS: the chain rule is
    proved one backward equation at a time (tests/test_layers_prove.py has the details)."""
    acts = ["tanh", "relu"] * 5
    path = _write(tmp_path, [3] * 11, acts)
    assert main(["derive", str(path), "--prove"]) == 0
    out = capsys.readouterr().out
    assert "  [proved] chain rule, equation by equation (abstract f_l, ℓ)  (" in out
    assert "           30 equations (" in out and "  all formulas proved\n" in out


def test_prove_takes_a_path_and_reports_each_step():
    steps = []
    report = prove("examples/regression.toml", progress=steps.append)
    assert report.ok, report.text()
    assert steps[0] == "the chain rule" and steps[-1] == "the concrete formulas at a random point"


@settings(max_examples=8, deadline=None)
@given(acts=st.lists(st.sampled_from(["tanh", "relu", "identity", "sigmoid"]), min_size=1,
                     max_size=12),
       out=st.sampled_from([("softmax", "cross_entropy"), ("identity", "mse"),
                            ("sigmoid", "binary_cross_entropy")]),
       l2=st.sampled_from([0.0, 0.1]))
def test_every_layer_of_a_long_network_repeats_a_proved_one(acts, out, l2):
    """Shortening is sound for any sequence of layers: each equation of the long network
    is the equation of its layer in the short one, indices shifted (nothing unmatched)."""
    spec = Spec("s", 3, (*(Layer(3, a) for a in acts), Layer(3, out[0])), loss=out[1], l2=l2)
    short, where = shorten(spec)
    assert len(where) == len(spec.layers) and len(short.layers) <= len(spec.layers)
    assert all(len(list(run)) <= 3 for _, run in itertools.groupby(
        layer.activation for layer in short.layers))
    assert instances(derive(spec), derive(short), where) == ""


@pytest.mark.parametrize("acts,out,loss,l1", [
    (["tanh", "relu"], "softmax", "cross_entropy", 0.1),
    (["sigmoid"], "identity", "huber", 0.0),
])
def test_the_memoized_derivative_is_sympys(acts, out, loss, l1):
    """crosscheck.derivative (one visit per distinct subexpression) gives what sp.diff
    gives, entry by entry, on the abstract loss the structure proof differentiates."""
    import sympy as sp

    from symgrad import crosscheck as cc

    spec = Spec("m", 2, (*(Layer(2, a) for a in acts), Layer(3, out)), loss=loss, l1=l1)
    sizes = tiny_sizes(spec)
    d = cc.abstract_spec_derivation(spec, sizes)
    env = cc.evaluate(d, cc.explicit_env(d, sizes))
    L = env["L"][0, 0]
    for p in d.graph.params:
        for w in env[p.name]:
            assert sp.expand(cc._opaque(cc.derivative(L, w) - sp.diff(L, w))) == 0, (p.name, w)
