"""Activation functions: one declaration each; SymPy does the calculus.

Every activation is a scalar SymPy expression in ``x`` (softmax, which couples a
row, is the one exception and lives in :mod:`symgrad.ops`).  From that single
declaration we compute

* ``derivative``: f′(x) by ``sympy.diff``, kept in the textbook form
  (d tanh = 1 − tanh², dσ = σ(1 − σ), relu′ = [x > 0], softplus′ = σ);
* ``output_derivative``: f′ written in terms of the layer's output ``a = f(x)``
  where such a form exists (1 − a², a(1 − a), [a > 0]), which lets generated code
  reuse the forward value instead of recomputing from ``z``.

Output forms are searched for automatically (substitute f(x) → a, then solve
a = f(x) for x); a declaration may also give one as a *hint*, which is only
accepted once :func:`output_form_holds` proves it.
"""

from __future__ import annotations

import cmath
import difflib
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import sympy as sp

from symgrad import budget

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "X",
    "A",
    "sigmoid",
    "softplus",
    "custom_activation",
    "get_activation",
    "output_form_holds",
]

X = sp.Symbol("x", real=True)
A = sp.Symbol("a", real=True)


# --------------------------------------------------------------------------
# Named scalar functions SymPy does not have, with their textbook derivatives
# --------------------------------------------------------------------------


class sigmoid(sp.Function):  # noqa: N801  (reads like the math)
    """σ(x) = 1 / (1 + e^(−x)); σ′ = σ(1 − σ)."""

    is_real = True

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sp.exp(-arg))

    def _eval_evalf(self, prec):
        return (1 / (1 + sp.exp(-self.args[0]))).evalf(prec)


class softplus(sp.Function):  # noqa: N801
    """softplus(x) = log(1 + e^x); softplus′ = σ."""

    is_real = True

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return sp.log(1 + sp.exp(arg))

    def _eval_rewrite_as_log(self, arg, **kwargs):
        return sp.log(1 + sp.exp(arg))

    def _eval_evalf(self, prec):
        return sp.log(1 + sp.exp(self.args[0])).evalf(prec)


def expand_named(expr: sp.Expr) -> sp.Expr:
    """Rewrite σ and softplus into exp/log (the 'raw' form SymPy proves against)."""
    return expr.replace(
        lambda e: isinstance(e, sigmoid | softplus), lambda e: e.rewrite(sp.exp)
    )


