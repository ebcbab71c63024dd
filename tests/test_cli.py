"""The command line's contract, by class of defect (hardening issue 10, classes 2, 4, 5, 7).

* one read path (symgrad.files.read_text): FIFOs, devices, directories, huge, missing,
  non-UTF-8 files are refused in one line before anything is read; a BOM is accepted;
* one write path (symgrad.files.write_text) for both generate modes: every bad target is
  one line, exit 2, and leaves the directory exactly as it was;
* clobbering: a file is replaced only when it is symgrad's own, unedited (header hash);
* the error contract of cli.main: 2 + one line for bad input, 3 + one line for a bug,
  MemoryError and the command's time budget as one line; output that is not UTF-8;
* argparse: no doubled prefix, "did you mean", no abbreviations, help for every option.

Every refusal asserts the exact line, the exit status and that no file changed.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad
from symgrad import budget, files
from symgrad.cli import COMMANDS, build_parser, main
from symgrad.codegen import generate_source

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits.toml"
EXPR = ["--expr", "sum(w * w)", "--shape", "w=3,1", "--wrt", "w"]
def _command_names() -> tuple[str, ...]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(sub.choices)


COMMAND_NAMES = _command_names()  # derive, generate, check, verify, demo, … in --help order


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under ``directory``: kind or size, modification time, small files' bytes."""
    out = {}
    for p in sorted(directory.rglob("*")):
        st = p.lstat()
        small = p.is_file() and st.st_size <= 1 << 20
        out[str(p.relative_to(directory))] = (
            st.st_size if p.is_file() else st.st_mode, st.st_mtime_ns,
            p.read_bytes() if small else None)
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, argv: list[str], line: str, directory: Path) -> None:
    """``argv`` exits 2 with exactly ``line`` on stderr, nothing on stdout, no file changed."""
    before = snapshot(directory)
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", line + "\n")
    assert snapshot(directory) == before


# ==========================================================================================
# Reading: regular files only, bounded, UTF-8 (BOM accepted)
# ==========================================================================================


def test_read_refuses_what_is_not_a_regular_file(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)  # no writer: opening it for reading without O_NONBLOCK would block
    not_regular = "is not a regular file (a FIFO, device or socket); give a file"
    for command in ("derive", "generate", "check"):
        refused(capsys, [command, str(fifo)], f"symgrad: error: {fifo}: {not_regular}", tmp_path)
    refused(capsys, ["derive", "/dev/zero"], f"symgrad: error: /dev/zero: {not_regular}", tmp_path)
    refused(capsys, ["derive", str(tmp_path)],
            f"symgrad: error: {tmp_path}: is a directory; give a file", tmp_path)
    refused(capsys, ["derive", str(tmp_path / "none.toml")],
            f"symgrad: error: {tmp_path / 'none.toml'}: no such file", tmp_path)


def test_a_name_with_control_characters_is_still_one_line(tmp_path: Path, capsys) -> None:
    odd = tmp_path / "two\nlines\x1b[31m.toml"
    refused(capsys, ["derive", str(odd)],
            f"symgrad: error: {tmp_path}/two lines?[31m.toml: no such file", tmp_path)


def test_read_checks_the_size_before_reading(tmp_path: Path, capsys) -> None:
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as fh:  # 3 GB, sparse: refused from its size, never read
        fh.truncate(3 << 30)
    refused(capsys, ["derive", str(huge)],
            f"symgrad: error: {huge}: is 3 GiB; a spec may be at most 1 MiB", tmp_path)


def test_read_accepts_a_bom_and_refuses_other_encodings(tmp_path: Path, capsys) -> None:
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + DIGITS.read_bytes())
    assert symgrad.load_spec(bom) == symgrad.load_spec(DIGITS)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n" + DIGITS.read_bytes())
    refused(capsys, ["derive", str(latin)],
            f"symgrad: error: {latin}: is not UTF-8 text (byte 0xe9 at line 1); save it as UTF-8",
            tmp_path)


