"""`derive --prove` beyond dense chains: each new op's rule proved as its own claim, the
chain rule over a whole DAG, and wrong rules caught (a proof that cannot fail proves
nothing). Everything here runs at the proof's tiny sizes: a few seconds in all."""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

import symgrad.crosscheck as cc
from symgrad import ops
from symgrad.cli import main
from symgrad.crosscheck import prove, prove_op, prove_structure, shorten, tiny_batch, tiny_sizes
from symgrad.derive import derive
from symgrad.spec import Layer, Spec


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    """No structure proof is reused across tests (a monkeypatched rule must be seen)."""
    monkeypatch.setattr(cc, "_structure_cache", {})
    monkeypatch.setattr(cc, "_local_cache", {})


def bn_spec() -> Spec:
    """dense → batchnorm(relu) → dropout → dense softmax: the digits example, small."""
    return Spec("bn", 2, (Layer(2), Layer(type="batchnorm", activation="relu"),
                          Layer(type="dropout", p=0.2), Layer(3, "softmax")),
                loss="cross_entropy")


def dag_spec() -> Spec:
    """tanh → layernorm → dense, summed with the skip A1, joined with X, softmax."""
    return Spec("dag", 2, (Layer(2, "tanh"), Layer(type="layernorm"), Layer(2),
                           Layer(type="add", inputs=("A3", "A1")),
                           Layer(type="concat", inputs=("A4", "X")), Layer(3, "softmax")),
                loss="cross_entropy")


def claim(report, prefix: str):
    (found,) = [c for c in report.claims if c.what.startswith(prefix)]
    return found


# --------------------------------------------------------------------------
# The correct rules are proved, with the claims named
# --------------------------------------------------------------------------


def test_batchnorm_and_dropout_are_proved_claim_by_claim():
    report = prove(bn_spec())
    assert report.ok, report.text()
    whats = [c.what for c in report.claims]
    assert whats[0] == "chain rule over the whole graph (abstract f_l, ℓ)"
    assert report.claims[0].detail == ("19 entries of ∂L/∂(W₁, b₁, γ₂, β₂, W₄, b₄) at N=3, "
                                       "widths 2 → 2 → 2 → 2 → 3; masks M₃ free symbols")
    bn = claim(report, "batchnorm (layer 2): ∂L/∂A₁ = ")
    assert "σ₂² + ε" in bn.what and "X̂₂ ⊙ 𝟏𝟏ᵀ(∂L/∂X̂₂ ⊙ X̂₂)" in bn.what
    assert bn.detail == "6 entries at 3×2; a column of 3 couples through μ and σ²"
    drop = claim(report, "dropout (layer 3): ")
    assert drop.what == "dropout (layer 3): ∂L/∂A₂ = δ₃ ⊙ M₃/(1 − 0.2)"
    assert drop.detail == "4 entries at 2×2; mask entries free symbols"
    assert whats[-1] == "concrete formulas at a random point vs the concrete loss's differences"


def test_a_dag_is_proved_with_its_fan_outs():
    report = prove(dag_spec(), spot=False)
    assert report.ok, report.text()
    assert report.claims[0].what == ("chain rule over the whole graph (abstract f_l, ℓ; "
                                     "fan-outs summed at X, A₁)")
    ln = claim(report, "layernorm (layer 2): ∂L/∂A₁ = ")
    assert ln.detail == "6 entries at 2×3; a row of 3 features couples through μ and σ²"
    assert claim(report, "add (layer 4): ").what == "add (layer 4): ∂L/∂A₃ = δ₄, ∂L/∂A₁ = δ₄"
    assert claim(report, "concat (layer 5): ").what == (
        "concat (layer 5): ∂L/∂A₄ = δ₅[:, 0:n₃], ∂L/∂X = δ₅[:, n₃:n₀ + n₃]")


def test_an_add_of_one_value_twice_sums_both_paths():
    spec = Spec("twice", 2, (Layer(2, "tanh"), Layer(type="add", inputs=("A1", "A1")),
                             Layer(2)), loss="mse")
    report = prove(spec, spot=False)
    assert report.ok, report.text()
    assert claim(report, "add (layer 2): ").what == "add (layer 2): ∂L/∂A₁ = δ₂ + δ₂"


def test_cli_prove_of_the_residual_example(capsys):
    assert main(["derive", "examples/residual.toml", "--prove"]) == 0
    out = capsys.readouterr().out
    assert "  [proved] chain rule over the whole graph (abstract f_l, ℓ; fan-outs summed at A₁)" \
        in out
    assert "  [proved] layernorm (layer 2): ∂L/∂A₁ = " in out
    assert "  [proved] add (layer 4): ∂L/∂A₁ = δ₄, ∂L/∂A₃ = δ₄" in out
    assert "  all formulas proved\n" in out


