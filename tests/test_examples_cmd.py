"""The package a newcomer meets (issue 14 §4): ``symgrad examples [DIR]``, ``--version``,
the licence, the changelog, ``py.typed``, and a README that reads right on PyPI (no
relative links; where it first names ``examples/`` it says how to get them).

The wheel itself (its contents, ``symgrad examples`` from the installed wheel) is
tests/test_wheel.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import symgrad
from symgrad.cli import main
from symgrad.demo import symgrad_command
from symgrad.examples import copy_examples, example_files, examples_dir
from symgrad.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ==========================================================================================
# symgrad examples
# ==========================================================================================


def test_the_examples_are_the_repository_examples() -> None:
    """In a checkout they come from examples/ (the wheel carries the same files)."""
    assert examples_dir() == REPO / "examples"
    names = example_files()
    assert {"digits.toml", "custom.toml", "multilabel.toml", "regression.toml",
            "tutorial.ipynb", "exercises/sheet.toml", "exercises/sheet.md",
            "exercises/sheet.key.md", "exercises/answers/bob.txt"} <= set(names)
    assert names == sorted(names)


def test_copies_every_example_and_lists_them(tmp_path: Path, capsys) -> None:
    target = tmp_path / "mine"
    code, out, err = run(capsys, "examples", target)
    assert code == 0 and out == ""
    names = example_files()
    assert err == "".join([
        f"symgrad: wrote {len(names)} example files into {target}:\n",
        *(f"  {target / rel}\n" for rel in names),
        f"symgrad: next: {symgrad_command()} derive {target / 'digits.toml'}\n",
    ])
    copied = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert copied == names
    for rel in names:
        assert (target / rel).read_bytes() == (REPO / "examples" / rel).read_bytes(), rel
    for spec in target.glob("*.toml"):  # the network specs load as they are
        assert load_spec(spec).name


def test_default_directory_is_examples_and_a_second_run_changes_nothing(
        tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "examples")[0] == 0
    digits = tmp_path / "examples" / "digits.toml"
    os.utime(digits, (1_000_000_000, 1_000_000_000))
    code, out, err = run(capsys, "examples")
    assert code == 0
    assert err == (f"symgrad: examples already holds the {len(example_files())} example files, "
                   "unchanged\n"
                   f"symgrad: next: {symgrad_command()} derive examples/digits.toml\n")
    assert digits.stat().st_mtime == 1_000_000_000  # left alone, its time included


def test_refuses_to_overwrite_an_edited_file_and_writes_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "exercises").mkdir()
    edited = tmp_path / "exercises" / "sheet.toml"
    edited.write_text("# my own sheet\n", encoding="utf-8")
    code, out, err = run(capsys, "examples", tmp_path)
    assert code == 2 and out == ""
    assert err == (f"symgrad: error: {edited}: exists and is not symgrad's copy of this "
                   "example; use --force to overwrite it, or give another DIR\n")
    assert edited.read_text(encoding="utf-8") == "# my own sheet\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["exercises", "sheet.toml"]

    code, _, err = run(capsys, "examples", tmp_path, "--force")
    assert code == 0
    assert err.splitlines()[0] == f"symgrad: wrote {len(example_files())} example files into {tmp_path}:"
    assert edited.read_bytes() == (REPO / "examples" / "exercises" / "sheet.toml").read_bytes()

    edited.write_text("# mine again\n", encoding="utf-8")
    code, _, err = run(capsys, "examples", tmp_path, "--force")
    assert err.splitlines()[:2] == [
        f"symgrad: wrote 1 example file into {tmp_path} ({len(example_files()) - 1} already "
        "there, unchanged):", f"  {edited}"]


def test_bad_targets_are_one_line(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")
    assert run(capsys, "examples", a_file)[2] == (
        f"symgrad: error: {a_file}: is not a directory; give the folder to copy the examples "
        "into\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        code, _, err = run(capsys, "examples", locked)
        assert code == 2 and err == (
            f"symgrad: error: {locked / 'custom.toml'}: cannot write: permission denied (the "
            f"directory {locked} is not writable)\n")
    code, _, err = run(capsys, "examples", tmp_path, "extra")
    assert (code, err) == (2, "symgrad: error: examples: unrecognized argument extra\n")


def test_hidden_files_and_caches_are_not_examples(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for rel in ("a.toml", "sub/b.txt", ".hidden", "__pycache__/x.pyc",
                ".ipynb_checkpoints/t-checkpoint.ipynb", "sub/.DS_Store"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(rel, encoding="utf-8")
    assert example_files(source) == ["a.toml", "sub/b.txt"]
    copied = copy_examples(tmp_path / "out", source=source)
    assert [(c.path.relative_to(tmp_path / "out").as_posix(), c.changed) for c in copied] == [
        ("a.toml", True), ("sub/b.txt", True)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(symgrad.SymgradError, match=r"this installation has no examples"):
        example_files(empty)


def test_help_names_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["examples", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "usage: symgrad examples [-h] [--force] [DIR]" in text
    assert "DIR the folder to copy them into, created when missing (default: examples" in text
    assert "--force overwrite files in DIR that differ from symgrad's examples" in text


# ==========================================================================================
# --version, the licence, the changelog, py.typed, the metadata
# ==========================================================================================


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    out = subprocess.run([sys.executable, "-m", "symgrad", flag], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, f"symgrad {symgrad.__version__}\n", "")


def test_licence_changelog_and_typing_marker() -> None:
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n\nCopyright (c) ")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in licence
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT AND CC-BY-4.0"
    assert project["license-files"] == ["LICENSE", "symgrad/data/LICENSE-digits.txt"]
    assert "graphviz>=0.20" in project["dependencies"]
    assert not any(d.startswith("graphviz") for d in project["optional-dependencies"]["notebook"])
    assert "Typing :: Typed" in project["classifiers"]
    assert (REPO / "symgrad" / "py.typed").read_bytes() == b""
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert changelog.startswith("# Changelog\n")
    assert f"\n## {symgrad.__version__} " in changelog
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "-e '.[test,demo,notebook]'" in makefile  # make test installs the notebook extra


# ==========================================================================================
# The README, as PyPI shows it
# ==========================================================================================

_LINK = re.compile(r"(!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The README without its code blocks and code spans (their brackets are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchor(heading: str) -> str:
    """GitHub's (and PyPI's) anchor of a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_no_relative_link_in_the_readme() -> None:
    """PyPI shows the README without the repository, so a link is absolute or to a section
    (one that exists); a picture is a file of the repository (GitHub shows it; PyPI shows
    its alt text until the project has a public address, see CHANGELOG.md)."""
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", _prose(README), flags=re.M)}
    links = list(_LINK.finditer(_prose(README)))
    assert links
    for m in links:
        target = m["target"]
        if m.group(1):  # an image
            assert (REPO / target).is_file() and not target.startswith(("/", "..")), target
            assert len(m["text"]) > 40, f"{target}: the alt text is what PyPI shows"
        elif target.startswith("#"):
            assert target[1:] in anchors, f"[{m['text']}]({target}): no such section"
        else:
            assert re.match(r"(https?|mailto):", target), (
                f"[{m['text']}]({target}) is a relative link; PyPI cannot follow it")


def test_the_readme_opens_with_what_it_is_a_picture_and_the_two_commands() -> None:
    opening = README.split("\n## ", 1)[0]
    assert opening.startswith("# symgrad\n\n")
    picture = opening.index("![")
    commands = opening.index("make demo")
    assert picture < commands and opening.index("make test") > commands
    assert "(docs/digits_backward.png)" in opening


def test_the_readme_says_how_to_get_the_examples_where_it_first_names_them() -> None:
    first = README.index("examples/")
    paragraph = README[README.rfind("\n\n", 0, first):README.find("\n\n", first)]
    assert "symgrad examples" in paragraph, paragraph
