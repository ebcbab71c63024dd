"""newton_cg and lbfgs on the torch backend (issues 15 and 16): the numpy module's algorithms
on the device.

From the same starting parameters and data, the torch module's float64 trajectories (every
history key: loss, passes, damping, val_loss, val_accuracy; the trained parameters) equal
the numpy module's to rounding, for ridge regression, logistic regression, a digits MLP and
a DAG (residual + layernorm), with newton_cg on Gauss–Newton and Hessian products and with
lbfgs; float32 runs stay float32 and lower the loss; the refusals are one line, exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.codegen import generate_source, load_module
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, Training, spec_from_dict

torch = pytest.importorskip("torch")

_MODULES: dict[tuple[str, str], object] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for these small problems (restored after): two threads' pool only
    waits on each other at this size, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

NETS = {  # name → spec (the optimizer in [training] makes train() offer both)
    "ridge": Spec("ridge_t2", 3, (Layer(2, "identity"),), loss="mse", l2=0.01,
                  training=Training("newton_cg")),
    "logistic": Spec("logit_t2", 4, (Layer(1, "sigmoid"),), loss="binary_cross_entropy",
                     l2=0.01, training=Training("lbfgs")),
    "digits": Spec("digits_t2", 64, (Layer(16, "tanh"), Layer(10, "softmax")),
                   loss="cross_entropy", l2=1e-4, training=Training("newton_cg")),
    "residual": spec_from_dict({
        "network": {"name": "residual_t2", "inputs": 5},
        "layer": [{"units": 6, "activation": "tanh"}, {"type": "layernorm"},
                  {"units": 6, "activation": "tanh"}, {"type": "add", "inputs": ["A1", "A3"]},
                  {"units": 3, "activation": "softmax"}],
        "loss": {"kind": "cross_entropy"}, "regularization": {"l2": 1e-3},
        "training": {"optimizer": "newton_cg"}}, source="residual.toml"),
}


def modules(net: str):
    """(numpy module, torch module) of a net, generated once per session."""
    for backend in ("numpy", "torch"):
        if (net, backend) not in _MODULES:
            _MODULES[net, backend] = load_module(generate_source(NETS[net], backend))
    return _MODULES[net, "numpy"], _MODULES[net, "torch"]


def data(net: str, seed: int = 0, n: int | None = None):
    rng = np.random.default_rng(seed)
    if net == "ridge":
        X = rng.normal(size=(n or 50, 3))
        return X, X @ rng.normal(size=(3, 2)) + 0.5 + 0.1 * rng.normal(size=(len(X), 2))
    if net == "logistic":
        X = rng.normal(size=(n or 80, 4))
        p = 1 / (1 + np.exp(-(X @ np.array([1.5, -2.0, 0.5, 0.0]) + 0.3)))
        return X, (rng.random(len(X)) < p).astype(float)[:, None]
    if net == "digits":
        from symgrad.datasets import digits_split

        d = digits_split(np.float64)
        return d["X_train"][:150], d["Y_train"][:150]
    X = rng.normal(size=(n or 40, 5))
    return X, np.eye(3)[rng.integers(0, 3, len(X))]


def as_torch(params, dtype=torch.float64):
    return {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}


def both(net: str, X, Y, **options):
    """train() of the numpy module and of the torch module from the numpy module's initial
    parameters (float64), with X, Y as validation data too: (history, params) of each."""
    npm, tm = modules(net)
    mine = npm.init_params(seed=0)
    theirs = as_torch(mine)
    h_np = npm.train(mine, X, Y, X_val=X, Y_val=Y, verbose=False, **options)
    h_t = tm.train(theirs, X, Y, X_val=X, Y_val=Y, verbose=False, **options)
    return (h_np, mine), (h_t, theirs)


def assert_same_trajectory(numpy_run, torch_run, rtol=1e-9):
    (h_np, p_np), (h_t, p_t) = numpy_run, torch_run
    assert set(h_t) == set(h_np)
    for key, values in h_np.items():
        if isinstance(values, str):
            assert h_t[key] == values
            continue
        assert len(h_t[key]) == len(values), key
        np.testing.assert_allclose(h_t[key], values, rtol=rtol, atol=1e-12, err_msg=key)
    for name, p in p_np.items():
        assert p_t[name].dtype == torch.float64
        np.testing.assert_allclose(p_t[name].numpy(), p, rtol=1e-7, atol=1e-9, err_msg=name)


CONFIGS = [
    ("newton_cg", {"curvature": "gauss_newton"}),
    ("newton_cg", {"curvature": "hessian", "cg_steps": 5}),
    ("lbfgs", {"memory": 4}),
]


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("optimizer, options", CONFIGS, ids=["gauss_newton", "hessian", "lbfgs"])
def test_float64_trajectories_equal_the_numpy_modules(net, optimizer, options):
    X, Y = data(net)
    epochs = 12 if optimizer == "lbfgs" else 5
    numpy_run, torch_run = both(net, X, Y, optimizer=optimizer, epochs=epochs, **options)
    assert_same_trajectory(numpy_run, torch_run)
    h = torch_run[0]
    assert h["val_loss"][-1] < h["loss"][0]  # and they train
    if optimizer == "newton_cg":
        assert len(h["damping"]) == epochs


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), damping=st.floats(1e-4, 10.0),
       cg_steps=st.integers(1, 12), learning_rate=st.sampled_from([0.5, 1.0, 3.0]),
       n=st.integers(3, 30))
def test_newton_cg_matches_numpy_on_random_ridge_problems(seed, damping, cg_steps,
                                                         learning_rate, n):
    """Any data, damping, CG budget and step scale (η = 3 overshoots: steps not taken)."""
    X, Y = data("ridge", seed, n)
    numpy_run, torch_run = both("ridge", X, Y, optimizer="newton_cg", epochs=3,
                                damping=damping, cg_steps=cg_steps, learning_rate=learning_rate)
    assert_same_trajectory(numpy_run, torch_run)


@pytest.mark.parametrize("optimizer", ["newton_cg", "lbfgs"])
def test_float32_runs_stay_float32_and_lower_the_loss(optimizer):
    _, tm = modules("digits")
    X, Y = data("digits")
    params = tm.init_params(seed=0, dtype=torch.float32)
    start = tm.loss(params, X, Y)
    history = tm.train(params, X, Y, optimizer=optimizer, epochs=4, verbose=False)
    assert all(p.dtype == torch.float32 for p in params.values())
    assert "stopped" not in history and "converged" not in history
    after = tm.loss(params, X, Y)
    assert after < 0.7 * start and history["loss"][0] == pytest.approx(start, rel=1e-5)


def test_large_batches_on_the_device_are_deterministic_and_train():
    """newton_cg with a batch_size: one update per batch, the rows in an order drawn from
    torch.Generator().manual_seed(seed) (not numpy's order: no trajectory to compare)."""
    _, tm = modules("digits")
    X, Y = data("digits")
    runs = []
    for _ in range(2):
        params = tm.init_params(seed=0)
        history = tm.train(params, X, Y, optimizer="newton_cg", epochs=2, batch_size=64,
                           seed=3, verbose=False)
        runs.append((history, params))
    (first, p1), (again, p2) = runs
    assert first == again and all(torch.equal(p1[k], p2[k]) for k in p1)
    assert tm.loss(p1, X, Y) < first["loss"][0]
    # each of the 3 batches (64, 64, 22 rows): a gradient, 1 to 11 curvature products (a warm
    # start adds one), 1 to 3 trial losses, counted by the batch's share of the rows
    steps = np.diff([0.0, *first["passes"]])
    assert ((steps > 2) & (steps <= 16 + 1e-9)).all()


def test_cg_solves_a_positive_definite_system_and_stops_at_negative_curvature():
    _, tm = modules("ridge")
    gen = torch.Generator().manual_seed(2)
    a = 0.5 + 1.5 * torch.rand(8, generator=gen, dtype=torch.float64)  # C = diag(a)
    g = torch.randn(8, generator=gen, dtype=torch.float64)
    work = [torch.empty(8, dtype=torch.float64) for _ in range(6)]
    d, gd, dAd, products = tm._cg(lambda v, out: torch.mul(a, v, out=out), g, 0.1, 10, work)
    torch.testing.assert_close(d, -g / (a + 0.1), rtol=1e-10, atol=0)
    assert gd == pytest.approx(float(g @ d)) and dAd == pytest.approx(-gd)
    assert products <= 8  # at most as many as the distinct eigenvalues
    d, gd, dAd, products = tm._cg(lambda v, out: torch.neg(v, out=out), g, 0.1, 10, work)
    assert torch.equal(d, -g) and (gd, products) == (-float(g @ g), 1)
    assert dAd == pytest.approx(-0.9 * float(g @ g))


def test_a_huge_learning_rate_takes_no_step_and_lbfgs_says_why_it_stopped(capsys):
    npm, tm = modules("ridge")
    X, Y = data("ridge")
    params = as_torch(npm.init_params(seed=0))
    history = tm.train(params, X, Y, optimizer="newton_cg", learning_rate=1e300, epochs=3,
                       verbose=False)
    # ρ is not a number: damp more
    assert history["damping"] == pytest.approx([tm.DAMPING * 1.5**k for k in (1, 2, 3)])
    assert history["loss"] == [history["loss"][0]] * 3
    assert all(torch.equal(params[k], torch.tensor(v)) for k, v in npm.init_params(0).items())
    assert capsys.readouterr().err == ""
    history = tm.train(params, X, Y, optimizer="lbfgs", learning_rate=1e300, epochs=3)
    assert history["loss"] == []
    assert history["converged"].startswith("no decrease along the search direction in epoch 1")
    assert capsys.readouterr().err == f"train: {history['converged']}\n"


def test_the_module_is_ruff_clean_deterministic_and_offers_both(tmp_path):
    import subprocess
    from pathlib import Path

    from ruff.__main__ import find_ruff_bin

    source = generate_source(NETS["digits"], "torch")
    assert source == generate_source(NETS["digits"], "torch")
    path = tmp_path / "digits_t2.py"
    path.write_text(source, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(find_ruff_bin()), "check", "--config", str(root / "pyproject.toml"),
                           str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
    _, tm = modules("digits")
    assert tm.OPTIMIZERS[-2:] == ("newton_cg", "lbfgs") and tm.BATCH_SIZE is None
    npm, _ = modules("digits")  # the numpy module's defaults
    assert (tm.CURVATURE, tm.CG_STEPS, tm.DAMPING, tm.MEMORY) == (
        npm.CURVATURE, npm.CG_STEPS, npm.DAMPING, npm.MEMORY)
    for name in ("_DAMPING_FLOOR", "_BATCH_DAMPING_FLOOR", "_CG_DECAY", "_CURVATURE_SHARE",
                 "_LIMITS", "_OWNERS"):
        assert getattr(tm, name) == getattr(npm, name), name


# ------------------------------------------------------------------------------------------
# Refusals: one line each, as the numpy module's
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer, name", [({"type": "batchnorm"}, "batchnorm"),
                                         ({"type": "dropout", "p": 0.2}, "dropout")])
