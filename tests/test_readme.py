"""The README stays true: its shell examples are run and their output compared, and its
Python examples run as doctests.

Shell examples are the ```console blocks: a line ``$ COMMAND`` is run with bash, in a
scratch directory holding a copy of examples/ (blocks run in order and share it, so a
module generated in one block can be checked in the next), with ``symgrad`` and
``python`` being this interpreter and this checkout. The lines after it, up to the next
``$`` line or the end of the block, are its output (stdout and stderr together, as a
terminal shows them). Long or varying output is abbreviated with ``...``:

* a line that is just ``...`` stands for any number of lines (also none);
* ``...`` inside a line stands for any text within that line (a time, a rate).

Rounding-level details differ between machines (BLAS kernels), so they match loosely:
a number in e-notation (``4.5e-08``) matches any number in e-notation, an index list
(``[6, 2]``) any index list, and a run of two or more spaces (table columns, whose widths
follow those cells) any run of spaces.

Python examples are the ``>>>`` lines (```pycon blocks), run by doctest with ELLIPSIS in
the same kind of scratch directory.

To refresh the README after a change of output, run::

    python tests/test_readme.py --update

which keeps every example whose output still matches (abbreviations included) and
replaces the output of the others with what the command prints now (abbreviate again by
hand where it is long).
"""

from __future__ import annotations

import doctest
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# a minute: every console block runs as a command; make test-slow (and .ci/run) runs it
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ELLIPSIS = "..."
TIMEOUT = 300


@dataclass
class Example:
    line: int  # 1-based line number of the "$ " line in the README
    command: str
    expected: list[str]
    block: int  # index of the console block


def parse(text: str) -> list[Example]:
    """Every ``$ command`` of the ```console blocks, with the output lines after it."""
    examples: list[Example] = []
    block, inside = -1, False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not inside and stripped.startswith("```console"):
            inside, block = True, block + 1
        elif inside and stripped == "```":
            inside = False
        elif inside and line.startswith("$ "):
            examples.append(Example(number, line[2:], [], block))
        elif inside and examples and examples[-1].block == block:
            examples[-1].expected.append(line.rstrip())
    return examples


_LOOSE = {
    "number": (r"-?\d+(?:\.\d+)?e[+-]\d+", r"-?\d+(?:\.\d+)?e[+-]\d+"),
    "index": (r"\[\d+(?:, \d+)*\]", r"\[\d+(?:, \d+)*\]"),
    "columns": (r" {2,}", r" +"),
}
_LOOSE_RE = re.compile("|".join(f"(?P<{k}>{find})" for k, (find, _) in _LOOSE.items()))


def _literal_pattern(text: str) -> str:
    out, pos = [], 0
    for m in _LOOSE_RE.finditer(text):
        out += [re.escape(text[pos:m.start()]), _LOOSE[m.lastgroup][1]]
        pos = m.end()
    return "".join(out) + re.escape(text[pos:])


def _line_pattern(line: str) -> str:
    return ".*".join(_literal_pattern(part) for part in line.split(ELLIPSIS))


def matches(expected: list[str], actual: list[str]) -> bool:
    """True when the output lines fit the expected ones (see the module docstring)."""
    parts = []
    for line in expected:
        parts.append(r"(?:[^\n]*\n)*?" if line == ELLIPSIS else _line_pattern(line) + r"\n")
    return re.fullmatch("".join(parts), "".join(f"{a}\n" for a in actual)) is not None


