"""The generated module's runtime, by class of defect (issue 10, classes 1, 5 and 6).

- Width 1 anywhere (one input, a 1-unit hidden layer, one output) trains with every
  optimizer, in float32 and float64, from integer or one-hot / real targets, through
  train() and the script entry; the first update is the optimizer's rule exactly.
- Every public function checks its arguments at the boundary: a bad one is a ValueError
  or TypeError whose message names it, says what was expected and what was given; the
  script prints one line ``<module>: error: …`` and exits 2.
- save_params is atomic and agrees with load_params on the ".npz" suffix; both refuse
  names the network does not have, in one message.
- float32/float64 params of either byte order are taken (native inside; train() writes
  back into the caller's arrays); a formula shown in the module is at most 300 characters.
- "keeps the last finite parameters" holds for the last update and across calls.

Modules are generated once per network shape (``module``); networks are tiny.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from symgrad.codegen import generate_source, load_module, shown
from symgrad.spec import Layer, Spec

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop")
KINDS = {  # the output layer and loss of each kind of network
    "regression": ("identity", "mse"),
    "binary": ("sigmoid", "binary_cross_entropy"),
    "classes": ("softmax", "cross_entropy"),
}
HP = {"momentum": 0.8, "beta1": 0.85, "beta2": 0.99, "eps": 1e-6, "alpha": 0.95}
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def source(inputs: int, hidden: int, outputs: int, kind: str) -> str:
    out, loss = KINDS[kind]
    layers = (Layer(hidden, "tanh"), Layer(outputs, out))
    return generate_source(Spec(f"net_{kind}_{inputs}_{hidden}_{outputs}", inputs, layers,
                                loss=loss))


@functools.cache
def module(inputs: int, hidden: int, outputs: int, kind: str) -> ModuleType:
    return load_module(source(inputs, hidden, outputs, kind))


def data(m: ModuleType, kind: str, labels: str, n: int, seed: int = 0):
    """X and targets for m: integer labels / one-hot rows (classes), 0/1 integers / reals
    in [0, 1] (binary), integer-valued / real targets (regression)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, m.INPUTS))
    if kind == "classes":
        y = rng.integers(0, m.OUTPUTS, n)
        return X, (y if labels == "integer" else np.eye(m.OUTPUTS)[y])
    if kind == "binary":
        Y = rng.integers(0, 2, (n, m.OUTPUTS))
        return X, (Y if labels == "integer" else rng.uniform(0, 1, (n, m.OUTPUTS)))
    Y = rng.integers(-2, 3, (n, m.OUTPUTS))
    return X, (Y if labels == "integer" else rng.standard_normal((n, m.OUTPUTS)))


def first_update(optimizer: str, p: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:
    """torch.optim's first step from zero state."""
    if optimizer in ("sgd", "momentum"):
        return p - lr * g
    if optimizer == "nesterov":
        return p - lr * (g + HP["momentum"] * g)
    if optimizer == "adam":  # m̂ = g, v̂ = g²
        return p - lr * g / (np.abs(g) + HP["eps"])
    return p - lr * g / (np.sqrt((1 - HP["alpha"]) * g * g) + HP["eps"])  # rmsprop


# ------------------------------------------------------------------------------------------
# Class 1: width 1 in any position, every optimizer, both dtypes, both kinds of targets
# ------------------------------------------------------------------------------------------

WIDTHS = st.sampled_from((1, 2, 10))


@SETTINGS
@given(inputs=WIDTHS, hidden=WIDTHS, outputs=WIDTHS, kind=st.sampled_from(sorted(KINDS)),
       optimizer=st.sampled_from(OPTIMIZERS), dtype=st.sampled_from((np.float32, np.float64)),
       labels=st.sampled_from(("integer", "one-hot")))
def test_any_widths_train_with_every_optimizer(inputs, hidden, outputs, kind, optimizer, dtype,
                                               labels):
    m = module(inputs, hidden, outputs, kind)
    X, Y = data(m, kind, labels, n=7)
    lr = 0.05
    # one batch, one epoch: exactly the optimizer's first step from loss_and_grad's gradient
    params = m.init_params(seed=1, dtype=dtype)
    start = {k: v.copy() for k, v in params.items()}
    _, grads = m.loss_and_grad(start, X, Y)
    history = m.train(params, X, Y, epochs=1, batch_size=7, learning_rate=lr,
                      optimizer=optimizer, verbose=False, **HP)
    assert "stopped" not in history and np.isfinite(history["loss"]).all()
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-12}
    for k in params:
        assert params[k].dtype == dtype and params[k].shape == m.PARAM_SHAPES[k]
        np.testing.assert_allclose(params[k], first_update(optimizer, start[k], grads[k], lr),
                                   **tol, err_msg=k)
    # several epochs of batches of 3 (the last one smaller), with validation data
    history = m.train(params, X, Y, epochs=2, batch_size=3, learning_rate=lr,
                      optimizer=optimizer, X_val=X[:4], Y_val=Y[:4], verbose=False)
    assert len(history["loss"]) == len(history["val_loss"]) == 2
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["val_loss"]).all()
    assert m.forward(params, X).shape == (7, outputs)