# --------------------------------------------------------------------------
# Wrong rules are caught
# --------------------------------------------------------------------------


def _standardize_without(path: str):
    """Standardize's rule with its mean or variance path left out."""
    def vjp(self, g, out):
        xhat, m = out, self.count
        inner = ops.Scale(m, g)
        if path != "mean":
            inner = ops.Sub(inner, self.spread_sum(g))
        if path != "variance":
            inner = ops.Sub(inner, ops.Hadamard(xhat, self.spread_sum(ops.hadamard(g, xhat))))
        return (ops.Scale(1 / m, ops.Hadamard(ops.InvStd(self.var, self.eps, self.shape),
                                               inner)),)
    return vjp


@pytest.mark.parametrize("path", ["mean", "variance"])
def test_batchnorm_without_a_path_fails(monkeypatch, path):
    monkeypatch.setattr(ops.Standardize, "vjp", _standardize_without(path))
    report = prove(bn_spec())
    assert not report.ok
    bn = claim(report, "batchnorm (layer 2): ")
    assert not bn.ok and bn.detail.startswith("∂L/∂A₁[0,0] differs: ")
    assert "FAILED] batchnorm (layer 2)" in report.text()
    # the independent numeric check sees it too (N = 3: at N = 2 the variance path of a
    # column of two vanishes)
    assert not report.claims[-1].ok


@pytest.mark.parametrize("path", ["mean", "variance"])
def test_layernorm_without_a_path_fails(monkeypatch, path):
    monkeypatch.setattr(ops.Standardize, "vjp", _standardize_without(path))
    d = derive(dag_spec())
    ln = prove_op(d, 2)
    assert not ln.ok and "differs" in ln.detail


def test_layernorm_with_the_batch_axis_fails(monkeypatch):
    """Columns for rows: layernorm's sums taken down the batch."""
    def spread_sum(self, v):
        return ops.Broadcast(ops.ColSum(v), self.shape)
    monkeypatch.setattr(ops.Standardize, "spread_sum", spread_sum)
    ln = prove_op(derive(dag_spec()), 2)
    assert not ln.ok and "differs" in ln.detail


def test_dropout_without_its_factor_fails(monkeypatch):
    monkeypatch.setattr(ops.Dropout, "vjp",
                        lambda self, g, out: (ops.Hadamard(g, self.mask),))
    drop = prove_op(derive(bn_spec()), 3)
    assert drop.what == "dropout (layer 3): ∂L/∂A₂ = δ₃ ⊙ M₃"
    assert not drop.ok and drop.detail.startswith("∂L/∂A₂[0,0] differs: ")
    # the chain rule over the network sees it too (the mask is concrete there)
    small = Spec("d", 2, (Layer(2, "tanh"), Layer(type="dropout", p=0.2), Layer(2)), loss="mse")
    structure = prove_structure(small)
    assert not structure.ok and structure.detail.startswith("∂L/∂W1[0,0] differs: ")


def test_concat_with_swapped_slices_fails(monkeypatch):
    def vjp(self, g, out):
        return tuple(ops.ColSlice(g, a, b) for a, b in reversed(self.bounds()))
    monkeypatch.setattr(ops.Concat, "vjp", vjp)
    cat = prove_op(derive(dag_spec()), 5)
    assert cat.what == "concat (layer 5): ∂L/∂A₄ = δ₅[:, n₃:n₀ + n₃], ∂L/∂X = δ₅[:, 0:n₃]"
    assert not cat.ok and "differs" in cat.detail
    small = Spec("c", 2, (Layer(2, "tanh"), Layer(type="concat", inputs=("A1", "X")), Layer(2)),
                 loss="mse")
    structure = prove_structure(small)
    assert not structure.ok and "differs" in structure.detail


def test_a_residual_without_the_skip_fails(monkeypatch):
    monkeypatch.setattr(ops.Add, "vjp",
                        lambda self, g, out: (g, *(None for _ in self.terms[1:])))
    spec = Spec("res", 2, (Layer(2, "tanh"), Layer(2), Layer(type="add", inputs=("A2", "A1")),
                           Layer(2)), loss="mse")
    structure = prove_structure(spec)
    assert not structure.ok and "differs" in structure.detail
    add = prove_op(derive(spec), 3)
    assert add.what == "add (layer 3): ∂L/∂A₂ = δ₃, ∂L/∂A₁ = 0"
    assert not add.ok and add.detail.startswith("∂L/∂A₁[0,0] differs: ")


