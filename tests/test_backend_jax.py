"""The jax backend (issue 16): ``symgrad generate --backend jax``.

The readable statements of loss_and_grad in jax.numpy's spelling, pure and jitted, one
jax.jit training step per batch: against the numpy module of the same spec (float64, to
rounding: loss, gradients, forward, training trajectories of every optimizer), against
jax.grad of the module's own loss where the dropout masks differ (another generator);
ruff-clean, deterministic, jax-only imports; ``symgrad check`` on a jax module; the
refusals, exactly. The matrix over the hidden-layer/loss table is marked slow (every case
compiles its functions: about a second each).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codegen import TABLE, build_case, case_id, imported_modules, sample

from symgrad.backends import JAX_NAMES, check_backend, jax_code
from symgrad.codegen import generate_source, load_module
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, Training, spec_from_dict

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

# jax comes with the `slow` extra, which make test-slow installs: the whole file runs there
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop")
# every activation among the hidden ones, every loss and output, by a stride through the
# table (gelu_tanh's derivation alone takes 13 s: left to tests/test_codegen.py)
SAMPLE = [c for c in TABLE[:30:2] + TABLE[30::5] if c[0] != "gelu_tanh"]
SMALL = ("tanh", "softmax", "cross_entropy", 0.05)  # the case of the quick tests


@pytest.fixture(autouse=True, scope="module")
def _x64_restored():
    """The modules turn on jax_enable_x64 for float64; the other tests of this worker get
    JAX's setting back."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


def jax_module(case):
    b = build_case(case)
    return b, load_module(generate_source(b.derivation, "jax"))


def close(a, b, rtol) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1.0)))


def equal_to_numpy(b, j, optimizers, n=6, quick=False) -> None:
    """loss_and_grad (float64: to 1e-10), forward, predict, loss, and full-batch training
    (the order of the rows cannot matter) of the jax module j equal the numpy module's
    (quick: loss_and_grad and training only)."""
    params, X, Y = sample(b, n=n)
    loss, grads = b.module.loss_and_grad(params, X, Y)
    jloss, jgrads = j.loss_and_grad(params, X, Y)
    assert close(jloss, loss, 1e-12)
    assert set(jgrads) == set(grads)
    for k, g in grads.items():
        assert jgrads[k].dtype == jnp.float64 and jgrads[k].shape == g.shape
        assert close(jgrads[k], g, 1e-10), k
    if not quick:
        assert close(j.forward(params, X), b.module.forward(params, X), 1e-12)
        assert close(j.predict(params, X), b.module.predict(params, X), 1e-12)
        assert close(j.loss(params, X, Y), b.module.loss(params, X, Y), 1e-12)
    for optimizer in optimizers:
        mine, theirs = dict(params), {k: v.copy() for k, v in params.items()}
        options = {"epochs": 2, "batch_size": n, "optimizer": optimizer,
                   "learning_rate": 0.01, "verbose": False}
        h = j.train(mine, X, Y, **options)
        h_np = b.module.train(theirs, X, Y, **options)
        assert close(h["loss"], h_np["loss"], 1e-10), optimizer
        assert all(close(mine[k], theirs[k], 1e-10) for k in params), optimizer


def test_jax_module_equals_numpy_module() -> None:
    """One network (tanh, softmax + cross-entropy, l1 and l2), one optimizer (the others:
    the slow matrix below)."""
    b, j = jax_module(SMALL)
    equal_to_numpy(b, j, ("adam",), quick=True)


@pytest.mark.slow
def test_float32() -> None:
    """float32 parameters: float32 gradients, close to the float64 numpy module's."""
    b, j = jax_module(SMALL)
    params, X, Y = sample(b, n=6)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss32, grads32 = j.loss_and_grad(p32, X, Y)
    assert all(g.dtype == jnp.float32 for g in grads32.values())
    loss, grads = b.module.loss_and_grad(params, X, Y)
    assert close(loss32, loss, 1e-4)
    assert all(close(grads32[k], g, 2e-3) for k, g in grads.items())


@pytest.mark.slow
@pytest.mark.parametrize("case", SAMPLE, ids=case_id)
def test_the_table_equals_the_numpy_module(case) -> None:
    """Hidden layers × losses × optimizers (every optimizer on the first case, every other
    one on the rest)."""
    b, j = jax_module(case)
    equal_to_numpy(b, j, OPTIMIZERS[:: 1 if case is SAMPLE[0] else 2])


