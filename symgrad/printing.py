"""Printing the derivation as a person writes it: text (Unicode), LaTeX, Markdown.

Two layers of printers, both SymPy ``Printer`` subclasses dispatching on
``_print_<Class>``:

* scalar printers (:class:`TextScalarPrinter`, :class:`LatexScalarPrinter`) print
  the SymPy expressions inside elementwise maps — ``1 − A₁²``, ``Ŷ ⊙ (1 − Ŷ)`` —
  with a product of matrices written ⊙ and a piecewise function as Iverson brackets;
* matrix printers (:class:`TextPrinter`, :class:`LatexPrinter`) print the
  matrix-level trees of :mod:`symgrad.ops`.

Text, LaTeX and Markdown share one layout (:func:`render`); only the printer differs.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.latex import LatexPrinter as _SympyLatex
from sympy.printing.printer import Printer
from sympy.printing.str import StrPrinter

from symgrad import naming
from symgrad.activations import X as X_SYM
from symgrad.activations import expand_named
from symgrad.layers import KINDS
from symgrad.losses import YHAT, Y
from symgrad.ops import (
    L1,
    L2,
    ColSlice,
    ColSum,
    Concat,
    Dropout,
    Hadamard,
    InvStd,
    Map,
    N,
    Node,
    RowSum,
    Standardize,
    Sym,
    is_ones,
)

__all__ = ["TextPrinter", "LatexPrinter", "render", "text", "latex", "derivation_latex"]

ATOM, POSTFIX, MATMUL, HADAMARD, SCALE, ADD = 100, 90, 60, 50, 40, 10
_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_FUNC_TEXT = {"sigmoid": "σ", "Abs": None, "sign": "sign", "log": "log", "exp": "exp"}
_COEF_TEXT = {N: "N", L1: "λ₁", L2: "λ₂"}
_COEF_LATEX = {N: "N", L1: r"\lambda_{1}", L2: r"\lambda_{2}"}
_WIDTH = re.compile(r"n_(\d+)\Z")  # the width n_l of layer l (graph.width): n₄ in text


# --------------------------------------------------------------------------
# Scalar printers (bodies of elementwise maps, scalar facts)
# --------------------------------------------------------------------------


class TextScalarPrinter(StrPrinter):
    """Unicode, elementwise: a·b → a ⊙ b, a² , [a > 0], σ(z), |r|."""

    def __init__(self, names: dict[sp.Symbol, str] | None = None, elementwise: bool = True):
        super().__init__()
        self.names = {**_COEF_TEXT, **(names or {})}
        self.times = " ⊙ " if elementwise else "·"

    def _print_Symbol(self, e):
        if e in self.names:
            return self.names[e]
        m = _WIDTH.match(e.name)
        return "n" + m.group(1).translate(naming._SUB) if m else e.name

    def _atomic(self, e) -> str:
        s = self._print(e)
        return s if isinstance(e, sp.Symbol | sp.Function | sp.Number) and not (
            isinstance(e, sp.Number) and e < 0
        ) or isinstance(e, sp.Abs) else f"({s})"

    def _print_Add(self, e, order=None):
        terms = sorted(e.as_ordered_terms(), key=lambda t: bool(t.as_coeff_Mul()[0].is_negative))
        out = self._print(terms[0])
        for t in terms[1:]:
            c, _ = t.as_coeff_Mul()
            out += f" − {self._print(-t)}" if c < 0 else f" + {self._print(t)}"
        return out

    def _print_Mul(self, e):
        c, rest = e.as_coeff_Mul()
        if c < 0:
            return "−" + (self._print(-e) if not isinstance(-e, sp.Add) else f"({self._print(-e)})")
        num, den = [], []
        if c != 1:
            p, q = sp.fraction(c)
            if p != 1:
                num.append(self._print(p))
            if q != 1:
                den.append(self._print(q))
        for f in sorted(sp.Mul.make_args(rest), key=lambda f: isinstance(f, sp.Add)):
            if f.is_Pow and f.exp.is_number and f.exp < 0:
                den.append(self._power(f.base, -f.exp))
            else:
                num.append(self._atomic(f) if not f.is_Pow else self._print(f))
        top = self.times.join(num) if num else "1"
        if not den:
            return top
        bottom = den[0] if len(den) == 1 else "(" + self.times.join(den) + ")"
        return f"{top}/{bottom}" if len(num) <= 1 else f"({top})/{bottom}"

    def _power(self, base, exp) -> str:
        if exp == 1:
            return self._atomic(base)
        if exp.is_Integer and 0 < exp < 10:
            return self._atomic(base) + str(exp).translate(_SUP)
        if exp == sp.Rational(1, 2):
            return f"√{self._atomic(base)}"
        return f"{self._atomic(base)}^({self._print(exp)})"

    def _print_Pow(self, e):
        if e.exp.is_number and e.exp < 0:
            return f"1/{self._power(e.base, -e.exp)}"
        if e.base == sp.E:
            return f"exp({self._print(e.exp)})"
        return self._power(e.base, e.exp)

    def _print_Function(self, e):
        name = type(e).__name__
        args = ", ".join(self._print(a) for a in e.args)
        return f"{_FUNC_TEXT.get(name) or name}({args})"

    def _print_Abs(self, e):
        return f"|{self._print(e.args[0])}|"

    def _print_Relational(self, e):
        op = {">": ">", "<": "<", ">=": "≥", "<=": "≤"}.get(e.rel_op, e.rel_op)
        return f"{self._print(e.lhs)} {op} {self._print(e.rhs)}"

    def _print_Piecewise(self, e):
        return self._print_Add_terms(iverson_terms(e), self._print)

    def _print_Add_terms(self, terms, pr):
        parts = []
        for value, cond in terms:
            bracket = f"[{pr(cond)}]"
            if value == 1:
                parts.append(bracket)
            else:
                parts.append(f"{self._atomic(value)} {bracket}")
        return " + ".join(parts) if parts else "0"

    def _print_Float(self, e):
        return repr(float(e))

    def _print_Rational(self, e):
        q = e.q
        while q % 10 == 0:
            q //= 10
        return str(float(e)) if q == 1 else f"{e.p}/{e.q}"  # 1/100 → 0.01

    def _print_Exp1(self, e):
        return "e"

    def _print_Pi(self, e):
        return "π"


def iverson_terms(pw: sp.Piecewise) -> list[tuple[sp.Expr, sp.Basic]]:
    """Piecewise((v1, c1), (v2, True)) → [(v1, c1), (v2, ¬c1)], dropping zero pieces."""
    terms, previous = [], []
    for value, cond in pw.args:
        if cond is sp.true:
            cond = sp.And(*[sp.Not(p) for p in previous]) if previous else sp.true
            if cond.has(sp.Not):  # ¬(a ∧ b) → ¬a ∨ ¬b: relations negated, no ¬ left
                cond = cond.to_nnf()
        if value != 0:
            terms.append((value, cond))
        previous.append(cond if cond is not sp.true else cond)
    return terms


class LatexScalarPrinter(_SympyLatex):
    """LaTeX, elementwise: products with \\odot, Iverson brackets, σ."""

    def __init__(self, names: dict[sp.Symbol, str] | None = None, elementwise: bool = True):
        super().__init__({"mul_symbol": None})
        self.names = {**_COEF_LATEX, **(names or {})}
        self.times = r" \odot " if elementwise else " "

    def _print_Symbol(self, e, style="plain"):
        return self.names.get(e, super()._print_Symbol(e))

    def _wrap(self, e) -> str:
        s = self._print(e)
        simple = isinstance(e, sp.Symbol | sp.Function | sp.Abs) or (isinstance(e, sp.Number) and e >= 0)
        return s if simple else rf"\left({s}\right)"

    def _print_Mul(self, e):
        c, rest = e.as_coeff_Mul()
        if c < 0:
            inner = self._print(-e)
            return "-" + (rf"\left({inner}\right)" if isinstance(-e, sp.Add) else inner)
        num, den = [], []
        if c != 1:
            p, q = sp.fraction(c)
            if p != 1:
                num.append(self._print(p))
            if q != 1:
                den.append(self._print(q))
        for f in sorted(sp.Mul.make_args(rest), key=lambda f: isinstance(f, sp.Add)):
            if f.is_Pow and f.exp.is_number and f.exp < 0:
                den.append(self._print(f.base ** (-f.exp)) if -f.exp != 1 else self._print(f.base))
            else:
                num.append(self._wrap(f) if not f.is_Pow else self._print(f))
        top = self.times.join(num) if num else "1"
        if not den:
            return top
        bottom = self.times.join(den)
        return rf"\frac{{{top}}}{{{bottom}}}"

    def _print_Pow(self, e):
        if e.exp.is_number and e.exp < 0:
            return rf"\frac{{1}}{{{self._print(e.base ** (-e.exp))}}}"
        if e.base == sp.E:
            return rf"e^{{{self._print(e.exp)}}}"
        if e.exp == sp.Rational(1, 2):
            return rf"\sqrt{{{self._print(e.base)}}}"
        return f"{self._wrap(e.base)}^{{{self._print(e.exp)}}}"

    def _print_sigmoid(self, e, exp=None):
        return rf"\sigma\left({self._print(e.args[0])}\right)"

    def _print_softplus(self, e, exp=None):
        return rf"\operatorname{{softplus}}\left({self._print(e.args[0])}\right)"

    def _print_Piecewise(self, e):
        parts = []
        for value, cond in iverson_terms(e):
            bracket = rf"\left[{self._print(cond)}\right]"
            parts.append(bracket if value == 1 else f"{self._wrap(value)} {bracket}")
        return " + ".join(parts) if parts else "0"

    def _print_Float(self, e):
        return repr(float(e))


# --------------------------------------------------------------------------
# Matrix printers
# --------------------------------------------------------------------------


class _MatrixPrinter(Printer):
    """Shared precedence logic; subclasses give the symbols."""

    scalar_printer: type
    name = staticmethod(naming.text)
    form = "text"  # the op method that gives a node's form in this printer (text, latex)
    ATOM, POSTFIX, MATMUL, HADAMARD, SCALE, ADD = ATOM, POSTFIX, MATMUL, HADAMARD, SCALE, ADD

    means_in_front = True  # see leads(); set per class below

    def __init_subclass__(cls, **kwargs):
        # (1/N) in front of a mean is the network printers' form; the expression mode's
        # printers (subclasses in other modules) keep the fraction they always printed
        super().__init_subclass__(**kwargs)
        cls.means_in_front = cls.__module__ == __name__

    def emptyPrinter(self, node):  # noqa: N802 - SymPy's name; a node without _print_<Class>
        if isinstance(node, Node) and node.declares(self.form):
            return getattr(node, self.form)(self)  # the op's own printed form
        if isinstance(node, Node):  # never a dataclass repr in a formula or a comment
            raise NotImplementedError(f"{type(node).__name__} has no {self.form} form")
        return super().emptyPrinter(node)

    def prec(self, node: Node) -> int:
        if isinstance(node, Node) and node.precedence is not None:
            return node.precedence
        return {
            "Sym": ATOM, "Const": ATOM, "Transpose": POSTFIX, "ColSum": MATMUL,
            "MatMul": MATMUL, "Hadamard": HADAMARD, "Scale": SCALE, "Add": ADD, "Sub": ADD,
            "BiasAdd": ADD, "Elementwise": ATOM, "Softmax": ATOM, "RowSum": ATOM,
            "SqNormHalf": ATOM, "AbsSum": ATOM, "MeanLoss": SCALE,
        }.get(type(node).__name__, ATOM if not isinstance(node, Map) else self._map_prec(node))

    def _map_prec(self, node: Map) -> int:
        e = node.expr
        if isinstance(e, sp.Piecewise):
            terms = iverson_terms(e)
            return ATOM if len(terms) == 1 and terms[0][0] == 1 else ADD
        if isinstance(e, sp.Add):
            return ADD
        if isinstance(e, sp.Mul):
            return HADAMARD
        return ATOM

    def paren(self, node: Node, at_least: int) -> str:
        s = self._print(node)
        return s if self.prec(node) >= at_least else self.lparen + s + self.rparen

    lparen, rparen = "(", ")"

    def factor(self, node: Node) -> str:
        """A factor of ⊙: bare if atomic or itself a ⊙ product, else parenthesized
        (a matrix product inside ⊙ is always bracketed, as textbooks do)."""
        return self.paren(node, ATOM) if self.prec(node) != HADAMARD else self._print(node)

    #: a feature map's row count N·h·w (a number times N in the graph) → the symbol printed
    #: for it, N·H_j·W_j (:func:`map_rows`); set per derivation, empty for a flat network
    rows: dict[sp.Expr, sp.Symbol] = {}
    row_names: dict[sp.Symbol, str] = {}

    def sized(self, c: sp.Expr) -> sp.Expr:
        """``c`` with the row counts of feature maps as their symbols (1/(16N) → 1/(N·H₁·W₁))."""
        return sp.sympify(c).xreplace(self.rows) if self.rows else c

    def coef(self, c: sp.Expr) -> str:
        shown = self.sized(c)
        if shown != c:  # a count of rows: a product of scalars, never ⊙
            return self.scalar_printer(self.row_names, elementwise=False)._print(shown)
        return self.scalar_printer()._print(c)

    def map_body(self, node: Map) -> str:
        names = {}
        for s, child in node.args:
            txt = self._print(child)
            names[s] = txt if self.prec(child) >= ATOM else self.lparen + txt + self.rparen
        return self.scalar_printer(names)._print(node.expr)

    def _print_Map(self, node):
        if is_ones(node):  # a constant spread to a matrix (ops.filled)
            return self.ones
        return self.map_body(node)

    def _print_Sym(self, node):
        return self.name(node.name)

    def _print_Const(self, node):
        return self.coef(node.value)

    def _print_Add(self, node):
        return " + ".join(self.paren(t, ADD) for t in node.terms)

    def _print_BiasAdd(self, node):
        return f"{self.paren(node.a, ADD)} + {self.paren(node.b, ADD)}"

    def _print_Sub(self, node):
        return f"{self.paren(node.a, ADD)} {self.minus} {self.paren(node.b, ADD + 1)}"

    def _print_Scale(self, node):
        if self.leads(node):
            return self.leading(node)
        num, den = sp.fraction(node.c)
        body = self.paren(node.x, SCALE + 1 if den == 1 else self.fraction_body_prec)
        lead = "" if num == 1 else self.coef(num) + " "
        if num == -1:
            lead = "-"
        if den == 1:
            return lead + body
        return self.fraction(lead + body, self.denominator(den))

    def leads(self, node) -> bool:
        """Whether the coefficient is written in front, as textbooks write a mean and the
        standardization's rule: (1/N) 𝟏ᵀA, (1/N) 𝟏(σ² + ε)^(−½) ⊙ (…)."""
        num, den = sp.fraction(node.c)
        if num != 1 or den == 1 or not self.means_in_front:
            return False
        x = node.x
        return isinstance(x, ColSum | RowSum) or (isinstance(x, Hadamard)
                                                  and isinstance(x.a, InvStd))

    def leading(self, node) -> str:
        """(1/m) X: the mean of the columns 𝟏ᵀA or of the rows A𝟏, or a product."""
        x = node.x
        if isinstance(x, ColSum):
            body = self.ones_t + self.paren(x.x, MATMUL + 1)
        elif isinstance(x, RowSum):
            body = self.paren(x.x, MATMUL) + self.one
        else:
            body = self._print(x)
        return f"{self.fraction('1', self.denominator(sp.fraction(node.c)[1]), lead=True)} {body}"

    def denominator(self, den: sp.Expr) -> str:
        """A scalar denominator: N, or a product such as 4·N (a product of scalars,
        never ⊙)."""
        return self.scalar_printer(self.row_names, elementwise=False)._print(self.sized(den))

    #: how a width's coefficient is joined to it in a column bound (2n₀; LaTeX 2 n_{0})
    width_times = ""

    def width(self, w: sp.Expr) -> str:
        """A column bound of a slice: 0, n₁, n₁ + n₂, 2n₀ (a number times a width, a
        product of scalars: never ⊙)."""
        pr = self.scalar_printer(elementwise=False)
        pr.times = self.width_times
        return pr._print(w)


