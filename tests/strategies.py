"""Hypothesis strategies shared by the test suite, one section per module under test."""

from __future__ import annotations

from hypothesis import strategies as st

# =========================================================================================
# symgrad.expr: expression strings (well-formed, near-miss, hostile and garbage)
# =========================================================================================

EXPR_NAMES = ("x", "y")
"""The user names the expression strategies use; map them to symbols when parsing."""

_EXPR_FUNCTIONS = {
    "exp": 1, "log": 1, "log1p": 1, "expm1": 1, "sqrt": 1, "abs": 1, "sign": 1, "tanh": 1,
    "sinh": 1, "cosh": 1, "sin": 1, "cos": 1, "tan": 1, "arctan": 1, "atan": 1, "erf": 1,
    "sigmoid": 1, "softplus": 1, "relu": 1, "heaviside": 1, "maximum": 2, "minimum": 2,
}  # fmt: skip
_EXPR_EDGE_LITERALS = ("0", "1", "0.5", "1e-3", "2.5e2", "999999999999", "1e12", "0.0")
_EXPR_TOKENS = (
    "x", "y", "z", "e", "pi", "np.", "numpy.", "exp", "log", "where", "tanh", "sigmoid",
    "(", ")", ",", "+", "-", "*", "/", "**", "<", ">=", "==", "@", ".T", ".", "_", "__class__",
    "0", "1", "9", "1e999", "1e12", "9**9**9", "lambda", "'", "[", "]", "axis=0", " ",
)  # fmt: skip
_EXPR_CHARS = "xyzepinlogwhr0123456789.+-*/%()[]{}<>=!,:;'\"_@^&|~#\\ \t\n"


def _expr_leaves(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(names),
        st.sampled_from(("pi", "e", "np.pi")),
        st.integers(0, 1000).map(str),
        st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(_EXPR_EDGE_LITERALS),
    )


def _expr_call(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def render(name: str, prefix: str, args: list[str]) -> str:
        return f"{prefix}{name}({', '.join(args)})"

    return st.sampled_from(sorted(_EXPR_FUNCTIONS)).flatmap(
        lambda name: st.builds(
            render,
            st.just(name),
            st.sampled_from(("", "", "", "np.")),
            st.lists(children, min_size=_EXPR_FUNCTIONS[name], max_size=_EXPR_FUNCTIONS[name]),
        )
    )


def _expr_extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.sampled_from(("+", "-", "*", "/", "**"))
    comparison = st.sampled_from(("<", "<=", ">", ">="))
    return st.one_of(
        st.builds("{}{}".format, st.sampled_from(("-", "+")), children),
        st.builds("({})".format, children),
        st.builds("{} {} {}".format, children, binary, children),
        st.builds("({}) {} ({})".format, children, binary, children),
        st.builds("({})**{}".format, children, st.integers(-70, 70)),
        _expr_call(children),
        st.builds("where({} {} {}, {}, {})".format, children, comparison, children, children,
                  children),
    )  # fmt: skip


def scalar_expressions(names: tuple[str, ...] = EXPR_NAMES) -> st.SearchStrategy[str]:
    """Syntactically valid expressions over the scalar grammar (they may still be refused,
    e.g. for division by zero, log(0) or limits)."""
    return st.recursive(_expr_leaves(names), _expr_extend, max_leaves=30)


def _mutate(text: str, position: int, insert: str, delete: int) -> str:
    i = position % (len(text) + 1)
    return text[:i] + insert + text[i + delete :]


def near_miss_expressions(names: tuple[str, ...] = EXPR_NAMES) -> st.SearchStrategy[str]:
    """A valid expression with a random edit: mostly syntax or name errors."""
    return st.builds(
        _mutate,
        scalar_expressions(names),
        st.integers(0, 200),
        st.sampled_from(_EXPR_TOKENS) | st.just(""),
        st.integers(0, 2),
    )


def hostile_expressions() -> st.SearchStrategy[str]:
    """Deep nesting, long chains, huge literals and power towers."""
    n = st.integers(0, 12_000)
    return st.one_of(
        st.builds(lambda k: "(" * k + "x" + ")" * k, n),
        st.builds(lambda k: "(" * k, n),
        st.builds(lambda k: "-" * k + "x", n),
        st.builds(lambda k: "x" + "**x" * k, n),
        st.builds(lambda k: "+".join(["x"] * (k + 1)), n),
        st.builds(lambda k: "exp(" * k + "x" + ")" * k, n),
        st.builds(lambda k: "9" * (k + 1), n),
        st.builds(lambda k: "**".join(["9"] * (k + 1)), st.integers(0, 50)),
        st.builds("x**{}".format, st.integers(-(10**12), 10**12)),
        st.builds("{}**{}".format, st.integers(0, 10**12), st.integers(-(10**6), 10**6)),
        st.sampled_from(("1e999", "-1e999", "1e-999", "0**-1", "9.9e307*10", "1/0")),
    )


def garbage_text() -> st.SearchStrategy[str]:
    """Random text: single characters from a mixed alphabet, or runs of grammar tokens."""
    return st.one_of(
        st.text(alphabet=_EXPR_CHARS, max_size=60),
        st.lists(st.sampled_from(_EXPR_TOKENS), max_size=30).map("".join),
        st.text(max_size=20),
    )


def expression_strings(names: tuple[str, ...] = EXPR_NAMES) -> st.SearchStrategy[str]:
    """Anything a user or attacker might type as an expression."""
    return st.one_of(
        scalar_expressions(names),
        near_miss_expressions(names),
        hostile_expressions(),
        garbage_text(),
    )