def test_batchnorm_and_dropout_refuse_second_order_training(layer, name):
    spec = {"network": {"name": "bn", "inputs": 3},
            "layer": [{"units": 4, "activation": "tanh"}, layer, {"units": 2}],
            "loss": {"kind": "mse"},
            "training": {"optimizer": "newton_cg", "backend": "torch"}}
    with pytest.raises(SymgradError) as e:
        spec_from_dict(spec, source="s.toml")
    assert str(e.value) == (
        f"s.toml: layer[2].type: newton_cg needs a loss that stays the same from one evaluation "
        f"to the next, and {name}'s is not (batch statistics, random masks); use a first-order "
        "optimizer such as adam")
    # generate --hvp of such a network: the products, first-order training only
    spec["training"] = {"optimizer": "adam"}
    source = generate_source(spec_from_dict(spec, source="s.toml"), "torch", products=True)
    tm = load_module(source)
    assert "newton_cg" not in tm.OPTIMIZERS and "def hvp(params, X, Y, V, *, seed=0)" in source
    with pytest.raises(ValueError) as e:
        tm.train(tm.init_params(0), np.zeros((4, 3)), np.zeros((4, 2)), optimizer="lbfgs")
    assert str(e.value) == ("optimizer must be one of sgd, momentum, nesterov, adam, rmsprop, "
                            "not 'lbfgs'")


