"""derive --prove on conv nets (issue 12): every claim proved for the digits CNN and for a
net with stride 2, padding 1, "same", rectangular kernels and average pooling; and the
classic wrong rules caught by the layers' own claims (col2im that overwrites instead of
adding overlaps, max-pool gradient spread over the window or sent to the last maximum,
average pooling without the 1/(kh·kw), flatten in NCHW order, a flipped kernel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from test_conv_derive import CNN2

from symgrad import crosscheck
from symgrad.cli import main
from symgrad.crosscheck import prove, prove_op, tiny_image
from symgrad.derive import derive
from symgrad.ops import Col2im, MaxPoolBack, Unflatten, _size
from symgrad.ops.conv import AvgPoolBack
from symgrad.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.toml"


@pytest.fixture(scope="module")
def cnn2(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "cnn2.toml"
    path.write_text(CNN2, encoding="utf-8")
    return load_spec(path)


def test_the_digits_cnn_is_proved(capsys):
    assert main(["derive", str(DIGITS), "--prove"]) == 0
    out = capsys.readouterr().out
    proof = out[out.index("Proof by scalar expansion"):]
    assert "FAILED" not in proof and "skipped" not in proof
    for claim in ("chain rule over the whole graph, equation by equation",
                  "conv2d (layer 1): ∂L/∂X = col2im(δ₁ W₁ᵀ), ∂L/∂W₁ = im2col(X)ᵀ δ₁, ∂L/∂b₁ = 𝟏ᵀ δ₁",
                  "maxpool2d (layer 2): ∂L/∂A₁ = route(δ₂, arg₂)",
                  "at a point where every window's maximum is unique",
                  "flatten (layer 3): ∂L/∂A₂ = unflatten(δ₃)", "input 4×4×2",
                  "all formulas proved"):
        assert claim in proof


def test_strides_padding_and_average_pooling_are_proved(cnn2):
    report = prove(cnn2, spot=False, progress=None)
    assert report.ok, report.text()
    shown = [c.what for c in report.claims]
    assert "avgpool2d (layer 3): ∂L/∂A₂ = spread(δ₃)" in shown
    assert "conv2d (layer 2): ∂L/∂A₁ = col2im(δ₂ W₂ᵀ), ∂L/∂W₂ = im2col(A₁)ᵀ δ₂, ∂L/∂b₂ = 𝟏ᵀ δ₂" in shown


def test_the_tiny_input_keeps_every_layer_valid(cnn2):
    assert tiny_image(cnn2).input_shape == (4, 4, 3)
    assert tiny_image(load_spec(DIGITS)).input_shape == (4, 4, 1)


def _claim(spec, l: int):
    return prove_op(derive(tiny_image(spec)), l)


def test_col2im_that_overwrites_is_caught(cnn2, monkeypatch):
    def overwrite(self, env):  # a scatter that keeps the last patch entry, not their sum
        pm, g = self.x.explicit(env), self.geom
        n, c = _size(self.x.shape[0], env) // (g.ho * g.wo), _size(self.x.shape[1], env) // g.k
        out = sp.zeros(n * g.h * g.w, c)
        for r, src, k in g.windows(n):
            if src is not None:
                for ch in range(c):
                    out[src, ch] = pm[r, k * c + ch]
        return out

    assert _claim(cnn2, 2).ok
    monkeypatch.setattr(Col2im, "explicit", overwrite)
    claim = _claim(cnn2, 2)
    assert not claim.ok and claim.detail.startswith("∂L/∂A₁[")


def test_wrong_pooling_rules_are_caught(cnn2, monkeypatch):
    digits = load_spec(DIGITS)
    spread = MaxPoolBack.explicit

    def everywhere(self, env):  # the max-pool gradient spread over the window (as average)
        arg = env[self.arg.name]
        return spread(self, {**env, self.arg.name: arg.applyfunc(lambda _: 0)})

    monkeypatch.setattr(MaxPoolBack, "explicit", everywhere)
    assert not _claim(digits, 2).ok
    monkeypatch.undo()
    halve = AvgPoolBack.explicit
    monkeypatch.setattr(AvgPoolBack, "explicit", lambda self, env: halve(self, env) * self.geom.k)
    assert not _claim(cnn2, 3).ok


def test_flatten_in_nchw_order_is_caught(cnn2, monkeypatch):
    def nchw(self, env):
        a = self.x.explicit(env)
        c = a.cols // self.pixels
        m = np.array(a, dtype=object).reshape(a.rows, c, self.pixels).transpose(0, 2, 1)
        return sp.Matrix(m.reshape(a.rows * self.pixels, c))

    monkeypatch.setattr(Unflatten, "explicit", nchw)
    claim = _claim(cnn2, 4)
    assert not claim.ok and "differs" in claim.detail


def test_a_flipped_kernel_is_caught(cnn2, monkeypatch):
    """Convolution (the kernel flipped) is not torch's cross-correlation: the layer's claim
    compares the op with the definition written out entry by entry."""
    from symgrad.layers import Conv2dLayer

    definition = Conv2dLayer.definition.__func__

    def flipped(cls, layer, op, env):
        w = env[op.a.b.name]
        g = op.a.a.geom
        c = w.rows // g.k
        order = [((g.kh - 1 - i) * g.kw + (g.kw - 1 - j)) * c + ch
                 for i in range(g.kh) for j in range(g.kw) for ch in range(c)]
        return definition(cls, layer, op, {**env, op.a.b.name: w.extract(order, list(range(w.cols)))})

    monkeypatch.setattr(Conv2dLayer, "definition", classmethod(flipped))
    claim = _claim(cnn2, 1)
    assert not claim.ok and claim.detail == "the op's forward value is not the conv2d layer's definition"
    assert crosscheck  # the module under test


GEOMETRIES = [("conv2d", 1, 1, 0), ("conv2d", 2, 2, 0), ("conv2d", 3, 1, "same"),
              ("conv2d", [2, 3], 2, 1), ("conv2d", 3, 2, 1), ("conv2d", [3, 1], 1, "same"),
              ("maxpool2d", 3, 2, 1), ("maxpool2d", [2, 3], 1, 0), ("avgpool2d", 3, 1, 1),
              ("avgpool2d", 2, 2, 1)]


@pytest.mark.parametrize(("kind", "kernel", "stride", "padding"), GEOMETRIES,
                         ids=[f"{k}-{kernel}-{s}-{p}" for k, kernel, s, p in GEOMETRIES])
def test_each_geometry_is_proved(kind, kernel, stride, padding):
    """The layer's claim (its rule = the VJP of its definition written out entry by entry)
    for kernels 1–3 and rectangular, stride 1 and 2, padding 0, 1 and "same"."""
    from symgrad.spec import Layer, Spec

    keys = {"filters": 2} if kind == "conv2d" else {}
    layers = (Layer(type=kind, kernel=kernel, stride=stride, padding=padding, **keys),
              Layer(type="flatten"), Layer(2))
    spec = Spec("g", [4, 3, 1], layers, "mse")
    claim = prove_op(derive(spec), 1)
    assert claim.ok, claim.detail
