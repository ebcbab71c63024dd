"""Property tests over small drawn DAG networks (tests/strategies.py small_dag_tables: 1–5
layers of random types — dense, batchnorm, layernorm, dropout, add, concat — random
activations, skips and losses): the derived gradients equal central finite differences of
the loss, evaluated numerically through the ops' numeric() (dropout masks drawn by seed and
held fixed); the inference graph is the training graph with the running statistics in
place of the batch's.

The error metric is DESIGN's, |a − n| / max(|a|, |n|, floor), with the floor at 1e-5 rather
than 1e-12: central differences at h = 1e-5 carry a round-off of about 1e-10 (ε·L/h), and
some gradients are exactly zero in exact arithmetic (the bias of a dense layer read only by
a batchnorm), so a 1e-12 floor would call 1e-10 of noise a 100 % error. Entries above the
floor must agree to TOL = 1e-4 (the largest error seen over 1,500 drawn networks was 2e-5;
at h = 1e-4 truncation makes it 5e-5); a wrong rule (a missing term at a fan-out, a missing
1/(1 − p), a mean or variance path left out) is off by far more (see
test_the_comparison_catches_small_errors). Points within 1e-3 of a kink (a relu input, an
l1 weight) are redrawn.

The same drawn networks also go through the generated module (loss_and_grad against
differences of its own loss) and derive --prove (every claim proved).
"""

from __future__ import annotations

import importlib.util
import itertools
import tempfile
from pathlib import Path

import numpy as np
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import small_dag_tables

from symgrad import naming
from symgrad.derive import derive
from symgrad.ops import L1, L2, N
from symgrad.spec import Spec, spec_from_dict

BATCH = 6
H = 1e-5
FLOOR = 1e-5
TOL = 1e-4
SCALE = 0.7  # parameters ~ N(0, 0.7²): tanh/sigmoid away from saturation, kinks rare
KINK = 1e-3  # a relu input or an l1 weight this close to 0 could be crossed by ±h: redraw


class Problem:
    """A spec's derivation with concrete data, dropout masks and parameters from ``seed``,
    evaluated numerically (float64) through the graph's assignments and the backward
    equations."""

    def __init__(self, spec: Spec, seed: int, n: int = BATCH):
        self.spec, self.d = spec, derive(spec)
        g, rng = self.d.graph, np.random.default_rng(seed)
        self.env0 = {N: n, L1: spec.l1, L2: spec.l2, **g.sizes()}
        X, Y = g.data
        self.base = {"X": rng.normal(size=self.concrete(X.shape))}
        rows, classes = self.concrete(Y.shape)
        kind = spec.loss_fn.name
        if kind == "cross_entropy":
            y = np.zeros((rows, classes))
            y[np.arange(rows), rng.integers(0, classes, rows)] = 1.0
        elif kind == "binary_cross_entropy":
            y = (rng.random((rows, classes)) < 0.5).astype(float)
        else:
            y = rng.normal(size=(rows, classes))
        self.base["Y"] = y
        for mask, p in g.masks:
            self.base[mask.name] = (rng.random(self.concrete(mask.shape)) >= p).astype(float)
        self.params = {p.name: SCALE * rng.normal(size=self.concrete(p.shape)) for p in g.params}

    def concrete(self, shape) -> tuple[int, ...]:
        return tuple(int(sp.sympify(s).xreplace(self.env0)) for s in shape)

    def forward(self, params: dict, assignments=None) -> dict:
        env = {**self.env0, **self.base, **params}
        for a in self.d.graph.assignments if assignments is None else assignments:
            env[a.target.name] = a.rhs.numeric(env)
        return env

    def loss(self, params: dict) -> float:
        return float(np.asarray(self.forward(params)["L"]).ravel()[0])

    def gradients(self) -> dict[str, np.ndarray]:
        env = self.forward(self.params)
        for eq in self.d.backward:
            env[eq.target.name] = eq.rhs.numeric(env)
        return {name: np.asarray(env[naming.cotangent(name)]).reshape(v.shape)
                for name, v in self.params.items()}

    def differences(self) -> dict[str, np.ndarray]:
        out = {}
        for name, v in self.params.items():
            num = np.zeros_like(v)
            for idx in np.ndindex(v.shape):
                q = dict(self.params)
                for sign in (1, -1):
                    w = v.copy()
                    w[idx] += sign * H
                    q[name] = w
                    num[idx] += sign * self.loss(q) / (2 * H)
            out[name] = num
        return out

    def near_a_kink(self) -> bool:
        """Whether ±H could cross a kink of the loss: a relu input or, with l1, a weight
        within KINK of 0 (but not 0: an entry held at 0 by a mask stays there)."""
        if self.spec.l1 and any(np.any(np.abs(v) < KINK) for k, v in self.params.items()
                                if k.startswith("W")):
            return True
        env = self.forward(self.params)
        for l, layer in enumerate(self.spec.layers, 1):
            if layer.fn.name == "relu":
                z = np.abs(np.asarray(env[f"Z{l}"]))
                if np.any((z > 0) & (z < KINK)):
                    return True
        return False


