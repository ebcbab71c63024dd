"""Linear algebra of square matrices: the inverse, the determinant, the log-determinant and
the solve of a linear system.

Each op declares its forward formula, shape rule, vector-Jacobian rule (the math in its
docstring, after the Matrix Cookbook §2.1–2.2), explicit expansion for the proof, numeric
value and printed forms, like every op (:mod:`symgrad.ops.base`).  Two rewrites belong to
the family and are declared here, beside the ops:

* :meth:`Inverse.rewrite` / :func:`inverse_product`: (A⁻¹)⁻¹ = A, (Aᵀ)⁻¹ printed A⁻ᵀ,
  A⁻¹A = AA⁻¹ = I (what the simplifier asks of an op),
* :func:`with_solves`: the lowering rule — a product with an inverse, A⁻¹B or BA⁻¹, written
  as the solve of a linear system for numpy (``np.linalg.solve``), never an explicit inverse
  times a matrix: also the inverse's row and column sums (A⁻¹𝟏 = solve(A, 𝟏)), its powers
  ((A⁻¹)² = solve(A, A⁻¹)) and a product with a sum of inverses (distributed); the printed
  forms keep A⁻¹ B.

``logdet(A)`` and ``log(det(A))`` are one op, evaluated as log |det A| (``slogdet``): finite
where det A < 0 (where ``np.log(np.linalg.det(A))`` is NaN), with the same gradient A⁻ᵀ;
the generated module's docstring says so.

:func:`invertible_names` says which names a random instance must draw invertible (those
under an inverse, a determinant or a solve), so checks and ``verify`` draw them well
conditioned with a positive determinant: (n + 1) I + R/2 for the random draw R.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad.ops.base import SCALAR, Add, Const, Hadamard, Map, Node, Scale, Sym, scale
from symgrad.ops.linear import MatMul, Transpose
from symgrad.ops.reductions import Broadcast, Eye

__all__ = ["Inverse", "Det", "LogDet", "Solve", "with_solves", "invertible_names",
           "inverse_product", "transposed", "condition", "degenerate"]

POSTFIX, MATMUL = 90, 60  # the printers' precedences (symgrad.printing) of A⁻¹ and A⁻¹ B


def transposed(x: Node) -> Node:
    """Aᵀ, with (Aᵀ)ᵀ = A and (A B)ᵀ = Bᵀ Aᵀ."""
    if isinstance(x, Transpose):
        return x.x
    if isinstance(x, MatMul):
        return MatMul(transposed(x.b), transposed(x.a))
    return Transpose(x)


def _arg(lw, node: Node) -> str:
    """An operand of a linear-algebra call as numpy source, of its own 2-D shape
    (``np.linalg.solve`` does not broadcast as an elementwise product does); the constant
    𝟏 as ``np.ones((n, 1))``."""
    if isinstance(node, Broadcast) and isinstance(node.x, Const) and node.x.value == 1:
        return f"np.ones(({', '.join(lw.size(d) for d in node.shape)}))"
    return lw.full(node, 0)


def _inv_text(p, x: Node, latex: bool) -> str:
    """A⁻¹, or A⁻ᵀ for x = Aᵀ (bracketed where A is compound: (Xᵀ X)⁻¹)."""
    if isinstance(x, Transpose):
        return p.paren(x.x, p.ATOM) + (r"^{-\top}" if latex else "⁻ᵀ")
    return p.paren(x, p.ATOM) + ("^{-1}" if latex else "⁻¹")


def _times(g: Node, x: Node) -> Node:
    """g·X for a 1×1 cotangent g (a constant folds into a coefficient)."""
    if isinstance(g, Const):
        return scale(g, x)
    return Hadamard(Broadcast(g, x.shape), x)


@dataclass(frozen=True, eq=True)
class Inverse(Node):
    """C = A⁻¹ (A square and invertible).

    ∂ tr(Gᵀ A⁻¹) = −tr(Gᵀ A⁻¹ dA A⁻¹), so  ∂L/∂A = −A⁻ᵀ G A⁻ᵀ = −Cᵀ G Cᵀ  (Cookbook (59)–(61))."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def vjp(self, g, out):
        inv_t = Inverse(transposed(self.x))  # A⁻ᵀ = Cᵀ
        return (Scale(sp.Integer(-1), MatMul(MatMul(inv_t, g), inv_t)),)

    def explicit(self, env):
        m = self.x.explicit(env)
        return m.adjugate(method="berkowitz") / m.det(method="berkowitz")

    def numeric(self, env):
        return np.linalg.inv(self.x.numeric(env))

    precedence = POSTFIX

    def text(self, p):
        return _inv_text(p, self.x, latex=False)

    def latex(self, p):
        return _inv_text(p, self.x, latex=True)

    def numpy(self, lw):
        return f"np.linalg.inv({_arg(lw, self.x)})", lw.ATOM

    def transpose(self) -> Node:
        """(A⁻¹)ᵀ = (Aᵀ)⁻¹, printed A⁻ᵀ (what the simplifier asks of a transposed op)."""
        return Inverse(transposed(self.x))

    def rewrite(self) -> Node | None:
        """(A⁻¹)⁻¹ = A and (A⁻ᵀ)⁻¹ = Aᵀ; (P Q)⁻¹ = Q⁻¹ P⁻¹ for square P and Q (both are
        invertible where P Q is).  (C⁻¹)ᵀ is kept as (Cᵀ)⁻¹, printed C⁻ᵀ."""
        x = self.x
        if isinstance(x, Inverse):
            return x.x
        if isinstance(x, Transpose) and isinstance(x.x, Inverse):
            return transposed(x.x.x)
        if isinstance(x, MatMul) and all(f.shape[0] == f.shape[1] for f in (x.a, x.b)):
            return MatMul(Inverse(x.b), Inverse(x.a))
        return None


