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


# =========================================================================================
# symgrad.spec: small DAG networks (every layer type, skips, residual adds) and random
# [[layer]] tables (valid, near-miss and garbage)
# =========================================================================================

DAG_ACTIVATIONS = ("tanh", "sigmoid", "identity", "softplus", "relu")
DAG_TYPES = ("dense", "dense", "batchnorm", "layernorm", "dropout", "add", "concat")
DAG_LOSSES = ("mse", "cross_entropy", "binary_cross_entropy")
_LOSS_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}


@st.composite
def small_dag_tables(draw, *, max_layers: int = 5, activations=DAG_ACTIVATIONS,
                     max_width: int = 4) -> dict:
    """The parsed TOML (a dict) of a valid small DAG network: 1–``max_layers`` drawn layers
    of random types (dense of width 1–``max_width``, batchnorm, layernorm, dropout with p
    in (0, 0.9), add of equal-width earlier values, concat of two or three), random
    ``activations``, random skips (``input =`` an earlier value), and a random loss (mse;
    cross_entropy with a softmax output, binary_cross_entropy with a sigmoid one) with
    random l1/l2. A value that a skip left unread is joined into the output by a closing
    concat, and a dense output layer is added where the drawn layers have no parameters or
    too few outputs for cross_entropy, so the network may have two layers more than drawn."""
    inputs = draw(st.integers(1, max_width))
    widths = {"X": inputs}
    unread: list[str] = []
    layers: list[dict] = []
    count = draw(st.integers(1, max_layers))
    for l in range(1, count + 1):
        values = list(widths)
        previous = values[-1]
        kind = draw(st.sampled_from(DAG_TYPES))
        table: dict = {} if kind == "dense" else {"type": kind}
        if kind in ("add", "concat"):
            if kind == "add":
                first = draw(st.sampled_from(values))
                same = [v for v in values if widths[v] == widths[first]]
                names = [first, *draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))]
                width = widths[first]
            else:
                names = draw(st.lists(st.sampled_from(values), min_size=2, max_size=3))
                width = sum(widths[n] for n in names)
            table["inputs"] = names
        else:
            source = draw(st.sampled_from(values)) if draw(st.booleans()) else previous
            if source != previous or draw(st.booleans()):
                table["input"] = source  # sometimes also the default, spelled out
            names = [source]
            if kind == "dense":
                width = draw(st.integers(1, max_width))
                table["units"] = width
            else:
                width = widths[source]
            if kind == "dropout":
                table["p"] = draw(st.floats(0.05, 0.9))
            if kind in ("batchnorm", "layernorm") and draw(st.booleans()):
                table["eps"] = draw(st.sampled_from((1e-5, 1e-3, 0.1)))
            if kind == "batchnorm" and draw(st.booleans()):
                table["momentum"] = draw(st.sampled_from((0.0, 0.1, 0.5, 1.0)))
        activation = draw(st.sampled_from(activations))
        if activation != "identity" or draw(st.booleans()):
            table["activation"] = activation
        unread = [v for v in unread if v not in names]
        unread.append(f"A{l}")
        widths[f"A{l}"] = width
        layers.append(table)
    if len(unread) > 1:  # the skipped values, joined into the output
        layers.append({"type": "concat", "inputs": unread[::-1]})
        widths[f"A{len(layers)}"] = sum(widths[n] for n in unread)
    loss = draw(st.sampled_from(DAG_LOSSES))
    if (loss == "cross_entropy" and widths[f"A{len(layers)}"] < 2) or not any(
            table.get("type", "dense") in ("dense", "batchnorm", "layernorm") for table in layers):
        # two classes at least; something to train
        width = draw(st.integers(2 if loss == "cross_entropy" else 1, max_width))
        layers.append({"units": width})
        widths[f"A{len(layers)}"] = width
    if loss in _LOSS_OUTPUT:
        layers[-1]["activation"] = _LOSS_OUTPUT[loss]
    reg = {key: draw(st.sampled_from((0.0, 0.0, 0.01))) for key in ("l1", "l2")}
    return {"network": {"name": "dag", "inputs": inputs}, "layer": layers,
            "loss": {"kind": loss}, "regularization": reg}


_LAYER_KEY_NAMES = ("type", "units", "activation", "input", "inputs", "eps", "momentum", "p",
                    "unit", "kind", "")
_LAYER_TYPE_NAMES = ("dense", "batchnorm", "layernorm", "dropout", "add", "concat", "conv2d",
                     "flatten", "batchnrom", "Dense", "", "relu")
_VALUE_NAMES = ("X", "x", "A0", "A1", "A2", "A3", "A9", "A01", "Z1", "", "A-1")


def layer_values() -> st.SearchStrategy:
    """Any value a TOML layer key might hold: numbers at and past their limits, names,
    lists of names, nested garbage."""
    scalar = st.one_of(
        st.integers(-3, 6), st.sampled_from((0, 1, 10**7, -(2**63), 2**63 - 1)),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from((0.0, 0.5, 1.0, 1e-5)),
        st.booleans(), st.sampled_from(_VALUE_NAMES), st.sampled_from(_LAYER_TYPE_NAMES),
        st.sampled_from(("tanh", "relu", "softmax", "x**2", "exp(", "nope")), st.text(max_size=8),
    )
    return st.one_of(scalar, st.lists(scalar, max_size=4),
                     st.dictionaries(st.sampled_from(("a", "units")), scalar, max_size=2))


def layer_tables() -> st.SearchStrategy[dict]:
    """A random [[layer]] table: random keys (mostly real ones) with random values, the
    type drawn from real, planned and misspelt names."""
    typed = st.fixed_dictionaries({}, optional={"type": st.sampled_from(_LAYER_TYPE_NAMES)
                                                | layer_values()})
    return st.builds(lambda t, rest: {**rest, **t}, typed,
                     st.dictionaries(st.sampled_from(_LAYER_KEY_NAMES), layer_values(), max_size=4))


def plausible_layer_tables() -> st.SearchStrategy[dict]:
    """A [[layer]] table that is often valid: a real type with real keys and sensible or
    near-limit values (input names that may not exist, widths that may not match)."""
    names = st.sampled_from(("X", "A1", "A2", "A3", "A4"))
    values = {
        "units": st.sampled_from((1, 2, 3, 4, 0)), "activation": st.sampled_from(("tanh", "relu", "x**2",
                                                                    "identity", "softmax")),
        "input": names, "inputs": st.lists(names, min_size=1, max_size=3),
        "eps": st.sampled_from((0.0, 1e-5, 0.5, 1.0, 2.0, -1e-3)),
        "momentum": st.sampled_from((0.0, 0.1, 1.0, 1.5)),
        "p": st.sampled_from((0.0, 0.3, 0.99, 1.0, -0.1)),
    }

    def table(kind: str, keys: list[str], draw_values: dict) -> dict:
        out = {} if kind == "dense" else {"type": kind}
        if kind == "dense" and "units" not in keys and len(keys) < 3:
            keys = [*keys, "units"]  # mostly given: a dense layer needs it
        out.update({k: draw_values[k] for k in keys})
        return out

    return st.sampled_from(("dense", "batchnorm", "layernorm", "dropout", "add", "concat")).flatmap(
        lambda kind: st.builds(
            table, st.just(kind),
            st.lists(st.sampled_from(sorted(values)), unique=True, max_size=3),
            st.fixed_dictionaries(values)))