def run_script(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # it stands alone
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120, check=False)


def write_module(tmp_path: Path, shape: tuple[int, int, int], kind: str) -> Path:
    path = tmp_path / f"net_{kind}.py"
    path.write_text(source(*shape, kind), encoding="utf-8")
    return path


@pytest.mark.parametrize(("shape", "kind", "labels", "optimizer"), [
    ((8, 16, 1), "regression", "real", "sgd"),  # generated/regression_mlp.py's shape
    ((3, 4, 1), "binary", "integer", "sgd"),
    ((3, 1, 3), "classes", "integer", "momentum"),
    ((1, 1, 1), "regression", "integer", "adam"),
])  # fmt: skip
def test_width_one_trains_through_the_script(tmp_path, shape, kind, labels, optimizer):
    path = write_module(tmp_path, shape, kind)
    m = module(*shape, kind)
    X, Y = data(m, kind, labels, n=50)
    np.savez(tmp_path / "d.npz", X=X, Y=Y)
    proc = run_script(path, "train", "d.npz", "--optimizer", optimizer, "--epochs", "3",
                      "--save", "p", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 3 and proc.stderr.startswith("epoch 1/3  loss ")
    params = m.load_params(tmp_path / "p")  # written as p.npz, read back under either name
    assert (tmp_path / "p.npz").exists() and params["W1"].dtype == np.float32
    assert proc.stdout.splitlines()[0] == "saved the trained parameters to p.npz"
    assert np.isfinite(m.loss(params, X, Y))


# ------------------------------------------------------------------------------------------
# Class 5: every argument checked at the boundary, in one line naming it
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ModuleType:
    return load_module(ROOT / "generated" / "digits_mlp.py")  # 64 → 32 tanh → 10 softmax


def _read_only(p):
    q = {k: v.copy() for k, v in p.items()}
    q["W1"].setflags(write=False)
    return q


BAD_CALLS = [  # (call on the digits module m with params p, X (20, 64), labels y, error)
    (lambda m, p, X, y: m.forward(p, X[:, :60]),
     ValueError, "X has 60 columns; this network takes 64"),
    (lambda m, p, X, y: m.predict(p, X[0]),
     ValueError, "X has shape (64,); this network takes (N, 64), one row per sample (one "
                 "sample: X[None, :])"),
    (lambda m, p, X, y: m.loss(p, X, y.astype(float)),
     TypeError, "Y holds class labels as float64; give integers 0 to 9 (or one-hot rows of "
                "shape (N, 10))"),
    (lambda m, p, X, y: m.loss(p, X, y - 1),
     ValueError, "Y has labels from -1 to 8; this network's classes are 0 to 9"),
    (lambda m, p, X, y: m.train(p, X, y + 1),
     ValueError, "Y has labels from 1 to 10; this network's classes are 0 to 9"),
    (lambda m, p, X, y: m.loss_and_grad(p, X, np.eye(10)[y][:, :9]),
     ValueError, "Y has shape (20, 9); this network takes class labels of shape (N,) or "
                 "one-hot rows (N, 10)"),
    (lambda m, p, X, y: m.loss(p, X, y[:19]), ValueError, "Y has 19 rows; X has 20"),
    (lambda m, p, X, y: m.train(p, X, y, batch_size=0),
     ValueError, "batch_size must be a whole number >= 1, not 0"),
    (lambda m, p, X, y: m.train(p, X, y, batch_size=-3),
     ValueError, "batch_size must be a whole number >= 1, not -3"),
    (lambda m, p, X, y: m.train(p, X, y, epochs=-1),
     ValueError, "epochs must be a whole number >= 0, not -1"),
    (lambda m, p, X, y: m.train(p, X, y, learning_rate=-0.1),
     ValueError, "learning_rate must be a finite number > 0, not -0.1"),
    (lambda m, p, X, y: m.train(p, X, y, optimizer="adamw"),
     ValueError, "optimizer must be one of sgd, momentum, nesterov, adam, rmsprop, not 'adamw'"),
    (lambda m, p, X, y: m.train(p, X, y, optimizer="adam", beta1=1.0),
     ValueError, "beta1 must be a number in [0, 1), not 1.0"),
    (lambda m, p, X, y: m.forward({**p, "W1": p["W1"].T}, X),
     ValueError, "params['W1'] has shape (32, 64); this network's W1 has shape (64, 32) "
                 "(transposed?)"),
    (lambda m, p, X, y: m.train(_read_only(p), X, y),
     ValueError, "params['W1'] is read-only, and train() updates params in place: pass "
                 "writable arrays, e.g. {k: v.copy() for k, v in params.items()}"),
    (lambda m, p, X, y: m.forward({**p, "b1": p["b1"].astype(int)}, X),
     TypeError, "params['b1'] must be float32 or float64, not int64"),
    (lambda m, p, X, y: m.loss({k: v for k, v in p.items() if k != "b2"}, X, y),
     ValueError, "params has no b2; this network's parameters are W1, b1, W2, b2"),
    (lambda m, p, X, y: m.forward(p, np.full((2, 64), "a")),
     TypeError, "X must hold real numbers, not <U1"),
    (lambda m, p, X, y: m.train(p, X, y, X_val=X),
     ValueError, "X_val and Y_val go together: give both or neither"),
    # F5: init_params's and train's dtype and seed, save_params's target
    (lambda m, p, X, y: m.init_params(dtype=np.int32),
     TypeError, "dtype must be float32 or float64, not int32"),
    (lambda m, p, X, y: m.init_params(dtype=bool),
     TypeError, "dtype must be float32 or float64, not bool"),
    (lambda m, p, X, y: m.init_params(dtype=np.complex128),
     TypeError, "dtype must be float32 or float64, not complex128"),
    (lambda m, p, X, y: m.init_params(dtype="f9"),
     TypeError, "dtype must be float32 or float64, not 'f9'"),
    (lambda m, p, X, y: m.init_params(seed="a"),
     TypeError, "seed must be a whole number >= 0, None or a numpy SeedSequence or Generator, "
                "not 'a'"),
    (lambda m, p, X, y: m.train(p, X, y, seed=1.5),
     TypeError, "seed must be a whole number >= 0, None or a numpy SeedSequence or Generator, "
                "not 1.5"),
    (lambda m, p, X, y: m.check_gradients(seed=-1),
     ValueError, "seed must be a whole number >= 0, None or a numpy SeedSequence or Generator, "
                 "not -1"),
    (lambda m, p, X, y: m.save_params(p, "/nonexistent-dir/x"),
     FileNotFoundError, "/nonexistent-dir/x: cannot write: no directory /nonexistent-dir"),
    (lambda m, p, X, y: m.save_params(p, "/"),
     IsADirectoryError, "/: a directory; give the path of a file to write, e.g. /params.npz"),
    (lambda m, p, X, y: m.save_params(p, "/dev/null"),
     OSError, "/dev/null: not a regular file; give the path of an .npz file to write"),
    # F4: cross-entropy targets are distributions over the classes (the fused gradient's rule)
    (lambda m, p, X, y: m.loss_and_grad(p, X, np.eye(10)[y] * 2),
     ValueError, "Y row 0 sums to 2, not 1; cross-entropy takes rows of class probabilities "
                 "(one-hot or soft labels summing to 1) or integer class labels"),
    (lambda m, p, X, y: m.train(p, X, np.eye(10)[y] - np.eye(10)[(y + 1) % 10] / 2),
     ValueError, "Y row 0 has a negative entry (-0.5); cross-entropy takes rows of class "
                 "probabilities (>= 0, summing to 1) or integer class labels"),
    (lambda m, p, X, y: m.train(p, X, y, X_val=X, Y_val=np.eye(10)[y] * 0.5),
     ValueError, "Y_val row 0 sums to 0.5, not 1; cross-entropy takes rows of class "
                 "probabilities (one-hot or soft labels summing to 1) or integer class labels"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS,
                         ids=[m for _, _, m in BAD_CALLS])
def test_bad_arguments_are_one_clear_error(digits, call, error, message):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 64)), rng.integers(0, 10, 20)
    params = digits.init_params(seed=0)
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(error) as e:
        call(digits, params, X, y)
    assert str(e.value) == message
    assert all(np.array_equal(before[k], params[k]) for k in params)  # nothing trained


