"""The algebra every rule is written in: the node interface, leaves, and the generic
elementwise, scaling, product and sum nodes (with their smart constructors).

Every op — forward layer or backward-only expression — is one class holding, together:

* ``shape`` and ``children`` (the shape rule; the constructor is the forward formula),
* ``vjp(g, out)``: the vector-Jacobian rule, given ``g = ∂L/∂out`` the cotangent of each
  child (``None`` where none is needed), with the math in its docstring,
* ``jvp(t, out)``: the forward-mode rule, the tangent (directional derivative) of the op's
  value given the tangents ``t`` of its children (``None`` where one is zero); the
  R-operator of :mod:`symgrad.second` sweeps it over the forward and the backward graph,
* ``explicit(env)``: the expansion into an explicit SymPy matrix at concrete sizes (the
  scalar-expansion proof), and ``numeric(env)``: the value with numpy (checks, verify),
* ``text(p)`` / ``latex(p)``: its printed forms, given the printer ``p`` for its children
  (``p.paren(child, p.MATMUL)``, ``p.name``, ``p.coef``), and ``precedence``,
* ``numpy(lw)``: its readable numpy expression, given the lowering ``lw``
  (``lw.expr(child, lw.MUL)``, ``lw.form(child)``, ``lw.coef(c)``, ``lw.size(width)``,
  ``lw.map(m)``, ``lw.helpers``; in expression mode also ``lw.full(child, prec)``, the
  child spread to its own 2-D shape), returning ``(source, precedence)``, and
  ``into(st, dest)``: the in-place form writing into the preallocated buffer ``dest``
  (``st.operand(child)`` a name holding it, ``st.emit(line)``, ``st.emit_into(child, buf)``,
  ``st.scratch(shape)``, ``st.buffer(name, shape)``, ``st.simple(child)``, ``st.binary``,
  ``st.map_into``, ``st.ones()``, ``st.size(width)``, ``st.coef(c)``/``st.doprint(c)``).
  An op without a form is a one-line error when a module would need it.

Printers and lowerings ask the op (``node.text(p)``, ``node.numpy(lw)``); they do not branch
on its type. Older ops still have their printed forms as ``_print_<Class>`` methods of the
printers (the pattern SymPy's printers use); an op that declares a form here is found first.
The lowerings have no table of their own: every op's numpy forms are declared in its class
(what they call on ``lw`` and ``st`` is the lowerings' generic machinery — operands, scratch
buffers, the SymPy printer for an elementwise map's body).

Shapes are (rows, cols) of SymPy expressions: X is N×n0, W1 is n0×n1 and a bias
is kept as a 1×n row (stored as shape (n,) in generated code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import sympy as sp

from symgrad.activations import X as X_SYM
from symgrad.activations import sigmoid, softplus

__all__ = ["N", "L1", "L2", "SCALAR", "ONE", "Env", "Node", "Sym", "Const", "Exp", "Map", "Scale",
           "Hadamard", "Add", "scale", "filled", "is_ones", "hadamard", "add", "tangent_sum",
           "almost_everywhere"]

N = sp.Symbol("N", positive=True, integer=True)
L1 = sp.Symbol("lambda_1", nonnegative=True)
L2 = sp.Symbol("lambda_2", nonnegative=True)
SCALAR = (sp.Integer(1), sp.Integer(1))

Env = dict[str, Any]  # name -> matrix (sp.Matrix or np.ndarray); coefficients under their symbol


class Node:
    """A matrix-valued expression."""

    children: tuple[Node, ...] = ()
    shape: tuple[sp.Expr, sp.Expr]

    @property
    def is_scalar(self) -> bool:
        return self.shape == SCALAR

    def explicit(self, env: Env) -> sp.Matrix:  # pragma: no cover - abstract
        raise NotImplementedError

    def numeric(self, env: Env) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, g: Node, out: Node | None) -> tuple[Node | None, ...]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} has no vjp")

    def jvp(self, t: tuple[Node | None, ...], out: Node | None) -> Node | None:
        """The tangent of the value given the children's tangents ``t`` (None: zero);
        ``out`` the op's named output where it has one. None: the tangent is zero."""
        raise NotImplementedError(f"{type(self).__name__} has no jvp")

    # -- printed forms and lowerings (see the module docstring); an op declaring one is
    #    found by the printers and lowerings before their own tables.
    precedence: int | None = None  # the printers' precedence of text()/latex() (None: atom)
    bracketed_factor = False  # numpy brackets it as a factor of * for the reader: (A @ B) * C
    flat_data = False  # its lowerings read an image batch X as the module's (N, H·W·C) rows

    @property
    def refs(self) -> tuple[Node, ...]:
        """Named values the op reads but is not differentiated through (batchnorm's μ and
        σ², whose paths its own rule covers; a dropout mask): dependencies, not children."""
        return ()

    def text(self, p) -> str:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no text form")

    def latex(self, p) -> str:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no LaTeX form")

    def numpy(self, lw) -> tuple[str, int]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no numpy form")

    def into(self, st, dest: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no in-place form")

    def numpy_call(self, lw) -> tuple[str, int] | None:
        """``(call, i)`` where the readable value is entry ``i`` of the tuple that one
        kernel call returns (``maxpool(A1, …)``: the pooled map, 0, and its arg-max, 1):
        the readable lowering makes that call once for all its entries; None (the
        default): the value is its ``numpy`` expression alone."""
        return None

    def declares(self, form: str) -> bool:
        """Whether this op's class declares ``form`` (text, latex, numpy, into) itself."""
        return getattr(type(self), form) is not getattr(Node, form)

    def syms(self) -> set[str]:
        found: set[str] = set()
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Sym):
                found.add(node.name)
            stack.extend(node.children)
            stack.extend(node.refs)
        return found


