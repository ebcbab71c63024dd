"""How names are formed and displayed — one place (as tangent keeps tangent/naming.py).

Code names are plain identifiers: ``X, Y, W1, b1, Z1, A1, Yhat``; the cotangent
(∂L/∂·) of ``V`` is ``dV``.  Displays: ``Z₁`` / ``Z_{1}``; the cotangent of a
pre-activation ``Zl`` is the textbook δ_l; other cotangents print as ∂L/∂V.
"""

from __future__ import annotations

import re

__all__ = ["cotangent", "primal", "text", "latex", "layer_of", "tangent", "gauss_newton",
           "direction"]

_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_NAME = re.compile(r"(d?)([A-Za-z]+?)(\d*)\Z")
_COT = re.compile(r"d([A-Z][A-Za-z]*|b|gamma|beta)\d*\Z")
# per-layer names of the normalization layers: base → (text, LaTeX); σ² carries its index
# before the square (var3 → σ₃²)
_GREEK = {"gamma": ("γ", r"\gamma"), "beta": ("β", r"\beta"), "mu": ("μ", r"\mu"),
          "var": ("σ", r"\sigma"), "Xhat": ("X̂", r"\hat{X}"), "Yhat": ("Ŷ", r"\hat{Y}")}
# per-layer names of more than one letter that are words, upright in LaTeX as operators
# (\operatorname{arg}_{2}, read as text's arg₂, not as the product a·r·g₂)
_WORDS = {"arg"}


def cotangent(name: str) -> str:
    """dV: the code name of ∂L/∂V."""
    return f"d{name}"


def tangent(name: str) -> str:
    """V_dot: the code name of the tangent of V along a direction (Ż₁, Ȧ₁; of a cotangent,
    the second-order adjoint R{δ₁}, R{∂L/∂W₁})."""
    return f"{name}_dot"


def gauss_newton(name: str) -> str:
    """dV_gn: the code name of the Gauss–Newton adjoint 𝒢{δ₁} (the backward sweep applied to
    H_ℓ J V)."""
    return f"{name}_gn"


def direction(param: str) -> str:
    """V_W1: the code name of a direction's component for a parameter (V_W₁)."""
    return f"V_{param}"


_SECOND = re.compile(r"(.+)_(dot|gn)\Z")
_DIRECTION = re.compile(r"V_([A-Za-z]+\d+)\Z")  # V_W1: a parameter's own name after V_
_MARKS = "₀₁₂₃₄₅₆₇₈₉²"


def _second_text(name: str) -> str | None:
    m = _SECOND.match(name)
    if m:
        base, kind = m.group(1), m.group(2)
        shown = text(base)
        if kind == "gn":
            return f"𝒢{{{shown}}}"
        if _COT.match(base):
            return f"R{{{shown}}}"
        cut = next((i for i, c in enumerate(shown) if c in _MARKS), len(shown))
        return shown[:cut] + "\u0307" + shown[cut:]
    if _DIRECTION.match(name):
        return "V_" + text(name[2:])
    return None


def _second_latex(name: str) -> str | None:
    m = _SECOND.match(name)
    if m:
        base, kind = m.group(1), m.group(2)
        shown = latex(base)
        if kind == "gn":
            return rf"\mathcal{{G}}\{{{shown}\}}"
        if _COT.match(base):
            return rf"\mathcal{{R}}\{{{shown}\}}"
        if "_{" in shown:
            head, _, rest = shown.partition("_{")
            return rf"\dot{{{head}}}_{{{rest}"
        return rf"\dot{{{shown}}}"
    if _DIRECTION.match(name):
        return f"V_{{{latex(name[2:])}}}"
    return None


def primal(name: str) -> str:
    """V for dV."""
    return name[1:] if _COT.match(name) else name


def layer_of(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(3)) if m and m.group(3) else None


def _split(name: str) -> tuple[bool, str, str]:
    m = _NAME.match(name)
    if not m:
        return False, name, ""
    is_cot = bool(_COT.match(name))
    base = m.group(2) if is_cot else m.group(1) + m.group(2)
    return is_cot, base, m.group(3)


_RUNNING = re.compile(r"running_(mean|var)(\d+)\Z")  # batchnorm's buffers, as code names them


def text(name: str) -> str:
    """Unicode display: Z1 → Z₁, Yhat → Ŷ, dZ1 → δ₁, dA1 → ∂L/∂A₁; the normalization
    layers' gamma3 → γ₃, beta3 → β₃, mu3 → μ₃, var3 → σ₃², Xhat3 → X̂₃."""
    if name == "L":
        return "L"
    second = _second_text(name)
    if second is not None:
        return second
    running = _RUNNING.match(name)
    if running:  # the running statistics: mean₂, var₂ (the buffers' keys)
        return running.group(1) + running.group(2).translate(_SUB)
    is_cot, base, idx = _split(name)
    greek = base == "Yhat" or bool(idx)  # a layer's own name (an expression's mu stays mu)
    base_txt = _GREEK[base][0] if greek and base in _GREEK else base
    primal_txt = base_txt + idx.translate(_SUB) + ("²" if greek and base == "var" else "")
    if not is_cot:
        return primal_txt
    if base == "Z":
        return "δ" + idx.translate(_SUB)
    return f"∂L/∂{primal_txt}"


def latex(name: str) -> str:
    """LaTeX display: Z1 → Z_{1}, Yhat → \\hat{Y}, dZ1 → \\delta_{1}."""
    second = _second_latex(name)
    if second is not None:
        return second
    running = _RUNNING.match(name)
    if running:
        return rf"\mathrm{{{running.group(1)}}}_{{{running.group(2)}}}"
    is_cot, base, idx = _split(name)
    greek = base == "Yhat" or bool(idx)
    base_tex = _GREEK[base][1] if greek and base in _GREEK else base
    if idx and base in _WORDS:
        base_tex = rf"\operatorname{{{base}}}"
    primal_tex = f"{base_tex}_{{{idx}}}" if idx else base_tex
    if greek and base == "var":
        primal_tex += "^{2}"
    if not is_cot:
        return primal_tex
    if base == "Z":
        return rf"\delta_{{{idx}}}"
    return rf"\frac{{\partial L}}{{\partial {primal_tex}}}"