class TextPrinter(_MatrixPrinter):
    """Unicode text: X W₁ + b₁, δ₂ W₂ᵀ ⊙ (1 − A₁²), 𝟏ᵀ δ₁."""

    fraction_body_prec = ATOM

    scalar_printer = TextScalarPrinter
    minus = "−"
    ones = "𝟏𝟏ᵀ"
    one, ones_t = "𝟏", "𝟏ᵀ"

    def fraction(self, top, bottom, lead=False):
        if lead:  # a coefficient in front: (1/N), (1/(N·H₁·W₁))
            rows = bottom in self.row_names.values()
            return f"({top}/({bottom}))" if rows else f"({top}/{bottom})"
        return f"{top}/{bottom}" if bottom.isalnum() else f"{top}/({bottom})"

    def _print_MatMul(self, node):
        return f"{self.paren(node.a, MATMUL)} {self.paren(node.b, MATMUL + 1)}"

    def _print_Transpose(self, node):
        return self.paren(node.x, ATOM) + "ᵀ"

    def _print_Hadamard(self, node):
        return f"{self.factor(node.a)} ⊙ {self.factor(node.b)}"

    def _print_ColSum(self, node):
        return f"𝟏ᵀ {self.paren(node.x, MATMUL + 1)}"

    def _print_RowSum(self, node):
        return f"rowsum({self._print(node.x)})"

    def _print_Elementwise(self, node):
        fn = node.fn
        return f"{fn.text}({self._print(node.x)})" if fn.text else self._print(node.x)

    def _print_Softmax(self, node):
        return f"softmax({self._print(node.x)})"

    def _print_MeanLoss(self, node):
        body = self.map_body(Map(node.loss.expr, ((YHAT, node.yhat), (Y, node.y))))
        return f"(1/N) Σ [{body}]"

    def _print_SqNormHalf(self, node):
        return f"½‖{self._print(node.x)}‖²"

    def _print_AbsSum(self, node):
        return f"Σ|{self._print(node.x)}|"