def _chain(node: Node) -> tuple[list[Node], list[Node]]:
    """The factors of a matrix product, left to right, and its scalar (1×1) factors:
    (s ⊙ P) Q is s · P Q."""
    if isinstance(node, MatMul):
        fa, sa = _chain(node.a)
        fb, sb = _chain(node.b)
        return fa + fb, sa + sb
    if isinstance(node, Hadamard):
        for s, m in ((node.a, node.b), (node.b, node.a)):
            if isinstance(s, Broadcast) and tuple(s.x.shape) == (1, 1) and tuple(m.shape) != (1, 1):
                fm, sm = _chain(m)
                return fm, [s.x, *sm]
    return [node], []


def inverse_product(a: Node, b: Node) -> Node | None:
    """The product A B with each A⁻¹ A and A A⁻¹ in it cancelled (also across brackets:
    Aᵀ (A⁻ᵀ X⁻ᵀ) = X⁻ᵀ), scalar factors in front; None when nothing cancels."""
    factors, scalars = _chain(MatMul(a, b))
    out: list[Node] = []
    cancelled = False
    for f in factors:
        if out and (isinstance(f, Inverse) and f.x == out[-1]
                    or isinstance(out[-1], Inverse) and out[-1].x == f):
            out.pop()
            cancelled = True
        else:
            out.append(f)
    if not cancelled:
        return None
    product: Node = out[0] if out else Eye(a.shape[0])
    for f in out[1:]:
        product = MatMul(product, f)
    for s in scalars:
        product = Hadamard(Broadcast(s, product.shape), product)
    return product


@dataclass(frozen=True, eq=True)
class Det(Node):
    """d = det(A) (A square).   ∂d/∂A = g det(A) A⁻ᵀ  (Jacobi's formula, Cookbook (49))."""

    x: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        inv_t = Inverse(transposed(self.x))
        if isinstance(g, Const):
            return (scale(g, Hadamard(Broadcast(self, self.x.shape), inv_t)),)
        u, v = sp.Symbol("_g", real=True), sp.Symbol("_d", real=True)
        return (_times(Map(u * v, ((u, g), (v, self))), inv_t),)  # (g det A) A⁻ᵀ: one scalar

    def explicit(self, env):
        return sp.Matrix([[self.x.explicit(env).det(method="berkowitz")]])

    def numeric(self, env):
        return np.array([[np.linalg.det(self.x.numeric(env))]])

    def text(self, p):
        return f"det({p._print(self.x)})"

    def latex(self, p):
        return rf"\det\left({p._print(self.x)}\right)"

    def numpy(self, lw):
        return f"np.linalg.det({_arg(lw, self.x)})", lw.ATOM