# ==========================================================================================
# Writing: one path for both modes; every bad target is one line and changes nothing
# ==========================================================================================

MODES = {"network": [str(DIGITS)], "expr": EXPR}
NOT_REGULAR = "is not a regular file (a FIFO, device or socket); symgrad writes only regular files"


def bad_targets(tmp_path: Path) -> list[tuple[str, str]]:
    """(target, the error after 'symgrad: error: <target>: ')."""
    (tmp_path / "a_file").write_text("mine\n")
    os.mkfifo(tmp_path / "fifo")
    long = tmp_path / ("n" * 300 + ".py")
    return [
        (str(tmp_path), "is a directory; give the path of a file to write"),
        (str(tmp_path / "a_file" / "x.py"),
         "cannot write: a part of the path is a file, not a directory"),
        (str(tmp_path / "fifo"), NOT_REGULAR),
        ("/dev/full", NOT_REGULAR),
        (str(long), "the file name is too long (a name may be at most 255 bytes)"),
        (str(tmp_path / "a_file"), "exists and was not generated by symgrad; use --force to "
                                   "overwrite"),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_generate_refuses_bad_targets_in_both_modes(mode: str, tmp_path: Path, capsys) -> None:
    for target, what in bad_targets(tmp_path):
        refused(capsys, ["generate", *MODES[mode], "-o", target],
                f"symgrad: error: {target}: {what}", tmp_path)


PARTS = ("out", "n" * 300, "a_file", "fifo", "a_dir", "new dir", "ünïcode", ".", "")  # no "..":
# the targets must stay inside the test's directory


@settings(max_examples=30, deadline=None)
@given(parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=3),
       suffix=st.sampled_from(("", ".py", ".toml")))
def test_any_path_is_written_or_refused_in_one_line(parts: list[str], suffix: str) -> None:
    """Whatever the path (long names, files as directories, FIFOs, directories, new
    directories, odd characters): generate either writes symgrad's module there, or exits
    2 with one line and leaves everything as it was; reading it (check, derive) before is
    one line too."""
    import contextlib
    import io

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a_file").write_text("mine\n")
        (root / "a_dir").mkdir()
        os.mkfifo(root / "fifo")
        target = f"{root}/{'/'.join(parts)}{suffix}"
        inside = os.path.realpath(root)
        assert os.path.commonpath([os.path.realpath(target), inside]) == inside
        for argv in (["check", target], ["derive", target],
                     ["generate", str(DIGITS), "-o", target]):
            before = snapshot(root)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            if code == 0 and argv[0] == "generate":
                assert err.getvalue() == f"symgrad: wrote {Path(target)}\n"
                assert symgrad.codegen.is_generated(target)  # the path as given names it
                continue
            assert code == 2, (argv, err.getvalue())
            assert re.fullmatch(r"symgrad: error: [^\n]+\n", err.getvalue()), err.getvalue()
            assert out.getvalue() == "" and snapshot(root) == before


