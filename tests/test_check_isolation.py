"""``symgrad check MODULE.py`` cannot be forged or fooled by the module it checks.

The module runs in a separate process (symgrad.sandbox) that only evaluates; the verdict
is decided here.  Each hostile module below is a small file in tmp_path that tries one
way of getting a pass (or a hang, or a crash) out of ``check``; each test asserts the exact
verdict: the exit status and the one line or the table row that says what happened.

Exit codes: 0 all pass; 1 a check failed or no report was produced; 2 bad input.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symgrad import check
from symgrad.check import check_module
from symgrad.cli import main
from symgrad.errors import SymgradError

# A correct two-layer tanh regressor (no init_params): the base of every hostile module.
BASE = '''
import numpy as np

INPUTS, OUTPUTS = 3, 2
PARAM_SHAPES = {"W1": (3, 4), "b1": (4,), "W2": (4, 2), "b2": (2,)}


def _forward(p, X):
    A1 = np.tanh(X @ p["W1"] + p["b1"])
    return A1, A1 @ p["W2"] + p["b2"]


def loss(p, X, Y):
    _, Yhat = _forward(p, X)
    return float(np.sum((Yhat - Y) ** 2) / (2 * len(X)))


def loss_and_grad(p, X, Y):
    A1, Yhat = _forward(p, X)
    dZ2 = (Yhat - Y) / len(X)
    dZ1 = (dZ2 @ p["W2"].T) * (1 - A1**2)
    grads = {"W1": X.T @ dZ1, "b1": dZ1.sum(axis=0), "W2": A1.T @ dZ2, "b2": dZ2.sum(axis=0)}
    return loss(p, X, Y), grads
'''

DOUBLED = '''
_honest = loss_and_grad


def loss_and_grad(p, X, Y):
    L, grads = _honest(p, X, Y)
    grads["W1"] = 2 * grads["W1"]
    return L, grads
'''


def module(tmp_path: Path, name: str, prefix: str = "", suffix: str = "") -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(prefix + BASE + suffix)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def cells(out: str, name: str) -> list[str]:
    for line in out.splitlines():
        parts = [c.strip() for c in line.split("  ") if c.strip()]
        if parts and parts[0] == name:
            return parts
    raise AssertionError(f"no row {name} in\n{out}")


def no_report(capsys, path: Path, what: str) -> None:
    """exit 1, nothing on stdout, one line on stderr saying what happened."""
    code, out, err = run(capsys, path)
    assert (code, out) == (1, "")
    assert err == f"symgrad: check failed: {path}: {what}\n"


def public(tmp_path: Path) -> Path:
    """A directory the module may write in: as root it runs as nobody, who writes nothing
    of root's (tmp_path is root's, 0700)."""
    folder = tmp_path / "public"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o777)
    return folder


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ------------------------------------------------------------------------------------------
# The honest module passes; the same numbers in a hostile wrapper get the same verdict
# ------------------------------------------------------------------------------------------


def test_the_base_module_passes(capsys, tmp_path):
    code, out, err = run(capsys, module(tmp_path, "honest"))
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "ok: 5 of 5 checks passed"


def test_junk_on_stdout_and_stderr_changes_nothing(capsys, tmp_path):
    """print(), sys.stdout, fd 1 and fd 2 at import and in every loss: the report is the
    honest module's, byte for byte (apart from the file name)."""
    noisy = module(tmp_path, "noisy", prefix="import os, sys\nprint('junk at import')\n"
                   "os.write(1, b'fd1 junk\\n')\nos.write(2, b'fd2 junk\\n')\n", suffix='''
_quiet = loss


def loss(p, X, Y):
    print("ok: 99 of 99 checks passed")
    sys.stdout.write("PASS\\n")
    os.write(1, b"more junk")
    return _quiet(p, X, Y)
''')
    honest = module(tmp_path, "honest")
    code, out, err = run(capsys, noisy)
    assert (code, err) == (0, "")
    _, expected, _ = run(capsys, honest)
    assert out == expected.replace(str(honest), str(noisy))


# ------------------------------------------------------------------------------------------
# A module that ends its own process: no report, exit 1
# ------------------------------------------------------------------------------------------


def test_os_exit_at_import_is_a_failed_check(capsys, tmp_path):
    no_report(capsys, module(tmp_path, "exit0", prefix="import os\nos._exit(0)\n"),
              "module exited during import with status 0; no gradient was checked")