LAYERS = {  # batchnorm, layernorm, a residual add, a concatenation with X: no dropout
    "network": {"name": "layers", "inputs": 5},
    "layer": [{"units": 6, "activation": "tanh"}, {"type": "batchnorm"},
              {"units": 6, "activation": "relu"}, {"type": "layernorm"},
              {"type": "add", "inputs": ["A1", "A4"]}, {"type": "concat", "inputs": ["A5", "X"]},
              {"units": 3, "activation": "softmax"}],
    "loss": {"kind": "cross_entropy"}, "regularization": {"l2": 0.01},
}
DROPOUT = {**LAYERS, "network": {"name": "dropout", "inputs": 5},
           "layer": [*LAYERS["layer"][:-1], {"type": "dropout", "p": 0.3}, LAYERS["layer"][-1]]}


def layer_modules(spec_dict):
    spec = spec_from_dict(spec_dict, f"{spec_dict['network']['name']}.toml")
    from symgrad.derive import derive

    d = derive(spec)
    numpy_module, j = load_module(generate_source(d)), load_module(generate_source(d, "jax"))
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape)
              for k, v in numpy_module.init_params(1).items()}
    X, Y = rng.standard_normal((9, 5)), np.eye(3)[rng.integers(0, 3, 9)]
    return numpy_module, j, params, X, Y


@pytest.mark.slow
def test_batchnorm_layernorm_add_concat_equal_the_numpy_module() -> None:
    """Training mode (batch statistics) and inference (running statistics) equal the numpy
    module's; training updates the running statistics as the numpy module does (a last
    batch of one sample skipped: 9 rows in batches of 4)."""
    numpy_module, j, params, X, Y = layer_modules(LAYERS)
    assert j.BUFFER_SHAPES == numpy_module.BUFFER_SHAPES == {"mean2": (6,), "var2": (6,)}
    loss, grads = numpy_module.loss_and_grad(params, X, Y)
    jloss, jgrads = j.loss_and_grad(params, X, Y, seed=3)
    assert close(jloss, loss, 1e-12) and all(close(jgrads[k], g, 1e-10) for k, g in grads.items())
    assert close(j.forward(params, X), numpy_module.forward(params, X), 1e-12)
    assert close(j.loss(params, X, Y, training=False), numpy_module.loss(params, X, Y,
                                                                         training=False), 1e-12)
    for optimizer, size in (("sgd", 9), ("adam", 9), ("momentum", 4)):
        mine, theirs = dict(params), {k: v.copy() for k, v in params.items()}
        options = {"epochs": 2, "batch_size": size, "optimizer": optimizer, "verbose": False}
        h = j.train(mine, X, Y, **options)
        if size == 9:  # full batch: the order of the rows cannot matter
            assert close(h["loss"], numpy_module.train(theirs, X, Y, **options)["loss"], 1e-10)
            assert all(close(mine[k], theirs[k], 1e-10) for k in params), optimizer
        else:
            assert len(h["loss"]) == 2 and all(np.isfinite(h["loss"]))
    assert max(j.check_gradients().values()) < 1e-6


@pytest.mark.slow
def test_dropout_masks_follow_the_seed_and_the_gradient_is_jax_grads() -> None:
    """The masks come from jax.random (not numpy's generator): loss_and_grad equals jax.grad
    of the module's own training-mode loss with the same key, loss(seed=s) is
    loss_and_grad's loss, another seed other masks; inference equals the numpy module."""
    numpy_module, j, params, X, Y = layer_modules(DROPOUT)
    loss, grads = j.loss_and_grad(params, X, Y, seed=4)
    assert loss == j.loss(params, X, Y, seed=4) != j.loss(params, X, Y, seed=5)
    trained = {k: jnp.asarray(params[k]) for k in j.PARAM_SHAPES}
    reference = jax.grad(lambda p: j._training_loss(p, jnp.asarray(X), jnp.asarray(Y),
                                                    jax.random.key(4)))(trained)
    assert all(close(grads[k], reference[k], 1e-12) for k in grads)
    assert close(j.forward(params, X), numpy_module.forward(params, X), 1e-12)
    assert max(j.check_gradients().values()) < 1e-6
    h1 = j.train(dict(params), X, Y, epochs=2, batch_size=4, verbose=False, seed=7)
    h2 = j.train(dict(params), X, Y, epochs=2, batch_size=4, verbose=False, seed=7)
    assert h1 == h2  # deterministic: the same seed, the same order and masks