# Corruptions of one argument, each invalid for every function that takes it
CORRUPT = {
    "params": [lambda p: [p], lambda p: {**p, "W1": p["W1"].T}, lambda p: {**p, "W3": p["W1"]},
               lambda p: {k: v for k, v in p.items() if k != "W1"},
               lambda p: {**p, "b2": p["b2"].astype(np.float16)},
               lambda p: {**p, "b2": p["b2"].astype(complex)},
               lambda p: {**p, "W2": p["W2"][:, :1]}, lambda p: {**p, "b1": None}],
    "X": [lambda X: X[0], lambda X: X[:, :-1], lambda X: X[None], lambda X: X.astype(str),
          lambda X: X + 1j, lambda X: np.where(X > 1, np.nan, X), lambda X: None,
          lambda X: [list(r) for r in X[:-1]] + [[1.0]], lambda X: X[:, 0]],
    "Y": [lambda Y: Y[:-1], lambda Y: Y.astype(float) + 0.5, lambda Y: -Y - 1, lambda Y: Y + 10,
          lambda Y: Y[:, None], lambda Y: np.eye(10)[Y][:, :-1], lambda Y: None,
          lambda Y: Y.astype(str), lambda Y: np.eye(10)[Y] * np.nan],
}  # fmt: skip
FUNCTIONS = {  # function: the arguments it takes
    "forward": ("params", "X"), "predict": ("params", "X"), "loss": ("params", "X", "Y"),
    "loss_and_grad": ("params", "X", "Y"), "train": ("params", "X", "Y"),
    "check_gradients": ("params", "X", "Y"),
}  # fmt: skip


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(FUNCTIONS)), st.data())
def test_every_bad_argument_is_named(digits, function, draw):
    rng = np.random.default_rng(0)
    args = {"params": digits.init_params(seed=0), "X": rng.standard_normal((6, 64)),
            "Y": rng.integers(0, 10, 6)}
    name = draw.draw(st.sampled_from(FUNCTIONS[function]))
    args[name] = draw.draw(st.sampled_from(CORRUPT[name]))(args[name])
    assume(args[name] is not None or function != "check_gradients")  # None: random data
    call = [args[k] for k in FUNCTIONS[function]]
    kwargs = {"verbose": False, "epochs": 1} if function == "train" else {}
    with pytest.raises((ValueError, TypeError)) as e:
        getattr(digits, function)(*call, **kwargs)
    assert str(e.value).startswith(name) and "\n" not in str(e.value)