def test_os_exit_in_loss_is_a_failed_check(capsys, tmp_path):
    path = module(tmp_path, "exit_later", suffix='''
import os

def loss(p, X, Y):
    os._exit(3)
''')
    no_report(capsys, path, "module exited while evaluating loss with status 3; the check "
              "did not finish")


def test_a_module_that_kills_itself(capsys, tmp_path):
    path = module(tmp_path, "suicide", suffix='''
import os, signal

def loss_and_grad(p, X, Y):
    os.kill(os.getpid(), signal.SIGKILL)
''')
    no_report(capsys, path, "module was killed by signal 9 (SIGKILL) while calling "
              "loss_and_grad; the check did not finish")


def test_garbage_on_the_protocol_is_a_failed_check(capsys, tmp_path):
    """The module finds the private descriptors and writes to all of them."""
    path = module(tmp_path, "garbage", prefix='''
import os
for fd in range(3, 64):
    try:
        os.write(fd, b"ok: 5 of 5 checks passed\\n" * 100)
    except OSError:
        pass
''')
    no_report(capsys, path, "module's process sent a malformed reply during import; no "
              "gradient was checked")


# ------------------------------------------------------------------------------------------
# Tampering with symgrad.check in its own process reaches nothing
# ------------------------------------------------------------------------------------------


def test_tolerance_tampering_does_not_pass_a_doubled_gradient(capsys, tmp_path):
    path = module(tmp_path, "tamper", prefix='''
import symgrad.check as _c
_c.DEFAULT_TOL["central"] = 1e9
_c.DEFAULT_TOL.update(complex=1e9, directional=1e9, taylor=0.0)
_c._agree = lambda *a: (True, True)
_c.CheckReport.ok = property(lambda self: True)
''', suffix=DOUBLED)
    before = dict(check.DEFAULT_TOL)
    code, out, err = run(capsys, path)
    assert (code, err) == (1, "")
    assert check.DEFAULT_TOL == before
    assert cells(out, "W1")[-1] == "FAIL" and 0.49 < float(cells(out, "W1")[2]) < 0.51
    assert out.splitlines()[-1] == "FAILED: W1 (1 of 5 checks)"


@pytest.mark.parametrize("method", ["directional", "taylor"])
def test_tampering_is_futile_for_every_method(capsys, tmp_path, method):
    path = module(tmp_path, "tamper2", prefix='''
import symgrad.check as _c
for k in _c.DEFAULT_TOL:
    _c.DEFAULT_TOL[k] = 1e9 if k != "taylor" else 0.0
''', suffix=DOUBLED)
    code, out, _ = run(capsys, path, "--method", method)
    assert code == 1 and cells(out, "W1")[-1] == "FAIL"


# ------------------------------------------------------------------------------------------
# Hangs: the time limit (whole check), then the process and what it started are killed
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sleeping_loss_is_stopped_at_the_time_limit(capsys, tmp_path, monkeypatch):
    pidfile = public(tmp_path) / "pid"
    path = module(tmp_path, "sleeper", prefix=f'''
import os, time
open({str(pidfile)!r}, "w").write(str(os.getpid()))
''', suffix='''

def loss(p, X, Y):
    time.sleep(600)
''')
    monkeypatch.setattr(check, "TIME_LIMIT", 4.0)
    start = time.monotonic()
    no_report(capsys, path, "module did not answer within the time limit of 4 s (while "
              "evaluating loss); it was stopped and the check did not finish")
    assert time.monotonic() - start < 60  # not the 600 s it asked for
    assert gone(int(pidfile.read_text()))


@pytest.mark.slow
def test_a_hang_at_import_is_stopped(capsys, tmp_path):
    path = module(tmp_path, "hang", prefix="import time\ntime.sleep(600)\n")
    report = check_module(path, time_limit=2)
    assert not report.ok and not report.rows
    assert report.failure == ("module did not answer within the time limit of 2 s (during "
                              "import); it was stopped and no gradient was checked")
    assert report.text() == f"symgrad check {path}: FAILED: {report.failure}\n"