CNN = {  # padding, stride, max pooling (ties: relu's zeros), batchnorm on a map, overlapping
    # average pooling with padding, flatten
    "network": {"name": "cnn", "inputs": [6, 6, 2]},
    "layer": [{"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1, "activation": "relu"},
              {"type": "batchnorm"}, {"type": "maxpool2d", "kernel": 2},
              {"type": "conv2d", "filters": 4, "kernel": 2, "activation": "tanh"},
              {"type": "avgpool2d", "kernel": 2, "stride": 1, "padding": 1},
              {"type": "flatten"}, {"units": 3, "activation": "softmax"}],
    "loss": {"kind": "cross_entropy"}, "regularization": {"l2": 0.01},
}


@pytest.mark.slow
def test_a_cnn_equals_the_numpy_module() -> None:
    """conv2d/maxpool2d/avgpool2d/flatten: the jax module's kernels (strided slices, the
    adjoints by .at[].add) give the numpy module's loss, gradients, forward and training;
    NHWC images are accepted; the gradient check passes."""
    from symgrad.derive import derive

    d = derive(spec_from_dict(CNN, "cnn.toml"))
    numpy_module, j = load_module(generate_source(d)), load_module(generate_source(d, "jax"))
    assert "conv_general_dilated" not in generate_source(d, "jax")
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape)
              for k, v in numpy_module.init_params(1).items()}
    X, Y = rng.standard_normal((5, 72)), np.eye(3)[rng.integers(0, 3, 5)]
    X[:, :8] = 0.0  # equal entries: max pooling's ties
    loss, grads = numpy_module.loss_and_grad(params, X, Y)
    jloss, jgrads = j.loss_and_grad(params, X.reshape(5, 6, 6, 2), Y)
    assert close(jloss, loss, 1e-12) and all(close(jgrads[k], g, 1e-10) for k, g in grads.items())
    assert close(j.forward(params, X), numpy_module.forward(params, X), 1e-12)
    for optimizer in ("sgd", "rmsprop"):
        mine, theirs = dict(params), {k: v.copy() for k, v in params.items()}
        options = {"epochs": 2, "batch_size": 5, "optimizer": optimizer, "verbose": False}
        assert close(j.train(mine, X, Y, **options)["loss"],
                     numpy_module.train(theirs, X, Y, **options)["loss"], 1e-10)
        assert all(close(mine[k], theirs[k], 1e-10) for k in params), optimizer
    assert max(j.check_gradients().values()) < 1e-6


@pytest.mark.slow
def test_hvp_and_gnvp() -> None:
    """generate --hvp: hvp() and gnvp() equal the numpy module's (a dense chain, a CNN); with
    dropout, hvp() is jax.jvp of jax.grad of the module's own training loss (the same key);
    train still offers the first-order optimizers only."""
    from symgrad.derive import derive

    rng = np.random.default_rng(0)
    for spec in (build_case(SMALL).spec, spec_from_dict(CNN, "cnn.toml")):
        d = derive(spec)
        numpy_module = load_module(generate_source(d, None, True))
        j = load_module(generate_source(d, "jax", True))
        assert j.OPTIMIZERS == OPTIMIZERS and {"hvp", "gnvp"} <= set(j.__all__)
        params = {k: v + 0.1 * rng.standard_normal(v.shape)
                  for k, v in numpy_module.init_params(1).items()}
        X = rng.standard_normal((5, numpy_module.INPUTS))
        Y = np.eye(3)[rng.integers(0, 3, 5)]
        V = {k: rng.standard_normal(s) for k, s in numpy_module.PARAM_SHAPES.items()}
        for fn in ("hvp", "gnvp"):
            theirs, mine = getattr(numpy_module, fn)(params, X, Y, V), getattr(j, fn)(params, X, Y, V)
            assert all(close(mine[k], theirs[k], 1e-10) for k in theirs), fn
    j = load_module(generate_source(spec_from_dict(DROPOUT, "dropout.toml"), "jax", True))
    params = {k: jnp.asarray(v + 0.1 * rng.standard_normal(v.shape))
              for k, v in j.init_params(1, "float64").items() if k in j.PARAM_SHAPES}
    X, Y = jnp.asarray(rng.standard_normal((7, 5))), jnp.asarray(np.eye(3)[rng.integers(0, 3, 7)])
    V = {k: jnp.asarray(rng.standard_normal(s)) for k, s in j.PARAM_SHAPES.items()}
    gradient = jax.grad(lambda p: j._training_loss(p, X, Y, jax.random.key(3)))
    reference = jax.jvp(gradient, (params,), (V,))[1]
    mine = j.hvp(params, X, Y, V, seed=3)
    assert all(close(mine[k], reference[k], 1e-12) for k in reference)
    with pytest.raises(ValueError, match="^V must be a dict with the keys of PARAM_SHAPES"):
        j.hvp(params, X, Y, {})


