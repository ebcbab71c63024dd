"""Layer types in the spec (DESIGN "Layers beyond dense"): every refusal is one exact line
naming the table and the fix, the same through TOML and the Python API; random layer tables
never raise anything but SymgradError; valid DAGs get consistent sizes and shapes."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import layer_tables, plausible_layer_tables, small_dag_tables

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, Training, load_spec, spec_from_dict

TYPES = ("use one of dense, batchnorm, layernorm, dropout, add, concat, conv2d, maxpool2d, "
         "avgpool2d, flatten")
READS_X_A1 = "a layer reads X or an earlier output (X, A1)"


def toml(layers: str, *, inputs: int = 3, loss: str = "mse", extra: str = "") -> str:
    return (f'[network]\nname = "net"\ninputs = {inputs}\n\n{layers}\n[loss]\nkind = "{loss}"\n'
            f"{extra}")


def error(text: str) -> str:
    with pytest.raises(SymgradError) as e:
        spec_from_dict(tomllib.loads(text), "net.toml")
    line = e.value.one_line()
    assert line.startswith("symgrad: error: net.toml: ") and "\n" not in line
    return line.removeprefix("symgrad: error: net.toml: ")


DENSE3 = "[[layer]]\nunits = 3\n"
CASES = [
    # types
    ('[[layer]]\ntype = "batchnrom"\n',
     f"layer[1].type: unknown layer type 'batchnrom' (did you mean 'batchnorm'?); {TYPES}"),
    ('[[layer]]\ntype = "Dense"\nunits = 2\n',
     f"layer[1].type: unknown layer type 'Dense' (did you mean 'dense'?); {TYPES}"),
    ('[[layer]]\ntype = "conv2d"\n',  # conv2d's own keys: tests/test_conv_spec.py
     "layer[1].filters: missing; give the number of filters (output channels) of this layer"),
    ('[[layer]]\ntype = "flatten"\nfoo = 1\n',
     "layer[1].foo: unknown key; allowed keys: activation, input, type"),
    ("[[layer]]\ntype = 3\n",
     f'layer[1].type: must be a layer type name in quotes (type = "dense"), got 3; {TYPES}'),
    # a key the type does not take: that key's own message, not "unknown key"
    ('[[layer]]\ntype = "batchnorm"\nunits = 3\n',
     "layer[1].units: only dense layers take units; a batchnorm layer has the width of its "
     "input"),
    (DENSE3 + '[[layer]]\ntype = "concat"\ninputs = ["A1", "X"]\nunits = 6\n',
     "layer[2].units: only dense layers take units; a concat layer's width is the sum of its "
     "inputs' widths"),
    ('[[layer]]\nunits = 3\neps = 0.1\n',
     "layer[1].eps: only batchnorm and layernorm layers take eps; remove it from this dense "
     "layer"),
    ('[[layer]]\ntype = "layernorm"\nmomentum = 0.2\n',
     "layer[1].momentum: only batchnorm layers take momentum (the running statistics' rate; "
     "layernorm keeps none); remove it"),
    ('[[layer]]\ntype = "dropout"\nmomentum = 0.2\n',
     "layer[1].momentum: only batchnorm layers take momentum; remove it from this dropout "
     "layer"),
    ('[[layer]]\nunits = 3\np = 0.2\n',
     'layer[1].p: only dropout layers take p; to drop values, add a layer with type = '
     '"dropout" and p = ... after this dense layer'),
    (DENSE3 + '[[layer]]\ntype = "add"\ninputs = ["A1", "X"]\ninput = "X"\n',
     'layer[2].input: an add layer names its values in inputs = ["A1", "X", ...], not input'),
    ('[[layer]]\nunits = 3\ninputs = ["X", "X"]\n',
     'layer[1].inputs: only add and concat layers take inputs; use input = "NAME" for one '
     "value"),
    ('[[layer]]\ntype = "batchnorm"\nmomentun = 0.2\n',
     "layer[1].momentun: unknown key (did you mean 'momentum'?); allowed keys: activation, "
     "eps, input, momentum, type"),
    # references
    (DENSE3 + '[[layer]]\nunits = 2\ninput = "A7"\n',
     f"layer[2].input: no value named 'A7'; {READS_X_A1}"),
    (DENSE3 + '[[layer]]\nunits = 2\ninput = "x"\n',
     f"layer[2].input: no value named 'x' (did you mean 'X'?); {READS_X_A1}"),
    (DENSE3 + '[[layer]]\nunits = 2\ninput = "A01"\n',
     f"layer[2].input: no value named 'A01' (did you mean 'A1'?); {READS_X_A1}"),
    (DENSE3 + '[[layer]]\nunits = 3\ninput = "A3"\n' + DENSE3,
     f"layer[2].input: 'A3' is layer 3's output, which is computed later; {READS_X_A1}"),
    (DENSE3 + '[[layer]]\nunits = 3\ninput = "A2"\n',
     f"layer[2].input: 'A2' is this layer's own output; {READS_X_A1}"),
    ('[[layer]]\nunits = 3\ninput = "A1"\n',
     "layer[1].input: 'A1' is this layer's own output; the first layer can only read X"),
    (DENSE3 + DENSE3 + '[[layer]]\ntype = "add"\ninputs = ["A1", "A4"]\n',
     "layer[3].inputs[2]: no value named 'A4'; a layer reads X or an "
     "earlier output (X, A1, A2)"),
    # add / concat
    ('[[layer]]\nunits = 2\n[[layer]]\ntype = "add"\ninputs = ["A1", "X"]\n',
     "layer[2].inputs: add needs values of one width, got A1 (2), X (3); put a dense layer on "
     "the narrower path, or use concat"),
    (DENSE3 + '[[layer]]\ntype = "add"\ninputs = ["A1"]\n',
     'layer[2].inputs: an add layer needs at least two values, got 1; list them as inputs = '
     '["A1", "X", ...]'),
    (DENSE3 + '[[layer]]\ntype = "concat"\ninputs = []\n',
     'layer[2].inputs: a concat layer needs at least two values, got 0; list them as inputs = '
     '["A1", "X", ...]'),
    (DENSE3 + '[[layer]]\ntype = "add"\n',
     'layer[2].inputs: missing; an add layer names the values it sums: inputs = ["A1", "X", '
     '...]'),
    (DENSE3 + '[[layer]]\ntype = "concat"\ninputs = ["A1", 3]\n',
     'layer[2].inputs[2]: must be a value name in quotes ("X", "A1", ...), got 3'),
    # TOML type errors
    ('[[layer]]\nunits = 3\ninput = 3\n',
     'layer[1].input: must be a value name in quotes (input = "X", input = "A1", ...), got 3'),
    (DENSE3 + '[[layer]]\ntype = "add"\ninputs = "A1"\n',
     "layer[2].inputs: must be a list of value names, got 'A1'; write inputs = [\"A1\", ...] "
     "with at least two names"),
    (DENSE3 + '[[layer]]\ntype = "concat"\ninputs = {A1 = 1}\n',
     "layer[2].inputs: must be a list of value names (inputs = [\"A1\", \"X\"]), got "
     "{'A1': 1}"),
    ('[[layer]]\ntype = "dropout"\np = "0.5"\n', "layer[1].p: must be a number, got '0.5'"),
    ('[[layer]]\ntype = "batchnorm"\neps = true\n', "layer[1].eps: must be a number, got True"),
    # numbers at their limits
    ('[[layer]]\ntype = "batchnorm"\neps = 0\n',
     "layer[1].eps: must be a finite number > 0.0 and <= 1.0, got 0.0 (eps keeps the division "
     "by the standard deviation finite)"),
    ('[[layer]]\ntype = "layernorm"\neps = -1e-5\n',
     "layer[1].eps: must be a finite number > 0.0 and <= 1.0, got -1e-05"),
    ('[[layer]]\ntype = "dropout"\np = 1\n',
     "layer[1].p: must be a finite number >= 0.0 and < 1.0, got 1.0 (p = 1 drops every value, "
     "and 1/(1 - p) is infinite)"),
    ('[[layer]]\ntype = "dropout"\np = -0.1\n',
     "layer[1].p: must be a finite number >= 0.0 and < 1.0, got -0.1"),
    ('[[layer]]\ntype = "batchnorm"\nmomentum = 1.5\n',
     "layer[1].momentum: must be a finite number >= 0.0 and <= 1.0, got 1.5"),
    # the network as a whole
    (DENSE3 + '[[layer]]\nunits = 2\ninput = "X"\n',
     'layer[1]: A1, this layer\'s output, is read by no later layer, so it cannot reach the '
     'loss; have a later layer read it (input = "A1" or inputs = [...]) or remove the layer'),
]


@pytest.mark.parametrize(("layers", "message"), CASES, ids=[m.split(":")[0] + f"-{i}" for i, (_, m)
                                                             in enumerate(CASES)])
def test_exact_layer_errors(layers, message):
    assert error(toml(layers)) == message


def test_a_layer_that_is_not_a_table():
    with pytest.raises(SymgradError) as e:
        spec_from_dict({"network": {"name": "net", "inputs": 2}, "layer": [{"units": 2}, 3],
                        "loss": {"kind": "mse"}}, "net.toml")
    assert e.value.one_line() == "symgrad: error: net.toml: layer[2]: must be a table, got int"


def test_batchnorm_with_batch_size_one():
    text = toml(DENSE3 + '[[layer]]\ntype = "batchnorm"\n', extra="[training]\nbatch_size = 1\n")
    assert error(text) == (
        "layer[2].type: batchnorm needs at least 2 samples per batch in training, but "
        "training.batch_size is 1 (the batch variance of one sample is 0); raise batch_size")
    # layernorm normalises each sample on its own: batch size 1 is fine
    spec_from_dict(tomllib.loads(text.replace("batchnorm", "layernorm")), "net.toml")


def test_cli_reports_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(toml('[[layer]]\ntype = "batchnorm"\nunits = 3\n'), encoding="utf-8")
    assert main(["derive", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"symgrad: error: {path}: layer[1].units: only dense layers take units; a batchnorm "
        "layer has the width of its input\n")


def api_error(make) -> str:
    with pytest.raises(SymgradError) as e:
        make()
    return e.value.one_line().removeprefix("symgrad: error: ")


def test_python_api_gives_the_same_errors():
    assert api_error(lambda: Layer(type="batchnrom")) == (
        f"layer.type: unknown layer type 'batchnrom' (did you mean 'batchnorm'?); {TYPES}")
    assert api_error(lambda: Layer(type="conv2d")) == (
        "layer.filters: missing; give the number of filters (output channels) of this layer")
    assert api_error(lambda: Layer(3, type="batchnorm")) == (
        "layer.units: only dense layers take units; a batchnorm layer has the width of its input")
    assert api_error(lambda: Layer(3, p=0.2)) == (
        'layer.p: only dropout layers take p; to drop values, add a layer with type = "dropout" '
        "and p = ... after this dense layer")
    assert api_error(lambda: Layer(type="dropout", eps=0.1)) == (
        "layer.eps: only batchnorm and layernorm layers take eps; remove it from this dropout "
        "layer")
    assert api_error(lambda: Layer(type="add", inputs=("A1",))) == (
        'layer.inputs: an add layer needs at least two values, got 1; list them as inputs = '
        '["A1", "X", ...]')
    assert api_error(lambda: Layer(type="dropout", p=1.0)) == (
        "layer.p: must be a finite number >= 0.0 and < 1.0, got 1.0 (p = 1 drops every value, "
        "and 1/(1 - p) is infinite)")
    assert api_error(lambda: Layer(type="batchnorm", momentum=-0.5)) == (
        "layer.momentum: must be a finite number >= 0.0 and <= 1.0, got -0.5")
    # the network-level checks name the layer by its position
    assert api_error(lambda: Spec("net", 3, (Layer(2), Layer(type="add", inputs=("A1", "X"))),
                                  loss="mse")) == (
        "<spec>: layer[2].inputs: add needs values of one width, got A1 (2), X (3); put a dense "
        "layer on the narrower path, or use concat")
    assert api_error(lambda: Spec("net", 3, (Layer(3), Layer(2, input="A2")), loss="mse")) == (
        f"<spec>: layer[2].input: 'A2' is this layer's own output; {READS_X_A1}")
    assert api_error(lambda: Spec("net", 3, (Layer(3), Layer(2, input="X")), loss="mse")) == (
        "<spec>: layer[1]: A1, this layer's output, is read by no later layer, so it cannot "
        'reach the loss; have a later layer read it (input = "A1" or inputs = [...]) or remove '
        "the layer")
    assert api_error(lambda: Spec("net", 3, (Layer(type="batchnorm"),), loss="mse",
                                  training=Training(batch_size=1))) == (
        "<spec>: layer[1].type: batchnorm needs at least 2 samples per batch in training, but "
        "training.batch_size is 1 (the batch variance of one sample is 0); raise batch_size")


MOMENTUM_NONE = ("momentum=None (torch's cumulative average) is not supported; give a number "
                 "in [0, 1] (torch's default 0.1)")


def test_none_is_not_the_default_in_the_python_api():
    """F8: torch's BatchNorm1d(momentum=None) is a cumulative moving average, not 0.1; None
    for a key a type takes is refused (leaving it out gives the default), in Layer and in
    spec_from_dict alike. On a type that does not take the key None means not given."""
    assert api_error(lambda: Layer(type="batchnorm", momentum=None)) == (
        f"layer.momentum: {MOMENTUM_NONE}")
    assert api_error(lambda: Layer(type="batchnorm", eps=None)) == (
        "layer.eps: eps=None is not a value; give a number in (0, 1] (torch's default 1e-05), "
        "or leave eps out")
    assert api_error(lambda: Layer(type="layernorm", eps=None)) == (
        "layer.eps: eps=None is not a value; give a number in (0, 1] (torch's default 1e-05), "
        "or leave eps out")
    assert api_error(lambda: Layer(type="dropout", p=None)) == (
        "layer.p: p=None is not a value; give a number in [0, 1) (torch's default 0.5), or "
        "leave p out")
    assert api_error(lambda: spec_from_dict({
        "network": {"name": "apin", "inputs": 3}, "loss": {"kind": "mse"},
        "layer": [{"type": "batchnorm", "momentum": None}, {"units": 2}]})) == (
        f"<spec>: layer[1].momentum: {MOMENTUM_NONE}")
    # the other types keep their own words for a momentum they do not take
    assert api_error(lambda: Layer(type="layernorm", momentum=0.1)) == (
        "layer.momentum: only batchnorm layers take momentum (the running statistics' rate; "
        "layernorm keeps none); remove it")
    assert api_error(lambda: Layer(type="dropout", momentum=0.1)) == (
        "layer.momentum: only batchnorm layers take momentum; remove it from this dropout layer")
    # left out: the defaults; None where the type takes no such key: not given
    bn, drop = Layer(type="batchnorm"), Layer(type="dropout")
    assert (bn.eps, bn.momentum, bn.p, drop.p) == (1e-5, 0.1, None, 0.5)
    assert Layer(type="layernorm", momentum=None).momentum is None
    assert Layer(3, eps=None, momentum=None, p=None) == Layer(3)


def test_python_api_and_toml_agree_on_a_dag():
    text = toml('[[layer]]\nunits = 4\n[[layer]]\ntype = "batchnorm"\nmomentum = 0.2\n'
                'activation = "relu"\n[[layer]]\ntype = "dropout"\np = 0.25\n'
                '[[layer]]\ntype = "layernorm"\ninput = "A1"\n'
                '[[layer]]\ntype = "add"\ninputs = ["A3", "A4"]\n'
                '[[layer]]\ntype = "concat"\ninputs = ["A5", "X"]\n', inputs=2)
    spec = spec_from_dict(tomllib.loads(text), "net.toml")
    api = Spec("net", 2, (Layer(4), Layer(type="batchnorm", momentum=0.2, activation="relu"),
                          Layer(type="dropout", p=0.25), Layer(type="layernorm", input="A1"),
                          Layer(type="add", inputs=("A3", "A4")),
                          Layer(type="concat", inputs=("A5", "X"))), loss="mse")
    assert spec == api
    assert spec.sizes == (2, 4, 4, 4, 4, 4, 6)
    assert [spec.sources(l) for l in range(1, 7)] == [
        ("X",), ("A1",), ("A2",), ("A1",), ("A3", "A4"), ("A5", "X")]
    assert spec.param_shapes() == {"W1": (2, 4), "b1": (4,), "gamma2": (4,), "beta2": (4,),
                                   "gamma4": (4,), "beta4": (4,)}
    assert spec.buffer_shapes() == {"mean2": (4,), "var2": (4,)}
    assert not spec.is_chain
    # the defaults of the keys a type takes, and None for the others
    bn, drop = spec.layers[1], spec.layers[2]
    assert (bn.eps, bn.momentum, bn.p) == (1e-5, 0.2, None)
    assert (drop.eps, drop.momentum, drop.p) == (None, None, 0.25)
    assert (spec.layers[0].eps, spec.layers[0].momentum, spec.layers[0].p) == (None, None, None)


def test_a_shrunk_spec_keeps_its_types():
    spec = spec_from_dict(tomllib.loads(toml(
        '[[layer]]\nunits = 4\n[[layer]]\ntype = "batchnorm"\neps = 0.01\n'
        '[[layer]]\ntype = "concat"\ninputs = ["A2", "X"]\n')), "net.toml")
    small = spec.with_sizes((2, 3, 3, 5))
    assert small.sizes == (2, 3, 3, 5)  # the concat's width follows from its inputs
    assert small.layers[1].eps == 0.01 and small.layers[1].momentum == 0.1


# --- random tables -------------------------------------------------------------------------


def _layers_toml_free(tables: list[dict], inputs: int, batch: int) -> dict:
    return {"network": {"name": "net", "inputs": inputs}, "layer": tables,
            "loss": {"kind": "mse"}, "training": {"batch_size": batch}}


def _expected_widths(spec: Spec) -> list[int]:
    """The widths by the DESIGN table, computed independently of Spec.sizes."""
    widths = [spec.inputs]
    for l, layer in enumerate(spec.layers, 1):
        names = spec.sources(l)
        assert all(n == "X" or 1 <= int(n[1:]) < l for n in names)
        ws = [widths[0 if n == "X" else int(n[1:])] for n in names]
        widths.append(layer.units if layer.type == "dense" else sum(ws)
                      if layer.type == "concat" else ws[0])
        if layer.type == "add":
            assert len(set(ws)) == 1
    return widths


def _check_consistent(spec: Spec) -> None:
    widths = _expected_widths(spec)
    assert list(spec.sizes) == widths and spec.outputs == widths[-1]
    expected: dict[str, tuple[int, ...]] = {}
    for l, layer in enumerate(spec.layers, 1):
        if layer.type == "dense":
            expected |= {f"W{l}": (spec.fan_in(l), widths[l]), f"b{l}": (widths[l],)}
        elif layer.type in ("batchnorm", "layernorm"):
            expected |= {f"gamma{l}": (widths[l],), f"beta{l}": (widths[l],)}
    assert spec.param_shapes() == expected
    assert spec.buffer_shapes() == {f"{k}{l}": (widths[l],) for l, layer in
                                    enumerate(spec.layers, 1) if layer.type == "batchnorm"
                                    for k in ("mean", "var")}
    read = {n for l in range(1, len(spec.layers) + 1) for n in spec.sources(l)}
    assert all(f"A{l}" in read for l in range(1, len(spec.layers)))  # no dead ends


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(layer_tables(), plausible_layer_tables()), min_size=1, max_size=4),
       st.integers(1, 4), st.sampled_from((1, 2, 32)))
def test_random_layer_tables_raise_only_symgrad_errors(tables, inputs, batch):
    try:
        spec = spec_from_dict(_layers_toml_free(tables, inputs, batch), "net.toml")
    except SymgradError as e:
        line = e.one_line()
        assert line.startswith("symgrad: error: net.toml: ") and "Traceback" not in line
        return
    _check_consistent(spec)


@settings(max_examples=60, deadline=None)
@given(small_dag_tables(max_layers=6))
def test_drawn_dags_are_valid_and_consistent(table):
    spec = spec_from_dict(table, "dag.toml")
    _check_consistent(spec)
    assert spec == spec_from_dict(table, "again.toml")  # deterministic; sources not compared


def test_load_spec_reads_a_dag(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(toml('[[layer]]\nunits = 3\n[[layer]]\ntype = "add"\n'
                         'inputs = ["A1", "X"]\n'), encoding="utf-8")
    assert load_spec(path).sizes == (3, 3, 3)


SAME = [  # (TOML layers, the same layers through the Python API)
    ('[[layer]]\ntype = "batchnrom"\n', lambda: (Layer(type="batchnrom"),)),
    ('[[layer]]\ntype = "layernorm"\nunits = 2\n', lambda: (Layer(2, type="layernorm"),)),
    ('[[layer]]\ntype = "layernorm"\nmomentum = 0.5\n',
     lambda: (Layer(type="layernorm", momentum=0.5),)),
    ('[[layer]]\nunits = 2\ninputs = ["X", "X"]\n', lambda: (Layer(2, inputs=("X", "X")),)),
    ('[[layer]]\ntype = "concat"\ninputs = ["X", "X"]\ninput = "X"\n',
     lambda: (Layer(type="concat", inputs=["X", "X"], input="X"),)),
    ('[[layer]]\ntype = "concat"\ninputs = ["X", 2]\n',
     lambda: (Layer(type="concat", inputs=["X", 2]),)),
    ('[[layer]]\ntype = "add"\ninputs = "X"\n', lambda: (Layer(type="add", inputs="X"),)),
    ('[[layer]]\ntype = "dropout"\np = 1.0\n', lambda: (Layer(type="dropout", p=1.0),)),
    ('[[layer]]\ntype = "batchnorm"\neps = 0.0\n', lambda: (Layer(type="batchnorm", eps=0.0),)),
    (DENSE3 + '[[layer]]\nunits = 2\ninput = "A3"\n',
     lambda: (Layer(3), Layer(2, input="A3"))),
    (DENSE3 + '[[layer]]\ntype = "add"\ninputs = ["A1", "A2"]\n' + DENSE3,
     lambda: (Layer(3), Layer(type="add", inputs=("A1", "A2")), Layer(3))),
    ('[[layer]]\nunits = 2\n[[layer]]\ntype = "add"\ninputs = ["A1", "X"]\n',
     lambda: (Layer(2), Layer(type="add", inputs=("A1", "X")))),
    (DENSE3 + '[[layer]]\nunits = 2\ninput = "X"\n', lambda: (Layer(3), Layer(2, input="X"))),
]


@pytest.mark.parametrize(("layers", "api"), SAME)
def test_toml_and_python_api_say_the_same(layers, api):
    with pytest.raises(SymgradError) as from_toml:
        spec_from_dict(tomllib.loads(toml(layers)), "net.toml")
    with pytest.raises(SymgradError) as from_api:
        Spec("net", 3, api(), loss="mse", source="net.toml")
    assert from_api.value.what == from_toml.value.what
    # the field is the same; a Layer built alone does not know its position
    field = from_toml.value.where.split("]", 1)[1]  # net.toml: layer[2].inputs[2] → .inputs[2]
    assert from_api.value.where.endswith(field)