# --------------------------------------------------------------------------
# The declaration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """An elementwise activation f, declared by its SymPy expression in ``x``.

    ``text``/``latex`` name the function when it is printed applied to a matrix
    (``tanh(Z₁)``, ``\\sigma(Z_1)``).  ``hint`` optionally proposes f′ in terms of
    the output ``a``; it is used only if :func:`output_form_holds` proves it.
    """

    name: str
    expr: sp.Expr | None
    text: str
    latex: str
    hint: sp.Expr | None = None
    init: str = "glorot"  # weight initialisation that suits it: "he" or "glorot"

    @cached_property
    def raw_derivative(self) -> sp.Expr | None:
        """f′(x) exactly as ``diff`` returns it: always correct, never simplified.

        The one step that cannot fall back; :meth:`resolve` bounds it."""
        return None if self.expr is None else sp.diff(self.expr, X)

    @property
    def _forms(self) -> tuple[sp.Expr | None, sp.Expr | None]:
        return _derivative_forms(self)

    @property
    def derivative(self) -> sp.Expr | None:
        """f′(x) in textbook form (None for the row-wise softmax)."""
        return self._forms[0]

    @property
    def output_derivative(self) -> sp.Expr | None:
        """f′ in terms of a = f(x), where one exists (and was found in the budget)."""
        return self._forms[1]

    def resolve(self, where: str) -> Activation:
        """Compute the derivative forms now, so that an activation too complex for even
        the plain derivative is refused as ``<where>: too complex to simplify in 20 s``."""
        if self.expr is not None:
            budget.within(budget.DERIVATIVE_SECONDS, where, self.name, lambda: self.raw_derivative)
            _ = self._forms
        return self

    @property
    def is_rowwise(self) -> bool:
        return self.expr is None

    @property
    def analytic(self) -> bool:
        """True when f is analytic everywhere (complex step applies)."""
        if self.expr is None:
            return True
        return not self.expr.has(sp.Piecewise, sp.Abs, sp.sign, sp.Max, sp.Min, sp.Heaviside)

    def __call__(self, arg: sp.Expr) -> sp.Expr:
        return self.expr.xreplace({X: arg})


@lru_cache(maxsize=1024)
def _derivative_forms(act: Activation) -> tuple[sp.Expr | None, sp.Expr | None]:
    """(textbook f′, f′ in terms of a) of ``act``, found within one shared budget of
    :data:`~symgrad.budget.SIMPLIFY_SECONDS`: a search that runs out keeps the plain
    derivative (and no output form), since simpler forms are optional.  Cached by
    value: the same activation re-parsed (``Spec.with_sizes``) is not searched again."""
    d = act.raw_derivative
    if d is None:
        return None, None
    # a built-in's forms are part of the table, found the same way whatever the budget left
    # (their cost is small and known): only a user's activation can make its search run out
    end = math.inf if ACTIVATIONS.get(act.name) == act else budget.optional_end(
        budget.SIMPLIFY_SECONDS)
    tidy = optional(end, textbook, d, default=d)
    if act.hint is not None:  # a declared hint is proved, never skipped
        return tidy, find_output_form(act, d)
    return tidy, optional(end, find_output_form, act, d, default=None)


def optional(end: float, fn, *args, default):
    """``fn(*args)`` if it finishes before the clock time ``end``, else ``default``."""
    if end == math.inf:  # no budget (a built-in's forms)
        return fn(*args)
    left = end - budget.clock()
    if left <= 0:
        return default
    try:
        with budget.deadline(left):
            return fn(*args)
    except budget.EXHAUSTED:
        return default


def textbook(d: sp.Expr) -> sp.Expr:
    """Tidy a raw derivative toward the form a person writes.

    ``simplify`` alone turns 1 − tanh² into cosh⁻² and σ(1 − σ) into 1/(4cosh²(x/2)),
    so it is only one candidate: the shortest of {as derived, common terms factored,
    simplified} wins, and a candidate that brings in hyperbolic functions the raw
    derivative did not have is refused.
    """
    if d.has(sp.Piecewise):
        return fold(d)
    d = d.subs(X * sp.sign(X), sp.Abs(X))  # x·sign(x) = |x| for real x
    candidates = [d, sp.factor_terms(d)]
    simplified = sp.simplify(d)
    if not (simplified.has(sp.cosh, sp.sinh) and not d.has(sp.cosh, sp.sinh)):
        candidates.append(simplified)
    return min(candidates, key=sp.count_ops)


#: at most this many branches from folding a Piecewise out of sums and products (a sum of
#: k where() terms folds into 2^k branches); past it each where() stays where it stands
FOLD_BRANCHES = 16


def fold_branches(expr: sp.Expr) -> int:
    """An upper bound on the branches of ``piecewise_fold(expr)`` (found without folding):
    the product of the pieces of every Piecewise in it, counted up to FOLD_BRANCHES + 1."""
    count = 1
    for pw in expr.atoms(sp.Piecewise):
        count *= len(pw.args)
        if count > FOLD_BRANCHES:
            break
    return count


def fold(expr: sp.Expr) -> sp.Expr:
    """``piecewise_fold(expr)`` when it gives a few branches; else ``expr`` as it is (the
    same function: every Piecewise then stays where it stands, never 2^k branches)."""
    return sp.piecewise_fold(expr) if fold_branches(expr) <= FOLD_BRANCHES else expr


def output_form_holds(act: Activation, form: sp.Expr) -> bool:
    """Prove f′(x) = form(a) with a = f(x).

    Piecewise activations are proved piece by piece (each piece of the form against
    the derivative of the matching piece of f, symbolically), and the pieces'
    conditions are checked to select the same piece on both sides of every break.
    """
    assert act.expr is not None
    f = sp.piecewise_fold(act.expr)
    form = sp.piecewise_fold(form)
    if isinstance(f, sp.Piecewise) and isinstance(form, sp.Piecewise):
        if len(f.args) != len(form.args):
            return False
        for (fi, _), (gi, _) in zip(f.args, form.args, strict=True):
            if not _is_zero(gi.xreplace({A: fi}) - sp.diff(fi, X)):
                return False
        return all(
            _piece(f, v) == _piece(form, f.subs(X, v)) for v in (-2.5, -1, -1e-3, 0, 1e-3, 1, 2.5)
        )
    return _is_zero(form.xreplace({A: f}) - sp.diff(f, X))


def _piece(pw: sp.Piecewise, value) -> int:
    sym = X if pw.has(X) else A
    for i, (_, cond) in enumerate(pw.args):
        if cond is sp.true or bool(cond.subs(sym, value)):
            return i
    return -1


def _is_zero(e: sp.Expr) -> bool:
    e = expand_named(e)
    return e == 0 or sp.simplify(e) == 0


def find_output_form(act: Activation, d: sp.Expr) -> sp.Expr | None:
    """f′ in terms of a = f(x), or None when there is none (or none found)."""
    f = act.expr
    if act.hint is not None:
        if output_form_holds(act, act.hint):
            return act.hint
        raise ValueError(f"activation {act.name}: output-form hint {act.hint} is wrong")
    if f == X:
        return sp.Integer(1)
    if getattr(type(f), "abstract", False):  # the cross-check's undefined f_l
        return None
    # 1) direct substitution: catches tanh, σ, exp and anything written via f itself
    direct = d.xreplace({f: A}) if not isinstance(f, sp.Symbol) else d
    if not direct.has(X):
        return direct
    # 2) invert a = f(x) when SymPy can do it cheaply and uniquely
    # only where x occurs once (solve then just inverts); a mix such as x·σ(1.7x)
    # sends solve into a search of minutes
    if f.has(sp.Piecewise, sp.Abs, sp.sign, sp.Max, sp.Min) or expand_named(f).count(X) != 1:
        return None
    try:
        sols = sp.solve(sp.Eq(A, expand_named(f)), X)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if len(sols) != 1:
        return None
    form = sp.simplify(expand_named(d).xreplace({X: sols[0]}))
    if form.has(X) or sp.count_ops(form) > 2 * sp.count_ops(d) + 4:
        return None
    if _new_heads(form, expand_named(d)):  # erf(erf(x)) → erfinv(a): no numpy form
        return None
    return form if output_form_holds_quick(act, form) else None


def _new_heads(form: sp.Expr, d: sp.Expr) -> set[type]:
    """The functions of an inverted form that the derivative itself does not use (the
    inverse SymPy's solve brought in: erfinv, LambertW, …): such a form is not kept, the
    derivative in x is (it has a numpy form wherever f has)."""
    def heads(e):
        return {type(f) for f in e.atoms(sp.Function)}
    return heads(form) - heads(d)


def output_form_holds_quick(act: Activation, form: sp.Expr) -> bool:
    """Numeric spot-check of an inverted form (solve may pick a branch)."""
    d = sp.diff(act.expr, X)
    checked = 0
    for v in (-1.3, -0.4, 0.2, 0.7, 1.9):
        try:
            a = complex(act.expr.subs(X, v).evalf())
            lhs = complex(d.subs(X, v).evalf())
            rhs = complex(form.subs(A, a).evalf())
        except (OverflowError, ZeroDivisionError):  # e^e^e^e^e^x: no number at this point
            continue
        except (TypeError, ValueError):
            return False
        if not all(cmath.isfinite(z) for z in (a, lhs, rhs)):
            continue
        if abs(lhs - rhs) > 1e-9 * max(1.0, abs(lhs)):
            return False
        checked += 1
    return checked >= 3


# --------------------------------------------------------------------------
# Built-ins: one line each
# --------------------------------------------------------------------------

_x = X
_pos = _x > 0
SELU_LAMBDA = sp.Float("1.0507009873554804934193349852946", 17)
SELU_ALPHA = sp.Float("1.6732632423543772848170429916717", 17)
LEAKY_SLOPE = sp.Rational(1, 100)

_BUILTINS = [
    Activation("identity", _x, "", ""),
    Activation("relu", sp.Piecewise((_x, _pos), (0, True)), "relu", r"\operatorname{relu}",
               hint=sp.Piecewise((1, A > 0), (0, True)), init="he"),
    Activation("leaky_relu", sp.Piecewise((_x, _pos), (LEAKY_SLOPE * _x, True)),
               "leaky_relu", r"\operatorname{leaky\_relu}",
               hint=sp.Piecewise((1, A > 0), (LEAKY_SLOPE, True)), init="he"),
    Activation("elu", sp.Piecewise((_x, _pos), (sp.exp(_x) - 1, True)), "elu",
               r"\operatorname{elu}", hint=sp.Piecewise((1, A > 0), (A + 1, True)), init="he"),
    Activation("selu", SELU_LAMBDA * sp.Piecewise((_x, _pos), (SELU_ALPHA * (sp.exp(_x) - 1), True)),
               "selu", r"\operatorname{selu}",
               hint=sp.Piecewise((SELU_LAMBDA, A > 0), (A + SELU_LAMBDA * SELU_ALPHA, True)),
               init="he"),
    Activation("tanh", sp.tanh(_x), "tanh", r"\tanh"),
    Activation("sigmoid", sigmoid(_x), "σ", r"\sigma"),
    Activation("softplus", softplus(_x), "softplus", r"\operatorname{softplus}"),
    Activation("softsign", _x / (1 + sp.Abs(_x)), "softsign", r"\operatorname{softsign}",
               hint=(1 - sp.Abs(A)) ** 2),
    Activation("silu", _x * sigmoid(_x), "silu", r"\operatorname{silu}"),
    Activation("gelu", _x / 2 * (1 + sp.erf(_x / sp.sqrt(2))), "gelu", r"\operatorname{gelu}"),
    Activation("gelu_tanh",
               _x / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (_x + sp.Rational(44715, 10**6) * _x**3))),
               "gelu_tanh", r"\operatorname{gelu_{tanh}}"),
    Activation("mish", _x * sp.tanh(softplus(_x)), "mish", r"\operatorname{mish}"),
    Activation("sin", sp.sin(_x), "sin", r"\sin"),
    Activation("softmax", None, "softmax", r"\operatorname{softmax}"),
]

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _BUILTINS}


def get_activation(name: str) -> Activation:
    """The built-in called ``name``; KeyError with a suggestion otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        close = difflib.get_close_matches(name, ACTIVATIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise KeyError(f"unknown activation '{name}'{hint}") from None


def custom_activation(expr: sp.Expr, source: str) -> Activation:
    """A user activation f(x) = expr (already parsed safely into SymPy)."""
    return Activation(name=source, expr=expr, text="f", latex="f")
