"""Linear maps: matrix products, bias rows, transposes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad.ops.base import Node, filled, tangent_sum
from symgrad.ops.reductions import Broadcast, ColSum

__all__ = ["MatMul", "MatPow", "BiasAdd", "Transpose", "Concat", "ColSlice"]


@dataclass(frozen=True, eq=True)
class MatMul(Node):
    """C = A B.   ∂L/∂A = G Bᵀ,  ∂L/∂B = Aᵀ G."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return (self.a.shape[0], self.b.shape[1])

    def vjp(self, g, out):
        return MatMul(g, Transpose(self.b)), MatMul(Transpose(self.a), g)

    def jvp(self, t, out):
        """C = A B.   Ċ = Ȧ B + A Ḃ."""
        ta, tb = t
        return tangent_sum([None if ta is None else MatMul(ta, self.b),
                            None if tb is None else MatMul(self.a, tb)])

    def explicit(self, env):
        return self.a.explicit(env) * self.b.explicit(env)

    def numeric(self, env):
        return self.a.numeric(env) @ self.b.numeric(env)

    bracketed_factor = True

    def numpy(self, lw):
        return f"{lw.expr(self.a, lw.MUL)} @ {lw.expr(self.b, lw.MUL + 1)}", lw.MUL

    def into(self, st, dest):
        with st.operand(self.a) as a, st.operand(self.b) as b:
            st.emit(f"np.dot({a}, {b}, out={dest})")


@dataclass(frozen=True, eq=True)
class BiasAdd(Node):
    """Z = A + 𝟏 b (b a 1×n row added to every row).   ∂L/∂A = G,  ∂L/∂b = 𝟏ᵀ G."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return self.a.shape

    def vjp(self, g, out):
        return g, ColSum(g)

    def jvp(self, t, out):
        """Z = A + 𝟏 b.   Ż = Ȧ + 𝟏 ḃ."""
        ta, tb = t
        if tb is None:
            return ta
        return Broadcast(tb, self.shape) if ta is None else BiasAdd(ta, tb)

    def explicit(self, env):
        a, b = self.a.explicit(env), self.b.explicit(env)
        return a + sp.ones(a.rows, 1) * b

    def numeric(self, env):
        return self.a.numeric(env) + self.b.numeric(env)

    def numpy(self, lw):
        return f"{lw.expr(self.a, lw.ADD)} + {lw.expr(self.b, lw.ADD + 1)}", lw.ADD

    def into(self, st, dest):
        st.emit_into(self.a, dest)
        with st.operand(self.b) as b:
            st.emit(f"{dest} += {b}")


@dataclass(frozen=True, eq=True)
class Transpose(Node):
    """Aᵀ."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[1], self.x.shape[0])

    def vjp(self, g, out):
        """C = Aᵀ.   ∂L/∂A = Gᵀ."""
        return (Transpose(g),)

    def jvp(self, t, out):
        """C = Aᵀ.   Ċ = Ȧᵀ."""
        return Transpose(t[0])

    def explicit(self, env):
        return self.x.explicit(env).T

    def numeric(self, env):
        return self.x.numeric(env).T

    def numpy(self, lw):  # in place, Aᵀ of a name is an operand (a view), never a buffer
        return f"{lw.expr(self.x, lw.ATOM)}.T", lw.ATOM


@dataclass(frozen=True, eq=True)
class Concat(Node):
    """C = [A B …]: the columns of each term side by side (equal rows).

    ∂L/∂A = G[:, 0:a], ∂L/∂B = G[:, a:a+b], …: each term gets its own columns of G."""

    terms: tuple[Node, ...]

    @property
    def children(self):
        return self.terms

    @property
    def shape(self):
        return (self.terms[0].shape[0], sp.Add(*(t.shape[1] for t in self.terms)))

    def bounds(self) -> list[tuple[sp.Expr, sp.Expr]]:
        out, start = [], sp.Integer(0)
        for t in self.terms:
            out.append((start, start + t.shape[1]))
            start = start + t.shape[1]
        return out

    def vjp(self, g, out):
        return tuple(ColSlice(g, a, b) for a, b in self.bounds())

    def jvp(self, t, out):
        """C = [A B …].   Ċ = [Ȧ Ḃ …] (a zero tangent as 0 𝟏𝟏ᵀ)."""
        return Concat(tuple(filled(0, c) if tc is None else tc
                            for c, tc in zip(self.terms, t, strict=True)))

    def explicit(self, env):
        return sp.Matrix.hstack(*(t.explicit(env) for t in self.terms))

    def numeric(self, env):
        return np.concatenate([t.numeric(env) for t in self.terms], axis=1)

    precedence = 100
    rule = "concat"  # the rule's name and statement in derive --steps
    law = "Z = [A B …], ∂L/∂A = G[:, 0:a], ∂L/∂B = G[:, a:a+b], … (each input its own columns of G)"

    def text(self, p):
        return "[" + " ".join(p.paren(t, p.ATOM) for t in self.terms) + "]"

    def latex(self, p):
        return r"\begin{bmatrix} " + " & ".join(p._print(t) for t in self.terms) + r" \end{bmatrix}"

    def numpy(self, lw):
        return "np.concatenate((" + ", ".join(lw.expr(t, 0) for t in self.terms) + "), axis=1)", lw.ATOM

    def into(self, st, dest):
        for t, (a, b) in zip(self.terms, self.bounds(), strict=True):
            with st.operand(t) as s:
                st.emit(f"{dest}[:, {st.size(a)}:{st.size(b)}] = {s}")