def test_a_module_that_forks(capsys, tmp_path):
    """The fork lingers, holding the pipes: the check still finishes, passes on the
    numbers, and the fork is killed with the session."""
    pidfile = public(tmp_path) / "fork"
    path = module(tmp_path, "forker", prefix=f'''
import os, time
pid = os.fork()
if pid == 0:
    time.sleep(600)
    os._exit(0)
open({str(pidfile)!r}, "w").write(str(pid))
''')
    code, out, err = run(capsys, path)
    assert (code, err) == (0, ""), out
    pid = int(pidfile.read_text())
    for _ in range(50):  # killed; reaped by init shortly after
        if gone(pid) or _zombie(pid):
            break
        time.sleep(0.1)
    assert gone(pid) or _zombie(pid)


DAEMON = '''
import os, time
r, w = os.pipe()
if os.fork() == 0:  # a daemon: its own session, then a grandchild (the child exits)
    os.setsid()
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    os.write(w, str(pid).encode())
    os._exit(0)
open({pidfile!r}, "w").write(os.read(r, 20).decode())
'''


@pytest.mark.slow
@pytest.mark.parametrize("hang", [False, True])
def test_no_process_of_the_module_outlives_the_check(tmp_path, hang):
    """setsid and a double fork (no death signal, another session): the sandbox is a
    subreaper, so the grandchild stays below it and is killed when the check ends, whether
    the sandbox quits (it kills what is below it) or is stopped at the time limit (the
    parent kills every descendant first)."""
    pidfile = public(tmp_path) / "daemon"
    suffix = "\nimport time\ndef loss(p, X, Y):\n    time.sleep(600)\n" if hang else ""
    path = module(tmp_path, "daemon", prefix=DAEMON.format(pidfile=str(pidfile)),
                  suffix=suffix)
    report = check_module(path, time_limit=3 if hang else None)
    assert report.ok is not hang
    if hang:
        assert report.failure.startswith("module did not answer within the time limit of 3 s")
    pid = int(pidfile.read_text())
    assert gone(pid) or _zombie(pid)  # killed before check_module returned


def test_the_module_reads_anywhere_but_writes_nothing_of_root(tmp_path):
    """As root the sandbox keeps CAP_DAC_READ_SEARCH only: the module imports from a 0700
    directory, but cannot open a root-owned 0600 file for writing nor create a file in a
    root-owned 0755 directory (so it cannot rewrite symgrad's sources)."""
    secret, shared = tmp_path / "secret", tmp_path / "shared"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    shared.mkdir()
    shared.chmod(0o755)
    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o700)
    symgrad_file = Path(check.__file__)
    path = module(private, "writer", suffix=f'''
for _path, _mode in (({str(secret)!r}, "a"), ({str(shared / "new")!r}, "w"),
                     ({str(symgrad_file)!r}, "ab")):
    try:
        open(_path, _mode).close()
    except PermissionError:
        pass
    else:
        raise RuntimeError("wrote " + _path)
''')
    if _can_drop_to_nobody():
        report = check_module(path)
        assert report.ok, report.text()
    else:  # the module runs as this user, who owns these files (README: what remains)
        with pytest.raises(SymgradError) as e:
            check_module(path)
        assert e.value.what == f"cannot import: RuntimeError: wrote {secret}"
    assert secret.read_text() == "root's\n" or not _can_drop_to_nobody()
    assert not (shared / "new").exists() or not _can_drop_to_nobody()


@pytest.mark.parametrize("method", ["central", "directional"])
@pytest.mark.parametrize("value", ["-np.inf", "np.inf", "np.nan"])
def test_a_gradient_that_is_not_finite_is_its_own_verdict(capsys, tmp_path, method, value):
    """Not "nan FAIL" (an inf against differences that may be inf too): the row says it."""
    path = module(tmp_path, "not_finite", suffix=f'''
_honest = loss_and_grad


def loss_and_grad(p, X, Y):
    L, grads = _honest(p, X, Y)
    grads["W1"][0, 1] = {value}
    return L, grads
''')
    code, out, err = run(capsys, path, "--method", method)
    assert (code, err) == (1, "")
    assert cells(out, "W1") == ["W1", "(3, 4)", "not finite", "[0, 1]", method, "FAIL"]
    shown = {"-np.inf": "-inf", "np.inf": "inf", "np.nan": "nan"}[value]
    assert f"\n  W1[0, 1]: the gradient is not finite (loss_and_grad {shown})\n" in out
    assert out.endswith("FAILED: W1 (1 of 5 checks)\n")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_memory_limit(tmp_path):
    path = module(tmp_path, "greedy", prefix="import numpy\n_hoard = numpy.ones(2**28)\n")
    with pytest.raises(SymgradError) as e:
        check_module(path, memory_limit=1 << 30)
    assert e.value.what.startswith("cannot import: MemoryError: Unable to allocate 2.00 GiB")


