"""second order: the Hessian-vector and Gauss–Newton products of a network, at matrix level.

For a direction V = (V_W₁, V_b₁, …) with the shapes of the parameters:

* **H V by forward-over-reverse** (Pearlmutter's R-operator, R{·} = d/dε ·(θ + εV) at ε = 0):
  a forward sweep of each op's ``jvp`` over the forward graph gives the tangents Ż_l, Ȧ_l, Ŷ̇
  (the parameters' tangents are V); a second forward sweep of ``jvp`` over the *backward*
  graph (its VJP expressions are ops too) gives the second-order adjoints R{δ_l} and
  R{∂L/∂W_l} = (H V)_{W_l}.
* **G V = Jᵀ H_ℓ J V** (Gauss–Newton): J V is the forward tangent of the network's output
  where the loss takes it (Ŷ; the logits Z_L where a fusion such as softmax∘cross-entropy
  makes the loss a function of Z_L), H_ℓ the loss's own Hessian there, applied in closed
  form (the tangent of the loss's first cotangent along J V alone: (diag(ŷ) − ŷŷᵀ)/N per
  sample for softmax∘cross-entropy, I/N for mse, diag(ℓ″)/N in general), and Jᵀ the
  first-order backward sweep of :func:`symgrad.derive.derive` applied to the result (the
  tangent of each backward line along its cotangents alone; a penalty adds its own Hessian
  λ₂ V_W exactly).

Both are derived on the symbolic graph, so their cost depends on the depth, not on the widths
or the batch size. Batchnorm and layernorm are differentiated in training mode (their batch
or row statistics μ, σ² have tangents of their own lines, which the standardization's jvp and
the tangent of its rule's 𝟏(σ² + ε)^(−½) read), dropout with its mask fixed (the loss of one
seed). An op without a forward-mode rule is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from symgrad import naming
from symgrad.derive import Derivation, Equation, _inline, derive
from symgrad.errors import SymgradError
from symgrad.ops import Add, MeanLoss, Node, Sym
from symgrad.ops.base import almost_everywhere, tangent_sum
from symgrad.spec import Spec

__all__ = ["SecondOrder", "hvp", "gnvp", "tangent"]


def tangent(node: Node, tan: dict[str, Node | None], out: Node | None = None) -> Node | None:
    """The tangent of ``node`` given the tangents of the named values (``tan``; a name not
    in it, data, has none): each op's ``jvp`` over its children's tangents, then its refs'
    (batchnorm's μ and σ², read by the op's compact rule, have tangents of their own lines;
    a mask has none). None: zero."""
    if isinstance(node, Sym):
        return tan.get(node.name)
    ts = tuple(tangent(c, tan) for c in (*node.children, *node.refs))
    if all(t is None for t in ts):
        return None
    return node.jvp(ts, out)


@dataclass
class SecondOrder:
    """The Hessian-vector (``kind`` "hvp") or Gauss–Newton (``kind`` "gnvp") product of a
    network's loss along a direction V, as equations: the forward tangents (J V), the
    backward lines they read, and the second-order (or Gauss–Newton) adjoints; ``results``
    maps each parameter to the name of its component (None: the product's component is 0)."""

    derivation: Derivation
    kind: str
    directions: list[Sym]
    tangents: list[Equation]
    backward: list[Equation]
    adjoints: list[Equation]
    results: dict[str, str | None]
    hessian: str = ""  # gnvp: H_ℓ as printed, and where it acts
    split: str = ""
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        return render(self, "text")

    def latex(self) -> str:
        return render(self, "latex")

    def markdown(self) -> str:
        return render(self, "markdown")

    def __str__(self) -> str:
        return self.text()


def _refuse(d: Derivation, target: str, exc: NotImplementedError) -> SymgradError:
    spec = d.spec
    layer = naming.layer_of(target)
    where = f"{spec.source}: layer {layer}" if layer else spec.source
    return SymgradError(where, f"no second-order product for this layer ({exc})")


def _forward_tangents(d: Derivation) -> tuple[list[Sym], list[Equation], dict[str, Node | None]]:
    """V's components and the forward tangents up to Ŷ (each op's jvp)."""
    dirs = [Sym(naming.direction(p.name), p.shape, "direction") for p in d.graph.params]
    tan: dict[str, Node | None] = {p.name: v for p, v in zip(d.graph.params, dirs, strict=True)}
    eqs: list[Equation] = []
    for eq in d.forward:
        if isinstance(eq.rhs, MeanLoss):
            break
        try:
            t = tangent(eq.rhs, tan, out=eq.target)
        except NotImplementedError as exc:
            raise _refuse(d, eq.target.name, exc) from None
        if t is None:
            tan[eq.target.name] = None
            continue
        sym = Sym(naming.tangent(eq.target.name), eq.target.shape, "tangent")
        eqs.append(Equation(sym, t))
        tan[eq.target.name] = sym
    return dirs, eqs, tan


def _as_derivation(spec: Spec | Derivation | str) -> Derivation:
    return spec if isinstance(spec, Derivation) else derive(spec)


def hvp(spec: Spec | Derivation | str) -> SecondOrder:
    """H V of ``spec``'s loss by the R-operator (see the module docstring)."""
    d = _as_derivation(spec)
    dirs, tangents, tan = _forward_tangents(d)
    adjoints: list[Equation] = []
    for eq in d.backward:
        try:
            t = tangent(eq.rhs, tan)
        except NotImplementedError as exc:
            raise _refuse(d, naming.primal(eq.target.name), exc) from None
        if t is None:
            tan[eq.target.name] = None
            continue
        sym = Sym(naming.tangent(eq.target.name), eq.target.shape, "adjoint")
        adjoints.append(Equation(sym, t, eq.rule))
        tan[eq.target.name] = sym
    results = {p: (naming.tangent(naming.cotangent(p))
                   if tan.get(naming.cotangent(p)) is not None else None)
               for p in d.param_names}
    return SecondOrder(d, "hvp", dirs, tangents, list(d.backward), adjoints, results)


def _has_cotangent(node: Node) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Sym) and n.role == "cotangent":
            return True
        stack.extend(n.children)
    return False


