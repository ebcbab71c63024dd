"""Second order of networks, the gaps of issue 15 closed: batchnorm, layernorm and dropout
in --hvp/--gnvp and in the generated hvp/gnvp (training mode: batch statistics, the masks
of loss_and_grad for the same seed), derive --gnvp --prove, generate --hvp offering the
second-order optimizers, verify's second-order questions.

Evidence: H V against central differences of the gradient (float64), the scalar expansion
differentiated by SymPy, G V positive semi-definite, exact printed lines and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_second_network import central, evaluate, instance, rel, tiny

from symgrad.cli import main
from symgrad.codegen import generate_source, load_module
from symgrad.derive import derive
from symgrad.second import gnvp, hvp, prove
from symgrad.spec import spec_from_dict

ROOT = Path(__file__).parent.parent


def normalized(kind: str, dropout: bool = False, loss: str = "cross_entropy"):
    """3 → 4 tanh → {kind} softplus [→ dropout 0.3] → 2 softmax (or identity for mse)."""
    layers = [{"units": 4, "activation": "tanh"}, {"type": kind, "activation": "softplus"}]
    if dropout:
        layers.append({"type": "dropout", "p": 0.3})
    out = "softmax" if loss == "cross_entropy" else "identity"
    return spec_from_dict({"network": {"name": "normed", "inputs": 3},
                           "layer": [*layers, {"units": 2, "activation": out}],
                           "loss": {"kind": loss}, "regularization": {"l2": 0.1}},
                          source="normed.toml")


# --------------------------------------------------------------------------
# 1. batchnorm and layernorm: the tangents of X̂, μ, σ² and of 𝟏(σ² + ε)^(−½)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_hvp_of_normalized_nets_against_differences(kind, loss):
    d = derive(normalized(kind, dropout=True, loss=loss))
    for seed in (3, 4):
        X, Y, params, V = instance(d, seed=seed)
        assert rel(evaluate(hvp(d), X, Y, params, V), central(d, X, Y, params, V)) <= 1e-6


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
def test_gnvp_of_normalized_nets_is_positive_semidefinite(kind):
    d = derive(normalized(kind))
    so = gnvp(d)
    for seed in range(4):
        X, Y, params, V = instance(d, seed=seed)
        GV = evaluate(so, X, Y, params, V)
        assert sum(float(np.sum(V[k] * GV[k])) for k in V) > 0


def test_standardize_tangent_printed():
    text = hvp(derive(normalized("batchnorm"))).text()
    dot = "\u0307"  # the combining dot of Ȧ, X̂̇, μ̇, σ̇
    assert (f"  X̂{dot}₂ = (A{dot}₁ − 𝟏μ{dot}₂) ⊙ 𝟏(σ₂² + ε)^(−½) − (X̂₂ ⊙ 𝟏σ{dot}₂² ⊙ "
            f"𝟏(σ₂² + ε)^(−1))/2\n") in text
    assert f"𝟏(σ₂² + ε)^(−3/2) ⊙ 𝟏σ{dot}₂²" in text  # R{δ₁}: the tangent of the rule's factor


def test_generated_products_of_batchnorm_and_dropout_in_training_mode():
    """hvp/gnvp(seed=s) are the curvature of loss_and_grad(seed=s): its masks, its batch
    statistics; another seed, another mask, another product."""
    module = load_module(generate_source(ROOT / "examples" / "digits_bn_dropout.toml",
                                         products=True))
    rng = np.random.default_rng(0)
    params = module.init_params(seed=1)
    X, Y = rng.standard_normal((7, 64)), np.eye(10)[rng.integers(0, 10, 7)]
    V = {k: rng.standard_normal(s) for k, s in module.PARAM_SHAPES.items()}
    t = 1e-5

    def moved(c):
        return {k: v + c * V[k] if k in V else v for k, v in params.items()}

    products = {}
    for seed in (0, 3):
        H = module.hvp(params, X, Y, V, seed=seed)
        plus = module.loss_and_grad(moved(t), X, Y, seed=seed)[1]
        minus = module.loss_and_grad(moved(-t), X, Y, seed=seed)[1]
        assert rel(H, {k: (plus[k] - minus[k]) / (2 * t) for k in H}) <= 1e-6
        G = module.gnvp(params, X, Y, V, seed=seed)
        assert sum(float(np.sum(V[k] * G[k])) for k in V) > 0
        products[seed] = H
    assert rel(products[0], products[3]) > 1e-3
    with pytest.raises(ValueError, match="at least 2"):
        module.hvp(params, X[:1], Y[:1], V)


# --------------------------------------------------------------------------
# 2. derive --gnvp --prove: Jᵀ H_ℓ J V from the scalar expansion
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    tiny("tanh", "cross_entropy", "softmax", l2=0.1, layers=(1,)),   # H_ℓ in Z_L (fusion)
    tiny("tanh", "(yhat - y)**4 / 4 + (yhat - y)**2", "tanh", layers=(1,)),  # H_ℓ in Ŷ
    normalized("batchnorm"),
], ids=["softmax-ce", "custom-loss", "batchnorm"])
def test_gnvp_equals_the_scalar_expansion(spec):
    proof = prove(gnvp(derive(spec)), width=2, batch=2)
    assert proof.ok and proof.entries > 0, proof.text()


def test_the_gauss_newton_proof_catches_a_wrong_product():
    """Jᵀ H_ℓ J V without the penalty's λ₂ V_W, or with H in place of G: both caught."""
    from dataclasses import replace

    d = derive(tiny("tanh", "cross_entropy", "softmax", l2=0.1, layers=(1,)))
    so = gnvp(d)
    H = hvp(d)  # the Hessian's product is not G's: the proof tells them apart
    as_h = replace(so, tangents=H.tangents, backward=H.backward, adjoints=H.adjoints,
                   results=H.results)
    assert not prove(as_h).ok
    no_penalty = replace(gnvp(derive(tiny("tanh", "cross_entropy", "softmax", layers=(1,)))),
                         derivation=d)
    assert not prove(no_penalty).ok