class LatexPrinter(_MatrixPrinter):
    r"""LaTeX: X W_{1} + b_{1}, \delta_{2} W_{2}^\top \odot (1 - A_{1}^{2})."""

    scalar_printer = LatexScalarPrinter
    width_times = " "
    name = staticmethod(naming.latex)
    form = "latex"
    ones = r"\mathbf{1}\mathbf{1}^{\top}"
    one, ones_t = r"\mathbf{1}", r"\mathbf{1}^{\top}"
    minus = "-"
    lparen, rparen = r"\left(", r"\right)"
    fraction_body_prec = 0

    def fraction(self, top, bottom, lead=False):
        return rf"\frac{{{top}}}{{{bottom}}}"

    def _print_MatMul(self, node):
        return f"{self.paren(node.a, MATMUL)} {self.paren(node.b, MATMUL + 1)}"

    def _print_Transpose(self, node):
        return self.paren(node.x, ATOM) + r"^{\top}"

    def _print_Hadamard(self, node):
        return rf"{self.factor(node.a)} \odot {self.factor(node.b)}"

    def _print_ColSum(self, node):
        return rf"\mathbf{{1}}^{{\top}} {self.paren(node.x, MATMUL + 1)}"

    def _print_RowSum(self, node):
        return rf"\operatorname{{rowsum}}\left({self._print(node.x)}\right)"

    def _print_Elementwise(self, node):
        fn = node.fn
        inner = self._print(node.x)
        return rf"{fn.latex}\left({inner}\right)" if fn.latex else inner

    def _print_Softmax(self, node):
        return rf"\operatorname{{softmax}}\left({self._print(node.x)}\right)"

    def _print_MeanLoss(self, node):
        body = self.map_body(Map(node.loss.expr, ((YHAT, node.yhat), (Y, node.y))))
        return rf"\frac{{1}}{{N}} \sum \left[{body}\right]"

    def _print_SqNormHalf(self, node):
        return rf"\tfrac{{1}}{{2}}\lVert {self._print(node.x)} \rVert_F^{{2}}"

    def _print_AbsSum(self, node):
        return rf"\sum \lvert {self._print(node.x)} \rvert"