@pytest.mark.parametrize("failure, what", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EFBIG, "the file is larger than the limit on file sizes (ulimit -f)"),
    (errno.EACCES, "permission denied"),
])
def test_a_failed_write_leaves_the_old_file(failure: int, what: str, tmp_path: Path, capsys,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "net.py"
    assert main(["generate", *EXPR, "-o", str(target)]) == 0
    target.write_text(target.read_text().replace("sum(w * w)", "SUM(w * w)", 1))  # edited
    capsys.readouterr()

    def fail(fd):
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(files.os, "fsync", fail)
    refused(capsys, ["generate", str(DIGITS), "-o", str(target), "--force"],
            f"symgrad: error: {target}: cannot write: {what}; nothing was written", tmp_path)


def test_past_ulimit_f_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    """SIGXFSZ would kill the process; the write path turns it into EFBIG and one line."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    target = tmp_path / "big.py"
    proc = subprocess.run([sys.executable, "-m", "symgrad", "generate", str(DIGITS), "-o",
                           str(target)], capture_output=True, text=True, preexec_fn=limit,
                          cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))  # no .pyc past it
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"symgrad: error: {target}: cannot write: the file is larger than "
                           "the limit on file sizes (ulimit -f); nothing was written\n")
    assert list(tmp_path.iterdir()) == []


def test_dash_is_standard_output(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "generate", str(DIGITS), "-o", "-")
    assert (code, err) == (0, "") and out == generate_source(DIGITS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["new/", "new/.", "a_dir/..", ".", ""])
def test_a_path_that_names_a_directory_is_refused(mode: str, name: str, tmp_path: Path,
                                                  capsys, monkeypatch) -> None:
    """pathlib would turn ``new/`` or ``new/.`` into the file ``new``: refused as given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_dir").mkdir()
    what = (f"{name!r} names a directory; give the path of the file to write" if name
            else "empty; give the path of the file to write")
    refused(capsys, ["generate", *MODES[mode], "-o", name],
            f"symgrad: error: generate: -o/--output: {what}", tmp_path)
    with pytest.raises(symgrad.SymgradError, match="names a directory"):
        symgrad.generate(DIGITS, name or ".")


def test_a_symlink_target_writes_the_file_it_names(tmp_path: Path) -> None:
    real = tmp_path / "real.py"
    assert main(["generate", *EXPR, "-o", str(real)]) == 0
    (tmp_path / "link.py").symlink_to("real.py")
    assert main(["generate", str(DIGITS), "-o", str(tmp_path / "link.py")]) == 0
    assert (tmp_path / "link.py").is_symlink() and real.read_text() == digits_source()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.py", "real.py"]


@pytest.mark.parametrize("mode", MODES)
def test_status_goes_to_stderr_in_both_modes(mode: str, tmp_path: Path, capsys) -> None:
    target = tmp_path / "m.py"
    assert run(capsys, "generate", *MODES[mode], "-o", str(target)) == (
        0, "", f"symgrad: wrote {target}\n")
    assert run(capsys, "generate", *MODES[mode], "-o", str(target)) == (
        0, "", f"symgrad: {target} is up to date\n")


# ==========================================================================================
# Clobbering: only symgrad's own, unedited file is replaced
# ==========================================================================================

EDITED = ("was edited after symgrad generated it (its content no longer matches the hash in "
          "its header); use --force to overwrite, or -o elsewhere")
FOREIGN = "exists and was not generated by symgrad; use --force to overwrite"


@pytest.mark.parametrize("text", [
    "print('mine')\n",
    "# a wrapper\n# Generated by symgrad 0.1.0 from digits.toml: do not edit\n",
    "# Generated by symgrad-wrapper, by hand\nx = 1\n",
    "#  Generated by symgrad 0.1.0 from digits.toml; sha256 0000000000000000; edit freely "
    "(symgrad generate then needs --force to overwrite it)\n",
])
def test_user_files_mentioning_symgrad_are_not_overwritten(text: str, tmp_path: Path,
                                                             capsys) -> None:
    mine = tmp_path / "digits_mlp.py"
    mine.write_text(text)
    refused(capsys, ["generate", str(DIGITS), "-o", str(mine)],
            f"symgrad: error: {mine}: {FOREIGN}", tmp_path)
    assert main(["generate", str(DIGITS), "-o", str(mine), "--force"]) == 0
    assert mine.read_text() == generate_source(DIGITS)


@functools.cache
def digits_source() -> str:
    return generate_source(DIGITS)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_edit_of_a_generated_module_is_noticed(data) -> None:
    """One changed, inserted or deleted byte anywhere: the header's hash no longer holds."""
    source = digits_source().encode()
    header_end = source.index(b"\n") + 1
    position = data.draw(st.integers(header_end, len(source) - 1))
    kind = data.draw(st.sampled_from(("insert", "delete", "change")))
    char = data.draw(st.sampled_from(b"x #\n0"))
    if kind == "insert":
        edited = source[:position] + bytes([char]) + source[position:]
    elif kind == "delete":
        edited = source[:position] + source[position + 1:]
    else:
        edited = source[:position] + bytes([char ^ 1 if source[position] == char else char]) + (
            source[position + 1:])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "edited.py"
        path.write_bytes(edited)
        assert files.ownership(path) == EDITED
        path.write_bytes(source)
        assert files.ownership(path) is None


def test_an_edited_module_is_refused_and_force_overwrites(tmp_path: Path, capsys) -> None:
    target = tmp_path / "digits_mlp.py"
    assert main(["generate", str(DIGITS), "-o", str(target)]) == 0
    capsys.readouterr()
    target.write_text(target.read_text().replace("def predict", "def predict_", 1))
    refused(capsys, ["generate", str(DIGITS), "-o", str(target)],
            f"symgrad: error: {target}: {EDITED}", tmp_path)
    assert main(["generate", str(DIGITS), "-o", str(target), "--force"]) == 0
    assert target.read_text() == generate_source(DIGITS)
    assert symgrad.codegen.is_generated(target)


def test_header_is_deterministic_and_hashes_the_body() -> None:
    import hashlib

    first, body = digits_source().split("\n", 1)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    assert first == (f"# Generated by symgrad {symgrad.__version__} from digits.toml; "
                     f"sha256 {digest}; edit freely (symgrad generate then needs --force to "
                     "overwrite it)")


# ==========================================================================================
# The error contract of main
# ==========================================================================================


def raising(exc: BaseException):
    def run_command(args: argparse.Namespace) -> int:
        raise exc

    return run_command


def test_a_bug_of_ours_is_one_line_exit_3(capsys, monkeypatch) -> None:
    monkeypatch.setitem(COMMANDS, "derive", raising(KeyError("W9")))
    monkeypatch.delenv("SYMGRAD_DEBUG", raising=False)
    assert run(capsys, "derive", str(DIGITS)) == (
        3, "", "symgrad: internal error: KeyError: 'W9' (please report; SYMGRAD_DEBUG=1 shows "
               "the traceback)\n")
    monkeypatch.setenv("SYMGRAD_DEBUG", "1")
    code, _, err = run(capsys, "derive", str(DIGITS))
    assert code == 3 and err.startswith("Traceback (most recent call last):")
    assert err.endswith("symgrad: internal error: KeyError: 'W9' (please report; "
                        "SYMGRAD_DEBUG=1 shows the traceback)\n")


def test_out_of_memory_is_one_line(capsys, monkeypatch) -> None:
    monkeypatch.setitem(COMMANDS, "derive", raising(MemoryError()))
    code, out, err = run(capsys, "derive", str(DIGITS))
    assert (code, out) == (2, "")
    assert re.fullmatch(r"symgrad: error: derive: out of memory \(the limit is \d+\.\d GiB of "
                        r"address space; SYMGRAD_MEMORY_GB changes it\); the input is too large "
                        r"for this machine\n", err)


def test_the_command_budget_stops_a_hang_in_one_line(capsys, monkeypatch) -> None:
    import time

    def hang(args):
        while True:
            time.sleep(0.05)

    monkeypatch.setitem(COMMANDS, "derive", hang)
    monkeypatch.setenv("SYMGRAD_TIMEOUT", "0.3")
    assert run(capsys, "derive", str(DIGITS)) == (
        2, "", "symgrad: error: derive: stopped after 0.3 s, the time limit of one command "
               "(SYMGRAD_TIMEOUT=SECONDS changes it)\n")
    import signal

    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL  # restored
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_memory_limit_is_set_for_the_command_and_restored(monkeypatch) -> None:
    import resource

    seen = []
    monkeypatch.setitem(COMMANDS, "derive",
                        lambda args: seen.append(resource.getrlimit(resource.RLIMIT_AS)) or 0)
    before = resource.getrlimit(resource.RLIMIT_AS)
    assert main(["derive", str(DIGITS)]) == 0
    wanted, (soft, hard) = budget.memory_limit(), before
    lowers = soft == resource.RLIM_INFINITY or soft > wanted
    fits = hard == resource.RLIM_INFINITY or hard >= wanted
    assert seen[0][0] == (wanted if lowers and fits else soft)
    assert resource.getrlimit(resource.RLIMIT_AS) == before


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_output_that_is_not_utf8_gets_ascii_forms(encoding: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "symgrad", "derive", str(DIGITS)], cwd=ROOT,
                          capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONIOENCODING=encoding))
    assert (proc.returncode, proc.stderr) == (0, b"")
    text = proc.stdout.decode(encoding)
    for line in ("  d2 = dL/dZ2 = (Yhat - Y)/N", "  dL/dW1 = X^T d1", "  dL/db1 = 1^T d1",
                 "  W1 <- W1 - eta dL/dW1"):
        assert line + "\n" in text