def relative_errors(a: dict, n: dict) -> dict[str, float]:
    return {k: float(np.max(np.abs(a[k] - n[k]) / np.maximum(np.maximum(np.abs(a[k]),
                                                                        np.abs(n[k])), FLOOR),
                            initial=0.0)) for k in a}


def seeds():
    return st.integers(0, 2**16)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
@given(small_dag_tables(), seeds())
def test_derived_gradients_equal_central_differences(table, seed):
    spec = spec_from_dict(table, "dag.toml")
    problem = Problem(spec, seed)
    assume(not problem.near_a_kink())
    grads = problem.gradients()
    assert set(grads) == set(spec.param_shapes())
    for name, g in grads.items():  # the graph holds a bias as a 1×n row
        assert g.size == np.prod(spec.param_shapes()[name])
    errors = relative_errors(grads, problem.differences())
    assert max(errors.values(), default=0.0) <= TOL, (table, seed, errors)


def test_the_comparison_catches_small_errors():
    """The tolerance means something: a 0.1 % error in one entry fails it, and so does a
    dropout gradient without its 1/(1 − p) (the classic forgotten factor)."""
    table = {"network": {"name": "dag", "inputs": 3},
             "layer": [{"units": 4, "activation": "tanh"}, {"type": "dropout", "p": 0.3},
                       {"type": "batchnorm"}, {"type": "add", "inputs": ["A3", "A1"]},
                       {"units": 2, "activation": "softmax"}],
             "loss": {"kind": "cross_entropy"}}
    problem = Problem(spec_from_dict(table, "dag.toml"), seed=3)
    grads, numeric = problem.gradients(), problem.differences()
    assert max(relative_errors(grads, numeric).values()) <= TOL
    big = max(grads, key=lambda k: np.max(np.abs(grads[k])))
    off = {**grads, big: grads[big] * np.where(np.abs(grads[big]) == np.max(np.abs(grads[big])),
                                               1.001, 1.0)}
    assert relative_errors(off, numeric)[big] > 5 * TOL
    forgot = {**grads, "W1": grads["W1"] * 0.7}  # the path through dropout without 1/(1 − p)
    assert relative_errors(forgot, numeric)["W1"] > 5 * TOL