# ------------------------------------------------------------------------------------------
# What comes back is validated here: real numbers, float64 arrays of the right shape
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("perturb, message", [
    ('grads = {k: [complex(x) for x in np.ravel(v)] for k, v in grads.items()}',
     "loss_and_grad returned a Python list (of complex128 values), not a numpy array of "
     "float64 like the parameter"),
    ('grads = {k: np.asarray(v).tolist() for k, v in grads.items()}',
     "loss_and_grad returned a Python list (of float64 values), not a numpy array of float64 "
     "like the parameter"),
    ('grads = {k: v + 0j for k, v in grads.items()}',
     "loss_and_grad returned complex128 values; the gradient of a real loss is real "
     "(float64, like the parameter)"),
    ('grads = {k: v.astype(np.float32) for k, v in grads.items()}',
     "loss_and_grad returned float32 values; the parameter is float64, and a gradient has "
     "the parameter's dtype"),
    ('grads = {k: "gradient" for k in grads}',
     "loss_and_grad returned 'gradient', not an array"),
])
def test_gradients_of_the_wrong_kind_fail_their_rows(capsys, tmp_path, perturb, message):
    path = module(tmp_path, "kinds", suffix=f'''
_honest = loss_and_grad


def loss_and_grad(p, X, Y):
    L, grads = _honest(p, X, Y)
    {perturb}
    return L, grads
''')
    code, out, err = run(capsys, path)
    assert (code, err) == (1, "")
    for name in ("W1", "b1", "W2", "b2"):
        assert cells(out, name)[2:] == ["nan", "—", "central", "FAIL"]
        assert f"  {name}: {message}" in out.splitlines()
    assert out.splitlines()[-1] == "FAILED: W1, b1, W2, b2 (4 of 5 checks)"


@pytest.mark.parametrize("value, message", [
    ("complex(loss(p, X, Y), 1.0)", "loss_and_grad returned (0.5+1j), a complex number; a loss "
     "is real"),
    ("[loss(p, X, Y)]", "loss_and_grad returned [0.5], not a number"),
    ("True", "loss_and_grad returned True, not a number"),
])
def test_a_loss_that_is_not_a_real_number_is_bad_input(capsys, tmp_path, value, message):
    path = module(tmp_path, "lossy", suffix=f'''
_honest = loss_and_grad


def loss_and_grad(p, X, Y):
    L, grads = _honest(p, X, Y)
    return {value}, grads


def loss(p, X, Y):
    return 0.5
''')
    code, out, err = run(capsys, path)
    assert (code, out) == (2, "")
    assert err == f"symgrad: error: {path}: {message}\n"


def test_outputs_too_large_are_refused_before_allocating(capsys, tmp_path):
    path = tmp_path / "huge.py"
    path.write_text(BASE.replace("INPUTS, OUTPUTS = 3, 2", "INPUTS, OUTPUTS = 3, 10**7"))
    code, out, err = run(capsys, path)
    assert (code, out) == (2, "")
    assert err == (f"symgrad: error: {path}: too large to check: X and Y (64 samples × 3 inputs "
                   "and 10,000,000 outputs) and 26 parameters are 640,000,218 numbers; the "
                   "limit is 20,000,000\n")


# ------------------------------------------------------------------------------------------
# Domain: positive inputs where the function needs them
# ------------------------------------------------------------------------------------------

POSITIVE = '''
import numpy as np

INPUTS, OUTPUTS = 1, 1
PARAM_SHAPES = {{"x": (3, 1)}}
_y = np.array([[0.7], [1.2], [0.9]])
{domain}

def loss(p, X=None, Y=None):
    return float(np.sum(_y * np.log(p["x"])) - np.sum(p["x"]))


def loss_and_grad(p, X=None, Y=None):
    return loss(p), {{"x": _y / p["x"] - 1}}
'''