def gnvp(spec: Spec | Derivation | str) -> SecondOrder:
    """G V = Jᵀ H_ℓ J V of ``spec``'s loss (see the module docstring)."""
    d = _as_derivation(spec)
    dirs, tangents, tan = _forward_tangents(d)
    first = d.steps[0]  # the loss's own cotangent: ∂L/∂Ŷ, or δ_L where a fusion gives it
    out = next(eq.target.name for eq in d.forward if eq.target.name == "Yhat")
    h_tan = {out: tan.get(out)}
    params = {p.name: v for p, v in zip(d.graph.params, dirs, strict=True)}
    gn: dict[str, Node | None] = {}
    steps: list[Equation] = []
    for i, eq in enumerate(d.steps):
        try:
            if i == 0:
                t = tangent(eq.rhs, h_tan)
            else:
                terms = eq.rhs.terms if isinstance(eq.rhs, Add) else (eq.rhs,)
                t = tangent_sum([tangent(term, gn) if _has_cotangent(term)
                                 else tangent(term, params)  # a penalty: its own Hessian
                                 for term in terms])
        except NotImplementedError as exc:
            raise _refuse(d, naming.primal(eq.target.name), exc) from None
        if t is None:
            gn[eq.target.name] = None
            continue
        sym = Sym(naming.gauss_newton(eq.target.name), eq.target.shape, "adjoint")
        steps.append(Equation(sym, t, eq.rule))
        gn[eq.target.name] = sym
    keep = {naming.gauss_newton(naming.cotangent(p)) for p in d.param_names}
    keep.add(naming.gauss_newton(first.target.name))
    adjoints = _inline(steps, keep=keep)
    results = {p: (naming.gauss_newton(naming.cotangent(p))
                   if gn.get(naming.cotangent(p)) is not None else None)
               for p in d.param_names}
    split = naming.primal(first.target.name)
    return SecondOrder(d, "gnvp", dirs, tangents, [], adjoints, results,
                       hessian=_hessian_text(d, split), split=split)


