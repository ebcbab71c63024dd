"""derive's printed forms for the layers beyond dense: batchnorm, layernorm, dropout, add,
concat (issue 11 §3 "derive", --steps).

Golden files (tests/golden/layers/<spec>[_steps].txt|.tex|.md) are compared whole for the
three DAG specs: examples/digits_bn_dropout.toml, examples/residual.toml and
tests/golden/layers/bn_mlp.toml (every new type in one network). Regenerate them with
SYMGRAD_UPDATE_GOLDEN=1 and read the diff. The dense-only outputs are held byte-identical
by tests/test_derive.py and tests/test_display.py (tests/golden/digits*.txt …)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

import symgrad
from symgrad.display import math_text
from symgrad.ops import add
from symgrad.picture import sweep
from symgrad.printing import text
from symgrad.spec import Layer, Spec, load_spec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "layers"
SPECS = {
    "bn_mlp": GOLDEN / "bn_mlp.toml",
    "digits_bn_dropout": ROOT / "examples" / "digits_bn_dropout.toml",
    "residual": ROOT / "examples" / "residual.toml",
}
RENDER = {"txt": lambda d, s: d.text(steps=s), "tex": lambda d, s: d.latex(steps=s),
          "md": lambda d, s: d.markdown(steps=s)}


@pytest.fixture(scope="module")
def derived():
    return {name: symgrad.derive(load_spec(path)) for name, path in SPECS.items()}


def _lines(d, steps=False) -> list[str]:
    return [line.strip() for line in d.text(steps=steps).splitlines()]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("fmt", sorted(RENDER))
@pytest.mark.parametrize("steps", [False, True], ids=["plain", "steps"])
def test_golden(derived, name, fmt, steps):
    out = RENDER[fmt](derived[name], steps)
    path = GOLDEN / f"{name}{'_steps' if steps else ''}.{fmt}"
    if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
        path.write_text(out, encoding="utf-8")
    assert out == path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------
# The textbook forms, exactly
# --------------------------------------------------------------------------


def test_network_line_names_each_layer(derived):
    assert _lines(derived["bn_mlp"])[0] == (
        "bn_mlp: 4 → 5 → batchnorm relu → dropout(0.2) → 5 tanh → layernorm → add(A₅, A₁) → "
        "concat(A₆, X) → 3 softmax; loss cross_entropy")
    assert _lines(derived["residual"])[0] == (
        "residual_mlp: 64 → 32 tanh → layernorm → 32 relu → add(A₁, A₃) → 10 softmax; "
        "loss cross_entropy")


def test_batchnorm_forward_and_compact_backward(derived):
    lines = _lines(derived["digits_bn_dropout"])
    for line in ("μ₂ = (1/N) 𝟏ᵀA₁",
                 "σ₂² = (1/N) 𝟏ᵀ(A₁ − 𝟏μ₂)²",
                 "X̂₂ = (A₁ − 𝟏μ₂) ⊙ 𝟏(σ₂² + ε)^(−½)",
                 "Z₂ = X̂₂ ⊙ 𝟏γ₂ + β₂",
                 "∂L/∂γ₂ = 𝟏ᵀ (δ₂ ⊙ X̂₂)",
                 "∂L/∂β₂ = 𝟏ᵀ δ₂",
                 "∂L/∂X̂₂ = δ₂ ⊙ 𝟏γ₂",
                 "δ₁ = ∂L/∂Z₁ = (1/N) 𝟏(σ₂² + ε)^(−½) ⊙ (N ∂L/∂X̂₂ − 𝟏𝟏ᵀ∂L/∂X̂₂ − X̂₂ ⊙ "
                 "𝟏𝟏ᵀ(∂L/∂X̂₂ ⊙ X̂₂))",
                 "mean₂ ← 0.9 mean₂ + 0.1 μ₂",
                 "var₂ ← 0.9 var₂ + 0.1 σ₂² N/(N − 1)"):
        assert line in lines, line


def test_layernorm_rows_with_subscripted_widths(derived):
    lines = _lines(derived["bn_mlp"])
    for line in ("μ₅ = (1/n₄) A₄𝟏",
                 "σ₅² = (1/n₄) (A₄ − μ₅𝟏ᵀ)²𝟏",
                 "X̂₅ = (A₄ − μ₅𝟏ᵀ) ⊙ (σ₅² + ε)^(−½)𝟏ᵀ",
                 "δ₄ = ∂L/∂Z₄ = ((1/n₄) (σ₅² + ε)^(−½)𝟏ᵀ ⊙ (n₄ ∂L/∂X̂₅ − ∂L/∂X̂₅𝟏𝟏ᵀ − X̂₅ ⊙ "
                 "(∂L/∂X̂₅ ⊙ X̂₅)𝟏𝟏ᵀ)) ⊙ (1 − A₄²)"):
        assert line in lines, line
    tex = derived["bn_mlp"].latex()
    assert r"\mu_{5} &= \frac{1}{n_{4}} A_{4}\mathbf{1} \\" in tex
    assert "n_4" not in derived["bn_mlp"].text(steps=True)


def test_dropout_concat_and_the_cotangent_slice(derived):
    lines = _lines(derived["bn_mlp"])
    for line in ("Z₃ = A₂ ⊙ M₃/(1 − 0.2)",
                 "δ₂ = ∂L/∂Z₂ = (δ₃ ⊙ M₃/(1 − 0.2)) ⊙ [A₂ > 0]",
                 "Z₇ = [A₆ X]",
                 "δ₆ = ∂L/∂Z₆ = δ₇[:, 0:n₄]"):
        assert line in lines, line
    tex = derived["bn_mlp"].latex()
    assert r"Z_{7} &= \begin{bmatrix} A_{6} & X \end{bmatrix} \\" in tex
    assert r"&= \delta_{7}[:,\,0:n_{4}] \\" in tex
    assert r"Z_{3} &= \frac{A_{2} \odot M_{3}}{1 - 0.2} \\" in tex


def test_residual_sums_the_skip_and_the_block_at_the_fan_out(derived):
    lines = _lines(derived["residual"], steps=True)
    assert ("δ₁ = ∂L/∂Z₁ = (δ₄ + (1/n₁) (σ₂² + ε)^(−½)𝟏ᵀ ⊙ (n₁ ∂L/∂X̂₂ − ∂L/∂X̂₂𝟏𝟏ᵀ − X̂₂ ⊙ "
            "(∂L/∂X̂₂ ⊙ X̂₂)𝟏𝟏ᵀ)) ⊙ (1 − A₁²)") in lines
    i = next(i for i, line in enumerate(lines) if re.fullmatch(
        r"\d+\. ∂L/∂A₁ = δ₄ \+ \(1/n₁\) \(σ₂² \+ ε\)\^\(−½\)𝟏ᵀ ⊙ \(n₁ ∂L/∂X̂₂ − ∂L/∂X̂₂𝟏𝟏ᵀ − "
        r"X̂₂ ⊙ \(∂L/∂X̂₂ ⊙ X̂₂\)𝟏𝟏ᵀ\)", line))
    assert lines[i + 1].startswith(
        "by add (skip): Z = A + B + …, ∂L/∂A = ∂L/∂B = … = G (each input receives G "
        "unchanged); layernorm (compact): X̂ = (A − μ𝟏ᵀ) ⊙ (σ² + ε)^(−½)𝟏ᵀ, ∂L/∂A = (1/n) ")
    step = next(e for e in derived["residual"].steps if e.target.name == "dA1")
    assert step.rule == "add (skip) + layernorm (compact)"


def test_steps_name_every_new_rule(derived):
    d = derived["bn_mlp"]
    rules = {e.target.name: e.rule for e in d.steps}
    assert rules["dA6"] == "concat"
    assert rules["dA5"] == "add"  # A₅ feeds the add only: no fan-out, no skip
    assert rules["dA4"] == "layernorm (compact)"
    assert rules["dA2"] == "dropout"
    assert rules["dA1"] == "add (skip) + batchnorm (compact)"
    lines = _lines(d, steps=True)
    assert ("by dropout: Z = A ⊙ M/(1 − p), ∂L/∂A = G ⊙ M/(1 − p) (the same mask, the same "
            "factor)") in lines
    assert ("; batchnorm (compact): X̂ = (A − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−½), ∂L/∂A = (1/N) 𝟏(σ² + ε)^(−½) "
            "⊙ (N G − 𝟏𝟏ᵀG − X̂ ⊙ 𝟏𝟏ᵀ(G ⊙ X̂)) with G = ∂L/∂X̂") in " ".join(lines)
    assert "by C = A ⊙ B: ∂L/∂A = G ⊙ B, ∂L/∂B = G ⊙ A" in lines


def test_notation_explains_the_new_symbols(derived):
    note = _lines(derived["bn_mlp"])[-1]
    assert note.startswith("Notation: ⊙ elementwise product")
    for part in ("X̂_l the standardized input of normalization layer l",
                 "μ_l and σ_l² its mean and biased variance (batchnorm: of each column, over "
                 "the N samples; layernorm: of each row, over its n features)",
                 "ε = 1e-05", "M_l the dropout mask of layer l",
                 "[A B] the columns of A and B side by side", "G[:, a:b] the columns a to b − 1",
                 "n_l the width of layer l's output", "mean_l and var_l the running mean"):
        assert part in note, part
    residual = _lines(derived["residual"])[-1]
    assert "M_l" not in residual and "[A B]" not in residual and "mean_l" not in residual
    assert r"X̂\_l the standardized input" in derived["residual"].markdown()
    tex = derived["residual"].latex().splitlines()[-1]
    assert tex.startswith(r"\(\text{Notation: }\odot \text{ elementwise product")
    assert (r"\hat{X}_{l}\text{ the standardized input of normalization layer l, }\mu _{l}"
            r"\text{ and }\sigma _{l}^{2}\text{ its mean and biased variance") in tex
    assert r"\varepsilon \text{ = 1e-05 (added to }\sigma ^{2}" in tex


def test_epsilon_per_layer_when_they_differ(tmp_path):
    src = SPECS["bn_mlp"].read_text(encoding="utf-8").replace(
        'type = "layernorm"', 'type = "layernorm"\neps = 0.001')
    (tmp_path / "eps.toml").write_text(src, encoding="utf-8")
    note = _lines(symgrad.derive(load_spec(tmp_path / "eps.toml")))[-1]
    assert "ε (added to σ²) = 1e-05 in layer 2, 0.001 in layer 5" in note


# --------------------------------------------------------------------------
# LaTeX, Markdown and Jupyter
# --------------------------------------------------------------------------


def _balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    lefts, rights = (len(re.findall(rf"\\{w}(?![a-z])", tex)) for w in ("left", "right"))
    return depth == 0 and lefts == rights


@pytest.mark.parametrize("name", sorted(SPECS))
def test_latex_is_well_formed_and_jupyter_shows_it(derived, name):
    d = derived[name]
    for tex in (d.latex(steps=True), d._repr_latex_(), d.markdown(steps=True)):
        assert _balanced(tex), name
        assert not re.search(r"_\{[^{}]*\}_\{", tex)  # no double subscript
        assert "^(" not in tex.replace(r"\text{", "")  # ^(−½) typeset as an exponent
    assert d._repr_latex_().startswith("$$\\begin{aligned}")
    assert d._repr_markdown_() == d.markdown()
    assert repr(d).startswith(f"<Derivation {d.spec.name}: ")


def test_math_text_of_the_new_symbols():
    assert math_text("X̂ = 𝟏(σ² + ε)^(−½)", layers=True) == (
        r"\hat{X}\text{ = }\mathbf{1}\text{(}\sigma ^{2}\text{ + }\varepsilon \text{)}"
        r"^{-\tfrac{1}{2}}")
    assert math_text("μ, γ, β, …", layers=True) == (
        r"\mu \text{, }\gamma \text{, }\beta \text{, }\dots")
    assert math_text("P = ½ ‖W‖²") == r"\text{P = ½ ‖W‖²}"  # the dense notes: as they were


# --------------------------------------------------------------------------
# The picture's parts add up to the derivation; cost independent of sizes
# --------------------------------------------------------------------------


def test_picture_parts_sum_to_the_derivation(derived):
    d = derived["bn_mlp"]
    parts, _ = sweep(d.graph)
    for eq in d.steps:
        assert text(add([p.value for p in parts[eq.target.name[1:]]])) == text(eq.rhs)


def _sized(tmp_path: Path, width: int, batch: int) -> Path:
    src = SPECS["bn_mlp"].read_text(encoding="utf-8")
    src = src.replace("inputs = 4", f"inputs = {width}").replace("units = 5", f"units = {width}")
    src += f"\n[training]\nbatch_size = {batch}\n"
    path = tmp_path / f"w{width}.toml"
    path.write_text(src, encoding="utf-8")
    return path


def test_derivation_cost_and_text_do_not_depend_on_sizes(tmp_path):
    """The DAG at widths 4 and 4000 (batch 8 and 4096): the same text but for the widths
    in the network line, in similar time (everything is symbolic in N and n_l)."""
    outs, times = [], []
    for width, batch in ((4, 8), (4000, 4096)):
        spec = load_spec(_sized(tmp_path, width, batch))
        start = time.perf_counter()
        d = symgrad.derive(spec)
        outs.append([d.text(steps=True), d.latex(steps=True), d.markdown(steps=True)])
        times.append(time.perf_counter() - start)
    assert outs[0][0].splitlines()[0] == (
        "bn_mlp: 4 → 4 → batchnorm relu → dropout(0.2) → 4 tanh → layernorm → add(A₅, A₁) → "
        "concat(A₆, X) → 3 softmax; loss cross_entropy")
    assert outs[0] != outs[1]
    assert [re.sub(r"\b4000\b", "4", o) for o in outs[1]] == outs[0]
    assert times[1] < 3 * times[0] + 1.0, times


def test_picture_of_a_dag(derived):
    """symgrad graph of every new type: the mask a node of its own, μ/σ²/the mask read
    (dashed), the skip edges coloured, the layer kind under Z_l, the named rules."""
    from symgrad.picture import draw

    src = draw(SPECS["bn_mlp"], backward=True).source
    for line in (
            'v_M3 [label="M₃\\nN × 5\\ndropout mask, p = 0.2" fillcolor="#eeeeee" shape=box '
            'style="rounded,filled,dashed"]',
            'v_Z3 [label="Z₃ = A₂ ⊙ M₃/(1 − 0.2)\\nN × 5\\ndropout, p = 0.2"',
            'v_Z2 [label="Z₂ = X̂₂ ⊙ 𝟏γ₂ + β₂\\nN × 5\\nbatchnorm, ε = 1e-05"',
            'v_Z6 [label="Z₆ = A₅ + A₁\\nN × 5\\nadd (residual)"',
            'v_mu2 -> v_Xhat2 [color="#7f7f7f" style=dashed]',
            'v_var2 -> v_Xhat2 [color="#7f7f7f" style=dashed]',
            'v_M3 -> v_Z3 [color="#7f7f7f" style=dashed]',
            'v_A1 -> v_Z6 [label=skip color="#1f6feb" fontcolor="#1f6feb"]',
            'v_X -> v_Z7 [label=skip color="#1f6feb" fontcolor="#1f6feb"]',
            's_A1 [label="+"'):
        assert "\t" + line in src, line
    assert 'v_A5 -> v_Z6\n' in src  # the previous layer's output: a plain edge
    assert "\\nbatchnorm (compact): X̂ = (A − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−½), ∂L/∂A = (1/N)" in src
    assert "\\ndropout: Z = A ⊙ M/(1 − p), ∂L/∂A = G ⊙ M/(1 − p)" in src


def test_a_slice_bound_is_a_scalar_product_not_elementwise():
    """F1: concat(X, X, A₁): A₁'s columns start at 2n₀ (a number times a width), printed as
    a product of scalars — never with ⊙, the elementwise product of matrices."""
    spec = Spec("cat", 3, (Layer(3, "tanh"), Layer(type="concat", inputs=("X", "X", "A1")),
                           Layer(2)), loss="mse")
    d = symgrad.derive(spec)
    assert "  δ₁ = ∂L/∂Z₁ = δ₂[:, 2n₀:2n₀ + n₁] ⊙ (1 − A₁²)\n" in d.text()
    row = (r"\delta_{1} = \frac{\partial L}{\partial Z_{1}} &= \delta_{2}[:,\,2 n_{0}:2 n_{0} "
           r"+ n_{1}] \odot \left(1 - A_{1}^{2}\right) \\")
    assert row in d.latex().splitlines() and row in d.markdown().splitlines()
    assert "2 ⊙ n" not in d.text(steps=True) and r"2 \odot n" not in d.latex(steps=True)


@pytest.mark.parametrize(("p", "shown"), [(0.9999999999, "0.9999999999"), (5e-324, "5e-324"),
                                          (0.0, "0.0"), (0.2, "0.2")])
def test_the_network_line_shows_p_as_the_formulas_do(p, shown):
    """F2: the network line's dropout(p) is the body's repr, not %g (which showed
    0.9999999999 as 1, the value the spec refuses)."""
    d = symgrad.derive(Spec("drop", 3, (Layer(type="dropout", p=p), Layer(2)), loss="mse"))
    lines = _lines(d)
    assert lines[0] == f"drop: 3 → dropout({shown}) → 2; loss mse"
    assert f"Z₁ = X ⊙ M₁/(1 − {shown})" in lines