@pytest.mark.parametrize("domain, header", [
    ('DOMAIN = "positive"', ", positive inputs (DOMAIN = 'positive')"),
    ("", ", positive inputs (the loss is nan at a real point)"),
])
def test_a_function_of_positive_inputs(capsys, tmp_path, domain, header):
    path = tmp_path / "ylogx.py"
    path.write_text(POSITIVE.format(domain=domain))
    code, out, err = run(capsys, path)
    assert (code, err) == (0, ""), out
    assert out.splitlines()[0] == (f"symgrad check {path}: central differences, tol 1e-06, "
                                   f"seed 0, N = 64, float64{header}")


def test_a_bad_domain_is_bad_input(capsys, tmp_path):
    path = tmp_path / "domain.py"
    path.write_text(POSITIVE.format(domain='DOMAIN = "complex"'))
    code, out, err = run(capsys, path)
    assert (code, out, err) == (2, "", f"symgrad: error: {path}: DOMAIN must be 'positive' or "
                                "'real', not 'complex'\n")


# ------------------------------------------------------------------------------------------
# Size: large parameters are sampled (largest claimed entries always in) plus directions
# ------------------------------------------------------------------------------------------

WIDE = BASE.replace("INPUTS, OUTPUTS = 3, 2", "INPUTS, OUTPUTS = 120, 2").replace(
    '{"W1": (3, 4), "b1": (4,), "W2": (4, 2), "b2": (2,)}',
    '{"W1": (120, 60), "b1": (60,), "W2": (60, 2), "b2": (2,)}')


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rank=st.sampled_from([0, 3, 7]), factor=st.sampled_from([1.01, 2.0, -1.0]))
def test_a_large_parameter_is_sampled_and_its_largest_entries_checked(tmp_path, rank, factor):
    """One wrong entry among the 8 largest claimed |∂L/∂W1| of 7,200 is always caught."""
    path = tmp_path / "wide.py"
    path.write_text(WIDE + f'''
_honest = loss_and_grad


def loss_and_grad(p, X, Y):
    L, grads = _honest(p, X, Y)
    g = grads["W1"].reshape(-1)
    j = np.argsort(-np.abs(g), kind="stable")[{rank}]
    g[j] *= {factor}
    return L, grads
''')
    report = check_module(path)
    rows = [r for r in report.rows if r.name == "W1"]
    assert [r.method_text for r in rows] == ["central, 64 of 7,200 entries",
                                             "directional, 8 directions"]
    assert not rows[0].ok and rows[0].worst.startswith("[")
    assert report.row("W2").ok and report.row("b2").coverage == ""


def test_the_table_says_what_was_sampled(capsys, tmp_path):
    path = tmp_path / "wide_ok.py"
    path.write_text(WIDE)
    code, out, err = run(capsys, path)
    assert (code, err) == (0, ""), out
    assert out.splitlines()[1].split("  ")[0:1] == ["parameter"]
    assert "worst entry / direction" in out.splitlines()[1]
    w1 = [line.split("  ") for line in out.splitlines() if line.startswith("W1 ")]
    assert [[c.strip() for c in cs if c.strip()][-2] for cs in w1] == [
        "central, 64 of 7,200 entries", "directional, 8 directions"]
    assert cells(out, "b1")[-2] == "central"  # 60 entries: all of them


def test_progress_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    monkeypatch.setattr(check, "PROGRESS_AFTER", 0.0)
    progress = check._Progress(time.perf_counter(), stream)
    progress("W1: entry 64 of 64")
    progress.done()
    text = stream.getvalue()
    assert text.startswith("\rsymgrad check: W1: entry 64 of 64 (")
    assert text.endswith("\r" + " " * progress_len(text) + "\r")
    quiet = io.StringIO()
    check._Progress(time.perf_counter() - 10, quiet)("anything")  # not a terminal: silent
    assert quiet.getvalue() == ""


def progress_len(text: str) -> int:
    return len(text.split("\r")[1])


def test_the_process_is_gone_after_a_normal_check(tmp_path):
    pidfile = public(tmp_path) / "pid"
    path = module(tmp_path, "pid", prefix=f"import os\nopen({str(pidfile)!r}, 'w')"
                  ".write(str(os.getpid()))\n")
    assert check_module(path).ok
    assert gone(int(pidfile.read_text()))