def test_every_character_symgrad_can_print_has_an_ascii_form() -> None:
    """The class of F14: one fallback for every format.  Whatever symgrad prints comes from
    its sources (string literals, the printers' tables), so every non-ASCII character in
    them must degrade to a real ASCII form, never to '?'."""
    from symgrad.cli import _ascii_form

    sources = [*(ROOT / "symgrad").glob("*.py"), *(ROOT / "templates").glob("*")]
    chars = {c for path in sources for c in path.read_text(encoding="utf-8") if ord(c) > 127}
    forms = {c: _ascii_form(c) for c in sorted(chars)}
    assert {c: f for c, f in forms.items() if f == "?" or not f.isascii() or not f} == {}
    assert (forms["⊤"], forms["θ"], forms["Σ"]) == ("^T", "theta", "sum")


@pytest.mark.parametrize("fmt", ["markdown", "latex"])
def test_markdown_and_latex_degrade_like_text(capfd, fmt: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "symgrad", "derive", str(DIGITS), "--format",
                           fmt], cwd=ROOT, capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert (proc.returncode, proc.stderr) == (0, b"")
    text = proc.stdout.decode("ascii")
    assert "?" not in text  # no character replaced by '?'
    if fmt == "markdown":
        assert "Notation: * elementwise product, ^T transpose, 1 the column of N ones" in text