def normalize(output: str) -> list[str]:
    """Output lines as a terminal leaves them: only the last \\r-segment of a line (a
    progress bar's final state), no trailing blanks, no trailing empty lines."""
    lines = [line.split("\r")[-1].rstrip() for line in output.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def make_workdir(path: Path) -> Path:
    """A scratch directory with examples/ and bin/{symgrad,python} for this checkout."""
    shutil.copytree(REPO / "examples", path / "examples")
    bin_dir = path / ".bin"
    bin_dir.mkdir()
    for name, args in (("symgrad", ' -m symgrad "$@"'), ("python", ' "$@"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}"{args}\n')
        shim.chmod(0o755)
    return path


def environment(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{workdir / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleave as on a terminal
    env["COLUMNS"] = "100"
    env.pop("PYTHONSTARTUP", None)
    return env


def run(example: Example, workdir: Path) -> list[str]:
    proc = subprocess.run(["bash", "-c", example.command], cwd=workdir,
                          env=environment(workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    return normalize(proc.stdout)


# ==========================================================================================
# Tests
# ==========================================================================================

EXAMPLES = parse(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("readme"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"L{e.line}" for e in EXAMPLES])
def test_console_example(example: Example, workdir: Path) -> None:
    actual = run(example, workdir)
    if not matches(example.expected, actual):
        pytest.fail(
            f"README.md:{example.line}: $ {example.command}\n--- README\n"
            + "\n".join(example.expected)
            + "\n--- actual\n" + "\n".join(actual)
            + "\n(refresh with: python tests/test_readme.py --update)",
            pytrace=False,
        )


def test_python_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(str(README), module_relative=False, verbose=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, "README.md: a Python example failed (doctest output above)"


def test_the_two_commands_come_first() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```(\w*)\n(.*?)```", text, re.S)
    assert first_block is not None
    lines = [line.split("#")[0].strip() for line in first_block.group(2).splitlines()]
    assert lines == ["make demo", "make test"]


_UNITS = {"s": 1, "%": 0.01, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def test_the_budget_table_is_the_code() -> None:
    """Each row `symgrad.MODULE.NAME` | VALUE of the README's budget table is the constant."""
    import importlib

    rows = re.findall(r"^\| `(symgrad\.\w+)\.(\w+)` \| ([\d,.]+) ?(s|%|KiB|MiB|GiB)? \|",
                      README.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 10
    for module, name, number, unit in rows:
        value = getattr(importlib.import_module(module), name)
        documented = float(number.replace(",", "")) * _UNITS.get(unit, 1)
        assert documented == pytest.approx(value, rel=1e-12), f"README: {module}.{name}"


def test_the_matcher() -> None:
    assert matches(["a", ELLIPSIS, "d"], ["a", "b", "c", "d"])
    assert matches(["a", ELLIPSIS, "b"], ["a", "b"])
    assert matches(["took ... s"], ["took 0.31 s"])
    assert not matches(["a", "b"], ["a", "b", "c"])
    assert not matches(["took ... s"], ["took 1 s", "more"])
    assert matches(["W1  (64, 32)  4.5e-08  [6, 2]  pass"], ["W1  (64, 32)  1.0e-07  [49, 25]  pass"])
    assert matches(["a  b"], ["a     b"])
    assert not matches(["W1  4.5e-08  pass"], ["W1  4.5e-08  FAIL"])
    assert not matches(["(64, 32)"], ["(64, 33)"])
    assert normalize("x\r50%\r100%\n\n") == ["100%"]
    assert parse("```console\n$ echo hi\nhi\n```\n```\n$ not run\n```\n") == [
        Example(2, "echo hi", ["hi"], 0)
    ]


# ==========================================================================================
# Refreshing the README
# ==========================================================================================


def update(readme: Path = README) -> int:
    """Rewrite the output of every example that no longer matches; return how many."""
    import tempfile

    lines = readme.read_text(encoding="utf-8").split("\n")
    examples = parse("\n".join(lines))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = make_workdir(Path(tmp))
        outputs = [run(example, workdir) for example in examples]  # in order: shared state
    changed = 0
    for example, actual in reversed(list(zip(examples, outputs, strict=True))):  # bottom up: line numbers
        if matches(example.expected, actual):
            continue
        start = example.line  # the output starts on the line after "$ ..." (0-based index)
        lines[start:start + len(example.expected)] = actual
        changed += 1
        print(f"README.md:{example.line}: updated the output of $ {example.command}")
    readme.write_text("\n".join(lines), encoding="utf-8")
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: python {Path(__file__).name} --update")
    print(f"{update()} example(s) updated")