@dataclass(frozen=True, eq=True)
class LogDet(Node):
    """l = log det(A) (A square, det A > 0; numpy's slogdet gives log |det A|, whose
    gradient is the same).   ∂l/∂A = g A⁻ᵀ  (Cookbook (57))."""

    x: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        return (_times(g, Inverse(transposed(self.x))),)

    def explicit(self, env):
        return sp.Matrix([[sp.log(self.x.explicit(env).det(method="berkowitz"))]])

    def numeric(self, env):
        return np.array([[np.linalg.slogdet(self.x.numeric(env))[1]]])

    def text(self, p):
        return f"log det({p._print(self.x)})"

    def latex(self, p):
        return rf"\log\det\left({p._print(self.x)}\right)"

    def numpy(self, lw):  # the helper logdet(A) = np.linalg.slogdet(A)[1] of the module
        return f"logdet({_arg(lw, self.x)})", lw.ATOM


@dataclass(frozen=True, eq=True)
class Solve(Node):
    """X = A⁻¹ B, the solution of A X = B (A square and invertible); with ``right``,
    X = B A⁻¹ (the solution of X A = B).

    ∂L/∂B = A⁻ᵀ G,  ∂L/∂A = −(A⁻ᵀ G)(A⁻¹ B)ᵀ = −A⁻ᵀ G Xᵀ;  right: ∂L/∂B = G A⁻ᵀ,
    ∂L/∂A = −Xᵀ G A⁻ᵀ."""

    a: Node
    b: Node
    right: bool = False

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return self.b.shape

    def vjp(self, g, out):
        inv_t = Inverse(transposed(self.a))
        if self.right:
            gb = MatMul(g, inv_t)
            return Scale(sp.Integer(-1), MatMul(Transpose(self), gb)), gb
        gb = MatMul(inv_t, g)
        return Scale(sp.Integer(-1), MatMul(gb, Transpose(self))), gb

    def explicit(self, env):
        a, b = self.a.explicit(env), self.b.explicit(env)
        inv = a.adjugate(method="berkowitz") / a.det(method="berkowitz")
        return b * inv if self.right else inv * b

    def numeric(self, env):
        a, b = self.a.numeric(env), self.b.numeric(env)
        return np.linalg.solve(a.T, b.T).T if self.right else np.linalg.solve(a, b)

    precedence = MATMUL

    def _forms(self, p, latex: bool) -> str:
        inv = _inv_text(p, self.a, latex)
        if self.right:
            return f"{p.paren(self.b, p.MATMUL)} {inv}"
        return f"{inv} {p.paren(self.b, p.MATMUL)}"

    def text(self, p):
        return self._forms(p, latex=False)

    def latex(self, p):
        return self._forms(p, latex=True)

    def numpy(self, lw):
        """np.linalg.solve(A, B); right: B A⁻¹ = (A⁻ᵀ Bᵀ)ᵀ, np.linalg.solve(A.T, B.T).T."""
        if self.right:
            b = self.b
            if isinstance(b, Broadcast) and tuple(b.x.shape) == (1, 1):  # c 𝟏ᵀ: c 𝟏
                b = Broadcast(b.x, (b.shape[1], b.shape[0]))
            else:
                b = transposed(b)
            a, b = _arg(lw, transposed(self.a)), _arg(lw, b)
            return f"np.linalg.solve({a}, {b}).T", lw.ATOM
        return f"np.linalg.solve({_arg(lw, self.a)}, {_arg(lw, self.b)})", lw.ATOM


# --------------------------------------------------------------------------
# The family's rewrites for the lowering and for random instances
# --------------------------------------------------------------------------


def _rebuild(node: Node, fn) -> Node:
    """``node`` with ``fn`` applied bottom-up to every node (a dataclass tree)."""
    if isinstance(node, Sym) or not dataclasses.is_dataclass(node):
        return fn(node)
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, Node):
            new = _rebuild(value, fn)
        elif isinstance(value, tuple) and value and isinstance(value[0], Node):
            new = tuple(_rebuild(v, fn) for v in value)
        elif f.name == "args" and isinstance(value, tuple):  # a map's (symbol, node) pairs
            new = tuple((s, _rebuild(v, fn)) for s, v in value)
        else:
            continue
        if new != value:
            changes[f.name] = new
    return fn(dataclasses.replace(node, **changes) if changes else node)