# ==========================================================================================
# argparse: one line, no doubled prefix, did you mean, no abbreviations, help everywhere
# ==========================================================================================


def test_usage_errors(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = ", ".join(COMMAND_NAMES)
    for argv, line in [
        (["deriv", "x.toml"], f"deriv: not a command (did you mean derive?); the commands are "
                              f"{commands} (symgrad --help)"),
        (["derive", "--format", "txt", "x.toml"],
         "derive: --format: invalid choice 'txt' (did you mean text?); choose from text, latex, "
         "markdown"),
        (["derive", "--step", "x.toml"], "derive: unrecognized argument --step (did you mean "
                                         "--steps?)"),
        (["check", "x.py", "--meth", "central"],
         "check: unrecognized arguments --meth central (did you mean --method?)"),
        (["check", "x.py", "--tol", "small"], "check: --tol: invalid float value: 'small'"),
        (["check"], "check: the following arguments are required: target"),
        (["verify", str(DIGITS), "--wrt", "W1", "X.T @ dZ1", "--sed", "1"],
         "verify: unrecognized arguments --sed 1 (did you mean --seed?)"),
    ]:
        refused(capsys, argv, f"symgrad: error: {line}", tmp_path)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(COMMAND_NAMES), position=st.integers(0, 8),
       char=st.sampled_from("abcdefghijklmnopqrstuvwxyz"))