def text(node: Node) -> str:
    return TextPrinter()._print(node)


def latex(node: Node) -> str:
    return LatexPrinter()._print(node)


# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------


def _lhs(sym: Sym, printer: _MatrixPrinter, fmt: str) -> str:
    name = sym.name
    shown = printer.name(name)
    if name.startswith("dZ"):
        partial = printer.name("d" + "A0")  # template for ∂L/∂·
        z = printer.name(name[1:])
        pd = partial.replace(printer.name("A0"), z)
        return f"{shown} = {pd}"
    return shown


def _rule_note(eq, derivation) -> str:
    """The rule(s) a step applies: an op's readable name and statement (``rule``, ``law``),
    else the op's docstring; a cotangent summed at a fan-out names each part's rule."""
    from symgrad import ops

    rule = eq.rule
    notes = []
    laws = getattr(derivation, "rules", None) or {}
    for part in rule.split(" + "):
        if "(fused)" in part:
            notes.append(f"{part.replace(' (fused)', '')}: fused rule, proved by --prove")
            continue
        if part in laws:
            notes.append(f"{part}: {laws[part]}")
            continue
        cls = getattr(ops, part, None)
        if cls is not None and cls.__doc__:
            doc = " ".join(cls.__doc__.split())
            if "∂" not in doc and cls.vjp.__doc__:  # the rule is the vjp's (A ⊙ B)
                doc = " ".join(cls.vjp.__doc__.split())
            notes.append(doc.split(". ")[0].rstrip(".") if "∂" not in doc else _vjp_part(doc))
    return "; ".join(notes)