@pytest.mark.slow
def test_minibatches_are_the_optimizer_on_loss_and_grad() -> None:
    """train's batches: jax.random.permutation of the seed's keys, batch by batch, each an
    update by loss_and_grad of its rows (a last, smaller batch too)."""
    b, j = jax_module(SMALL)
    params, X, Y = sample(b, n=11)
    mine, ref = dict(params), {k: jnp.asarray(v) for k, v in params.items()}
    history = j.train(mine, X, Y, epochs=2, batch_size=4, optimizer="sgd",
                      learning_rate=0.1, verbose=False, seed=3)
    keys, losses = j._keys(3), []
    for _ in range(2):
        order, total = jax.random.permutation(next(keys), 11), 0.0
        for start in range(0, 11, 4):
            rows = order[start:start + 4]
            loss, grads = j.loss_and_grad(ref, jnp.asarray(X)[rows], jnp.asarray(Y)[rows])
            total += loss * len(rows)
            ref = {k: ref[k] - 0.1 * grads[k] for k in ref}
        losses.append(total / 11)
    assert close(history["loss"], losses, 1e-12)
    assert all(close(mine[k], ref[k], 1e-12) for k in ref)


@pytest.mark.slow
def test_a_non_finite_epoch_stops_and_restores_its_start(capsys) -> None:
    b, j = jax_module(("relu", "identity", "mse", 0.0))
    params, X, Y = sample(b, n=6)
    mine = dict(params)
    h = j.train(mine, X, Y, epochs=3, batch_size=2, learning_rate=1e30, optimizer="sgd",
                verbose=False)
    assert h["loss"] == [] and h["stopped"].startswith("non-finite loss (")
    assert h["stopped"].endswith("in epoch 1: stopped, keeping the parameters from the start "
                                 "of that epoch")
    assert all(np.array_equal(mine[k], params[k]) for k in params)
    assert capsys.readouterr().err == f"train: {h['stopped']}\n"