def test_the_unbiased_variance_in_the_graph_fails():
    """The rule assumes the biased σ² = (1/N) 𝟏ᵀ(A − 𝟏μ)²; a graph with 1/(N − 1) is caught."""
    d = derive(bn_spec())
    var = d.graph.producer("var2")
    unbiased = dataclasses.replace(var.rhs, c=1 / (ops.N - 1))
    graph = dataclasses.replace(d.graph, assignments=tuple(
        dataclasses.replace(a, rhs=unbiased) if a is var else a for a in d.graph.assignments))
    bn = prove_op(dataclasses.replace(d, graph=graph), 2)
    assert not bn.ok and bn.detail == "the graph's σ₂² is not the biased variance"


# --------------------------------------------------------------------------
# Sizes and shortening
# --------------------------------------------------------------------------


def test_sizes_meet_at_an_add_and_batchnorm_gets_a_column_of_three():
    plain = Spec("w", 3, (Layer(3, "tanh"), Layer(type="add", inputs=("A1", "X")),
                          Layer(2, "softmax")), loss="cross_entropy")
    assert tiny_sizes(plain) == (2, 2, 2, 3)
    # the output softmax's row of 3 is A2 + A1: both widened to 3
    wide = Spec("w", 3, (Layer(3, "tanh"), Layer(3),
                         Layer(type="add", inputs=("A2", "A1"), activation="softmax")),
                loss="cross_entropy")
    assert tiny_sizes(wide) == (2, 3, 3, 3)
    assert prove(wide, spot=False).ok
    assert tiny_batch(bn_spec()) == 3 and tiny_batch(dag_spec()) == 2


def test_only_dense_chains_are_shortened():
    """Five like-looking identity layers (dense, batchnorm, dropout, …) are not a run."""
    mixed = Spec("m", 2, (Layer(2), Layer(type="batchnorm"), Layer(type="dropout"), Layer(2),
                          Layer(type="dropout"), Layer(2)), loss="mse")
    assert shorten(mixed) == (mixed, [1, 2, 3, 4, 5, 6])
    skip = Spec("s", 2, (*(Layer(2, "tanh") for _ in range(5)),
                         Layer(type="add", inputs=("A5", "A1"))), loss="mse")
    assert shorten(skip) == (skip, [1, 2, 3, 4, 5, 6])
    chain = Spec("c", 2, tuple(Layer(2, "tanh") for _ in range(6)), loss="mse")
    short, where = shorten(chain)
    assert len(short.layers) == 3 and where == [1, 2, 2, 2, 2, 3]


def test_the_abstract_standardization_keeps_the_coupling():
    """In the structure proof X̂'s entry (i, j) depends on the whole column j (batchnorm):
    a derivation that treated X̂ as elementwise would be caught there."""
    spec = bn_spec()
    sizes = tiny_sizes(spec)
    d = cc.abstract_spec_derivation(spec, sizes)
    env = cc.evaluate(d, cc.explicit_env(d, sizes, tiny_batch(spec)))
    h = env["Xhat2"][0, 1]
    assert h.args[3:] == tuple(env["A1"][:, 1])
    assert sp.Symbol("x_00", real=True) in h.free_symbols


# --------------------------------------------------------------------------
# Deep DAGs (over PROOF_LAYERS): the chain rule proved equation by equation
# --------------------------------------------------------------------------


def deep_spec(blocks: int = 6) -> Spec:
    """dense tanh, then ``blocks`` residual blocks (dense → batchnorm relu → add of the
    block's input), then dense 2: 20 layers at 6 blocks, nothing to shorten."""
    layers = [Layer(3, "tanh")]
    for _ in range(blocks):
        skip = f"A{len(layers)}"
        layers += [Layer(3), Layer(type="batchnorm", activation="relu")]
        layers.append(Layer(type="add", inputs=(f"A{len(layers)}", skip)))
    return Spec("deep", 3, (*layers, Layer(2)), loss="mse")


def _write(tmp_path, spec_text: str):
    path = tmp_path / "net.toml"
    path.write_text(spec_text)
    return path


DEEP_TOML = "\n".join(
    ['[network]\nname = "deep"\ninputs = 3\n[[layer]]\nunits = 3\nactivation = "tanh"']
    + [f'[[layer]]\nunits = 3\n[[layer]]\ntype = "batchnorm"\nactivation = "relu"\n'
       f'[[layer]]\ntype = "add"\ninputs = ["A{3 * b + 3}", "A{3 * b + 1}"]' for b in range(6)]
    + ['[[layer]]\nunits = 2\n[loss]\nkind = "mse"\n'])