def _vjp_part(doc: str) -> str:
    head, _, rule = doc.partition("  ") if "  " in doc else doc.partition(". ")
    start = doc.find("∂")
    return doc[: doc.find(".")].strip() + ": " + doc[start:].split("  (")[0].split(": the")[0].rstrip(".")


def _layer_word(spec, l: int, layer) -> str:
    """One layer in the network line: its width or type, and its activation (identity
    not shown): 5 tanh, batchnorm relu, dropout(0.2), add(A₅, A₁), concat(A₆, X)."""
    src = spec.sources(l)
    word = layer.kind.head(layer, [naming.text(s) for s in src], paren=True)
    if layer.fn.name != "identity":
        word += f" {layer.fn.name}"
    if not layer.kind.joins and src[0] != ("X" if l == 1 else f"A{l - 1}"):
        word += f" (of {naming.text(src[0])})"
    return word


def _network_line(d) -> str:
    spec = d.spec
    if _is_dense(spec):
        parts = [str(spec.inputs)] + [f"{layer.units} {layer.fn.name}" for layer in spec.layers]
    else:
        image = getattr(spec, "input_shape", None)
        first = str(spec.inputs) if image is None else "×".join(str(v) for v in image)
        parts = [first] + [_layer_word(spec, l, layer) for l, layer in enumerate(spec.layers, 1)]
    loss = spec.loss_fn.name if spec.loss_expr is None else f"ℓ(ŷ, y) = {spec.loss_expr}"
    pen = []
    if spec.l2:
        pen.append(f"λ₂ = {spec.l2:g}")
    if spec.l1:
        pen.append(f"λ₁ = {spec.l1:g}")
    tail = f", penalty {', '.join(pen)}" if pen else ""
    return f"{spec.name}: {' → '.join(parts)}; loss {loss}{tail}"


def _is_dense(spec) -> bool:
    """Dense layers only, each reading the previous output: the first wave's networks,
    printed as they always were."""
    return spec is None or getattr(spec, "is_chain", True)


