"""Losses: one declaration each, a per-element SymPy expression ℓ(ŷ, y).

The network's loss is the mean over samples of Σ_k ℓ(ŷ_k, y_k) (DESIGN,
Conventions).  SymPy computes ∂ℓ/∂ŷ from the declaration.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cached_property, lru_cache

import sympy as sp

from symgrad import budget
from symgrad.activations import fold

__all__ = ["LOSSES", "Loss", "YHAT", "Y", "custom_loss", "get_loss"]

YHAT = sp.Symbol("yhat", real=True)
Y = sp.Symbol("y", real=True)


@dataclass(frozen=True)
class Loss:
    """A per-element loss ℓ(ŷ, y).

    ``outputs`` lists the output activations it is defined for (None: any).
    ``text``/``latex`` name it in printed formulas.
    """

    name: str
    expr: sp.Expr
    text: str
    latex: str
    outputs: tuple[str, ...] | None = None

    @cached_property
    def raw_derivative(self) -> sp.Expr:
        """∂ℓ/∂ŷ exactly as ``diff`` returns it (always correct)."""
        return sp.diff(self.expr, YHAT)

    @property
    def derivative(self) -> sp.Expr:
        """∂ℓ/∂ŷ, tidied (Abs′ = sign, Piecewise folded) within
        :data:`~symgrad.budget.SIMPLIFY_SECONDS`; past it, the plain derivative."""
        return _tidy_derivative(self)

    def resolve(self, where: str) -> Loss:
        """Compute ∂ℓ/∂ŷ now; a loss too complex for even the plain derivative is
        refused as ``<where>: too complex to simplify in 20 s``."""
        budget.within(budget.DERIVATIVE_SECONDS, where, self.text, lambda: self.raw_derivative)
        _ = self.derivative
        return self

    @property
    def analytic(self) -> bool:
        return not self.expr.has(sp.Piecewise, sp.Abs, sp.sign, sp.Max, sp.Min)

    def __call__(self, yhat: sp.Expr, y: sp.Expr) -> sp.Expr:
        return self.expr.xreplace({YHAT: yhat, Y: y})


@lru_cache(maxsize=256)
def _tidy_derivative(loss: Loss) -> sp.Expr:
    """Cached by value: a re-parsed equal loss is not simplified again."""
    d = loss.raw_derivative
    left = budget.optional_end(budget.SIMPLIFY_SECONDS) - budget.clock()
    if left <= 0:
        return d
    try:
        with budget.deadline(left):
            if d.has(sp.Piecewise):
                return fold(d)  # a few branches, never 2^k
            simplified = sp.factor_terms(sp.simplify(d))
            return min((d, simplified), key=sp.count_ops)
    except budget.EXHAUSTED:
        return d


_r = YHAT - Y
HUBER_DELTA = sp.Integer(1)

_BUILTINS = [
    Loss("mse", _r**2 / 2, "½(Ŷ − Y)²", r"\tfrac{1}{2}(\hat{Y} - Y)^{2}"),
    Loss("mae", sp.Abs(_r), "|Ŷ − Y|", r"\lvert \hat{Y} - Y \rvert"),
    Loss(
        "huber",
        sp.Piecewise(
            (_r**2 / 2, sp.Abs(_r) <= HUBER_DELTA),
            (HUBER_DELTA * (sp.Abs(_r) - HUBER_DELTA / 2), True),
        ),
        "huber(Ŷ − Y)",
        r"\operatorname{huber}(\hat{Y} - Y)",
    ),
    Loss("cross_entropy", -Y * sp.log(YHAT), "−Y ⊙ log Ŷ", r"-Y \odot \log \hat{Y}",
         outputs=("softmax",)),
    Loss(
        "binary_cross_entropy",
        -(Y * sp.log(YHAT) + (1 - Y) * sp.log(1 - YHAT)),
        "−[Y ⊙ log Ŷ + (1 − Y) ⊙ log(1 − Ŷ)]",
        r"-\left[Y \odot \log \hat{Y} + (1 - Y) \odot \log(1 - \hat{Y})\right]",
        outputs=("sigmoid",),
    ),
]

LOSSES: dict[str, Loss] = {loss.name: loss for loss in _BUILTINS}


def get_loss(name: str) -> Loss:
    """The built-in called ``name``; KeyError with a suggestion otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, LOSSES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise KeyError(f"unknown loss '{name}'{hint}") from None


def custom_loss(expr: sp.Expr, source: str) -> Loss:
    """A user loss ℓ(ŷ, y) = expr (already parsed safely into SymPy)."""
    return Loss(name="custom", expr=expr, text=f"ℓ(Ŷ, Y) = {source}", latex=r"\ell(\hat{Y}, Y)")