def _coef(c: sp.Expr, env: Env) -> Any:
    """A scalar coefficient with the environment's values substituted."""
    subs = {s: env[s] for s in c.free_symbols if s in env}
    return c.xreplace(subs) if subs else c


def _size(d: sp.Expr, env: Env) -> int:
    return int(d.xreplace({s: env[s] for s in d.free_symbols}))


# --------------------------------------------------------------------------
# Leaves
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class Sym(Node):
    """A named matrix: data (X, Y), a parameter (W1, b1), a forward value (Z1, A1)
    or a cotangent (dZ1).  ``role`` is one of data, param, value, cotangent."""

    name: str
    shape: tuple[sp.Expr, sp.Expr]
    role: str = "value"

    def explicit(self, env: Env) -> sp.Matrix:
        return env[self.name]

    def numeric(self, env: Env) -> np.ndarray:
        return env[self.name]

    def numpy(self, lw):
        return self.name, lw.ATOM

    def into(self, st, dest):
        if self.name != dest:
            st.emit(f"np.copyto({dest}, {self.name})")


@dataclass(frozen=True, eq=True)
class Const(Node):
    """A scalar constant (the seed cotangent ∂L/∂L = 1)."""

    value: sp.Expr
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    def explicit(self, env: Env) -> sp.Matrix:
        return sp.Matrix([[_coef(self.value, env)]])

    def numeric(self, env: Env) -> np.ndarray:
        return np.array([[float(_coef(self.value, env))]])

    def vjp(self, g, out):
        return ()

    def jvp(self, t, out):
        return None

    def numpy(self, lw):
        return lw.coef(self.value), lw.ATOM if self.value.is_Integer else lw.MUL


ONE = Const(sp.Integer(1))


class Exp(sp.Function):
    """exp, kept as an opaque atom in explicit expansions: e^a·e^b stays a product,
    so softmax entries are rational functions that ``cancel`` decides quickly."""

    is_real = True

    def fdiff(self, argindex=1):
        return self

    def _eval_evalf(self, prec):
        return sp.exp(self.args[0]).evalf(prec)

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return sp.exp(arg)