def _solved(n: Node) -> Node:
    """One product ``n`` with its inverse factors written as solves (the lowering rule):
    A⁻¹ B → solve(A, B), B A⁻¹ → solve(Aᵀ, Bᵀ)ᵀ, (P A⁻¹) B → P solve(A, B), the
    inverse's row and column sums A⁻¹ 𝟏 → solve(A, 𝟏) and 𝟏ᵀ A⁻¹ → solve(Aᵀ, 𝟏)ᵀ,
    (A⁻¹)ᵏ → solve(A, (A⁻¹)ᵏ⁻¹), and a product with a sum that holds an inverse
    distributed over it (P (A⁻¹ + B⁻¹) = solve(Aᵀ, Pᵀ)ᵀ + solve(Bᵀ, Pᵀ)ᵀ)."""
    from symgrad.ops.linear import MatPow
    from symgrad.ops.reductions import ColSum, RowSum

    if isinstance(n, RowSum) and isinstance(n.x, Inverse):
        return Solve(n.x.x, Broadcast(Const(sp.Integer(1)), n.shape))
    if isinstance(n, ColSum) and isinstance(n.x, Inverse):
        return Solve(n.x.x, Broadcast(Const(sp.Integer(1)), n.shape), right=True)
    if isinstance(n, MatPow) and isinstance(n.x, Inverse):
        rest = n.x if n.k == 2 else _solved(MatPow(n.x, n.k - 1))
        return Solve(n.x.x, rest)
    if not isinstance(n, MatMul):
        return n
    a, b = n.a, n.b
    for i, side in enumerate((a, b)):
        terms = _inverse_terms(side)
        if terms is not None:
            parts = [_solved(MatMul(t, b) if i == 0 else MatMul(a, t)) for t in terms]
            return Add(tuple(parts))
    if isinstance(a, Inverse):
        return Solve(a.x, b)
    if isinstance(a, MatMul) and isinstance(a.b, Inverse):
        return MatMul(a.a, Solve(a.b.x, b))
    if isinstance(a, Solve) and a.right:  # (P A⁻¹) B: P (A⁻¹ B)
        return MatMul(a.b, Solve(a.a, b))
    if isinstance(b, Inverse):
        return Solve(b.x, a, right=True)
    if isinstance(b, Scale) and isinstance(b.x, Inverse):
        return Scale(b.c, Solve(b.x.x, a, right=True))
    if isinstance(a, Scale) and isinstance(a.x, Inverse):
        return Scale(a.c, Solve(a.x.x, b))
    return n


def _inverse_terms(node: Node) -> list[Node] | None:
    """The terms of a sum with an inverse among them (an inverse scaled counts), or None."""
    if not isinstance(node, Add):
        return None
    if not any(isinstance(t, Inverse) or isinstance(t, Scale) and isinstance(t.x, Inverse)
               for t in node.terms):
        return None
    return list(node.terms)


def with_solves(node: Node) -> Node:
    """``node`` with every product by an inverse written as a solve (the same value, and
    the numerics numpy recommends), by the rule of :func:`_solved` applied to every
    product, row or column sum and power.  A lone inverse stays one (it is the value)."""
    return _rebuild(node, _solved)


def _under(node: Node) -> list[Node]:
    """The matrices ``node`` needs invertible: the operand of an inverse, a determinant or
    a log-determinant, the matrix of a solve."""
    if isinstance(node, Inverse | Det | LogDet):
        return [node.x]
    if isinstance(node, Solve):
        return [node.a]
    return []


def invertible_names(root: Node) -> set[str]:
    """The square names inside a matrix that must be invertible: random instances draw
    them as (n + 1) I + R/2 (:func:`condition`)."""
    found: set[str] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        for m in _under(n):
            found |= {s.name for s in _syms(m) if s.shape[0] == s.shape[1]}
        stack.extend(n.children)
    return found


def _syms(node: Node) -> list[Sym]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Sym):
            out.append(n)
        stack.extend(n.children)
    return out


def degenerate(root: Node, env) -> bool:
    """Whether a matrix that ``root`` inverts is singular for every value of the entry
    symbols of ``env`` (a tiny instance where the proof would divide by zero)."""
    stack = [root]
    while stack:
        n = stack.pop()
        for m in _under(n):
            if sp.expand(m.explicit(env).det(method="berkowitz")) == 0:
                return True
        stack.extend(n.children)
    return False


def condition(a: np.ndarray) -> np.ndarray:
    """A random square draw made well conditioned, with a positive determinant:
    (n + 1) I + A/2 (its eigenvalues lie near n + 1, for normal or ±[0.5, 1.5] entries)."""
    n = a.shape[0]
    return (n + 1) * np.eye(n) + a / 2