def scalar_facts(d, fmt: str) -> list[str]:
    """The scalar derivatives SymPy found, as lines (text) or LaTeX rows."""
    seen, lines = set(), []
    sp_printer = TextScalarPrinter if fmt == "text" else LatexScalarPrinter
    a = sp.Symbol("a", real=True)
    for layer in d.spec.layers:
        fn = layer.fn
        if fn.is_rowwise or fn.name in seen or fn.name == "identity":
            continue
        seen.add(fn.name)
        pr = sp_printer({X_SYM: "z"}, elementwise=False)
        raw = sp.diff(expand_named(fn.expr), X_SYM)
        name = fn.text if fmt == "text" else fn.latex
        fz = f"{name}(z)" if fmt == "text" else rf"{name}(z)"
        parts = [f"{fz} = {pr._print(fn.expr)}"] if fn.text == "f" else []
        rhs = f"{pr._print(fn.derivative)}"
        out = ""
        if fn.output_derivative is not None and fn.output_derivative != fn.derivative:
            out = f" = {sp_printer({a: 'a'}, elementwise=False)._print(fn.output_derivative)}"
            out += f"  (a = {fz})" if fmt == "text" else rf" \quad (a = {fz})"
        prime = "′" if fmt == "text" else "'"
        lines += parts
        if raw != fn.derivative and fmt == "text":
            lines.append(f"d/dz {fz} = {pr._print(raw)}  (as differentiated)")
        lines.append(f"{name}{prime}(z) = {rhs}{out}")
    loss = d.spec.loss_fn
    pr = sp_printer({YHAT: "ŷ" if fmt == "text" else r"\hat{y}", Y: "y"}, elementwise=False)
    ell = "ℓ" if fmt == "text" else r"\ell"
    lines.append(f"{ell}(ŷ, y) = {pr._print(loss.expr)}" if fmt == "text"
                 else rf"\ell(\hat{{y}}, y) = {pr._print(loss.expr)}")
    dl = f"∂ℓ/∂ŷ = {pr._print(loss.derivative)}" if fmt == "text" else (
        rf"\frac{{\partial \ell}}{{\partial \hat{{y}}}} = {pr._print(loss.derivative)}")
    lines.append(dl)
    return lines


def render(d, fmt: str, steps: bool = False) -> str:
    """Lay out a derivation in ``fmt``: text, latex, markdown or jupyter-latex."""
    if fmt == "text":
        return _render_text(d, steps)
    if fmt == "latex":
        return _render_latex(d, steps)
    if fmt == "jupyter-latex":
        return "$$" + _aligned(d, steps=False) + "$$"
    if fmt == "markdown":
        return _render_markdown(d, steps)
    raise ValueError(f"unknown format {fmt!r}")


NOTATION = (
    "⊙ elementwise product, ᵀ transpose, 𝟏 the column of N ones (𝟏ᵀ δ sums over the "
    "samples), rowsum sums each row; functions and powers apply elementwise; b is added to every row."
)


def notation(d) -> str:
    """The notation line: :data:`NOTATION`, and the symbols of the layers beyond dense
    where they appear (X̂, μ, σ², γ, β, ε; a dropout mask M; [A B]; the widths n_l)."""
    spec = d.spec
    if _is_dense(spec):
        return NOTATION
    nodes = [n for eq in (*d.forward, *d.backward) for n in _nodes(eq.rhs)]
    extra = []
    norms = [(l, layer) for l, layer in enumerate(spec.layers, 1) if layer.kind.statistics_over]
    if norms:
        kinds = {layer.kind for _, layer in norms}
        where = [f"{k.name}: {k.statistics_over}" for k in KINDS.values() if k in kinds]
        extra.append("X̂_l the standardized input of normalization layer l, μ_l and σ_l² its "
                     f"mean and biased variance ({'; '.join(where)}), γ_l and β_l its scale and "
                     f"shift, {_epsilons(norms)}")
    if any(layer.kind.buffers for _, layer in norms):
        extra.append("mean_l and var_l the running mean and variance of batchnorm layer l "
                     "(buffers), which forward and predict use in place of μ_l and σ_l²")
    if any(isinstance(n, Dropout) for n in nodes):
        extra.append("M_l the dropout mask of layer l (entries 0 or 1, each 1 with probability "
                     "1 − p, drawn per batch)")
    if any(isinstance(n, Concat) for n in nodes):
        extra.append("[A B] the columns of A and B side by side")
    if any(isinstance(n, ColSlice) for n in nodes):
        extra.append("G[:, a:b] the columns a to b − 1 of G")
    if any(_WIDTH.match(str(s)) for n in nodes for s in _node_symbols(n)):
        extra.append("n_l the width of layer l's output")
    legends = [n.legend for n in nodes if isinstance(getattr(n, "legend", None), str)]
    extra += list(dict.fromkeys(legends))  # each op family's legend once (im2col, pooling)
    if getattr(spec, "input_shape", None) is not None:
        extra.append("a feature map of N images H×W×C is the matrix of N·H·W rows (row-major n, "
                     "h, w) and C columns, so 𝟏ᵀ δ_l of a conv2d layer sums over the samples and "
                     "the pixels")
    for _, name, j, (h, w, _c) in map_rows(d):
        extra.append(f"{_map_row_text(j, 'text')} the rows of the feature map "
                     f"{naming.text(name)} (N images of H{str(j).translate(naming._SUB)}×"
                     f"W{str(j).translate(naming._SUB)} = {h}×{w} pixels)")
    if any(isinstance(n, RowSum) for n in nodes):
        extra.append("A𝟏 the row sums of A and μ𝟏ᵀ the column μ spread across the columns "
                     "(there 𝟏 is the column of n ones)")
    return NOTATION + (" " + "; ".join(extra) + "." if extra else "")