def _hessian_text(d: Derivation, split: str) -> str:
    """H_ℓ, the Hessian of the mean loss in the value it is applied at, as printed."""
    from symgrad.losses import YHAT
    from symgrad.printing import TextScalarPrinter

    loss = d.spec.loss_fn
    where = naming.text(split)
    if "softmax∘cross-entropy" in d.fusions:
        return f"H_ℓ = (diag(ŷ) − ŷŷᵀ)/N per sample (softmax∘cross-entropy, in {where})"
    yhat = sp.Symbol("ŷ")
    if split == "Yhat":
        second = sp.simplify(almost_everywhere(sp.diff(loss.derivative, YHAT)))
        if second == 1:
            return f"H_ℓ = I/N (the loss {loss.name}, in {where})"
        if second == 0:
            return (f"H_ℓ = 0 (ℓ″ = 0 almost everywhere: the loss {loss.name} is piecewise "
                    f"linear, in {where})")
        body = TextScalarPrinter(elementwise=False)._print(second.xreplace({YHAT: yhat}))
        return f"H_ℓ = diag({body})/N (ℓ″ of the loss {loss.name}, elementwise, in {where})"
    producer = d.graph.producer("Yhat")
    fn = getattr(producer.rhs, "fn", None)
    g = getattr(fn, "output_derivative", None)
    from symgrad.activations import A as A_SYM
    from symgrad.losses import Y

    combined = loss.derivative.xreplace({YHAT: A_SYM})
    if g is not None:
        dc = sp.simplify(almost_everywhere(sp.diff(sp.cancel(combined * g), A_SYM)))
        h = g if dc == 1 else sp.factor(dc * g)
        body = TextScalarPrinter()._print(h.xreplace({A_SYM: yhat, Y: sp.Symbol("y")}))
        if h == 1:
            return f"H_ℓ = I/N ({fn.name}∘{loss.name}, in {where})"
        if h == 0:
            return (f"H_ℓ = 0 (ℓ″ = 0 almost everywhere: {fn.name}∘{loss.name} is piecewise "
                    f"linear, in {where})")
        return f"H_ℓ = diag({body})/N ({fn.name}∘{loss.name}, elementwise, in {where})"
    return f"H_ℓ = the Hessian of the loss in {where}, per sample, /N"


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------


_LATEX_WORDS = [  # the H_ℓ line's notation, text → LaTeX (longest first where they overlap)
    ("(diag(ŷ) − ŷŷᵀ)/N", r"\(\bigl(\operatorname{diag}(\hat{y}) - \hat{y}\hat{y}^\top\bigr)/N\)"),
    ("I/N", r"\(I/N\)"), ("H_ℓ = 0", r"\(H_\ell = 0\)"), ("ℓ″", r"\(\ell''\)"),
    ("∘", r"\(\circ\)"), ("Ŷ", r"\(\hat{Y}\)"),
]


def _hessian_latex(line: str) -> str:
    """The H_ℓ line in LaTeX (render's paragraph adds \\noindent): its formula in math
    mode, the words as text."""
    import re

    head, body = line.split(" = ", 1)
    m = re.match(r"diag\((.*)\)/N (\(.*)$", body)
    if m:  # diag(ℓ″)/N: the elementwise body in LaTeX by SymPy's printer
        inner = m.group(1)
        inner = re.sub(r"\|([^|]*)\|", r"\\lvert \1\\rvert", inner)
        for a, b in (("ŷ", r"\hat{y}"), ("·", r" "), ("⊙", r"\odot"), ("−", "-"), ("²", "^{2}"),
                     ("≤", r"\le"), ("[", r"\bigl["), ("]", r"\bigr]")):
            inner = inner.replace(a, b)
        body = rf"\(\operatorname{{diag}}({inner})/N\) " + m.group(2)
    for a, b in _LATEX_WORDS:
        body = body.replace(a, b)
    for sub, digit in zip("₀₁₂₃₄₅₆₇₈₉", "0123456789", strict=True):
        body = body.replace(f"Z{sub}", rf"\(Z_{{{digit}}}\)")
    return rf"\(H_\ell\) = {body}" if head == "H_ℓ" else body


def _lhs(name: str, fmt: str) -> str:
    show = naming.latex if fmt == "latex" else naming.text
    if name.startswith("dZ") and not name.endswith(("_dot", "_gn")):
        return f"{show(name)} = {show('dA0').replace(show('A0'), show(name[1:]))}"
    return show(name)


_TITLES = {  # text, LaTeX
    "forward": ("Forward (as derive prints it)", r"Forward (as \texttt{derive} prints it)"),
    "tangents": ("Forward tangents (Ż = R{Z}, the derivative along V; the parameters' are V)",
                 r"Forward tangents (\(\dot{Z} = \mathcal{R}\{Z\}\), the derivative along "
                 r"\(V\); the parameters' are \(V\))"),
    "backward": ("Backward (as derive prints it)", r"Backward (as \texttt{derive} prints it)"),
    "adjoints": ("Second-order adjoints (R{·} of each backward line)",
                 r"Second-order adjoints (\(\mathcal{R}\{\cdot\}\) of each backward line)"),
    "jv": ("J V: the forward tangents (Ż = R{Z}, the derivative along V)",
           r"\(J V\): the forward tangents (\(\dot{Z} = \mathcal{R}\{Z\}\), the derivative "
           r"along \(V\))"),
    "jt": ("Jᵀ: the backward sweep applied to H_ℓ J V (𝒢{·}; a penalty adds its Hessian)",
           r"\(J^\top\): the backward sweep applied to \(H_\ell J V\) "
           r"(\(\mathcal{G}\{\cdot\}\); a penalty adds its Hessian)"),
}