LAYOUTS = {  # another memory layout of a parameter, the same values
    "C": lambda v: v.copy(),
    "Fortran": np.asfortranarray,
    "transposed copy": lambda v: np.ascontiguousarray(v.T).T,
    "strided view": lambda v: np.repeat(v, 2, axis=0)[::2],
    "reversed view": lambda v: v[::-1].copy()[::-1],
    "unaligned": lambda v: np.frombuffer(b"\0" + v.tobytes(), v.dtype, offset=1).reshape(v.shape),
}


def _relayout(v: np.ndarray, layout: str) -> np.ndarray:
    out = LAYOUTS[layout](v.copy())  # a copy: v (a view of init_params's [W; b]) stays apart
    if not out.flags.writeable:  # frombuffer of bytes: make it writable, keep it unaligned
        raw = bytearray(out.nbytes + 1)
        out = np.frombuffer(raw, v.dtype, offset=1, count=v.size).reshape(v.shape)
        out[...] = v
    return out


@settings(max_examples=25, deadline=None, derandomize=True)
@given(layouts=st.lists(st.sampled_from(sorted(LAYOUTS)), min_size=4, max_size=4),
       optimizer=st.sampled_from(OPTIMIZERS), dtype=st.sampled_from((np.float32, np.float64)),
       kind=st.sampled_from(("classes", "regression")))