def _epsilons(norms) -> str:
    values = {layer.eps for _, layer in norms}
    if len(values) == 1:
        return f"ε = {values.pop():g} (added to σ² for numerical safety)"
    return "ε (added to σ²) = " + ", ".join(f"{layer.eps:g} in layer {l}" for l, layer in norms)


def _nodes(node: Node):
    yield node
    for child in (*node.children, *node.refs):
        yield from _nodes(child)


def _node_symbols(node: Node):
    """The scalar symbols a node prints: its shape's (a slice's bounds, a count)."""
    if isinstance(node, ColSlice):
        yield from sp.sympify(node.start).free_symbols | sp.sympify(node.stop).free_symbols
    elif isinstance(node, Standardize) or (hasattr(node, "c") and isinstance(node.c, sp.Expr)):
        expr = node.count if isinstance(node, Standardize) else node.c
        yield from expr.free_symbols


RUNNING_TITLE = "Running statistics (batchnorm: each training step updates them; forward and predict use them)"


def map_rows(d) -> list[tuple[sp.Expr, str, int, tuple[int, int, int]]]:
    """The row counts of the feature maps that a derivation's statistics average over
    (batchnorm on a map: μ and σ² over its N·H·W rows), each once: (the count as the graph
    has it, 16·N; the map's name; its number j, 0 for X; its (H, W, C)). They print as
    N·H_j·W_j, the sizes of the spec's map (H₁, W₁ of A₁), not as 16·N."""
    spec, out, seen = d.spec, [], set()
    if getattr(spec, "input_shape", None) is None:
        return out
    for eq in d.forward:
        for n in _nodes(eq.rhs):
            count = getattr(n, "count", None) if isinstance(n, Standardize) else None
            if count is None or count == N or count in seen or not isinstance(n.x, Sym):
                continue
            image = spec.image(n.x.name)
            if image is None:
                continue
            seen.add(count)
            out.append((count, n.x.name, naming.layer_of(n.x.name) or 0, image))
    return out


def _map_row_text(j: int, fmt: str) -> str:
    """N·H₁·W₁ (text) or N H_{1} W_{1} (LaTeX): the rows of map j."""
    if fmt == "text":
        sub = str(j).translate(naming._SUB)
        return f"N·H{sub}·W{sub}"
    return f"N H_{{{j}}} W_{{{j}}}"


def _sized(printer: _MatrixPrinter, d, fmt: str) -> _MatrixPrinter:
    """``printer`` printing the feature maps' row counts as N·H_j·W_j (:func:`map_rows`)."""
    rows = map_rows(d)
    printer.rows = {count: sp.Symbol(f"rows_{j}", positive=True) for count, _, j, _ in rows}
    printer.row_names = {sp.Symbol(f"rows_{j}", positive=True): _map_row_text(j, fmt)
                         for _, _, j, _ in rows}
    return printer


def _running_lines(d, fmt: str) -> list[str]:
    """Each batchnorm layer's running mean and variance, updated once per training step
    as torch does (the variance unbiased): mean ← (1 − m) mean + m μ,
    var ← (1 − m) var + m σ² N/(N − 1); the buffers' own names (mean_l, var_l)."""
    spec = d.spec
    if _is_dense(spec):
        return []
    out = []
    for l, layer in enumerate(spec.layers, 1):
        source = spec.sources(l)[0]
        image = spec.image(source)
        rows = None if image is None else _map_row_text(naming.layer_of(source) or 0, fmt)
        out += layer.kind.running_lines(l, layer, fmt, image, rows=rows)
    return out


def _update_lines(d, printer, arrow, eta):
    out = []
    for p in d.graph.params:
        g = printer.name(naming.cotangent(p.name))
        out.append(f"{printer.name(p.name)} {arrow} {printer.name(p.name)} - {eta} {g}"
                   if printer.minus == "-" else
                   f"{printer.name(p.name)} {arrow} {printer.name(p.name)} − {eta} {g}")
    return out


def _render_text(d, steps: bool) -> str:
    tp = _sized(TextPrinter(), d, "text")
    lines = [_network_line(d), ""]
    lines.append("Forward")
    for eq in d.forward:
        lines.append(f"  {tp.name(eq.target.name)} = {tp._print(eq.rhs)}")
    lines.append("")
    lines.append("Backward")
    for eq in d.backward:
        lines.append(f"  {_lhs(eq.target, tp, 'text')} = {tp._print(eq.rhs)}")
    for note in d.assumptions:
        lines.append(f"  (softmax∘cross-entropy uses: {note})")
    lines.append("")
    lines.append("Update (gradient descent, learning rate η)")
    lines += ["  " + s for s in _update_lines(d, tp, "←", "η")]
    running = _running_lines(d, "text")
    if running:
        lines += ["", RUNNING_TITLE] + ["  " + s for s in running]
    if steps:
        lines += ["", "Chain rule, step by step (reverse sweep)"]
        for i, eq in enumerate(d.steps, 1):
            lines.append(f"  {i}. {_lhs(eq.target, tp, 'text')} = {tp._print(eq.rhs)}")
            note = _rule_note(eq, d)
            if note:
                lines.append(f"       by {note}")
        lines += ["", "Scalar derivatives found by SymPy"]
        lines += ["  " + s for s in scalar_facts(d, "text")]
    lines += ["", "Notation: " + notation(d)]
    return "\n".join(lines) + "\n"