def render(so: SecondOrder, fmt: str) -> str:
    """The product's derivation in ``fmt`` (text, latex, markdown), layer by layer."""
    from symgrad.printing import LatexPrinter, TextPrinter, _network_line

    latex = fmt == "latex"
    printer = LatexPrinter() if latex else TextPrinter()
    show = naming.latex if latex else naming.text
    d = so.derivation
    v = ", ".join(show(s.name) for s in so.directions)
    lines: list[str] = []

    def math(body: str) -> str:
        return rf"\({body}\)" if latex else body

    def para(line: str) -> None:
        lines.append("")
        lines.append(rf"\noindent {line}" if latex else line)

    def section(key: str, eqs: list[Equation]) -> None:
        para(rf"\textbf{{{_TITLES[key][1]}}}" if latex else _TITLES[key][0])
        if latex:
            lines.append(r"\[\begin{aligned}")
        for eq in eqs:
            body = printer._print(eq.rhs)
            if latex:
                lines.append(rf"  {_lhs(eq.target.name, fmt)} &= {body} \\")
            else:
                lines.append(f"  {_lhs(eq.target.name, fmt)} = {body}")
        if latex:
            lines.append(r"\end{aligned}\]")

    name = "Hessian-vector product" if so.kind == "hvp" else "Gauss–Newton product"
    how = ("H V by forward-over-reverse (the R-operator)" if so.kind == "hvp"
           else "G V = Jᵀ H_ℓ J V")
    if latex:
        how = (r"\(H V\) by forward-over-reverse (the \(\mathcal{R}\)-operator)"
               if so.kind == "hvp" else r"\(G V = J^\top H_\ell J V\)")
        lines.append(rf"\noindent {_network_line(d)}\\")
        lines.append(rf"{name} {how}, for a direction {math(f'V = ({v})')}")
    else:
        lines.append(_network_line(d))
        lines.append(f"{name} {how}, for a direction V = ({v})")
    section("forward", d.forward)
    if so.kind == "hvp":
        section("tangents", so.tangents)
        section("backward", so.backward)
        section("adjoints", so.adjoints)
        total = "H V"
    else:
        section("jv", so.tangents)
        para(_hessian_latex(so.hessian) if latex else so.hessian)
        section("jt", so.adjoints)
        total = "G V"
    parts = ", ".join(show(so.results[p]) if so.results[p] else "0" for p in so.results)
    para(math(f"{total} = ({parts})"))
    if d.assumptions:
        lines.append("(" + "; ".join(sorted(set(d.assumptions))) + ")")
    text = "\n".join(lines) + "\n"
    if fmt == "markdown":
        return "```\n" + text + "```\n"
    return text


# --------------------------------------------------------------------------
# The scalar expansion on a tiny instance (derive --hvp --prove)
# --------------------------------------------------------------------------


@dataclass
class Proof:
    """The product against the second derivatives of the scalar expansion of L."""

    ok: bool
    worst: float
    entries: int
    setting: str
    kind: str = "hvp"

    def text(self) -> str:
        verdict = "PROVED" if self.ok else "FAILED"
        what = ("Σ_j ∂²L/∂θ_i∂θ_j V_j of the expanded loss" if self.kind == "hvp" else
                "Σ_k ∂S_k/∂θ_i (H_ℓ J V)_k (J V = dS/dε, H_ℓ J V = ∂²ℓ/∂S∂ε of the expanded "
                "loss at S) plus the penalty's Σ_j ∂²P/∂θ_i∂θ_j V_j")
        return (f"Scalar-expansion check ({self.setting}): every entry of the product equals "
                f"{what} at a random rational point "
                f"({self.entries} entries, max |difference| {self.worst:.1e}): {verdict}\n")


class Tie(ValueError):
    """A kink's argument is 0 at the proof's point (no branch to take)."""