def test_any_memory_layout_of_params_trains_in_place(layouts, optimizer, dtype, kind):
    """F3: train() updates params of any layout in place (copy, update, write back), with
    the numbers it gives C-contiguous ones."""
    m = module(3, 4, 2, kind)
    X, Y = data(m, kind, "one-hot", n=9)
    reference = m.init_params(seed=2, dtype=dtype)
    params = {k: _relayout(v, layout) for (k, v), layout in zip(reference.items(), layouts, strict=True)}
    arrays = dict(params)
    assert all(np.array_equal(params[k], reference[k]) for k in params)
    options = {"epochs": 2, "batch_size": 4, "optimizer": optimizer, "verbose": False}
    expected = m.train(reference, X, Y, **options)
    history = m.train(params, X, Y, **options)
    assert history == expected
    for k in params:
        assert params[k] is arrays[k]  # in place: the caller's arrays, updated
        np.testing.assert_array_equal(params[k], reference[k], err_msg=k)


def test_params_that_share_memory_are_refused_by_train(digits):
    """F3: two parameters in one memory would overwrite each other when train() writes
    them back; W and b as views of init_params's [W; b] are apart."""
    X, y = np.random.default_rng(0).standard_normal((6, 64)), np.arange(6)
    p = digits.init_params()
    for q in ({**p, "b2": p["b1"][:10]}, {**p, "b2": p["W1"][3, :10]},
              {**p, "b2": p["W2"][0]}):
        before = {k: v.copy() for k, v in q.items()}
        with pytest.raises(ValueError, match=r"^params\['\w+'\] shares memory with "
                                             r"params\['\w+'\], and train\(\) updates"):
            digits.train(q, X, y, epochs=1, verbose=False)
        assert all(np.array_equal(before[k], q[k]) for k in q)
        digits.loss_and_grad(q, X, y)  # only train() writes into params
    interleaved = np.zeros(64)  # b1 and b2 interleaved in one buffer: apart, trainable
    q = {**p, "b1": interleaved[0::2], "b2": interleaved[1:21:2]}
    assert "stopped" not in digits.train(q, X, y, epochs=1, verbose=False)


def test_cross_entropy_takes_distributions_and_its_gradient_is_right():
    """F4: soft labels (rows summing to 1, within √ε in float32) are accepted and their
    gradient is the loss's; rows that are not distributions are refused, naming the row."""
    m = module(3, 4, 3, "classes")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3))
    Y = rng.dirichlet(np.ones(3), size=5)
    params = m.init_params(seed=0)
    _, grads = m.loss_and_grad(params, X, Y)
    for k, p in params.items():
        flat, h = p.reshape(-1), 1e-6
        for i in range(flat.size):
            flat[i] += h
            up = m.loss(params, X, Y)
            flat[i] -= 2 * h
            down = m.loss(params, X, Y)
            flat[i] += h
            assert abs(grads[k].reshape(-1)[i] - (up - down) / (2 * h)) < 1e-7, (k, i)
    m.loss(m.init_params(dtype=np.float32), X, Y.astype(np.float32) * (1 + 1e-6))
    for scale, row in ((2.0, 0), (1 + 1e-6, 3)):  # float64: 1e-6 off is not rounding
        bad = Y.copy()
        bad[row] *= scale
        with pytest.raises(ValueError, match=rf"^Y row {row} sums to [0-9.]+, not 1; "):
            m.loss(params, X, bad)