# --------------------------------------------------------------------------
# Generic expressions: elementwise maps, scaling, products, sums
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class Map(Node):
    """A scalar SymPy expression applied elementwise: ``expr`` in the symbols of
    ``args`` (pairs symbol → same-shape matrix), e.g. 1 − a² with a → A1."""

    expr: sp.Expr
    args: tuple[tuple[sp.Symbol, Node], ...]
    note: str = ""

    @property
    def children(self):
        return tuple(node for _, node in self.args)

    @property
    def shape(self):
        return self.args[0][1].shape

    def vjp(self, g, out):
        """C = f(A, B, …) elementwise.   ∂L/∂A = G ⊙ ∂f/∂a(A, B, …), for each argument
        (∂f/∂a by SymPy; a constant derivative c gives c·G)."""
        grads = []
        for s, _ in self.args:
            d = sp.diff(self.expr, s)
            if d == 0:
                grads.append(None)
            elif not (d.free_symbols & {t for t, _ in self.args}):
                grads.append(scale(Const(d), g) if isinstance(g, Const) else (
                    g if d == 1 else Scale(d, g)))
            else:
                grads.append(hadamard(g, Map(d, self.args, note=f"∂/∂{s}")))
        return tuple(grads)

    def jvp(self, t, out):
        """C = f(A, B, …).   Ċ = Σ_a Ȧ ⊙ ∂f/∂a(A, B, …) (∂f/∂a by SymPy; a derivative that is
        0 almost everywhere, of relu′ or sign, is 0, the left rule)."""
        terms = []
        own = {s for s, _ in self.args}
        if len(t) == 2 and None not in t:  # f(a − b): Ċ = f′(A − B) ⊙ (Ȧ − Ḃ), one product
            (a, _), (b, _) = self.args
            d = almost_everywhere(sp.diff(self.expr, a))
            if d != 0 and sp.expand(d + almost_everywhere(sp.diff(self.expr, b))) == 0:
                c, rest = sp.factor_terms(d).as_coeff_Mul()
                diff = tangent_sum([t[0], Scale(sp.Integer(-1), t[1])])
                if not (rest.free_symbols & own):
                    return diff if d == 1 else Scale(d, diff)
                term = hadamard(Map(rest, self.args, note=f"∂/∂{a}"), diff)
                return term if c == 1 else Scale(c, term)
        for (s, _), ts in zip(self.args, t, strict=True):
            d = almost_everywhere(sp.diff(self.expr, s)) if ts is not None else sp.Integer(0)
            if d == 0:
                continue
            if not (d.free_symbols & own):
                terms.append(ts if d == 1 else Scale(d, ts))
            else:  # a number in front: −2 Ȧ ⊙ A, not Ȧ ⊙ (−2A)
                c, rest = d.as_coeff_Mul()
                term = hadamard(ts, Map(rest, self.args, note=f"∂/∂{s}"))
                terms.append(term if c == 1 else Scale(c, term))
        return tangent_sum(terms)

    def explicit(self, env):
        mats = [(s, node.explicit(env)) for s, node in self.args]
        rows, cols = mats[0][1].shape
        expr = self.expr.xreplace({s: _coef(s, env) for s in self.expr.free_symbols if s in env})
        if expr.has(sp.Derivative):  # abstract f′: subs builds the Subs(…) that diff builds
            return sp.Matrix(
                rows, cols, lambda i, j: expr.subs({s: m[i, j] for s, m in mats}, simultaneous=True)
            )
        return sp.Matrix(rows, cols, lambda i, j: expr.xreplace({s: m[i, j] for s, m in mats}))

    def numeric(self, env):
        symbols = tuple(s for s, _ in self.args)
        values = [node.numeric(env) for _, node in self.args]
        out = _lambdified(self.expr, symbols)(*values)
        return np.broadcast_to(out, values[0].shape).astype(values[0].dtype, copy=True)

    def numpy(self, lw):
        """The body (stabilized, its common parts shared) printed over the arguments' forms:
        the lowering's own service, for every map."""
        return lw.map(self)

    def into(self, st, dest):
        st.map_into(self, dest)


