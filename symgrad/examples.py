"""``symgrad examples [DIR]``: the example specs, the tutorial notebook and the exercise
sheet, copied out of the installed package so that the README's tour runs after
``pip install symgrad`` (its commands name ``examples/…``, the default DIR).

The wheel carries the repository's ``examples/`` as ``symgrad/examples/`` (pyproject's
``force-include``); in a checkout they are read from the repository. Every target is
checked before anything is written (:func:`symgrad.files.check_target`): a file of that
name that is not already symgrad's copy is kept, unless ``--force``; a copy that is
already there is left alone (its time included).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import symgrad
from symgrad import files
from symgrad.commands import command
from symgrad.errors import SymgradError

__all__ = ["Copied", "copy_examples", "example_files", "examples_dir", "cmd_examples"]

#: what the command names its folder when no DIR is given (the README's paths)
DEFAULT_DIR = "examples"

#: not examples: editor, notebook and Python droppings
_SKIP = frozenset({"__pycache__", ".ipynb_checkpoints"})


def examples_dir() -> Path:
    """``symgrad/examples`` of the installed package (a wheel), else the repository's
    ``examples/`` (a checkout or an editable install)."""
    here = Path(symgrad.__file__).resolve().parent
    packaged = here / "examples"
    return packaged if packaged.is_dir() else here.parent / "examples"


def example_files(source: Path | None = None) -> list[str]:
    """The examples, as POSIX paths relative to ``source`` (default :func:`examples_dir`),
    in name order: every regular file below it but hidden ones and caches."""
    source = examples_dir() if source is None else source
    found: list[str] = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.startswith("."))
        for name in names:
            path = Path(root, name)
            if not name.startswith(".") and path.is_file():
                found.append(path.relative_to(source).as_posix())
    if not found:
        raise SymgradError("examples", f"this installation has no examples ({source} is "
                           "missing or empty); reinstall symgrad")
    return sorted(found)


@dataclass(frozen=True)
class Copied:
    """One example copied: where it went, and whether the file changed (False: that very
    copy was already there)."""

    path: Path
    changed: bool


def copy_examples(directory: str | os.PathLike = DEFAULT_DIR, *, force: bool = False,
                  source: Path | None = None) -> list[Copied]:
    """Copy every example into ``directory`` (created when missing), keeping the layout
    (``exercises/answers/…``). All targets are checked first, so a refusal writes
    nothing; a file that is there and differs from the example is refused unless
    ``force``."""
    source = examples_dir() if source is None else source
    directory = Path(directory)
    if os.path.lexists(directory) and not directory.is_dir():
        raise SymgradError(str(directory), "is not a directory; give the folder to copy the "
                           "examples into")
    data = {rel: files.read_bytes(source / rel, limit=files.MODULE_BYTES, what="example")
            for rel in example_files(source)}

    def owner_check(rel: str):
        def check(path: Path) -> str | None:
            try:
                same = files.read_bytes(path, limit=len(data[rel]) or 1) == data[rel]
            except SymgradError:
                same = False
            return None if same else ("exists and is not symgrad's copy of this example; "
                                      "use --force to overwrite it, or give another DIR")
        return check

    for rel in data:
        files.check_target(directory / rel, force=force, owner_check=owner_check(rel))
    copied = []
    with files.uninterrupted():
        for rel, content in data.items():
            changed = files.write_bytes(directory / rel, content, force=True, owner_check=None)
            copied.append(Copied(directory / rel, changed))
    return copied


@command("examples")
def cmd_examples(args: argparse.Namespace) -> int:
    from symgrad.demo import _argument, symgrad_command

    copied = copy_examples(args.directory, force=args.force)
    written = [c for c in copied if c.changed]
    there = str(Path(args.directory))
    if written:
        kept = len(copied) - len(written)
        print(f"symgrad: wrote {len(written)} example file{'s' * (len(written) != 1)} into "
              f"{there}"
              + (f" ({kept} already there, unchanged)" if kept else "") + ":", file=sys.stderr)
        for c in written:
            print(f"  {c.path}", file=sys.stderr)
    else:
        print(f"symgrad: {there} already holds the {len(copied)} example files, unchanged",
              file=sys.stderr)
    spec = Path(args.directory) / "digits.toml"
    if spec.is_file():
        print(f"symgrad: next: {symgrad_command()} derive {_argument(spec)}", file=sys.stderr)
    return 0