def test_load_and_save_params(digits, tmp_path):
    p = digits.init_params(seed=3, dtype=np.float32)
    assert digits.save_params(p, tmp_path / "params") == str(tmp_path / "params.npz")
    for name in ("params", "params.npz"):
        q = digits.load_params(tmp_path / name)
        assert all(np.array_equal(p[k], q[k]) and q[k].dtype == np.float32 for k in p)
    np.save(tmp_path / "one.npy", p["W1"])
    np.savez(tmp_path / "strings.npz", **{k: np.full(v.shape, "x") for k, v in p.items()})
    np.savez(tmp_path / "nan.npz", **{k: np.full(v.shape, np.nan) for k, v in p.items()})
    np.savez(tmp_path / "partial.npz", W1=p["W1"], b1=p["b1"])
    np.savez(tmp_path / "objects.npz", W1=np.array([None] * 3, dtype=object))
    np.savez(tmp_path / "extra.npz", **p, extra=np.array([None], dtype=object), more=p["b1"])
    (tmp_path / "text.npz").write_text("not numpy")
    cases = {
        "one.npy": (ValueError, "one.npy: an .npy file (one array); this takes an .npz file "
                                "of named arrays, as np.savez writes"),
        "strings.npz": (TypeError, "strings.npz: W1 must be float32 or float64, not <U1"),
        "nan.npz": (ValueError, "nan.npz: W1 has NaN or infinite entries"),
        "partial.npz": (ValueError, "partial.npz has no W2, b2; this network's parameters are "
                                    "W1, b1, W2, b2"),
        "objects.npz": (ValueError, "objects.npz: W1 cannot be read as an array of numbers"),
        # named, unread (an object array would not load), as save_params refuses them
        "extra.npz": (ValueError, "extra.npz has 'extra', 'more', which this network does not "
                                  "have; its parameters are W1, b1, W2, b2"),
        "text.npz": (ValueError, "text.npz: not an .npz file (np.savez writes one)"),
        "missing": (FileNotFoundError, "missing: no such file"),
    }
    for name, (error, message) in cases.items():
        with pytest.raises(error) as e:
            digits.load_params(tmp_path / name)
        assert str(e.value) == f"{tmp_path}/{message}", name


def test_save_and_load_refuse_the_same_extra_names(digits, tmp_path):
    """M4: what save_params refuses, load_params refuses, with the same message."""
    p = digits.init_params(seed=0)
    np.savez(tmp_path / "extra.npz", **p, b3=p["b2"])
    with pytest.raises(ValueError) as saved:
        digits.save_params({**p, "b3": p["b2"]}, tmp_path / "never.npz")
    with pytest.raises(ValueError) as loaded:
        digits.load_params(tmp_path / "extra.npz")
    tail = "has 'b3', which this network does not have; its parameters are W1, b1, W2, b2"
    assert str(saved.value) == f"params {tail}"
    assert str(loaded.value) == f"{tmp_path / 'extra.npz'} {tail}"
    assert not (tmp_path / "never.npz").exists()


@pytest.mark.parametrize("dtype", ["f4", "f8"])
@pytest.mark.parametrize("order", ["<", ">", "="])
def test_params_of_any_byte_order(tmp_path, dtype, order):
    """M5: float32/float64 params in either byte order (">f8") give the native numbers;
    train() updates the caller's arrays in place, keeping their dtype, with every optimizer."""
    m = module(3, 4, 2, "classes")
    X, Y = data(m, "classes", "integer", n=9)
    given = np.dtype(order + dtype)
    reference = m.init_params(seed=2, dtype=dtype)
    params = {k: v.astype(given) for k, v in reference.items()}
    assert m.init_params(seed=2, dtype=given)["W1"].dtype == reference["W1"].dtype  # native
    assert m.loss(params, X, Y) == m.loss(reference, X, Y)
    np.testing.assert_array_equal(m.predict(params, X), m.predict(reference, X))
    loaded = m.load_params(m.save_params(params, tmp_path / "p"))
    assert all(np.array_equal(loaded[k], reference[k]) and loaded[k].dtype.isnative
               for k in params)
    for optimizer in OPTIMIZERS:
        options = {"epochs": 2, "batch_size": 4, "optimizer": optimizer, "verbose": False}
        arrays = dict(params)
        assert m.train(params, X, Y, **options) == m.train(reference, X, Y, **options)
        for k in params:
            assert params[k] is arrays[k] and params[k].dtype == given, (optimizer, k)
            np.testing.assert_array_equal(params[k], reference[k], err_msg=f"{optimizer} {k}")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.text(min_size=0, max_size=700))
def test_a_shown_formula_is_cut_at_300_characters(line):
    """M2: a formula line is shown whole up to 300 characters, else its start and a note."""
    out = shown(line)
    if len(line) <= 300:
        assert out == line
    else:
        head, note = out.split(" … (", 1)
        assert note == "formula too long to show; see `symgrad derive`)"
        assert len(out) <= 300 and line.startswith(head)