def test_a_20_layer_dag_is_proved_equation_by_equation(tmp_path, capsys):
    """F7: 20 layers of dense, batchnorm and add (over PROOF_LAYERS = 8, not a chain) are
    proved in seconds: every per-op claim, the chain rule one backward equation at a time,
    the spot check along random directions; exit 0."""
    path = _write(tmp_path, DEEP_TOML)
    assert main(["derive", str(path), "--prove"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deep: 3 → 3 tanh → 3 → batchnorm relu → add(A₃, A₁) → 3 → ")
    proof = out[out.index("Proof by scalar expansion (deep)"):].splitlines()
    assert proof[1].startswith(
        "  [proved] chain rule over the whole graph, equation by equation (abstract f_l, ℓ; "
        "fan-outs summed at A₁, A₄, A₇, A₁₀, A₁₃, A₁₆)  (")
    assert proof[2] == ("           48 equations (192 entries) at N=3, widths "
                        + " → ".join(["2"] * 21)
                        + ", each the sum of its readers' vector-Jacobian products")
    ops_proved = [line for line in proof if line.startswith(("  [proved] batchnorm (layer ",
                                                             "  [proved] add (layer "))]
    assert len(ops_proved) == 12
    assert "  [proved] add (layer 19): ∂L/∂A₁₈ = δ₁₉, ∂L/∂A₁₆ = δ₁₉  (" in out
    assert proof[-3].startswith("  [proved] concrete formulas at a random point")
    assert proof[-2] == ("           max relative difference " + proof[-2].split()[3]
                         + " to central differences along 3 random directions of all 28 "
                         "parameters in 60-digit arithmetic")
    assert proof[-1] == "  all formulas proved"


def test_the_equation_by_equation_proof_agrees_with_the_whole_one():
    """On networks small enough for both, both prove the correct rules (the whole one of
    bn_spec and dag_spec is proved above)."""
    for spec in (bn_spec(), dag_spec(), deep_spec(1)):
        assert cc.prove_structure_local(spec).ok, spec.name
    assert prove_structure(deep_spec(1)).ok


def test_a_deep_residual_without_the_skip_fails_equation_by_equation(monkeypatch):
    """A wrong rule deep in a 20-layer DAG: the equation that uses it is named, and the
    spot check along random directions sees it too."""
    monkeypatch.setattr(ops.Add, "vjp",
                        lambda self, g, out: (g, *(None for _ in self.terms[1:])))
    spec = deep_spec()
    structure = cc.prove_structure_local(spec)
    assert not structure.ok
    # δ₁₆ (the skip's value at layer 19) lost exactly δ₁₉'s entry: the skip's gradient
    assert structure.detail == "δ₁₆[0,0] differs: c_dz19_00"
    sizes = tiny_sizes(spec)
    spot = cc.spot_check(spec, derive(spec.with_sizes(sizes)), sizes, directions=3)
    assert not spot.ok and "along 3 random directions of all 28 parameters" in spot.detail


@pytest.mark.parametrize("wrong", ["dropout", "concat"])
def test_wrong_rules_fail_equation_by_equation(monkeypatch, wrong):
    """The cases the whole expansion catches (a mask concrete there) are caught one
    equation at a time as well."""
    if wrong == "dropout":
        monkeypatch.setattr(ops.Dropout, "vjp",
                            lambda self, g, out: (ops.Hadamard(g, self.mask),))
        spec = Spec("d", 2, (Layer(2, "tanh"), Layer(type="dropout", p=0.2), Layer(2)),
                    loss="mse")
    else:
        monkeypatch.setattr(ops.Concat, "vjp", lambda self, g, out: tuple(
            ops.ColSlice(g, a, b) for a, b in reversed(self.bounds())))
        spec = Spec("c", 2, (Layer(2, "tanh"), Layer(type="concat", inputs=("A1", "X")),
                             Layer(2)), loss="mse")
    structure = cc.prove_structure_local(spec)
    assert not structure.ok and structure.detail.startswith("δ₁[0,0] differs: ")


def test_what_cannot_be_proved_is_refused_before_the_derivation(tmp_path, capsys):
    """No small widths meet at this add (2·n₀ = 3·n₁ at 3 and 2, never at tiny widths):
    one line, exit 2, and nothing on stdout (no half-done command)."""
    path = _write(tmp_path, "\n".join([
        '[network]\nname = "nofit"\ninputs = 3', "[[layer]]\nunits = 2",
        '[[layer]]\ntype = "concat"\ninputs = ["X", "X"]',
        '[[layer]]\ntype = "concat"\ninputs = ["A1", "A1", "A1"]',
        '[[layer]]\ntype = "add"\ninputs = ["A2", "A3"]',
        '[[layer]]\nunits = 1\n[loss]\nkind = "mse"\n']))
    assert main(["derive", str(path), "--prove"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"symgrad: error: {path}: --prove: found no small widths at which "
                            "the inputs of every add layer agree; derive and generate are not "
                            "affected\n")
    assert main(["derive", str(path)]) == 0  # derive alone is not affected