@dataclass(frozen=True, eq=True)
class Scale(Node):
    """C = c·A for a scalar symbol expression c (1/N, λ₂, …).   ∂L/∂A = c·G."""

    c: sp.Expr
    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def vjp(self, g, out):
        return (scale(Const(self.c), g),)

    def jvp(self, t, out):
        """C = c·A.   Ċ = c·Ȧ."""
        return None if t[0] is None else scale(Const(self.c), t[0])

    def explicit(self, env):
        return _coef(self.c, env) * self.x.explicit(env)

    def numeric(self, env):
        return float(_coef(self.c, env)) * self.x.numeric(env)

    def numpy(self, lw):
        num, den = sp.fraction(self.c)
        body = lw.expr(self.x, lw.MUL)
        if num != 1:
            body = f"{lw.coef(num)} * {body}"
        if den != 1:
            body = f"{body} / {lw.expr_coef(den)}"
        return body, lw.MUL

    def into(self, st, dest):
        num, den = sp.fraction(self.c)
        x = st.simple(self.x)
        if x is not None and (num != 1 or den != 1):
            if num != 1 and den != 1:  # one pass: x * (lr / N)
                st.emit(f"np.multiply({x}, {st.doprint(self.c)}, out={dest})")
            else:
                ufunc, c = ("multiply", num) if den == 1 else ("divide", den)
                st.emit(f"np.{ufunc}({x}, {st.coef(c)}, out={dest})")
            return
        st.emit_into(self.x, dest)
        if num != 1 and den != 1:  # one pass: dest *= lr / N
            st.emit(f"{dest} *= {st.doprint(self.c)}")
        elif num != 1:
            st.emit(f"{dest} *= {st.doprint(num)}")
        elif den != 1:
            st.emit(f"{dest} /= {st.doprint(den)}")


