"""A layer type is one declaration (symgrad/layers.py): no stage names a type, and a new
type declared as one class goes through spec, graph, derivation, printing and the proof."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sympy as sp

import symgrad
from symgrad import layers
from symgrad.crosscheck import prove_structure
from symgrad.derive import derive
from symgrad.errors import SymgradError
from symgrad.layers import KINDS, LAYER_TYPES, LayerKind
from symgrad.ops import Broadcast, Hadamard
from symgrad.printing import text
from symgrad.spec import Layer, Spec

PACKAGE = Path(symgrad.__file__).resolve().parent
# the modules that may name types: their declarations, and expression mode (no layers)
OWN = {"layers.py", "exprmode.py"}
# type names that are also other things' names: "add" a rule's and a ufunc's, "flatten" a
# function of verify's formulas — compared with a layer's .type or a kind, they still count
OTHER_MEANINGS = {"add", "flatten"}


def type_names_compared(path: Path) -> list[str]:
    """``x == "batchnorm"``, ``layer.type in ("add", "concat")``: comparisons with a layer
    type's name (those of OTHER_MEANINGS only where the other side is a ``.type`` or a
    ``kind``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        consts = [c.value for s in sides for c in ast.walk(s)
                  if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        typed = any((isinstance(s, ast.Attribute) and s.attr == "type")
                    or (isinstance(s, ast.Name) and s.id == "kind") for s in sides)
        names = [c for c in consts if c in LAYER_TYPES and (typed or c not in OTHER_MEANINGS)]
        if names:
            found.append(f"{path.name}:{node.lineno} {'/'.join(names)}")
    return found


def test_the_finder_finds_a_comparison_with_a_type_name(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('if layer.type in ("add", "concat"):\n    pass\nok = rule == "add"\n'
                   'if kind == "layernorm":\n    pass\n')
    assert type_names_compared(bad) == ["bad.py:1 add/concat", "bad.py:4 layernorm"]


def test_no_stage_branches_on_a_layer_types_name() -> None:
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) if p.name not in OWN
             for hit in type_names_compared(p)]
    assert found == []


def test_every_type_is_registered_under_its_name_and_takes_an_activation() -> None:
    assert LAYER_TYPES == ("dense", "batchnorm", "layernorm", "dropout", "add", "concat",
                           "conv2d", "maxpool2d", "avgpool2d", "flatten")
    for name, kind in KINDS.items():
        assert kind.name == name and "activation" in kind.keys
        assert set(kind.keys) - {"activation"} <= set(layers.OPTIONAL_KEYS)
        assert kind.joins == ("inputs" in kind.keys)
        assert bool(kind.proof_target) == (not kind.plain)
        assert set(kind.adjoints) <= set(kind.statistics)
    assert layers.PARAM_FAMILIES == ("W", "b", "gamma", "beta")
    assert Layer(type="layernorm").kind is layers.LayerNormLayer


# --------------------------------------------------------------------------
# A new type, declared here as one class: s ⊙ A per column (a learned scale)
# --------------------------------------------------------------------------


class ScaleLayer(LayerKind):
    """Z = A ⊙ 𝟏s (s a row of ones at first)."""

    name = "scale"
    keys = ("activation", "input")
    params = ("s",)
    proof_target = "Z"

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        s = g.param(f"s{l}", (sp.Integer(1), src.shape[1]))
        rhs = Hadamard(src, Broadcast(s, src.shape))
        return rhs, rhs


@pytest.fixture
def scale_type(monkeypatch):
    monkeypatch.setitem(KINDS, "scale", ScaleLayer)
    monkeypatch.setattr(layers, "LAYER_TYPES", (*LAYER_TYPES, "scale"))


def scaled() -> Spec:
    return Spec("scaled", 3, (Layer(4, "tanh"), Layer(type="scale", activation="tanh"),
                              Layer(2, "softmax")), loss="cross_entropy")


def test_a_new_type_is_one_class(scale_type) -> None:
    spec = scaled()
    assert spec.sizes == (3, 4, 4, 2)
    assert spec.param_shapes() == {"W1": (3, 4), "b1": (4,), "s2": (4,), "W3": (4, 2),
                                   "b3": (2,)}
    d = derive(spec)
    grads = {e.target.name: text(e.rhs) for e in d.backward}
    assert grads["ds2"] == "𝟏ᵀ (δ₂ ⊙ A₁)"
    assert "scaled: 3 → 4 tanh → scale tanh → 2 softmax" in repr(d)
    claim = prove_structure(spec)
    assert claim.ok, claim.detail


def test_a_new_type_is_refused_keys_it_does_not_take(scale_type) -> None:
    with pytest.raises(SymgradError) as e:
        Layer(type="scale", eps=0.1, where="net.toml: layer[2]")
    assert e.value.one_line() == ("symgrad: error: net.toml: layer[2].eps: only batchnorm and "
                                  "layernorm layers take eps; remove it from this scale layer")
    with pytest.raises(SymgradError) as e:
        Layer(type="scale", inputs=("X", "A1"), where="net.toml: layer[2]")
    assert e.value.what == ("only add and concat layers take inputs; use input = \"NAME\" for "
                            "one value")
