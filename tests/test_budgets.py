"""Budgets on the SymPy work behind ``derive`` (hardening issue 10, class 4).

Simplifying a user's activation or loss is optional: within
:data:`symgrad.budget.SIMPLIFY_SECONDS` the textbook form, past it the plain derivative,
which must still be right.  Where even the plain derivative cannot be had, the spec is
refused in one line.  The tests lower the budget so that the hard cases cost little.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mpmath
import pytest
import sympy as sp
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from symgrad import budget
from symgrad.activations import A, X, expand_named
from symgrad.cli import main
from symgrad.derive import derive
from symgrad.errors import SymgradError
from symgrad.losses import YHAT, Y
from symgrad.spec import Layer, Spec

LOGLOG = "log(" * 8 + "x" + ")" * 8  # 42 characters: simplify alone takes minutes
ABS7 = "abs(" * 7 + "x" + " - 1)" * 7
SUM24 = " + ".join(f"sigmoid({i}*x)*softplus(x/{i + 1})" for i in range(1, 25))


def _forget_forms() -> None:
    """Forms found under a lowered budget are not the ones the default finds: forget them."""
    from symgrad import activations, losses

    activations._derivative_forms.cache_clear()
    losses._tidy_derivative.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_forms() -> Iterator[None]:
    yield
    _forget_forms()


@contextmanager
def simplify_budget(seconds: float) -> Iterator[None]:
    saved = budget.SIMPLIFY_SECONDS
    budget.SIMPLIFY_SECONDS = seconds
    try:
        yield
    finally:
        budget.SIMPLIFY_SECONDS = saved
        _forget_forms()


_KINKS = (sp.Abs, sp.sign, sp.Piecewise, sp.Max, sp.Min, sp.Heaviside)


def _at(e: sp.Expr, var: sp.Symbol, analytic: bool):
    """e as a function of ``var`` in 40-digit mpmath arithmetic: a finite number (complex
    only for an ``analytic`` function, where the derivative holds off the real line too),
    or None."""
    fn = sp.lambdify(var, expand_named(e), "mpmath")

    def value(v):
        try:
            out = mpmath.mpmathify(fn(v))
        except (ValueError, TypeError, ZeroDivisionError, OverflowError):
            return None
        if not mpmath.isfinite(out) or abs(out) > 1e30:
            return None
        if abs(mpmath.im(out)) > 1e-30:
            return out if analytic else None
        return mpmath.re(out)

    return value


def assert_derivative_right(f: sp.Expr, d: sp.Expr, out: sp.Expr | None = None) -> int:
    """d = f′ (and out(a = f) = f′) at the points where f is real and finite, against a
    40-digit central difference; returns how many points were compared."""
    compared = 0
    with mpmath.workdps(40):
        h = mpmath.mpf("1e-18")
        analytic = not f.has(*_KINKS)
        f_at, d_at = _at(f, X, analytic), _at(d, X, analytic)
        out_at = None if out is None else _at(out, A, analytic)
        for x0 in ("-2.3", "-0.7", "0.45", "1.3", "2.6", "7.1"):
            x = mpmath.mpf(x0)
            values = [f_at(x + s * h) for s in (-1, 0, 1)]
            mine = d_at(x)
            if None in values or mine is None:
                continue
            fd = (values[2] - values[0]) / (2 * h)
            assert abs(mine - fd) <= 1e-12 * max(1, abs(fd)), (str(d), x0, mine, fd)
            if out_at is not None:
                via_a = out_at(values[1])
                assert via_a is not None and abs(via_a - fd) <= 1e-12 * max(1, abs(fd)), (
                    str(out), x0)
            compared += 1
    return compared


_UNARY = ("exp({})", "log({})", "tanh({})", "sigmoid({})", "softplus({})", "sin({})",
          "abs({} - 1)", "log(1 + {}**2)", "sqrt(1 + {}**2)", "erf({})", "relu({})")


def nested_activations() -> st.SearchStrategy[str]:
    """Compositions of the allowed functions, with sums and products of them."""
    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(str.format, st.sampled_from(_UNARY), children),
            st.builds("{} * {}".format, children, children),
            st.builds("{} + {}".format, children, children),
        )

    return st.recursive(st.just("x"), extend, max_leaves=6)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(source=nested_activations())
@example(source=LOGLOG)
@example(source=ABS7)
@example(source=SUM24)
def test_nested_activations_derive_right_or_refuse_in_one_line(source):
    try:
        spec = Spec("b", 2, (Layer(3, source), Layer(1, "identity")), loss="mse")
    except SymgradError:  # refused at the edge (parse limits): not this test's concern
        assume(False)
        return
    with simplify_budget(0.25):
        try:
            d = derive(spec)
        except SymgradError as e:
            assert e.one_line() == (
                f"symgrad: error: layer.activation: too complex to simplify in 0.25 s: {source}")
            return
    fn = spec.layers[0].fn
    assert fn.derivative is not None
    assert_derivative_right(fn.expr, fn.derivative, fn.output_derivative)
    assert "δ₁" in d.text()


def test_over_the_budget_the_plain_derivative_is_kept():
    """The three hangs of the issue: each keeps a correct derivative, simplified or not."""
    with simplify_budget(1.0):
        for source in (LOGLOG, ABS7, SUM24):
            fn = Layer(3, source).fn.resolve("here")
            assert fn.derivative is not None
            assert assert_derivative_right(fn.expr, fn.derivative, fn.output_derivative) >= 2


def test_a_loss_over_the_budget_keeps_its_plain_derivative():
    source = "log(1 + " + "log(1 + " * 6 + "(yhat - y)**2" + ")" * 7
    spec = Spec("b", 2, (Layer(1, "identity"),), loss=None, loss_expr=source)
    with simplify_budget(0.05):
        derive(spec)
        d = spec.loss_fn.derivative
    point = {YHAT: sp.Float("0.7", 40), Y: sp.Float("-0.4", 40)}
    exact = sp.diff(spec.loss_fn.expr, YHAT).evalf(40, subs=point)
    assert abs(d.evalf(40, subs=point) - exact) < 1e-30


def _spec_file(tmp_path, activation: str):
    path = tmp_path / "hard.toml"
    path.write_text(
        '[network]\nname = "hard"\ninputs = 3\n\n[[layer]]\nunits = 4\n'
        f'activation = "{activation}"\n\n[[layer]]\nunits = 2\nactivation = "identity"\n\n'
        '[loss]\nkind = "mse"\n',
        encoding="utf-8",
    )
    return path


def test_cli_derive_of_a_hard_activation_prints_the_formulas(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget, "SIMPLIFY_SECONDS", 0.25)
    path = _spec_file(tmp_path, LOGLOG)
    assert main(["derive", str(path)]) == 0
    out = capsys.readouterr().out
    assert "δ₁ = ∂L/∂Z₁ = (δ₂ W₂ᵀ) ⊙ 1/(Z₁ ⊙ log(Z₁) ⊙ log(log(Z₁))" in out


@pytest.mark.parametrize("activation", [LOGLOG, ABS7])
def test_cli_refuses_in_one_line_when_even_the_derivative_is_over(
        tmp_path, capsys, monkeypatch, activation):
    """No usable derivative within the budget: exit 2 and exactly one line."""
    monkeypatch.setattr(budget, "SIMPLIFY_SECONDS", 1e-9)
    monkeypatch.setattr(budget, "DERIVATIVE_SECONDS", 1e-9)
    path = _spec_file(tmp_path, activation)
    assert main(["derive", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"symgrad: error: {path}: layer[1].activation: too complex to "
                            f"simplify in 1e-09 s: {activation}\n")


@pytest.mark.parametrize("activation", [LOGLOG, ABS7])
def test_prove_of_a_hard_activation_ends_within_its_budgets(monkeypatch, activation):
    """Every step either proves or says it ran out; the derivative is never left wrong."""
    from symgrad.crosscheck import prove

    monkeypatch.setattr(budget, "SIMPLIFY_SECONDS", 0.2)
    spec = Spec("h", 2, (Layer(2, activation), Layer(1, "identity")), loss="mse")
    report = prove(spec, progress=None)
    assert report.ok, report.text()
    spot = report.claims[-1]
    assert spot.skipped == (spot.detail == "not done: over the budget of 0.2 s")


def test_hard_activations_in_several_layers_share_one_budget():
    """The optional work of one derive shares one clock (budget.shared_budget): each
    layer still gets a correct derivative, simplified or not."""
    with simplify_budget(1.0):  # the plain derivative of SUM24 alone takes 0.1-0.3 s
        spec = Spec("h", 2, (Layer(2, LOGLOG), Layer(2, ABS7), Layer(2, SUM24),
                             Layer(1, "identity")), loss="mse")
        derive(spec)
        for layer in spec.layers[:3]:
            fn = layer.fn
            assert assert_derivative_right(fn.expr, fn.derivative, fn.output_derivative) >= 2