@dataclass(frozen=True, eq=True)
class Hadamard(Node):
    """A ⊙ B (elementwise product)."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return self.a.shape

    def vjp(self, g, out):
        """C = A ⊙ B.   ∂L/∂A = G ⊙ B,  ∂L/∂B = G ⊙ A."""
        return hadamard(g, self.b), hadamard(g, self.a)

    def jvp(self, t, out):
        """C = A ⊙ B.   Ċ = Ȧ ⊙ B + A ⊙ Ḃ."""
        def times(x: Node, y: Node) -> Node:  # c (X ⊙ Y): a scaled tangent's number in front
            for u, w in ((x, y), (y, x)):
                if isinstance(u, Scale):
                    return Scale(u.c, hadamard(u.x, w) if u is x else hadamard(w, u.x))
            return hadamard(x, y)

        ta, tb = t
        return tangent_sum([None if ta is None else times(ta, self.b),
                            None if tb is None else times(self.a, tb)])

    def explicit(self, env):
        return self.a.explicit(env).multiply_elementwise(self.b.explicit(env))

    def numeric(self, env):
        return self.a.numeric(env) * self.b.numeric(env)

    def numpy(self, lw):
        """A * B, a map on the right; G ⊙ [c] (an indicator map) multiplies by the mask."""
        a, b = self.a, self.b
        if isinstance(a, Map) and not isinstance(b, Map):
            a, b = b, a
        left = lw.expr(a, lw.ATOM if a.bracketed_factor else lw.MUL)
        mask = lw.mask(b) if isinstance(b, Map) else None
        if mask is not None:
            return f"{left} * ({mask})", lw.MUL
        return f"{left} * {lw.expr(b, lw.MUL + 1)}", lw.MUL

    def into(self, st, dest):
        """dest = A, then dest ⊙= the map B in place; else one multiply."""
        a, b = self.a, self.b
        if isinstance(a, Map | Sym) and not isinstance(b, Map | Sym):
            a, b = b, a
        if isinstance(b, Map):
            st.emit_into(a, dest)
            st.map_mul_into(b, dest)
        else:
            st.binary("multiply", "*", a, b, dest, self.shape, commutative=True)


@dataclass(frozen=True, eq=True)
class Add(Node):
    """C = A + B + …  (same shapes; a N×1 or 1×n term broadcasts).   ∂L/∂each = G."""

    terms: tuple[Node, ...]

    @property
    def children(self):
        return self.terms

    @property
    def shape(self):
        return self.terms[0].shape

    def vjp(self, g, out):
        return tuple(g for _ in self.terms)

    def jvp(self, t, out):
        """C = A + B + ….   Ċ = Ȧ + Ḃ + …."""
        return tangent_sum(list(t))

    def explicit(self, env):
        mats = [t.explicit(env) for t in self.terms]
        out = mats[0]
        for m in mats[1:]:
            out = out + m
        return out

    def numeric(self, env):
        return sum((t.numeric(env) for t in self.terms[1:]), self.terms[0].numeric(env))

    def numpy(self, lw):
        return " + ".join(lw.expr(t, lw.ADD) for t in self.terms), lw.ADD

    def into(self, st, dest):
        st.emit_into(self.terms[0], dest)
        for t in self.terms[1:]:
            with st.operand(t) as s:
                st.emit(f"{dest} += {s}")


# --------------------------------------------------------------------------
# Smart constructors: keep the derivation free of ×1 and ⊙1
# --------------------------------------------------------------------------


def scale(g: Node, x: Node) -> Node:
    """g·x for a scalar cotangent g, folding constants (and dropping the seed 1)."""
    if not isinstance(g, Const):
        return Hadamard(g, x)
    if isinstance(x, Const):
        return Const(g.value * x.value)
    if isinstance(x, Scale):
        g, x = Const(g.value * x.c), x.x
    return x if g.value == 1 else Scale(g.value, x)


def filled(c: sp.Expr, like: Node) -> Node:
    """The constant ``c`` spread to the shape of ``like``: c 𝟏𝟏ᵀ (a matrix, not a scalar).

    It is the 𝟏𝟏ᵀ map scaled by c, so printers and lowerings see one form."""
    ones = Map(sp.Integer(1), ((X_SYM, like),), note="𝟏𝟏ᵀ")
    return ones if c == 1 else Scale(sp.sympify(c), ones)


def is_ones(node: Node) -> bool:
    """Whether ``node`` is the all-ones matrix 𝟏𝟏ᵀ (a constant map)."""
    return isinstance(node, Map) and node.expr == 1


def hadamard(a: Node, b: Node) -> Node:
    """A ⊙ B, with A ⊙ 𝟏𝟏ᵀ = A and A ⊙ c𝟏𝟏ᵀ = c A (same shapes)."""
    for x, y in ((a, b), (b, a)):
        if is_ones(y):
            return x
        if isinstance(y, Scale) and is_ones(y.x):
            return scale(Const(y.c), x)
    return Hadamard(a, b)


def add(terms: list[Node]) -> Node:
    return terms[0] if len(terms) == 1 else Add(tuple(terms))


#: the subtraction op A − B (reductions.Sub, which registers itself here: base sits below it)
SUBTRACT: list = []


def tangent_sum(terms: list[Node | None]) -> Node | None:
    """The sum of the tangents that are not zero (None when all are); a term with a negative
    number in front is subtracted (a − 2 b, not a + −2 b)."""
    kept = [t for t in terms if t is not None]
    if not kept:
        return None
    plus = [t for t in kept if not _negative(t)] or [kept[0]]
    out = add(plus)
    for t in kept:
        if t not in plus:
            c = -t.c  # type: ignore[attr-defined]
            out = SUBTRACT[0](out, t.x if c == 1 else Scale(c, t.x))  # type: ignore[attr-defined]
    return out


def _negative(t: Node) -> bool:
    return isinstance(t, Scale) and t.c.is_number and t.c < 0


def almost_everywhere(d: sp.Expr) -> sp.Expr:
    """A scalar derivative with the point masses of a step's derivative taken as 0 (relu′′,
    sign′: 0 almost everywhere, as the left rule takes them)."""
    d = d.replace(sp.DiracDelta, lambda *a: sp.Integer(0))
    if d.has(sp.Piecewise):
        d = sp.piecewise_fold(d)
        if isinstance(d, sp.Piecewise) and all(e == 0 for e, _ in d.args):
            return sp.Integer(0)
    return d


# --------------------------------------------------------------------------
# Numeric evaluation of scalar SymPy expressions (our own trees, never user text)
# --------------------------------------------------------------------------


def _np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _np_softplus(x):
    return np.logaddexp(0.0, x)


_np_erf = np.vectorize(math.erf, otypes=[float])  # numpy has no erf; checks only


@lru_cache(maxsize=512)
def _lambdified(expr: sp.Expr, symbols: tuple[sp.Symbol, ...]):
    modules = [{"sigmoid": _np_sigmoid, "softplus": _np_softplus, "erf": _np_erf}, "numpy"]
    return sp.lambdify(symbols, expr, modules=modules)


_ = (sigmoid, softplus)  # referenced by name in the lambdify module table