def test_mistyped_commands(name: str, position: int, char: str) -> None:
    typo = name[:position] + char + name[position + 1:]
    if typo in COMMAND_NAMES:
        return
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main([typo]) == 2
    close = difflib.get_close_matches(typo, COMMAND_NAMES, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    assert err.getvalue() == (f"symgrad: error: {typo}: not a command{hint}; the commands are "
                              f"{', '.join(COMMAND_NAMES)} (symgrad --help)\n")


ARGV_TOKENS = (
    "derive", "generate", "check", "verify", "deriv", "gen", "x.toml", "x.py", "--format",
    "--steps", "--step", "--prove", "-o", "--output", "--force", "--method", "central",
    "complex", "--tol", "--seed", "--directions", "--wrt", "W1", "--shape", "w=3,1", "-1",
    "1e9", "nan", "x", "-", "--", "=", "--tol=1", "--format=html", "-V", "-h", "--bogus", "",
)


@settings(max_examples=60, deadline=None)
@given(argv=st.lists(st.sampled_from(ARGV_TOKENS), max_size=6))
def test_any_argv_is_one_line_or_success(argv: list[str]) -> None:
    """Any command line: help or version (exit 0), or exit 2 with one line; never a
    traceback, an internal error or the doubled ``symgrad: error: symgrad`` prefix."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # --help, --version
            code = e.code
    if code == 0:
        assert err.getvalue() == "" and out.getvalue()
        return
    assert code == 2, (argv, err.getvalue())
    if not argv:  # no command: the help, and exit 2
        assert out.getvalue().startswith("usage: symgrad")
        return
    line = err.getvalue()
    assert re.fullmatch(r"symgrad: error: [^\n]+\n", line), (argv, line)
    assert not line.startswith("symgrad: error: symgrad"), line


def test_help_is_for_users(capsys) -> None:
    parser = build_parser()
    texts = [parser.format_help()]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        texts.append(p.format_help())
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    for action in parser._actions:
        assert action.help, action
    for text in texts:
        assert "DESIGN.md" not in text and "``" not in text
    assert "exit status: 0 success; 1 a check or verification failed; 2 bad input" in texts[0]
    with pytest.raises(SystemExit) as exit_:
        main(["-V"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"symgrad {symgrad.__version__}\n"


@pytest.mark.parametrize("argv, given", [
    ([str(DIGITS), "--wrt", "W1", "--wrt", "b1", "X.T @ dZ1"], "W1, b1"),
    ([str(DIGITS), "--wrt", "W1,b1", "X.T @ dZ1"], "W1, b1"),
    (["--expr", "x**2", "--wrt", "x", "--wrt", "y", "2*x"], "x, y"),
    (["--expr", "sum(X @ w)", "--shape", "X=3,2", "--shape", "w=2,1", "--wrt", "w", "--wrt",
      "X", "sum(X, axis=0, keepdims=True).T"], "w, X"),
])
def test_verify_refuses_a_second_wrt_in_every_mode(capsys, argv, given) -> None:
    """F11: one formula answers one name; a repeated --wrt (or a comma list) is refused in
    one line in network, scalar and matrix mode, never silently reduced to the last one."""
    assert main(["verify", *argv]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"symgrad: error: verify: --wrt: verify checks one gradient at a "
                          f"time, and you gave {given}; one formula answers one name: run "
                          "verify once per name\n")


def test_check_time_limit_option(capsys, tmp_path: Path) -> None:
    module = tmp_path / "slow_import.py"
    module.write_text("import time\ntime.sleep(30)\n")
    assert main(["check", str(module), "--time-limit", "1"]) == 1
    assert capsys.readouterr().err == (
        f"symgrad: check failed: {module}: module did not answer within the time limit of 1 s "
        "(during import); it was stopped and no gradient was checked\n")
    assert main(["check", str(module), "--time-limit", "0"]) == 2
    assert capsys.readouterr().err == ("symgrad: error: check: --time-limit: must be a number "
                                       "of seconds in (0, 86400], not 0.0\n")