def _branches(expr: sp.Expr, at: dict) -> sp.Expr:
    """``expr`` with each kink (|·|, sign, a step, max/min, a Piecewise) replaced by the branch
    it takes at the point ``at``: |u| → ±u, sign(u) → ±1, H(u) → 0 or 1, a Piecewise → its
    piece there. Exact in a neighbourhood of a point off the kinks, so the second derivatives
    there are those of the loss (almost everywhere, as the products take them); a kink's
    argument that is 0 at the point raises Tie."""

    def value(u: sp.Expr) -> float:
        v = sp.N(u.xreplace(at), 30)
        if not v.is_extended_real or abs(v) < 1e-25:
            raise Tie(f"a kink at the point ({u} = {v})")
        return float(v)

    def fold(e: sp.Expr) -> sp.Expr:
        if isinstance(e, sp.Abs):
            return e.args[0] if value(e.args[0]) > 0 else -e.args[0]
        if isinstance(e, sp.sign):
            return sp.Integer(1 if value(e.args[0]) > 0 else -1)
        if isinstance(e, sp.Heaviside):
            return sp.Integer(1 if value(e.args[0]) > 0 else 0)
        if isinstance(e, sp.Max | sp.Min):
            vals = [value(a) for a in e.args]
            best = max(vals) if isinstance(e, sp.Max) else min(vals)
            if vals.count(best) > 1:
                raise Tie(f"a tie of {e} at the point")
            return e.args[vals.index(best)]
        if isinstance(e, sp.Piecewise):
            for piece, cond in e.args:
                rel = cond.xreplace(at) if cond is not sp.true else sp.true
                if isinstance(rel, sp.Rel) and not isinstance(rel, sp.Eq | sp.Ne):
                    if abs(value(rel.lhs - rel.rhs)) < 1e-25:  # on the boundary: a tie
                        raise Tie(f"a kink at the point ({cond})")
                    rel = rel.func(sp.N(rel.lhs, 30), sp.N(rel.rhs, 30))
                if bool(rel):
                    return piece
            raise Tie(f"no piece of {e} at the point")
        return e

    kinds = (sp.Abs, sp.sign, sp.Heaviside, sp.Max, sp.Min, sp.Piecewise)
    if not expr.has(*kinds):
        return expr
    return expr.replace(lambda e: isinstance(e, kinds), fold)


