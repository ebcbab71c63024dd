"""derive on conv nets (issue 12): the forward and backward lines (exact strings), the
legend of im2col/col2im and the pooling rules printed once, --steps, LaTeX and Markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from symgrad.cli import main
from symgrad.derive import derive
from symgrad.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CNN2 = """
[network]
name = "cnn2"
inputs = [6, 6, 3]

[[layer]]
type = "conv2d"
filters = 4
kernel = [3, 2]
stride = 2
padding = 1
activation = "tanh"

[[layer]]
type = "conv2d"
filters = 2
kernel = 3
padding = "same"

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
def digits():
    return derive(load_spec(ROOT / "examples" / "digits_cnn.toml"))


@pytest.fixture(scope="module")
def cnn2(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "cnn2.toml"
    path.write_text(CNN2, encoding="utf-8")
    return derive(load_spec(path))


def section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = lines.index("", start)
    return [line.strip() for line in lines[start:end]]


def test_digits_cnn_text(digits):
    text = digits.text()
    assert text.splitlines()[0] == ("digits_cnn: 8×8×1 → conv 3×3×16 pad 1 relu → maxpool 2 → "
                                    "flatten → 10 softmax; loss cross_entropy")
    assert section(text, "Forward") == [
        "Z₁ = im2col(X) W₁ + b₁", "A₁ = relu(Z₁)", "arg₂ = argmax(A₁)", "Z₂ = maxpool(A₁)",
        "A₂ = Z₂", "Z₃ = flatten(A₂)", "A₃ = Z₃", "Z₄ = A₃ W₄ + b₄", "Ŷ = softmax(Z₄)",
        "L = (1/N) Σ [−Y ⊙ log(Ŷ)]"]
    assert section(text, "Backward") == [
        "δ₄ = ∂L/∂Z₄ = (Ŷ − Y)/N", "∂L/∂W₄ = A₃ᵀ δ₄", "∂L/∂b₄ = 𝟏ᵀ δ₄",
        "δ₃ = ∂L/∂Z₃ = δ₄ W₄ᵀ", "δ₂ = ∂L/∂Z₂ = unflatten(δ₃)",
        "δ₁ = ∂L/∂Z₁ = route(δ₂, arg₂) ⊙ [A₁ > 0]", "∂L/∂W₁ = im2col(X)ᵀ δ₁", "∂L/∂b₁ = 𝟏ᵀ δ₁",
        "(softmax∘cross-entropy uses: each row of Y sums to 1 (one-hot labels or probabilities))"]
    notation = text.splitlines()[-1]
    assert notation.count("im2col(A) the patch matrix") == 1
    assert ("∂L/∂W_l = im2col(A)ᵀ δ_l is the (kh·kw·C)×F matrix reshaped row-major to W_l's "
            "(kh, kw, C, F)") in notation
    assert notation.count("route(G, arg) puts each entry of G at the first maximum of its "
                          "window") == 1
    assert "flatten(A) each image's H·W rows" in notation and "spread(G)" not in notation


def test_a_second_conv_layer_backpropagates_through_col2im(cnn2):
    text = cnn2.text()
    assert text.splitlines()[0] == (
        "cnn2: 6×6×3 → conv 3×2×4 stride 2 pad 1 tanh → conv 3×3×2 pad same → avgpool 2 stride 1 "
        "pad 1 → flatten → 3 softmax; loss cross_entropy")
    assert section(text, "Backward")[4:11] == [
        "δ₃ = ∂L/∂Z₃ = unflatten(δ₄)", "δ₂ = ∂L/∂Z₂ = spread(δ₃)", "∂L/∂W₂ = im2col(A₁)ᵀ δ₂",
        "∂L/∂b₂ = 𝟏ᵀ δ₂", "δ₁ = ∂L/∂Z₁ = col2im(δ₂ W₂ᵀ) ⊙ (1 − A₁²)", "∂L/∂W₁ = im2col(X)ᵀ δ₁",
        "∂L/∂b₁ = 𝟏ᵀ δ₁"]
    assert "col2im(P) its adjoint" in text and "spread(G) its adjoint" in text


def test_steps_name_each_rule(cnn2):
    steps = cnn2.text(steps=True)
    assert ("  8. ∂L/∂A₂ = spread(δ₃)\n       by avgpool: Z = avgpool(A), ∂L/∂A = spread(∂L/∂Z) "
            "(each entry / (kh·kw) to every position of its window; overlapping windows add)"
            ) in steps
    assert ("  12. ∂L/∂A₁ = col2im(δ₂ W₂ᵀ)\n       by im2col: P = im2col(A), ∂L/∂A = "
            "col2im(∂L/∂P) (each patch entry goes back to its pixel; overlapping windows add)"
            ) in steps
    assert ("  6. ∂L/∂A₃ = unflatten(δ₄)\n       by flatten: Z = flatten(A), ∂L/∂A = "
            "unflatten(∂L/∂Z) (a reshape: its inverse)") in steps


def test_latex_and_markdown(digits, cnn2):
    latex = digits.latex()
    for row in (r"Z_{1} &= \operatorname{im2col}\left(X\right) W_{1} + b_{1}",
                r"Z_{2} &= \operatorname{maxpool}\left(A_{1}\right)",
                r"\delta_{1} = \frac{\partial L}{\partial Z_{1}} &= \operatorname{route}\left("
                r"\delta_{2}, \operatorname{arg}_{2}\right) \odot \left[A_{1} > 0\right]",
                r"\frac{\partial L}{\partial W_{1}} &= \operatorname{im2col}\left(X\right)^{\top} "
                r"\delta_{1}"):
        assert row in latex
    md = cnn2.markdown()
    assert (r"\delta_{1} = \frac{\partial L}{\partial Z_{1}} &= \operatorname{col2im}\left("
            r"\delta_{2} W_{2}^{\top}\right) \odot \left(1 - A_{1}^{2}\right)") in md
    assert r"\operatorname{spread}\left(\delta_{3}\right)" in md
    assert "Notation:" in md and "im2col(A)⊤ δ\\_l" in md


def test_the_command_line(capsys):
    assert main(["derive", str(ROOT / "examples" / "digits_cnn.toml"), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Backpropagation for `digits_cnn`\n\n8×8×1 → conv 3×3×16 pad 1 relu")