def test_a_generated_expression_module_of_positive_inputs(capsys, tmp_path):
    """``sum(y*log(x)) - sum(x)``: its own check() passes at positive inputs, and so does
    ``symgrad check`` (no false FAIL with nan at a real point)."""
    path = tmp_path / "ylogx_expr.py"
    assert main(["generate", "--expr", "sum(y*log(x)) - sum(x)", "--shape", "x=n,1",
                 "--shape", "y=n,1", "--wrt", "x", "-o", str(path)]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, path)
    assert (code, err) == (0, ""), out
    assert ", positive inputs (" in out.splitlines()[0]
    assert cells(out, "x")[-2:] == ["central", "pass"]


@pytest.mark.slow
def test_a_module_that_stops_itself(tmp_path):
    """SIGSTOP: it neither reads nor answers; the deadline still holds (reads and writes)."""
    path = module(tmp_path, "stopper", suffix='''
import os, signal

def loss_and_grad(p, X, Y):
    os.kill(os.getpid(), signal.SIGSTOP)
''')
    report = check_module(path, time_limit=3)
    assert report.failure == ("module did not answer within the time limit of 3 s (while "
                              "calling loss_and_grad); it was stopped and the check did not "
                              "finish")


def test_sibling_imports_work_and_cwd_cannot_shadow_numpy(capsys, tmp_path, monkeypatch):
    """The module's directory is on its sys.path (as for ``python MODULE.py``); a numpy.py
    in the working directory or beside the module does not replace numpy."""
    (tmp_path / "helper.py").write_text("SCALE = 1.0\n")
    (tmp_path / "numpy.py").write_text("raise ImportError('shadowed')\n")
    path = module(tmp_path, "sibling", prefix="import helper\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, path.name)
    assert (code, err) == (0, ""), out


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False)
    | st.sampled_from(["float64", "complex128", "ndarray", "list", "dict", "pair", "g0", "p0",
                       "W1", "positive"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["value", "type", "items", "loss", "grads", "kinds", "present",
                         "callable", "raised", "ok", "dtype", "shape", "data", "size",
                         "repr", "W1", "INPUTS", "PARAM_SHAPES", "int", "tuple", "ready"]),
        inner, max_size=5),
    max_leaves=12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(["interface", "init_params", "loss_and_grad", "losses"]),
       reply=st.dictionaries(st.sampled_from(["value", "kinds", "present", "callable", "raised",
                                              "grads", "loss"]), JSON, max_size=3))
def test_forged_replies_never_pass_and_never_crash(capsys, tmp_path, op, reply):
    """The module replaces the child's request handler and answers ``op`` with anything:
    the parent refuses it (exit 2 or 1, one line) and never passes the doubled gradient."""
    import json

    path = module(tmp_path, "forger", prefix=f'''
import json as _json
import symgrad.sandbox as _sb
_REPLY = _json.loads({json.dumps(json.dumps(reply))})
_handle = _sb.Session.handle


def _forged(self, header, arrays):
    if header.get("op") == {op!r}:
        return _REPLY, {{}}
    return _handle(self, header, arrays)


_sb.Session.handle = _forged
''', suffix=DOUBLED)
    code, out, err = run(capsys, path)
    assert code in (1, 2), out
    if out:  # a table: the doubled gradient is named
        assert code == 1 and out.splitlines()[-1].startswith("FAILED: ")
    else:
        assert err.count("\n") == 1 and err.startswith(("symgrad: error: ",
                                                        "symgrad: check failed: "))


def test_an_exit_is_seen_while_a_fork_holds_the_pipe(capsys, tmp_path):
    """The output pipe stays open in a lingering fork: the exit is still reported as an exit
    (not as a timeout after the whole time limit)."""
    path = module(tmp_path, "fork_exit", prefix='''
import os, time
if os.fork() == 0:
    time.sleep(600)
    os._exit(0)
''', suffix='''

def loss(p, X, Y):
    os._exit(4)
''')
    start = time.monotonic()
    no_report(capsys, path, "module exited while evaluating loss with status 4; the check "
              "did not finish")
    assert time.monotonic() - start < 60


def test_reading_stdin_at_import_gets_nothing(capsys, tmp_path):
    """stdin is not the protocol: the module reads /dev/null."""
    path = module(tmp_path, "reader", prefix="input()\n")
    code, out, err = run(capsys, path)
    assert (code, out) == (2, "")
    assert err == f"symgrad: error: {path}: cannot import: EOFError: EOF when reading a line\n"


# ------------------------------------------------------------------------------------------
# The module cannot act on the check's own process (F7): signals, a killed check
# ------------------------------------------------------------------------------------------