@settings(max_examples=25, deadline=None)
@given(small_dag_tables(), seeds())
def test_inference_is_training_with_the_statistics_as_buffers(table, seed):
    """forward/predict's graph (Graph.inference) is the training graph with batchnorm's
    buffers in place of the batch statistics and dropout the identity: with the buffers
    holding the batch's mean and biased variance, and each dropout mask M = (1 − p)𝟏 (so
    M/(1 − p) = 𝟏), both compute the same Ŷ."""
    spec = spec_from_dict(table, "dag.toml")
    problem = Problem(spec, seed)
    g = problem.d.graph
    for mask, p in g.masks:
        problem.base[mask.name] = np.full(problem.concrete(mask.shape), 1.0 - p)
    train = problem.forward(problem.params)
    buffers = {}
    for l, layer in enumerate(spec.layers, 1):
        if layer.type == "batchnorm":
            buffers[f"mean{l}"] = train[f"mu{l}"]
            buffers[f"var{l}"] = train[f"var{l}"]  # the buffer shares the batch variance's name
    assert {b.name for b in g.buffers} == set(buffers)
    assert g.stochastic == bool(buffers or g.masks)
    infer = problem.forward({**problem.params, **buffers},
                            g.inference if g.stochastic else g.assignments)  # () if the same
    np.testing.assert_allclose(infer["Yhat"], train["Yhat"], rtol=1e-10, atol=1e-12)


# --- the generated module ------------------------------------------------------------------


def load_module(spec: Spec, directory: Path, name: str):
    from symgrad.codegen import generate_source

    path = directory / f"{name}.py"
    path.write_text(generate_source(spec), encoding="utf-8")
    loader = importlib.util.spec_from_file_location(f"_symgrad_dag_{name}", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


_MODULE_DIR = Path(tempfile.mkdtemp(prefix="symgrad-dag-"))
_COUNT = itertools.count()


@settings(max_examples=12, deadline=None)
@given(small_dag_tables(activations=("tanh", "sigmoid", "identity", "softplus")), seeds())
def test_generated_loss_and_grad_equals_differences_of_its_own_loss(table, seed):
    """The generated module (no relu: its kinks cannot be seen from outside): loss_and_grad's
    gradients equal central differences of loss(training=True) with the same seed (the
    same dropout masks); its loss is loss()'s; without dropout it is the derivation's loss."""
    spec = spec_from_dict(table, "dag.toml")
    problem = Problem(spec, seed)
    assume(not problem.near_a_kink())
    module = load_module(spec, _MODULE_DIR, f"dag{next(_COUNT)}")
    assert module.PARAM_SHAPES == spec.param_shapes()
    assert getattr(module, "BUFFER_SHAPES", {}) == spec.buffer_shapes()
    params = {**module.init_params(seed),
              **{k: v.reshape(spec.param_shapes()[k]) for k, v in problem.params.items()}}
    X, Y = problem.base["X"], problem.base["Y"]
    # DESIGN: without batchnorm or dropout the interface is the dense one (no seed=)
    mode = {"seed": seed} if problem.d.graph.stochastic else {}
    value, grads = module.loss_and_grad(params, X, Y, **mode)
    again = module.loss(params, X, Y, **mode, **({"training": True} if mode else {}))
    assert abs(value - again) <= 1e-12 * max(1.0, abs(value))
    if not problem.d.graph.masks:
        assert abs(value - problem.loss(problem.params)) <= 1e-12 * max(1.0, abs(value))
    assert set(grads) == set(spec.param_shapes())
    numeric = {}
    for name, shape in spec.param_shapes().items():
        assert grads[name].shape == shape
        num = np.zeros(shape)
        for idx in np.ndindex(shape):
            for sign in (1, -1):
                w = params[name].copy()
                w[idx] += sign * H
                num[idx] += sign * module.loss({**params, name: w}, X, Y, **mode) / (2 * H)
        numeric[name] = num
    errors = relative_errors(grads, numeric)
    assert max(errors.values(), default=0.0) <= TOL, (table, seed, errors)


# --- the proof by scalar expansion ---------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(small_dag_tables(max_layers=4))
def test_drawn_dags_are_proved(table):
    """derive --prove on drawn DAGs: every claim proved, among them each new layer's rule
    as its own claim (batchnorm, layernorm, dropout, add, concat)."""
    from symgrad.crosscheck import prove

    spec = spec_from_dict(table, "dag.toml")
    report = prove(spec, progress=None)
    assert report.ok, report.text()
    claims = [c.what for c in report.claims]
    for l, layer in enumerate(spec.layers, 1):
        if layer.type != "dense":
            assert any(what.startswith(f"{layer.type} (layer {l})") for what in claims), claims