def test_derive_gnvp_prove_prints_the_verdict(capsys):
    assert main(["derive", str(ROOT / "examples" / "regression.toml"), "--gnvp", "--prove"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("Scalar-expansion check (N = 2, widths 2 → 2 → 1, λ₁ = λ₂ = 1/10): "
                           "every entry of the product equals Σ_k ∂S_k/∂θ_i (H_ℓ J V)_k")
    assert last.endswith(": PROVED")


# --------------------------------------------------------------------------
# 3. generate --hvp: newton_cg and lbfgs in train(); only the lines a product reads
# --------------------------------------------------------------------------

IDENTITY_MAE = {"network": {"name": "linear_mae", "inputs": 3},
                "layer": [{"units": 4, "activation": "tanh"}, {"units": 2}],
                "loss": {"kind": "mae"}, "regularization": {"l2": 0.1}}


def _ruff(source: str, tmp_path: Path) -> str:
    import subprocess
    import sys

    path = tmp_path / "module.py"
    path.write_text(source, encoding="utf-8")
    ruff = Path(sys.executable).parent / "ruff"
    run = subprocess.run([str(ruff), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                          "--output-format", "concise", str(path)],
                         capture_output=True, text=True, check=False)
    return run.stdout


@pytest.mark.parametrize("spec", [
    IDENTITY_MAE,  # G V is the penalty's alone: Ŷ, Ŷ̇, N, V_b unread
    {**IDENTITY_MAE, "layer": [{"units": 2}], "loss": {"kind": "mse"}},  # Ŷ unread by H V
])
def test_generate_hvp_offers_newton_cg_and_is_ruff_clean(spec, tmp_path):
    source = generate_source(spec_from_dict(spec, source="s.toml"), products=True)
    assert _ruff(source, tmp_path) == "All checks passed!\n"
    module = load_module(source)
    assert module.OPTIMIZERS[-2:] == ("newton_cg", "lbfgs")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((40, 3)), rng.standard_normal((40, 2))
    params = module.init_params(seed=0)
    before = module.loss(params, X, Y)
    history = module.train(params, X, Y, optimizer="newton_cg", epochs=3,
                           batch_size=None, verbose=False)
    assert history["loss"][0] == pytest.approx(before) and module.loss(params, X, Y) < before
    module.train(params, X, Y, optimizer="lbfgs", epochs=2, verbose=False)


def test_generate_hvp_of_a_stochastic_network_keeps_first_order_training():
    """Batch statistics and masks change the loss between evaluations (newton_cg's trial
    step, lbfgs's line search): the products are there, the optimizers are not."""
    source = generate_source(ROOT / "examples" / "digits_bn_dropout.toml", products=True)
    module = load_module(source)
    assert "newton_cg" not in module.OPTIMIZERS and "def hvp(params, X, Y, V, *, seed=0)" in source


def test_modules_generated_from_second_order_specs_unchanged_without_dead_lines():
    """Newton-CG specs had hvp/gnvp before: the digits network's lines are all read."""
    spec = spec_from_dict({**IDENTITY_MAE, "layer": [{"units": 4, "activation": "tanh"},
                                                     {"units": 3, "activation": "softmax"}],
                           "loss": {"kind": "cross_entropy"},
                           "training": {"optimizer": "newton_cg"}}, source="s.toml")
    assert generate_source(spec) == generate_source(spec, products=True)


# --------------------------------------------------------------------------
# 4. verify --gnvp / --hvp: second-order questions, verify's evidence and diagnoses
# --------------------------------------------------------------------------

ONE_LAYER = {"network": {"name": "one", "inputs": 4},
             "layer": [{"units": 3, "activation": "softmax"}],
             "loss": {"kind": "cross_entropy"}, "regularization": {"l2": 0.1}}
GN_W1 = "X.T @ (Yhat * (Zdot1 - np.sum(Zdot1 * Yhat, axis=1, keepdims=True))) / N + l2 * V_W1"


GN_DATA = "X.T @ (Yhat * (Zdot1 - np.sum(Zdot1 * Yhat, axis=1, keepdims=True))) / N"


@pytest.mark.parametrize("formula,verdict,diagnosis", [
    (GN_W1, "correct", None),
    (GN_DATA, "WRONG (missing-term)", "missing term: yours + l2 * V_W1 (λ₂ V_W₁) = (G V)_W₁"),
    (f"-({GN_W1})", "WRONG (sign)", "the sign is wrong: yours = −(G V)_W₁"),
])
def test_verify_gauss_newton_of_a_one_layer_net(formula, verdict, diagnosis):
    from symgrad.verify import verify

    text = verify(spec_from_dict(ONE_LAYER, source="one.toml"), "W1", formula,
                  product="gnvp").text()
    assert f"  verdict:   {verdict}\n" in text, text
    if verdict == "correct":
        assert "  symbolic:  proved at" in text
    if diagnosis:
        assert f"  diagnosis: {diagnosis}\n" in text, text


def test_verify_gnvp_factor_and_transposed_diagnosed():
    from symgrad.verify import verify

    s = spec_from_dict(dict(ONE_LAYER, regularization={}), source="one.toml")
    gn = GN_DATA.replace(" / N", "")
    assert ("  diagnosis: off by a constant factor N: yours is N times the gradient (a 1/N is "
            "missing)\n") in verify(s, "W1", gn, product="gnvp").text()
    transposed = "(Yhat * (Zdot1 - np.sum(Zdot1 * Yhat, axis=1, keepdims=True))).T @ X / N"
    assert "  verdict:   WRONG (transposed)\n" in verify(s, "W1", transposed, product="gnvp").text()


def test_verify_hvp_on_the_command_line(tmp_path, capsys):
    spec = tmp_path / "one.toml"
    spec.write_text('[network]\nname = "one"\ninputs = 4\n[[layer]]\nunits = 3\n'
                    'activation = "softmax"\n[loss]\nkind = "cross_entropy"\n', encoding="utf-8")
    assert main(["verify", str(spec), "--hvp", "--wrt", "b1", "np.sum(Yhatdot, axis=0) / N"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verify (H V)_b₁ — one: 4 → 3 softmax; cross_entropy; H V along "
                          "V = (V_W₁, V_b₁)\n")
    assert main(["verify", str(spec), "--gnvp", "--wrt", "Z1", "Zdot1"]) == 2
    assert capsys.readouterr().err == (
        "symgrad: error: --wrt: 'Z1': --gnvp asks for a parameter's component of the product "
        "(W1, b1)\n")


def test_check_hvp_of_batchnorm_and_dropout(tmp_path):
    """check --hvp in training mode (the same seed on both sides); b₁ before a batchnorm has
    a zero product: both sides are rounding noise, said in a note, not a failure."""
    from symgrad.check import check_products

    report = check_products(ROOT / "examples" / "digits_bn_dropout.toml")
    assert report.ok, report.text()
    assert any(n.startswith("hvp: b1: the product and the differences are both below")
               for n in report.notes)
    source = generate_source(ROOT / "examples" / "digits_bn_dropout.toml", products=True)
    bad = source.replace("Xhat2_dot = (A1_dot - mu2_dot)", "Xhat2_dot = (A1_dot + mu2_dot)", 1)
    assert bad != source
    path = tmp_path / "digits_bn_mlp.py"
    path.write_text(bad, encoding="utf-8")
    assert not check_products(path).ok
    # the module as generated: gnvp not compared at Y = forward() (inference mode, the
    # products in training mode: H ≠ G there), said so; hvp compared and passing
    path.write_text(source, encoding="utf-8")
    report = check_products(path)
    assert report.ok and {fn for fn, *_ in report.rows} == {"hvp"}, report.text()
    assert ("gnvp: not compared; forward() is in inference mode (running statistics, no "
            "dropout) and the products in training mode, so Y = forward(params, X) is no "
            "point where H = G") in report.notes


def test_check_hvp_compares_gnvp_where_forward_is_the_training_output(tmp_path):
    """A module of the new layers' interface without batchnorm or dropout (a residual net):
    its two modes are one, so gnvp is compared at Y = forward(params, X), and a wrong gnvp
    fails."""
    from symgrad.check import check_products

    source = generate_source(ROOT / "examples" / "residual.toml", products=True)
    path = tmp_path / "residual_mlp.py"
    path.write_text(source, encoding="utf-8")
    report = check_products(path)
    assert report.ok and "gnvp" in {fn for fn, *_ in report.rows}, report.text()
    line = "    Z1_dot = X @ V_W1 + V_b1\n"
    at = source.index(line, source.index("\ndef gnvp("))  # gnvp's own Ż₁
    bad = source[:at] + line.replace("V_b1", "2 * V_b1") + source[at + len(line):]
    path.write_text(bad, encoding="utf-8")
    report = check_products(path)
    assert not report.ok and any(fn == "gnvp" and not ok for fn, *_, ok in report.rows)


def test_prove_of_a_kinked_loss_takes_the_branch_at_the_point(tmp_path, capsys):
    """mae, huber, l1, softsign: their kinks' branches at the proof's point (exact near it)."""
    spec = tmp_path / "k.toml"
    net = ('[network]\nname = "k"\ninputs = 3\n[[layer]]\nunits = 2\nactivation = "tanh"\n'
           '[[layer]]\nunits = 2\n')
    spec.write_text(net + '[loss]\nkind = "mae"\n', encoding="utf-8")
    for flag in ("--gnvp", "--hvp"):
        assert main(["derive", str(spec), flag, "--prove"]) == 0
        assert capsys.readouterr().out.rstrip().endswith("PROVED")
    # at seed 0 the tiny instance's W₂[0, 0] is 0: l1's |W₂| has no branch there
    spec.write_text(net + '[loss]\nkind = "mse"\n[regularization]\nl1 = 0.1\n', encoding="utf-8")
    assert main(["derive", str(spec), "--hvp", "--prove"]) == 2
    assert capsys.readouterr().err == (
        f"symgrad: error: {spec}: --prove: the tiny instance's point lies on a kink of the loss, "
        "a penalty or an activation (an argument of |·|, a step or a max is 0 there: no second "
        "derivative); check the product with symgrad check SPEC --hvp\n")


def test_verify_product_with_expr_refused(capsys):
    assert main(["verify", "--expr", "sum(x**2)", "--wrt", "x", "--hvp", "2*x"]) == 2
    assert capsys.readouterr().err == (
        "symgrad: error: verify: --hvp/--gnvp ask about a network SPEC's product, not --expr "
        "(for an expression's Hessian: derive --expr … --hessian)\n")


@pytest.mark.parametrize("flag, wrt, formula, verdict", [
    ("--hvp", "W2", "Adot1.T @ delta2 + A1.T @ Rdelta2", "correct"),
    ("--hvp", "W2", "Adot1.T @ delta2 + A1.T @ dZ2_dot", "correct"),
    ("--hvp", "W2", "A1.T @ Rdelta2", "WRONG (missing-term)"),
    ("--gnvp", "W1", "X.T @ Gdelta1", "correct"),
])
def test_verify_reads_the_second_order_adjoints(flag, wrt, formula, verdict, tmp_path, capsys):
    spec = tmp_path / "one.toml"
    spec.write_text('[network]\nname = "one"\ninputs = 4\n[[layer]]\nunits = 3\nactivation = '
                    '"tanh"\n[[layer]]\nunits = 2\nactivation = "softmax"\n[loss]\nkind = '
                    '"cross_entropy"\n', encoding="utf-8")
    main(["verify", str(spec), flag, "--wrt", wrt, formula])
    out = capsys.readouterr().out
    assert f"  verdict:   {verdict}\n" in out, out