SIGNALS = ("SIGSTOP", "SIGALRM", "SIGINT", "SIGTERM")


def _can_drop_to_nobody() -> bool:
    """Root with CAP_SETUID and CAP_SETGID (a container may withhold them)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/status") as fh:
            caps = next(int(line.split()[1], 16) for line in fh if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return True
    return bool(caps & (1 << 6)) and bool(caps & (1 << 7))


@pytest.mark.parametrize("name", SIGNALS)
def test_a_module_that_signals_its_parent(tmp_path, name):
    """Run as root (the sandbox becomes nobody): the kill is refused at import, one line,
    exit 2.  As another user the kill lands (README, "check": what remains): SIGSTOP stops
    the check until it is continued, a SIGALRM before the deadline is not taken for the
    time limit, SIGINT and SIGTERM end it with a failure status (never 0)."""
    import signal
    import subprocess
    import sys

    path = module(tmp_path, "signals_parent",
                  suffix=f"\nimport os, signal\nos.kill(os.getppid(), signal.{name})\n")
    proc = subprocess.Popen([sys.executable, "-m", "symgrad", "check", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:  # a stopped check is continued (as a user's shell would)
        try:
            out, err = proc.communicate(timeout=2)
            break
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGCONT)
    if _can_drop_to_nobody():
        assert (proc.returncode, out) == (2, "")
        assert err == (f"symgrad: error: {path}: cannot import: PermissionError: [Errno 1] "
                       "Operation not permitted\n")
    elif name in ("SIGSTOP", "SIGALRM"):
        assert (proc.returncode, err) == (0, ""), out
        assert out.endswith("ok: 5 of 5 checks passed\n")
    else:
        assert (proc.returncode, out, err) == ((130, "", "symgrad: interrupted\n")
                                              if name == "SIGINT" else (-15, "", ""))


@pytest.mark.slow
def test_the_module_dies_with_a_killed_check(tmp_path):
    """SIGKILL to ``symgrad check`` (nothing of it runs again) takes the module's process
    with it (PR_SET_PDEATHSIG), also when the module ignores SIGTERM and SIGHUP."""
    import signal
    import subprocess
    import sys

    pidfile = public(tmp_path) / "pid"
    path = module(tmp_path, "outlive", suffix=f'''
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
open({str(pidfile)!r} + ".tmp", "w").write(str(os.getpid()))
os.rename({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
time.sleep(60)
''')
    proc = subprocess.Popen([sys.executable, "-m", "symgrad", "check", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if pidfile.exists():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(200):
        if gone(child):
            break
        time.sleep(0.05)
    assert gone(child)


def test_a_sigalrm_before_the_deadline_is_not_the_command_timeout():
    """The command's time limit is a monotonic deadline: a SIGALRM that another process sends
    (a checked module, as a non-root user) before it is ignored, and the timer stays armed."""
    import signal

    from symgrad import budget

    with budget.command_budget():
        os.kill(os.getpid(), signal.SIGALRM)
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_loss_not_finite_at_the_check_point_is_its_own_verdict(capsys, tmp_path, value):
    """Not a gradient FAIL with nan in every row: one row, and the reason (F16)."""
    path = module(tmp_path, "overflow", suffix=f'''
_finite = loss


def loss(p, X, Y):
    return float("{value}") * _finite(p, X, Y)
''')
    code, out, err = run(capsys, path)
    assert (code, err) == (1, "")
    assert out.splitlines()[1:] == [
        "parameter  shape  max rel. error  worst entry  method  result",
        "loss       ()     nan             —            loss()  FAIL",
        f"  loss: loss() is {value} at the check point (seed 0, and at a point of positive "
        "parameters); no gradient was compared (a different --seed, or parameters where the "
        "loss is finite)",
        "FAILED: the loss is not finite at the check point; no gradient was checked",
    ]


def test_a_sampled_parameter_says_what_it_can_miss(tmp_path):
    path = tmp_path / "wide_note.py"
    path.write_text(WIDE)
    report = check_module(path)
    note = report.row("W1", "directional").note
    assert note.startswith("W1: 64 of 7,200 entries compared (the 8 largest claimed, 56 at "
                           "random) and 8 random directions; one wrong entry outside them is "
                           "caught when it is off by more than about ")
    assert f"note: {note}" in report.text().splitlines()
    assert report.row("b1").note == ""
