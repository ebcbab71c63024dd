"""Spec loading and validation: exact one-line errors, hostile input, fuzzing."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, Training, load_spec, spec_from_dict

GOOD = """
[network]
name = "net"
inputs = 4

[[layer]]
units = 3
activation = "{act}"

[[layer]]
units = 2
activation = "{out}"

[loss]
{loss}
"""


def write(tmp_path, text, name="net.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def spec_text(act="tanh", out="softmax", loss='kind = "cross_entropy"'):
    return GOOD.format(act=act, out=out, loss=loss)


def error_of(tmp_path, text) -> str:
    with pytest.raises(SymgradError) as e:
        load_spec(write(tmp_path, text))
    return e.value.one_line().replace(str(tmp_path) + "/", "")


def test_good_spec_and_python_api_agree(tmp_path):
    spec = load_spec(write(tmp_path, spec_text()))
    api = Spec("net", 4, (Layer(3, "tanh"), Layer(2, "softmax")), loss="cross_entropy")
    assert spec == api
    assert spec.param_shapes() == {"W1": (4, 3), "b1": (3,), "W2": (3, 2), "b2": (2,)}
    assert spec.training == Training()  # PyTorch's SGD default learning rate
    assert spec.training.learning_rate == 1e-3


EXPECTED = [
    (spec_text(act="tanhh"),
     "symgrad: error: net.toml: layer[1].activation: unknown activation 'tanhh' (did you mean "
     "'tanh'?); use a built-in (identity, relu, leaky_relu, elu, selu, tanh, sigmoid, softplus, "
     "softsign, silu, gelu, gelu_tanh, mish, sin, softmax) or an expression in x"),
    (spec_text(loss='kind = "cross_entropyy"'),
     "symgrad: error: net.toml: loss.kind: unknown loss 'cross_entropyy' (did you mean "
     "'cross_entropy'?); use one of mse, mae, huber, cross_entropy, binary_cross_entropy or "
     'expr = "..."'),
    (spec_text(out="tanh"),
     "symgrad: error: net.toml: loss.kind: cross_entropy needs a softmax output layer, but the "
     "last layer's activation is 'tanh'"),
    (spec_text(loss='kind = "mse"\nexpr = "yhat"'),
     'symgrad: error: net.toml: loss: give exactly one of kind = "<built-in>" or '
     'expr = "<expression in yhat, y>"'),
    (spec_text().replace("units = 3", "unitz = 3"),
     "symgrad: error: net.toml: layer[1].unitz: unknown key (did you mean 'units'?); allowed "
     "keys: activation, input, type, units"),
    (spec_text().replace("units = 3", "units = 0"),
     "symgrad: error: net.toml: layer[1].units: must be between 1 and 1000000, got 0"),
    (spec_text().replace("units = 3", 'units = "3"'),
     "symgrad: error: net.toml: layer[1].units: must be an integer, got '3'"),
    (spec_text().replace('name = "net"', 'name = "My Net"'),
     "symgrad: error: net.toml: network.name: 'My Net' is not a module name; use lower-case "
     "letters, digits and _ (not starting with a digit)"),
    (spec_text() + "\n[trainig]\nepochs = 3\n",
     "symgrad: error: net.toml: [trainig]: unknown table (did you mean 'training'?); allowed: "
     "network, layer, loss, regularization, training"),
    (spec_text() + "\n[training]\noptimizer = \"adamw\"\n",
     "symgrad: error: net.toml: training.optimizer: unknown optimizer 'adamw' (did you mean "
     "'adam'?); use one of sgd, momentum, nesterov, adam, rmsprop, newton_cg, lbfgs"),
    (spec_text() + "\n[regularization]\nl2 = -1.0\n",
     "symgrad: error: net.toml: regularization.l2: must be a finite number >= 0.0, got -1.0"),
    ("[network\n", "symgrad: error: net.toml: invalid TOML: Expected ']' at the end of a table "
     "declaration (at line 1, column 9)"),
    (spec_text() + "\n[training]\noptimizer = \"adam\"\nbeta1 = 1.0\n",
     "symgrad: error: net.toml: training.beta1: must be a finite number >= 0.0 and < 1.0, got "
     "1.0 (beta1 = 1 makes Adam's bias correction 1 - beta1**t zero)"),
    (spec_text() + "\n[training]\neps = 0.0\n",
     "symgrad: error: net.toml: training.eps: must be a finite number > 0.0 and <= 1.0, got 0.0 "
     "(eps keeps the update's denominator away from zero)"),
    (spec_text() + "\n[training]\nlearning_rate = inf\n",
     "symgrad: error: net.toml: training.learning_rate: must be a finite number > 0.0 and <= "
     "1000000.0, got inf"),
    (spec_text() + "\n[training]\nepochs = 0\n",
     "symgrad: error: net.toml: training.epochs: must be between 1 and 10000000, got 0"),
    (spec_text().replace('name = "net"', 'name = "numpy"'),
     "symgrad: error: net.toml: network.name: the generated numpy.py imports numpy, so it would "
     "import itself instead; choose another name, e.g. 'numpy_net'"),
    (spec_text().replace('name = "net"', 'name = "pickle"'),
     "symgrad: error: net.toml: network.name: 'pickle' is a standard-library module, and a "
     "pickle.py would shadow it for every script in its directory; choose another name, e.g. "
     "'pickle_net'"),
    (spec_text().split("[[layer]]")[0],
     "symgrad: error: net.toml: layer: no [[layer]] tables; add one per dense layer, in order"),
]


@pytest.mark.parametrize("text,message", EXPECTED)
def test_exact_errors(tmp_path, text, message):
    assert error_of(tmp_path, text) == message


HOSTILE = [
    "__import__('os').system('touch pwned')",
    "x.__class__.__bases__",
    "open('/etc/passwd').read()",
    "(lambda: 1)()",
    "9**9**9**9",
    "x**99999999",
    "(" * 5000 + "x" + ")" * 5000,
    "1" * 5000,
    "+".join(["x"] * 3000),
    "[x for x in range(10**9)]",
]


@pytest.mark.parametrize("expr", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_activation_is_refused_quickly(tmp_path, capsys, expr):
    path = write(tmp_path, spec_text(act=expr.replace('"', '\\"')))
    t0 = time.process_time()
    assert main(["derive", str(path)]) == 2
    assert time.process_time() - t0 < 1.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"symgrad: error: {path}: layer[1].activation: ")
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["derive", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err == f"symgrad: error: {tmp_path}/missing.toml: no such file\n"
    assert main(["derive"]) == 2
    assert capsys.readouterr().err == "symgrad: error: derive: give a SPEC or --expr EXPR\n"
    assert main(["derive", "a.toml", "--format", "html"]) == 2
    assert capsys.readouterr().err.startswith("symgrad: error: derive: --format: invalid choice")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main(["derive", str(binary)]) == 2
    assert capsys.readouterr().err == (
        f"symgrad: error: {binary}: is not UTF-8 text (byte 0xff at line 1); save it as UTF-8\n")


def test_custom_expressions_in_specs(tmp_path):
    spec = load_spec(write(tmp_path, spec_text(act="x * sigmoid(x)", out="identity",
                                               loss='expr = "log(cosh(yhat - y))"')))
    assert spec.layers[0].fn.text == "f"
    assert spec.loss_fn.name == "custom"
    assert error_of(tmp_path, spec_text(out="identity", loss='expr = "y**2"')) == (
        "symgrad: error: net.toml: loss.expr: the loss does not depend on yhat")


# --------------------------------------------------------------------------
# Fuzzing: nothing but SymgradError, never slower than a second
# --------------------------------------------------------------------------

_values = st.recursive(
    st.none().map(lambda _: 1) | st.booleans() | st.integers(-10**20, 10**20)
    | st.floats(allow_nan=True) | st.text(max_size=30)
    | st.sampled_from(["tanh", "softmax", "relu", "x**2", "mse", "cross_entropy", "sgd"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["name", "inputs", "units", "activation", "kind", "expr", "l1", "l2",
                         "optimizer", "learning_rate", "batch_size", "epochs", "seed", "x"])
_table = st.dictionaries(_keys, _values, max_size=5)
_specs = st.fixed_dictionaries(
    {},
    optional={
        "network": _table, "layer": st.lists(_table, max_size=3) | _values, "loss": _table,
        "regularization": _table, "training": _table, "extra": _values,
    },
)


@pytest.mark.slow
@settings(max_examples=2000, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(_specs)
def test_fuzz_spec_dicts(data):
    t0 = time.process_time()
    try:
        spec = spec_from_dict(data, source="fuzz.toml")
    except SymgradError as e:
        assert "\n" not in e.one_line()
    else:
        assert isinstance(spec, Spec)
    assert time.process_time() - t0 < 1.0


_toml_chars = st.text(alphabet='[]=."\'#\n abcdefghijklmnopqrstuvwxyz0123456789_-+:', max_size=200)


@settings(max_examples=2000, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_toml_chars, _toml_chars.map(lambda t: spec_text() + t)))
def test_fuzz_spec_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fz") / "f.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_spec(path)
    except SymgradError as e:
        assert "\n" not in e.one_line()


# --------------------------------------------------------------------------
# The classes behind the examples: every hyper-parameter at the edge, every shadowing name
# --------------------------------------------------------------------------

_RANGES = {  # field: the allowed interval, as [lo, hi), (lo, hi] ...
    "beta1": "[0, 1)", "beta2": "[0, 1)", "momentum": "[0, 1)", "alpha": "[0, 1)",
    "eps": "(0, 1]", "learning_rate": "(0, 1000000]",
}  # fmt: skip


def _inside(interval: str, v) -> bool:
    lo, hi = (float(t) for t in interval[1:-1].split(","))
    if isinstance(v, bool) or v != v:
        return False
    return (lo <= v if interval[0] == "[" else lo < v) and (v <= hi if interval[-1] == "]"
                                                          else v < hi)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(_RANGES)), st.sampled_from(["sgd", "adam", "rmsprop"]),
       st.sampled_from([0, 1, 0.0, 1.0, 0.5, -1e-9, 1e-300, 2.0, 1e7, float("nan"),
                        float("inf"), -float("inf"), True]))
def test_training_hyperparameters_are_checked_at_the_edge(name, optimizer, value):
    if _inside(_RANGES[name], value):
        assert getattr(Training(optimizer, **{name: value}), name) == value
        return
    with pytest.raises(SymgradError) as e:
        Training(optimizer, **{name: value})
    assert e.value.where == f"training.{name}" and "\n" not in e.value.one_line()


_MODULE_NAMES = sorted(n for n in __import__("sys").stdlib_module_names if n.islower()
                       and n.isidentifier() and not n.startswith("_"))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([*_MODULE_NAMES, "numpy", "argparse", "sys", "class", "import"]))
def test_a_name_that_would_shadow_a_module_is_refused_with_a_suggestion(name):
    with pytest.raises(SymgradError) as e:
        Spec(name, 2, (Layer(1),), loss="mse")
    assert e.value.where == "<spec>: network.name"
    assert e.value.what.endswith(f"; choose another name, e.g. '{name}_net'")
    Spec(f"{name}_net", 2, (Layer(1),), loss="mse")  # the suggestion is accepted


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from([*_MODULE_NAMES, "numpy", "symgrad"]), st.booleans())
def test_an_output_file_that_would_shadow_a_module_is_refused(tmp_path_factory, name, expr):
    """F10: the rule of [network].name holds for the stem of ``-o FILE.py``, in both generate
    modes, before anything is derived or written; the suggested name is accepted."""
    import contextlib
    import io

    from symgrad.codegen import generate
    from symgrad.spec import check_module_path

    tmp = tmp_path_factory.mktemp("out")
    target = tmp / f"{name}.py"
    spec = write(tmp, spec_text())
    args = (["generate", "--expr", "sum(X**2)", "--shape", "X=2,2", "--wrt", "X"] if expr
            else ["generate", str(spec)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*args, "-o", str(target)]) == 2
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith(
        f"symgrad: error: {target}: ")
    assert err.getvalue().endswith(f"; choose another file name, e.g. {tmp}/{name}_net.py\n")
    assert sorted(p.name for p in tmp.iterdir()) == ["net.toml"]  # nothing written
    check_module_path(tmp / f"{name}_net.py")
    check_module_path(tmp / f"{name}.txt")  # not a module Python imports
    with pytest.raises(SymgradError, match="so it would import itself instead"):
        check_module_path("dir/numpy.py")
    with pytest.raises(SymgradError, match="; choose another file name"):  # the Python API
        generate(spec, target)