@pytest.mark.parametrize("options, error", [
    ({"curvature": "fisher"}, "curvature must be gauss_newton or hessian, not 'fisher'"),
    ({"cg_steps": 0}, "cg_steps must be a whole number from 1 to 10000, not 0"),
    ({"cg_steps": 10**9}, "cg_steps must be a whole number from 1 to 10000, not 1000000000"),
    ({"memory": 2.0}, "memory must be a whole number from 1 to 1000, not 2.0"),
    ({"damping": 0.0}, "damping must be a number > 0 and <= 1e+06, not 0.0"),
    ({"damping": "1"}, "damping must be a number > 0 and <= 1e+06, not '1'"),
    ({"memory": 3}, "memory is an option of lbfgs, not of newton_cg"),
    ({"optimizer": "adam", "cg_steps": 3}, "cg_steps is an option of newton_cg, not of adam"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, or None (all rows)"),
    ({"distributed": True}, "newton_cg trains in one process: distributed=True is for the "
                            "first-order optimizers (sgd, momentum, nesterov, adam, rmsprop)"),
    ({"X_val": np.zeros((2, 3))}, "X_val and Y_val go together: give both or neither"),
])
def test_bad_options_are_refused_in_one_line(options, error):
    _, tm = modules("ridge")
    X, Y = data("ridge")
    params = tm.init_params(0)
    before = {k: v.clone() for k, v in params.items()}
    with pytest.raises((ValueError, TypeError)) as e:
        tm.train(params, X, Y, **{"optimizer": "newton_cg", "epochs": 1, "verbose": False,
                                  **options})
    assert str(e.value) == error
    assert all(torch.equal(params[k], v) for k, v in before.items())


def test_the_script_takes_the_second_order_options(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "ridge_t2.py"
    path.write_text(generate_source(NETS["ridge"], "torch"), encoding="utf-8")
    X, Y = data("ridge")
    np.savez(tmp_path / "d.npz", X=X, Y=Y)

    def run(*flags):
        return subprocess.run([sys.executable, str(path), "train", str(tmp_path / "d.npz"),
                               "--epochs", "2", "--dtype", "float64", *flags],
                              capture_output=True, text=True, check=False, timeout=120)

    ok = run("--cg-steps", "3", "--damping", "0.5", "--curvature", "hessian")
    assert ok.returncode == 0 and ok.stdout.startswith("final loss "), ok.stderr
    bad = run("--optimizer", "adam", "--memory", "3")
    assert (bad.returncode, bad.stderr) == (
        2, "ridge_t2: error: memory is an option of lbfgs, not of adam\n")