def test_the_jax_module_imports_jax_only_and_is_ruff_clean(tmp_path: Path) -> None:
    """jax (and jax.numpy) at the top, numpy only where the script entry reads DATA.npz;
    ruff check and format clean; the same bytes when generated again."""
    from test_generated import ruff

    sources = {"small": generate_source(build_case(SMALL).derivation, "jax"),
               "layers": generate_source(spec_from_dict(DROPOUT, "dropout.toml"), "jax")}
    for name, source in sources.items():
        top = "\n".join(line for line in source.splitlines() if line.startswith("import "))
        assert imported_modules(top) - set(sys.stdlib_module_names) == {"jax"}
        assert imported_modules(source) - set(sys.stdlib_module_names) == {"jax", "numpy"}
        assert source.count("import numpy as np") == 1
        main = next(n for n in ast.parse(source).body
                    if isinstance(n, ast.FunctionDef) and n.name == "_main")
        assert "import numpy as np" in ast.unparse(main)
        assert " out=" not in source.split("\n\"\"\"\n", 1)[1] and re.findall(r"(?<![\w.])np\.\w+", source) == ["np.load"]
        (tmp_path / f"{name}.py").write_text(source)
    assert sources["small"] == generate_source(build_case(SMALL).derivation, "jax")
    config = ["--config", str(ROOT / "pyproject.toml")]
    for args in (["check", *config, str(tmp_path)], ["format", "--check", *config, str(tmp_path)]):
        proc = subprocess.run(ruff() + args, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_training_step_is_one_jit() -> None:
    """train() calls _train_step (one jax.jit: gather, loss_and_grad's statements, the
    update) once per batch; its gradient lines are loss_and_grad's, in jnp."""
    source = generate_source(build_case(SMALL).derivation, "jax")
    assert source.count("@functools.partial(jax.jit, static_argnames=\"optimizer\")\n"
                        "def _train_step(") == 1
    assert ("    # ∂L/∂W₂ = A₁ᵀ δ₂ + λ₂ W₂ + λ₁ sign(W₂)\n"
            "    dW2 = A1.T @ dZ2 + L2 * W2 + L1 * jnp.sign(W2)\n") in source
    numpy_source = build_case(SMALL).source
    readable = numpy_source[numpy_source.index("def loss_and_grad("):]
    readable = readable[: readable.index("\ndef ")]
    numpy_lines = [line for line in readable.splitlines() if line.startswith("    d")]
    assert numpy_lines and all(line.replace("np.", "jnp.") in source for line in numpy_lines)


@pytest.mark.parametrize(("numpy_code", "jax_spelling"), [
    ("dZ1 = dA1 * (1 - A1**2)", "dZ1 = dA1 * (1 - A1**2)"),
    ("A1 = np.maximum(Z1, 0)", "A1 = jnp.maximum(Z1, 0)"),
    ("L = np.sum(np.logaddexp(0, -Z2) * Y) / N", "L = jnp.sum(jnp.logaddexp(0, -Z2) * Y) / N"),
    ("t0 = np.where(np.abs(r) <= 1, r, np.sign(r))",
     "t0 = jnp.where(jnp.abs(r) <= 1, r, jnp.sign(r))"),
    ("Z5 = np.concatenate([A4, X], axis=1)", "Z5 = jnp.concatenate([A4, X], axis=1)"),
    ("P, arg = maxpool(A, (8, 8), (2, 2))", "P, arg = maxpool(A, (8, 8), (2, 2))"),
])
def test_the_spelling(numpy_code, jax_spelling) -> None:
    assert jax_code([numpy_code]) == (jax_spelling,)


def test_what_has_no_jax_spelling_is_refused() -> None:
    assert "einsum" not in JAX_NAMES
    with pytest.raises(SymgradError) as e:
        jax_code(["A = np.einsum('ij->j', B)"], "where")
    assert str(e.value) == ("where: no jax spelling for np.einsum yet (symgrad.backends."
                            "JAX_NAMES, the jax backend's table)")
    with pytest.raises(SymgradError) as e:
        jax_code(["np.tanh(A, out=Z)"], "where")
    assert str(e.value) == ("where: no jax spelling for out= in 'Z' (JAX arrays are immutable: "
                            "write the readable statement)")
    with pytest.raises(SymgradError) as e:
        jax_code(["Z[0] = 1.0"], "where")
    assert str(e.value) == ("where: no jax spelling for 'Z[0] = 1.0' (JAX arrays are immutable: "
                            "no assignment into an array)")
    with pytest.raises(SymgradError) as e:
        jax_code(["Z.fill(0)"], "where")
    assert str(e.value) == "where: no jax spelling for .fill() (in place)"
    assert jax_code(['params["b1"] = np.zeros(3, dtype)'], dicts=frozenset({"params"})) == (
        'params["b1"] = jnp.zeros(3, dtype)',)


UNARY = ["np.tanh", "np.exp", "np.abs", "np.sign", "np.sin", "np.cos", "np.log1p", "np.expm1",
         "np.square", "np.arctan"]
BINARY = ["+", "-", "*", "np.maximum", "np.minimum", "np.logaddexp"]


@st.composite
def statements(draw, depth=3):
    """A numpy expression in x and y of the lowering's vocabulary (elementwise)."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(["x", "y", "0.5", "2"]))
    if draw(st.booleans()):
        return f"{draw(st.sampled_from(UNARY))}({draw(statements(depth - 1))})"
    op, a, b = draw(st.sampled_from(BINARY)), draw(statements(depth - 1)), draw(statements(depth - 1))
    return f"({a} {op} {b})" if len(op) == 1 else f"{op}({a}, {b})"


@settings(max_examples=25, deadline=None)
@given(statements())
def test_a_spelled_statement_computes_the_numpy_statement(expression) -> None:
    """The jax spelling of an elementwise statement computes what numpy computes (float64,
    to rounding), and differs from it only by np. → jnp."""
    (spelled,) = jax_code([f"z = {expression}"])
    assert spelled == f"z = {expression}".replace("np.", "jnp.")
    jax.config.update("jax_enable_x64", True)
    x, y = np.linspace(-0.9, 0.8, 7), np.linspace(0.3, -0.6, 7)
    mine = eval(spelled[4:], {"jnp": jnp, "x": jnp.asarray(x), "y": jnp.asarray(y)})  # noqa: S307
    theirs = eval(expression, {"np": np, "x": x, "y": y})  # noqa: S307 - our own test strings
    assert np.allclose(np.asarray(mine), theirs, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_backend_refusals() -> None:
    assert check_backend("jax", "w") == "jax"
    assert Training(backend="jax").backend == "jax"
    with pytest.raises(SymgradError) as e:
        Training(backend="tensorflow", where="s.toml: training")
    assert str(e.value).startswith("s.toml: training.backend: unknown backend 'tensorflow'; use ")
    assert "jax" in str(e.value)
    lbfgs = Spec("net", 3, (Layer(2, "identity"),), loss="mse", source="n.toml",
                 training=Training(optimizer="lbfgs", backend="jax"))
    with pytest.raises(SymgradError) as e:
        generate_source(lbfgs)
    assert str(e.value) == ("n.toml: training.backend: lbfgs is in numpy modules only so far; "
                            "use a first-order optimizer (sgd, momentum, nesterov, adam, "
                            "rmsprop) with the jax backend")


@pytest.mark.slow
def test_generate_and_check_on_the_command_line(tmp_path: Path, capsys) -> None:
    """symgrad generate --backend jax writes it; symgrad check MODULE.py checks it (float64
    numpy at the sandbox's boundary); the module's own check and train DATA.npz run."""
    from symgrad.cli import main

    spec = tmp_path / "small.toml"
    spec.write_text('[network]\nname = "small"\ninputs = 3\n[[layer]]\nunits = 4\n'
                    'activation = "tanh"\n[[layer]]\nunits = 2\nactivation = "softmax"\n'
                    '[loss]\nkind = "cross_entropy"\n[training]\nbackend = "jax"\n')
    out = tmp_path / "small_jax.py"
    assert main(["generate", str(spec), "-o", str(out)]) == 0
    assert "import jax\n" in out.read_text()
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    report = capsys.readouterr().out
    assert "W1" in report and "b2" in report and "FAIL" not in report
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((10, 3)), y=rng.integers(0, 2, 10))
    for args in (["check"], ["train", str(tmp_path / "data.npz"), "--epochs", "2", "--save",
                             str(tmp_path / "p.npz")]):
        proc = subprocess.run([sys.executable, str(out), *args], capture_output=True, text=True,
                              check=False, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert "gradient check passed" in subprocess.run(
        [sys.executable, str(out), "check"], capture_output=True, text=True, check=False).stdout
    m = load_module(out)
    params = m.load_params(tmp_path / "p.npz")
    assert set(params) == set(m.PARAM_SHAPES) and params["W1"].dtype == jnp.float32


@pytest.mark.slow
def test_the_backend_benchmark_runs(tmp_path: Path, monkeypatch) -> None:
    """benchmarks/backend_bench.py's generated jax row and JAX's own jax.grad step through
    training_bench's runner on the tiny workload: one timed epoch each, no timing asserted;
    the smoke check's trajectory: one float64 epoch of the generated jax module from the
    same parameters and batches as the numpy module's, equal to rounding."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import backend_bench as bb
    import training_bench as tb

    tiny = tb.tiny_workload()
    names = (bb.GEN_JAX, bb.JAX_STEP)
    res = tb.run_workload(tiny, 1, tmp_path, names, pause=0, preparers=bb.PREPARERS)
    assert [r["contender"] for r in res["rows"] if "median" in r] == list(names), res
    rows = {r["contender"]: r for r in bb.trajectory_check(tiny, tmp_path)["rows"]}
    assert rows[bb.GEN_JAX]["ok"], rows