@dataclass(frozen=True, eq=True)
class ColSlice(Node):
    """G[:, a:b]: the columns a … b−1 (the cotangent of one term of a Concat).

    ∂L/∂G is H placed in columns a … b−1 and zero elsewhere (not needed: backward-only)."""

    x: Node
    start: sp.Expr
    stop: sp.Expr

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[0], self.stop - self.start)

    def vjp(self, g, out):  # pragma: no cover - backward-only
        raise NotImplementedError("ColSlice is backward-only")

    def jvp(self, t, out):
        """C = G[:, a:b].   Ċ = Ġ[:, a:b]."""
        return ColSlice(t[0], self.start, self.stop)

    def explicit(self, env):
        m = self.x.explicit(env)
        a, b = (int(sp.sympify(e).xreplace({s: env[s] for s in sp.sympify(e).free_symbols}))
                for e in (self.start, self.stop))
        return m[:, a:b]

    def numeric(self, env):
        a, b = (int(sp.sympify(e).xreplace({s: env[s] for s in sp.sympify(e).free_symbols}))
                for e in (self.start, self.stop))
        return self.x.numeric(env)[:, a:b]

    precedence = 100

    def text(self, p):
        return f"{p.paren(self.x, p.ATOM)}[:, {p.width(self.start)}:{p.width(self.stop)}]"

    def latex(self, p):
        return rf"{p.paren(self.x, p.ATOM)}[:,\,{p.width(self.start)}:{p.width(self.stop)}]"

    def numpy(self, lw):
        return f"{lw.expr(self.x, lw.ATOM)}[:, {lw.size(self.start)}:{lw.size(self.stop)}]", lw.ATOM

    def into(self, st, dest):
        with st.operand(self.x) as x:
            st.emit(f"np.copyto({dest}, {x}[:, {st.size(self.start)}:{st.size(self.stop)}])")


@dataclass(frozen=True, eq=True)
class MatPow(Node):
    """Aᵏ = A A ⋯ A (k factors, A square, k ≥ 2): a form the simplifier writes for a product
    of equal factors (∂ tr(X⁸) = 8 (Xᵀ)⁷); the sweep never builds it.

    ∂L/∂A = Σ_{i=0}^{k−1} (Aᵀ)ⁱ G (Aᵀ)^{k−1−i}."""

    x: Node
    k: int

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def vjp(self, g, out):
        t = Transpose(self.x)

        def power(i: int) -> Node | None:
            return None if i == 0 else (t if i == 1 else MatPow(t, i))

        terms = []
        for i in range(self.k):
            left, right = power(i), power(self.k - 1 - i)
            term = g if left is None else MatMul(left, g)
            terms.append(term if right is None else MatMul(term, right))
        from symgrad.ops.base import add

        return (add(terms),)

    def explicit(self, env):
        return self.x.explicit(env) ** self.k

    def numeric(self, env):
        return np.linalg.matrix_power(self.x.numeric(env), self.k)

    precedence = 90  # a postfix, as ᵀ

    def text(self, p):
        return p.paren(self.x, p.ATOM) + str(self.k).translate(_SUP)

    def latex(self, p):
        return f"{p.paren(self.x, p.ATOM)}^{{{self.k}}}"

    def numpy(self, lw):
        return f"np.linalg.matrix_power({lw.expr(self.x, 0)}, {self.k})", lw.ATOM

    def into(self, st, dest):
        with st.operand(self.x) as x:
            st.emit(f"{dest}[...] = np.linalg.matrix_power({x}, {self.k})")


_SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