def _aligned(d, steps: bool) -> str:
    lp = _sized(LatexPrinter(), d, "latex")
    rows = [r"\begin{aligned}"]
    for eq in d.forward:
        rows.append(rf"{lp.name(eq.target.name)} &= {lp._print(eq.rhs)} \\")
    for eq in d.backward:
        lhs = _lhs(eq.target, lp, "latex")
        rows.append(rf"{lhs} &= {lp._print(eq.rhs)} \\")
    rows.append(r"\end{aligned}")
    return "\n".join(rows)


def _latex_block(title_rows: list[str]) -> str:
    return "\\begin{aligned}\n" + " \\\\\n".join(title_rows) + "\n\\end{aligned}"


def _latex_sections(d, steps: bool) -> list[tuple[str, str]]:
    lp = _sized(LatexPrinter(), d, "latex")
    sections = []
    fwd = [rf"{lp.name(eq.target.name)} &= {lp._print(eq.rhs)}" for eq in d.forward]
    sections.append(("Forward", _latex_block(fwd)))
    bwd = [rf"{_lhs(eq.target, lp, 'latex')} &= {lp._print(eq.rhs)}" for eq in d.backward]
    sections.append(("Backward", _latex_block(bwd)))
    upd = [s.replace(r" \leftarrow ", r" &\leftarrow ") for s in _update_lines(d, lp, r"\leftarrow", r"\eta")]
    sections.append(("Update (gradient descent, learning rate $\\eta$)", _latex_block(upd)))
    running = _running_lines(d, "latex")
    if running:
        sections.append((RUNNING_TITLE, _latex_block(running)))
    if steps:
        rows = []
        for eq in d.steps:  # each step, then the rule it applies (as the text form prints)
            rows.append(rf"{_lhs(eq.target, lp, 'latex')} &= {lp._print(eq.rhs)}")
            note = _rule_note(eq, d)
            if note:
                rows.append(r"&\qquad \text{by } " + _math_text(note, not _is_dense(d.spec)))
        sections.append(("Chain rule, step by step", _latex_block(rows)))
        facts = [f.replace(" = ", " &= ", 1) for f in scalar_facts(d, "latex")]
        sections.append(("Scalar derivatives found by SymPy", _latex_block(facts)))
    return sections


def _math_text(text: str, layers: bool = False) -> str:
    from symgrad.display import math_text

    return math_text(text, layers)


def derivation_latex(d, steps: bool = False) -> str:
    """The sections of a derivation as display math, each titled by an inline-math bold
    line (``\\(\\textbf{Forward}\\)``) instead of a ``%`` comment: a LaTeX document and
    ``IPython.display.Latex`` both show titles, and no comment text.  The network line
    above them is display math (``\\[\\text{…}\\]``), so that it does not run into the
    first title: inline pieces separated by a newline share a line in both renderers."""
    from symgrad.display import inline_math, math_text

    out = [r"\[" + math_text(_network_line(d)) + r"\]"]  # display: its own line
    for title, block in _latex_sections(d, steps):
        out.append(inline_math(_bold_title(title)))
        out.append(r"\[" + "\n" + block + "\n" + r"\]")
    for note in d.assumptions:
        out.append(inline_math(math_text(f"softmax∘cross-entropy uses: {note}")))
    if not _is_dense(d.spec):  # the new symbols (X̂, μ, σ², ε's value, M, [A B]) explained
        out.append(inline_math(math_text("Notation: " + notation(d), layers=True)))
    return "\n".join(out) + "\n"


def _bold_title(title: str) -> str:
    """``Update (… rate $\\eta$)`` as ``\\textbf{Update (… rate }\\eta\\textbf{)}``."""
    parts = title.split("$")
    return "".join(part if i % 2 else (r"\textbf{" + part + "}" if part else "")
                   for i, part in enumerate(parts))


def _render_latex(d, steps: bool) -> str:
    out = [f"% {_network_line(d)}"]
    for title, block in _latex_sections(d, steps):
        out.append(f"% {title}")
        out.append(r"\[" + "\n" + block + "\n" + r"\]")
    for note in d.assumptions:
        out.append(f"% softmax∘cross-entropy uses: {note}")
    return "\n".join(out) + "\n"


def _render_markdown(d, steps: bool) -> str:
    out = [f"## Backpropagation for `{d.spec.name}`", "", _network_line(d).split(": ", 1)[1], ""]
    for title, block in _latex_sections(d, steps):
        out += [f"### {title}", "", "$$", block, "$$", ""]
        if title == "Backward":
            for note in d.assumptions:
                out += [f"The softmax∘cross-entropy step uses: {note}.", ""]
    out += ["Notation: " + notation(d).replace("ᵀ", "⊤").replace("_", r"\_"), ""]
    return "\n".join(out)