def test_long_formulas_are_cut_in_the_module():
    """M2: a long activation's δ formula (a 10-factor product's derivative) is cut in the
    comments and the docstring; the code still computes it."""
    act = "*".join(f"(x+{10**6 + i})" for i in range(1, 11))
    text = generate_source(Spec("long_net", 3, (Layer(4, act), Layer(2, "identity")), loss="mse"))
    comments = [line.strip() for line in text.splitlines() if line.strip().startswith("# δ₁")]
    assert comments and all(len(c) <= 302 and c.endswith("see `symgrad derive`)")
                            for c in comments)
    docstring = text.split('"""')[1].splitlines()
    assert all(len(line) <= 300 for line in docstring)
    assert sum("formula too long to show" in line for line in docstring) == 1


def test_save_params_is_atomic(digits, tmp_path, monkeypatch):
    p = digits.init_params(seed=0)
    target = tmp_path / "params.npz"
    digits.save_params(p, target)
    old = target.read_bytes()

    def broken(file, **arrays):  # a failure half-way through writing
        file.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(digits.np, "savez", broken)
    with pytest.raises(OSError):
        digits.save_params(digits.init_params(seed=1), target)
    assert target.read_bytes() == old and sorted(os.listdir(tmp_path)) == ["params.npz"]


def test_script_errors_are_one_line(tmp_path):
    path = write_module(tmp_path, (8, 16, 1), "regression")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((20, 8)), Y=rng.standard_normal(20))
    np.savez(tmp_path / "cols.npz", X=rng.standard_normal((20, 7)), Y=rng.standard_normal(20))
    np.savez(tmp_path / "noy.npz", X=rng.standard_normal((20, 8)))
    cases = {
        ("missing.npz",): "missing.npz: no such file",
        ("noy.npz",): "noy.npz: no Y; the data file needs X and Y (or integer labels y), and "
                      "may add X_val, Y_val",
        ("cols.npz",): "X has 7 columns; this network takes 8",
        ("d.npz", "--batch-size", "0"): "batch_size must be a whole number >= 1, not 0",
        ("d.npz", "--learning-rat", "0.5"): "unrecognized arguments: --learning-rat 0.5",
        ("d.npz", "--save", "nodir/p.npz"): f"nodir/p.npz: cannot write: no directory "
                                            f"{tmp_path}/nodir",
        ("d.npz", "--save", str(tmp_path)): f"{tmp_path}: a directory; give the path of a file "
                                            f"to write, e.g. {tmp_path}/params.npz",
        ("d.npz", "--save", "out/"): "out/: a directory; give the path of a file to write, "
                                     "e.g. out/params.npz",
    }
    for args, message in cases.items():
        proc = run_script(path, "train", *args, cwd=tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            2, "", f"net_regression_8_16_1: error: {message}\n"), args


def test_ctrl_c_prints_one_line_and_saves_nothing(tmp_path):
    path = write_module(tmp_path, (8, 16, 1), "regression")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((2000, 8)), Y=rng.standard_normal(2000))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [sys.executable, str(path), "train", "d.npz", "--epochs", "100000", "--batch-size", "1",
         "--save", "p.npz"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("epoch 1/100000")  # training is under way
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read().splitlines()
    assert proc.wait(timeout=60) == 2
    rest = [line for line in rest if not line.startswith("epoch ")]
    assert rest == ["net_regression_8_16_1: error: interrupted; nothing saved"]
    assert not (tmp_path / "p.npz").exists()


# ------------------------------------------------------------------------------------------
# Class 6: the last finite parameters, for the last update and across calls
# ------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, derandomize=True)
@given(optimizer=st.sampled_from(OPTIMIZERS), exponent=st.sampled_from((0, 1, 2, 10, 100, 308)),
       batch_size=st.sampled_from((5, 16, 40)), kind=st.sampled_from(("regression", "classes")))
def test_training_keeps_parameters_with_a_finite_loss(optimizer, exponent, batch_size, kind):
    m = module(3, 10, 2, kind)
    X, Y = data(m, kind, "one-hot", n=40, seed=1)
    X = X * 30  # large inputs: a large learning rate diverges quickly
    params = m.init_params(seed=0)
    for _ in range(6):  # train(epochs=1) in a loop
        history = m.train(params, X, Y, epochs=1, batch_size=batch_size, optimizer=optimizer,
                          learning_rate=1.5 * 10.0**exponent, verbose=False)
        finite = all(np.isfinite(p).all() for p in params.values())
        assert finite or "stopped" in history  # never non-finite parameters without a word
        if "stopped" in history:
            assert "keeping the last parameters that gave a finite loss" in history["stopped"]
            assert finite and np.isfinite(m.loss(params, X, Y))
            break