def prove(so: SecondOrder, seed: int = 0, batch: int = 2, width: int = 2) -> Proof:
    """Expand L in scalars at tiny sizes (each width at most ``width``, N = ``batch``) as
    L(θ₀ + εV + τ), τ a symbol per parameter entry, let SymPy take ∂²L/∂τ_i∂ε at 0 (the entry
    i of H V), and compare it with the matrix formulas at the same random point (rationals
    carried as 40-digit floats). G V (gnvp): the same expansion of S, the value the loss takes
    (Ŷ, or Z_L after a fusion), gives J V = dS/dε and Jᵀ w = Σ_k ∂S_k/∂τ w_k; the loss expanded
    at S(θ₀) + η J V + ρ gives H_ℓ J V = ∂²ℓ/∂ρ∂η; the penalty's Hessian comes from L with S
    held at S(θ₀): Jᵀ H_ℓ J V from scalars, none of the product's formulas reused."""
    import random

    from symgrad.graph import width as width_sym
    from symgrad.ops import L1, L2, N

    d = so.derivation
    spec = d.spec
    rnd = random.Random(seed)

    def rational() -> sp.Float:  # a rational, as a 40-digit float: values evaluate as built
        return sp.Float(sp.Rational(rnd.randint(-9, 9), 10), 40)

    env: dict = {N: batch, L1: sp.Rational(1, 10), L2: sp.Rational(1, 10)}
    sizes = [min(n, width) for n in spec.sizes]  # each width at most ``width``
    for l, n in enumerate(sizes):
        env[width_sym(l)] = n
    out = sizes[-1]
    env["X"] = sp.Matrix(batch, sizes[0], lambda i, j: rational())
    if spec.loss_fn.name == "cross_entropy":
        env["Y"] = sp.Matrix(batch, out, lambda i, j: 1 if j == i % out else 0)
    else:
        env["Y"] = sp.Matrix(batch, out, lambda i, j: sp.Rational(rnd.randint(1, 9), 10))
    for m, _ in d.graph.masks:
        r, c = (int(sp.sympify(s).xreplace(env)) for s in m.shape)
        env[m.name] = sp.Matrix(r, c, lambda i, j: rnd.randint(0, 1))
    point, vdir = {}, {}
    for p in d.graph.params:
        r, c = (int(sp.sympify(s).xreplace(env)) for s in p.shape)
        point[p.name] = sp.Matrix(r, c, lambda i, j: rational())
        vdir[p.name] = sp.Matrix(r, c, lambda i, j: rational())
    num_env = {**env, **point}
    for p, v in zip(d.graph.params, so.directions, strict=True):
        num_env[v.name] = vdir[p.name]
    for eq in [*d.forward, *so.tangents, *so.backward, *so.adjoints]:
        num_env[eq.target.name] = eq.rhs.explicit(num_env)
    eps = sp.Symbol("eps", real=True)
    taus = {p: sp.Matrix(*point[p].shape, lambda i, j, p=p: sp.Symbol(f"tau_{p}_{i}_{j}", real=True))
            for p in point}
    sym_env = {**env, **{q: point[q] + eps * vdir[q] + taus[q] for q in point}}
    zero = {t: 0 for m in taus.values() for t in m}
    split = so.split if so.kind == "gnvp" else None
    after: list[Equation] = []  # G V: the lines after S, the value the loss takes
    net = None
    for eq in d.forward:  # L(θ₀ + εV + τ) in scalars, once
        if net is not None:
            after.append(eq)
        sym_env[eq.target.name] = eq.rhs.explicit(sym_env)
        if eq.target.name == split:  # G V: the network's output S(θ) on its own, and the
            net = sym_env[split]  # penalty alone in L: S held at S(θ₀) from here on
            sym_env[split] = num_env[split]
    origin = {eps: 0, **zero}  # θ₀: every kink's branch is the one taken there
    loss = _branches(sym_env[d.graph.loss.name][0, 0], origin)
    slope = sp.diff(loss, eps).xreplace({eps: 0})  # ∂L/∂ε
    if split:  # H_ℓ J V: ∂²ℓ/∂ρ∂η of the loss at S(θ₀) + η J V + ρ, then Jᵀ by ∂S/∂τ
        jv = net.diff(eps).xreplace({eps: 0, **zero})
        eta = sp.Symbol("eta", real=True)
        rho = sp.Matrix(*jv.shape, lambda i, j: sp.Symbol(f"rho_{i}_{j}", real=True))
        loss_env = {**num_env, split: num_env[split] + eta * jv + rho}
        for eq in after:
            loss_env[eq.target.name] = eq.rhs.explicit(loss_env)
        at = {eta: 0, **{r: 0 for r in rho}}
        outer = _branches(loss_env[d.graph.loss.name][0, 0], at)
        hjv = [sp.diff(outer, eta, r).xreplace(at) for r in rho]
        net = net.xreplace({eps: 0}).applyfunc(lambda s: _branches(s, zero))
    worst, count = 0.0, 0
    for p in d.graph.params:
        name = so.results[p.name]
        got = num_env[name] if name else sp.zeros(*point[p.name].shape)
        for k, t in enumerate(taus[p.name]):
            ref = sp.diff(slope, t).xreplace(zero)  # ∂²L/∂τ_k∂ε = (H V)_k (G V: the penalty's)
            if split:  # (Jᵀ H_ℓ J V)_k = Σ_j ∂S_j/∂τ_k (H_ℓ J V)_j
                ref += sum(sp.diff(s_j, t).xreplace(zero) * w
                           for s_j, w in zip(net, hjv, strict=True))
            worst = max(worst, abs(float(sp.N(got[k] - ref, 30))))
            count += 1
    setting = f"N = {batch}, widths {' → '.join(map(str, sizes))}, λ₁ = λ₂ = 1/10"
    return Proof(worst < 1e-12, worst, count, setting, so.kind)


def cmd_derive_second(args, spec: Spec) -> int:
    """``symgrad derive SPEC --hvp | --gnvp [--format F] [--prove]``."""
    import sys

    if args.hvp and args.gnvp:
        raise SymgradError("derive", "give --hvp or --gnvp, not both")
    if args.steps:
        raise SymgradError("derive", "--steps goes without --hvp/--gnvp")
    so = hvp(spec) if args.hvp else gnvp(spec)
    sys.stdout.write(render(so, args.format))
    if args.prove:
        sys.stdout.flush()
        try:
            report = prove(so)
        except (ValueError, TypeError):  # Tie: a kink's argument is 0 at the point
            raise SymgradError(f"{spec.source}: --prove", "the tiny instance's point lies on "
                               "a kink of the loss, a penalty or an activation (an argument "
                               "of |·|, a step or a max is 0 there: no second derivative); "
                               "check the product with symgrad check SPEC --hvp") from None
        sys.stdout.write("\n" + report.text())
        return 0 if report.ok else 1
    return 0
