"""symgrad exercise and symgrad grade (issue 14 §3): worksheets that grade themselves.

* the worksheet, its key and sheet.toml for a fixed seed are golden files, compared whole
  (Markdown and LaTeX); the same seed gives the same bytes;
* known answers — right ones in other spellings, and the classic slips: transposed, off by
  N, a missing term, the wrong sign, a missing activation derivative, the wrong axis — are
  graded exactly as expected, verify's diagnoses included; circular, invalid and blank
  answers too; exit 0 only when all are right;
* a folder (a class, examples/exercises/answers) is one table, Markdown and CSV;
* end to end: every question of the digits network, answered from its own key, scores full;
* bad input is one line, exit 2, and no file is written.

verify costs up to ~1 s per new answer: answers are shared across tests through one
module-level cache, and the grader asks verify once per distinct answer.

Refresh the golden files with ``SYMGRAD_UPDATE_GOLDEN=1 pytest tests/test_exercise.py``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

import pytest

from symgrad import exercise
from symgrad.cli import main
from symgrad.exercise import Answers, load_sheet, random_spec, worksheet

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "exercise"
EXAMPLE = ROOT / "examples" / "exercises"
UPDATE = bool(os.environ.get("SYMGRAD_UPDATE_GOLDEN"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def compare(path: Path, golden: Path) -> None:
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, golden)
    assert path.read_text(encoding="utf-8") == golden.read_text(encoding="utf-8"), golden.name


def listing(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


# ==========================================================================================
# The worksheet
# ==========================================================================================


def test_markdown_worksheet_is_golden(tmp_path, capsys) -> None:
    code, out, err = run(capsys, "exercise", "--random", "--seed", 3, "-o", tmp_path / "sheet.md")
    assert (code, out) == (0, "")
    assert err == (f"symgrad: wrote {tmp_path / 'sheet.md'} (4 questions), its key "
                   f"{tmp_path / 'sheet.key.md'} and {tmp_path / 'sheet.toml'} (grade with: "
                   f"symgrad grade {tmp_path / 'sheet.toml'} ANSWERS)\n")
    assert sorted(listing(tmp_path)) == ["sheet.key.md", "sheet.md", "sheet.toml"]
    for name in ("sheet.md", "sheet.key.md", "sheet.toml"):
        compare(tmp_path / name, GOLDEN / name)
    # our own unedited files are replaced (here: by the same bytes) ...
    before = listing(tmp_path)
    assert run(capsys, "exercise", "--random", "--seed", 3, "-o", tmp_path / "sheet.md")[0] == 0
    assert listing(tmp_path) == before
    # ... an edited one is kept, and then none is written
    edited = (tmp_path / "sheet.key.md").read_text(encoding="utf-8") + "my note\n"
    (tmp_path / "sheet.key.md").write_text(edited, encoding="utf-8")
    (tmp_path / "sheet.md").unlink()
    code, out, err = run(capsys, "exercise", "--random", "--seed", 3, "-o", tmp_path / "sheet.md")
    assert code == 2
    assert err == (f"symgrad: error: {tmp_path / 'sheet.key.md'}: was edited after symgrad "
                   "exercise wrote it; use --force to overwrite, or -o elsewhere\n")
    assert not (tmp_path / "sheet.md").exists()
    assert run(capsys, "exercise", "--random", "--seed", 3, "-o", tmp_path / "sheet.md",
               "--force")[0] == 0
    assert listing(tmp_path) == before


def test_latex_worksheet_is_golden(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # without -o: sheet.tex (the format's suffix) in the cwd
    code, _, _ = run(capsys, "exercise", "--random", "--seed", 3, "--format", "latex")
    assert code == 0
    assert sorted(listing(tmp_path)) == ["sheet.key.tex", "sheet.tex", "sheet.toml"]
    for name in ("sheet.tex", "sheet.key.tex"):
        compare(tmp_path / name, GOLDEN / name)
    tex = (tmp_path / "sheet.tex").read_text(encoding="utf-8")
    body = tex.split("\n", 1)[1]  # the first line is the % ownership mark
    assert body.startswith(r"\documentclass") and body.endswith("\\end{document}\n")
    assert tex.isascii(), "Unicode symbols (subscripts, arrows) do not compile with pdflatex"
    # the .toml names the .tex worksheet, and is otherwise the Markdown run's
    toml = (tmp_path / "sheet.toml").read_text(encoding="utf-8")
    golden = (GOLDEN / "sheet.toml").read_text(encoding="utf-8")
    assert toml.split("\n", 1)[1] == golden.split("\n", 1)[1].replace(".md", ".tex")


def test_random_network_is_deterministic_per_seed() -> None:
    assert random_spec(3) == random_spec(3)
    assert len({random_spec(s) for s in range(8)}) == 8
    spec = random_spec(5, depth=4, activations=("sin", "softplus"))
    assert len(spec.layers) == 4
    assert {ly.activation for ly in spec.layers[:-1]} <= {"sin", "softplus"}
    assert worksheet(seed=2).questions == worksheet(seed=2).questions
    ws = worksheet(ROOT / "examples" / "digits.toml", count=7)
    assert [q.wrt for q in ws.questions] == ["Z2", "W2", "b2", "A1", "Z1", "W1", "b1"]
    assert [q.text for q in ws.questions] == ["δ₂ = ∂L/∂Z₂", "∂L/∂W₂", "∂L/∂b₂", "∂L/∂A₁",
                                              "δ₁ = ∂L/∂Z₁", "∂L/∂W₁", "∂L/∂b₁"]
    assert [q.shape for q in ws.questions] == ["N×10", "32×10", "(10,)", "N×32", "N×32",
                                               "64×32", "(32,)"]


def test_the_example_sheet_is_what_exercise_writes(tmp_path, capsys) -> None:
    code, _, _ = run(capsys, "exercise", ROOT / "examples" / "multilabel.toml", "--seed", 7,
                     "-o", tmp_path / "sheet.md")
    assert code == 0
    for name in ("sheet.md", "sheet.key.md", "sheet.toml"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), name


# ==========================================================================================
# Grading: known answers, exact verdicts and diagnoses
# ==========================================================================================


@functools.cache
def sheet():
    return load_sheet(EXAMPLE / "sheet.toml")  # multilabel: 20 → 32 relu → 5 sigmoid, l2


KNOWN = {  # question → (answer, status label, the diagnosis line or problem line)
    "q1": [
        ("(Yhat - Y) / N", "right", None),
        ("Yhat/N - Y/N", "right", None),
        ("Yhat - Y", "WRONG (factor)",
         "diagnosis: off by a constant factor N: yours is N times the gradient (a 1/N is "
         "missing)"),
        ("dZ2", "circular", "problem:   uses dZ2, the quantity the question asks for (δ₂); an "
         "answer must compute it"),
    ],
    "q2": [
        ("A1.T @ dZ2 + l2 * W2", "right", None),
        ("A1.T.dot(dZ2) + lambda2 * W2", "right", None),
        ("A1.T @ dZ2", "WRONG (missing-term)",
         "diagnosis: missing term: yours + l2 * W2 (λ₂ W₂) = ∂L/∂W₂"),
        ("dZ2.T @ A1 + l2 * W2.T", "WRONG (transposed)",
         "diagnosis: yoursᵀ equals ∂L/∂W₂: yours is n₂×n₁, ∂L/∂W₂ is n₁×n₂ (the shape of W2)"),
    ],
    "q3": [
        ("(dZ2 @ W2.T) * where(Z1 > 0, 1, 0)", "right", None),
        ("dA1 * where(A1 > 0, 1, 0)", "right", None),
        ("dZ2 @ W2.T", "WRONG (activation-derivative)",
         "diagnosis: missing activation-derivative factor: yours is ∂L/∂Z₁ without the factor ⊙ "
         "[A₁ > 0] (numpy: * where(A1 > 0, 1, 0)) of layer 1 (relu′), i.e. with ∂L/∂A₁ where "
         "δ₁ = ∂L/∂A₁ ⊙ relu′(Z₁) belongs"),
        ("(dZ2 @ W2.T) * (Z1 > 0)", "right", None),
        ("(dZ2 @ W2.T) * (Z1 > 0).astype(float)", "invalid",
         "problem:   attribute access is not allowed"),
    ],
    "q4": [
        ("sum(dZ1, axis=0)", "right", None),
        ("-sum(dZ1, axis=0)", "WRONG (sign)", "diagnosis: the sign is wrong: yours = −∂L/∂b₁"),
        ("sum(dZ1, axis=1)", "WRONG (axis)",
         "diagnosis: sum(dZ1, axis=1) sums over the wrong axis (use axis=0): sum(dZ1, axis=0) "
         "is right"),
        ("sum(dZ1, axis=0) + foo", "invalid",
         "problem:   unknown name 'foo' (allowed: X, Y, W1, b1, Z1, dZ1, A1, dA1, W2, b2, Z2, "
         "dZ2, Yhat, dYhat, A2, dA2, N, l2)"),
        ("", "blank", None),
    ],
}


@functools.cache
def graded():
    """Every known answer, graded once (the answer sets are taken column by column)."""
    grader = exercise._Grader(sheet())
    rounds = max(len(v) for v in KNOWN.values())
    out = []
    for i in range(rounds):
        answers = {q: v[i][0] for q, v in KNOWN.items() if i < len(v)}
        out.append((answers, grader.grade(Answers(f"s{i}", answers, f"s{i}.txt"))))
    return out


def test_known_answers_are_graded_exactly() -> None:
    seen = set()
    for answers, g in graded():
        for r in g.results:
            if r.question.id not in answers:
                assert r.status == "blank"
                continue
            answer, label, line = next(k for k in KNOWN[r.question.id] if k[0] == answers[r.question.id])
            assert r.label == label, (r.question.id, answer, r.lines())
            seen.add(label)
            if line is not None:
                assert line in r.lines(), (answer, r.lines())
            if r.status == "wrong":  # verify's evidence and the next step are shown
                lines = r.lines()
                assert lines[2].startswith(("evidence:  differs on 3 of 3 random instances",
                                            "evidence:  not evaluated: yours is")), lines
                assert lines[-1] == "next step: " + exercise.NEXT_STEP[r.diagnosis]
            if r.status == "right":
                assert r.lines()[1].startswith("evidence:  equal on 3 random instances")
                assert r.lines()[2].lstrip().startswith("proved at N=2")
    assert {"WRONG (factor)", "WRONG (missing-term)", "WRONG (transposed)", "WRONG (sign)",
            "WRONG (activation-derivative)", "WRONG (axis)", "circular", "invalid",
            "right"} <= seen
    first = graded()[0][1]
    assert (first.score, first.total, first.ok) == (4, 4, True)
    assert graded()[2][1].score == 0


def test_grade_one_student_exit_status_and_report(capsys) -> None:
    code, out, err = run(capsys, "grade", EXAMPLE / "sheet.toml", EXAMPLE / "answers" / "ada.txt")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"grade: {EXAMPLE / 'answers' / 'ada.txt'} (student ada)"
    assert out.splitlines()[-1] == "score: 4/4"
    code, out, err = run(capsys, "grade", EXAMPLE / "sheet.toml", EXAMPLE / "answers" / "cy.toml",
                         "--reveal")
    assert (code, err) == (1, "")
    heads = [line for line in out.splitlines() if not line.startswith(" ")]
    assert heads == [f"grade: {EXAMPLE / 'answers' / 'cy.toml'} (student Cy)",
                     "q1   δ₂ = ∂L/∂Z₂  right",
                     "q2   ∂L/∂W₂       WRONG (missing-term)",
                     "q3   δ₁ = ∂L/∂Z₁  circular",
                     "q4   ∂L/∂b₁       blank",
                     "score: 1/4"]
    assert "       correct:   A1.T @ dZ2 + l2 * W2" in out.splitlines()
    assert ("       next step: express it through the layer above (its δ and W) and this "
            "layer's forward values") in out.splitlines()
    assert ("       next step: no answer was given; derive it and write it as q4 in the answer "
            "file") in out.splitlines()


CLASS_MD = """\
| student | q1 | q2 | q3 | q4 | score |
|---|---|---|---|---|---|
| ada | right | right | right | right | 4/4 |
| bob | wrong (factor) | wrong (transposed) | wrong (activation-derivative) | wrong (sign) | 0/4 |
| Cy | right | wrong (missing-term) | circular | blank | 1/4 |
| Dee | right | right | invalid | wrong (axis) | 2/4 |
| zed.txt | — | — | — | — | unreadable |

4 graded, mean score 1.8 of 4; all right: 1
- zed.txt could not be read: {zed}: line 2: unknown question 'q5' (the sheet has q1, q2, q3, q4)
"""

CLASS_CSV = """\
student,q1,q2,q3,q4,score,total,file
ada,right,right,right,right,4,4,ada.txt
bob,wrong (factor),wrong (transposed),wrong (activation-derivative),wrong (sign),0,4,bob.txt
Cy,right,wrong (missing-term),circular,blank,1,4,cy.toml
Dee,right,right,invalid,wrong (axis),2,4,dee.txt
zed.txt,,,,,,4,zed.txt
"""


def test_a_folder_is_one_table(tmp_path, capsys) -> None:
    folder = tmp_path / "class"
    shutil.copytree(EXAMPLE / "answers", folder)
    (folder / "zed.txt").write_text("q1: (Yhat - Y) / N\nq5: W1\n", encoding="utf-8")
    (folder / "notes.md").write_text("not an answer file\n", encoding="utf-8")
    code, out, err = run(capsys, "grade", EXAMPLE / "sheet.toml", folder, "--csv",
                         tmp_path / "grades.csv")
    assert code == 1
    assert out == CLASS_MD.format(zed=folder / "zed.txt")
    assert err == (f"symgrad grade: skipped zed.txt: {folder / 'zed.txt'}: line 2: unknown "
                   "question 'q5' (the sheet has q1, q2, q3, q4)\n")
    assert (tmp_path / "grades.csv").read_text(encoding="utf-8") == CLASS_CSV
    (folder / "zed.txt").unlink()
    for name in ("bob.txt", "cy.toml", "dee.txt"):
        (folder / name).unlink()
    code, out, _ = run(capsys, "grade", EXAMPLE / "sheet.toml", folder)
    assert code == 0
    assert out.splitlines()[2] == "| ada | right | right | right | right | 4/4 |"


def test_end_to_end_the_key_scores_full_marks(tmp_path, capsys) -> None:
    """exercise on digits (all 7 questions), then grade the key's own numpy answers."""
    code, _, _ = run(capsys, "exercise", ROOT / "examples" / "digits.toml", "--count", 7,
                     "-o", tmp_path / "digits.md")
    assert code == 0
    key = (tmp_path / "digits.key.md").read_text(encoding="utf-8")
    numpy = re.findall(r"^   numpy: `(.*)`$", key, re.M)
    assert numpy == ["(Yhat - Y) / N", "A1.T @ dZ2", "sum(dZ2, axis=0)", "dZ2 @ W2.T",
                     "(dZ2 @ W2.T) * (1 - A1**2)", "X.T @ dZ1", "sum(dZ1, axis=0)"]
    answers = tmp_path / "me.txt"
    answers.write_text("".join(f"q{i}: {a}\n" for i, a in enumerate(numpy, 1)), encoding="utf-8")
    code, out, err = run(capsys, "grade", tmp_path / "digits.toml", answers)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "score: 7/7"


# ==========================================================================================
# Bad input: one line, exit 2, nothing written
# ==========================================================================================

SHEET = EXAMPLE / "sheet.toml"


@pytest.mark.parametrize(("argv", "line"), [
    (["exercise", "-o", "{d}/s.md"], "exercise: give a SPEC, or --random for a random network"),
    (["exercise", "{spec}", "--random", "-o", "{d}/s.md"],
     "exercise: give a SPEC or --random, not both"),
    (["exercise", "{spec}", "--depth", "3", "-o", "{d}/s.md"],
     "exercise: --depth and --activations go with --random"),
    (["exercise", "{spec}", "--count", "8", "-o", "{d}/s.md"],
     "exercise: --count: must be between 1 and 7 (the questions this network offers), got 8"),
    (["exercise", "--random", "--depth", "9", "-o", "{d}/s.md"],
     "exercise: --depth: must be between 1 and 6 layers, got 9"),
    (["exercise", "--random", "--seed", "-1", "-o", "{d}/s.md"],
     "exercise: --seed: must be an integer between 0 and 4294967295, got -1"),
    (["exercise", "--random", "--activations", "tanh,sigmod", "-o", "{d}/s.md"],
     "exercise: --activations: unknown activation 'sigmod' (did you mean 'sigmoid'?); the built-ins are "
     "{acts}"),
    (["exercise", "--random", "-o", "{d}/s.txt"],
     "exercise: -o: '{d}/s.txt': the worksheet's name must end in .md (the key and the .toml are "
     "written beside it)"),
    (["exercise", "--random", "--format", "latex", "-o", "{d}/s.md"],
     "exercise: -o: '{d}/s.md' ends in .md, but --format latex writes a .tex file"),
    (["exercise", "--random", "-o", "-"],
     "exercise: -o: exercise writes three files (the sheet, its key and a .toml); give the worksheet's "
     "path, e.g. sheet.md"),
    (["exercise", "--random", "-o", "{d}/mine.md"],
     "{d}/mine.key.md: exists and was not written by symgrad exercise; use --force to overwrite"),
    (["grade", "{d}/none.toml", "{d}/a.txt"], "{d}/none.toml: no such file"),
    (["grade", "{spec}", "{d}/a.txt"],
     "{spec}: [spec]: missing; this is not a worksheet written by symgrad exercise (it has no "
     "[spec] table)"),
    (["grade", "{d}/bad.toml", "{d}/a.txt"],
     "{d}/bad.toml: question[1].wrt: 'W3' is not a question this network offers (Z1, W1, b1)"),
    (["grade", "{sheet}", "{d}/none.txt"], "{d}/none.txt: no such file"),
    (["grade", "{sheet}", "{d}/dup.txt"], "{d}/dup.txt: line 3: a second answer to q1; keep one"),
    (["grade", "{sheet}", "{d}/colon.txt"],
     "{d}/colon.txt: line 1: expected 'q1: FORMULA' (a question id, a colon, your formula); "
     "the sheet has q1, q2, q3, q4"),
    (["grade", "{sheet}", "{d}/num.toml"],
     "{d}/num.toml: answers.q2: must be a string (the formula in quotes), got int"),
    (["grade", "{sheet}", "{d}/noanswers.toml"],
     "{d}/noanswers.toml: q1: put the answers in an [answers] table ([answers] then q1 = \"…\")"),
    (["grade", "{sheet}", "{d}/student.toml"],
     "{d}/student.toml: [answers]: missing; add an [answers] table with q1 = \"…\" for each "
     "question (q1, q2, q3, q4)"),
    (["grade", "{sheet}", "{d}/empty"], "{d}/empty: no answer files (*.txt or *.toml) in this folder"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, line) -> None:
    from symgrad.activations import ACTIVATIONS

    (tmp_path / "mine.key.md").write_text("my own notes\n", encoding="utf-8")
    (tmp_path / "bad.toml").write_text(
        '[[question]]\nid = "q1"\nwrt = "W3"\n[spec.network]\nname = "n"\ninputs = 2\n'
        '[[spec.layer]]\nunits = 2\n[spec.loss]\nkind = "mse"\n', encoding="utf-8")
    (tmp_path / "dup.txt").write_text("q1: Yhat\n\nq1: Y\n", encoding="utf-8")
    (tmp_path / "colon.txt").write_text("q1 = Yhat\n", encoding="utf-8")
    (tmp_path / "num.toml").write_text("[answers]\nq2 = 3\n", encoding="utf-8")
    (tmp_path / "noanswers.toml").write_text('q1 = "Yhat"\n', encoding="utf-8")
    (tmp_path / "student.toml").write_text('student = "Al"\n', encoding="utf-8")
    (tmp_path / "empty").mkdir()
    before = listing(tmp_path)
    fill = {"d": tmp_path, "spec": ROOT / "examples" / "digits.toml", "sheet": SHEET,
            "acts": ", ".join(ACTIVATIONS)}
    code, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert (code, out) == (2, "")
    assert err == "symgrad: error: " + line.format(**fill) + "\n"
    assert listing(tmp_path) == before


def test_a_deep_networks_key_is_accepted_unproved(tmp_path, capsys, monkeypatch) -> None:
    """40 tanh layers: the exact evaluation is over its budget, so verify (asked for no
    proof) says "not proved" with exact float64 agreement: the key is the derivation and
    is written (it was exit 3, "the answer key's W23 … did not verify")."""
    import importlib

    monkeypatch.setattr(importlib.import_module("symgrad.verify"), "EXACT_SECONDS", 0.5)  # over it either way; sooner
    spec = tmp_path / "deep40.toml"
    spec.write_text('[network]\nname = "deep40"\ninputs = 3\n'
                    + '[[layer]]\nunits = 3\nactivation = "tanh"\n' * 40
                    + '[loss]\nkind = "mse"\n', encoding="utf-8")
    code, out, err = run(capsys, "exercise", spec, "--count", 2, "-o", tmp_path / "deep.md")
    assert (code, out) == (0, "")
    assert err.startswith("symgrad: wrote ")
    key = (tmp_path / "deep.key.md").read_text(encoding="utf-8")
    assert "numpy: `dZ23 @ W23.T`" in key and "numpy: `A21.T @ dZ22`" in key


# --------------------------------------------------------------------------
# grade --csv writes like every writer: never over its own inputs, nor over a file it did
# not write (a CSV has no room for a mark: only the same grades again) unless --force
# --------------------------------------------------------------------------

GOOD = "q1: (Yhat - Y) / N\n"


@pytest.mark.parametrize(("target", "force", "line"), [
    ("good.txt", True, "grade: --csv: is the same file as the input {d}/good.txt; a command "
     "never writes over its own input, even with --force: give another file"),
    ("sheet.toml", True, "grade: --csv: is the same file as the input {d}/sheet.toml; a "
     "command never writes over its own input, even with --force: give another file"),
    ("class/ada.txt", True, "grade: --csv: is the same file as the input {d}/class/ada.txt; a "
     "command never writes over its own input, even with --force: give another file"),
    ("link.csv", True, "grade: --csv: is the same file as the input {d}/sheet.toml; a "
     "command never writes over its own input, even with --force: give another file"),
    ("mine.csv", False, "grade: --csv: {d}/mine.csv exists and does not hold these grades; "
     "use --force to overwrite it, or --csv elsewhere"),
])
def test_grade_csv_refusals(tmp_path, capsys, target, force, line) -> None:
    shutil.copyfile(SHEET, tmp_path / "sheet.toml")
    (tmp_path / "good.txt").write_text(GOOD, encoding="utf-8")
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "ada.txt").write_text(GOOD, encoding="utf-8")
    (tmp_path / "mine.csv").write_text("my,data\n", encoding="utf-8")
    (tmp_path / "link.csv").symlink_to(tmp_path / "sheet.toml")
    answers = tmp_path / ("class" if target.startswith("class") else "good.txt")
    before = listing(tmp_path)
    code, out, err = run(capsys, "grade", tmp_path / "sheet.toml", answers, "--csv",
                         tmp_path / target, *(["--force"] if force else []))
    assert code == 2
    assert err == "symgrad: error: " + line.format(d=tmp_path) + "\n"
    assert listing(tmp_path) == before


def test_grade_csv_rewrites_its_own_grades_and_force(tmp_path, capsys) -> None:
    (tmp_path / "good.txt").write_text(GOOD, encoding="utf-8")
    csv_path = tmp_path / "g.csv"
    argv = ["grade", SHEET, tmp_path / "good.txt", "--csv", csv_path]
    assert run(capsys, *argv)[0] == 1
    first = csv_path.read_bytes()
    assert first.startswith(b"student,q1,q2,q3,q4,score,total,file\n")
    assert run(capsys, *argv)[0] == 1  # the same grades again: rewritten (unchanged)
    assert csv_path.read_bytes() == first
    (tmp_path / "good.txt").write_text(GOOD + "q2: W1\n", encoding="utf-8")
    code, _, err = run(capsys, *argv)
    assert (code, csv_path.read_bytes()) == (2, first)
    assert err == (f"symgrad: error: grade: --csv: {csv_path} exists and does not hold these "
                   "grades; use --force to overwrite it, or --csv elsewhere\n")
    assert run(capsys, *argv, "--force")[0] == 1
    assert csv_path.read_bytes() != first


# --------------------------------------------------------------------------
# In a notebook: a Grade and a ClassGrades display themselves, with a short repr
# --------------------------------------------------------------------------


def test_grade_displays_itself() -> None:
    from html.parser import HTMLParser

    g = exercise.grade(EXAMPLE / "sheet.toml", EXAMPLE / "answers" / "cy.toml")
    assert repr(g) == "<Grade Cy: 1/4 q1 right, q2 wrong, q3 circular, q4 blank>"
    html = g._repr_html_()
    badges = re.findall(r'<span class="symgrad-badge symgrad-(\w+)">([^<]*)</span>', html)
    assert badges == [("fail", "1/4"), ("pass", "right"), ("fail", "WRONG (missing-term)"),
                      ("fail", "circular"), ("undecided", "blank")]
    rows = re.findall(r"<tr><td>(q\d)</td><td>([^<]*)</td>", html)
    assert [r[0] for r in rows] == ["q1", "q2", "q3", "q4"]
    for r in g.results:  # the feedback a student acts on, each line
        for line in r.lines():
            if not line.startswith("yours:"):
                assert " ".join(line.split()).replace("&", "&amp;").replace("<", "&lt;") \
                    .replace(">", "&gt;").replace("'", "&#x27;").replace('"', "&quot;") in html
    assert "<strong>score: 1/4</strong>" in html and "Result(" not in html
    HTMLParser().feed(html)
    md = g._repr_markdown_()
    assert md.splitlines()[0] == f"**1/4** — Cy ({EXAMPLE / 'answers' / 'cy.toml'})"
    assert md.count("\n| q") == 4 and "**WRONG (missing-term)**" in md
    assert md.rstrip().endswith("**score: 1/4**") and "Question(" not in md


def test_class_grades_display_themselves() -> None:
    c = exercise.grade_folder(EXAMPLE / "sheet.toml", EXAMPLE / "answers")
    assert repr(c) == "<ClassGrades 4 graded: ada 4/4 bob 0/4 Cy 1/4 Dee 2/4>"
    assert len(repr(c)) < 120
    html = c._repr_html_()
    rows = re.findall(r"<tr><td>([^<]*)</td>(.*?)</tr>", html)
    assert [name for name, _ in rows] == ["ada", "bob", "Cy", "Dee"]
    marks = [re.findall(r"symgrad-(pass|fail|undecided)\">([^<]*)<", cells) for _, cells in rows]
    assert marks[0] == [("pass", "right")] * 4 + [("pass", "4/4")]
    assert marks[3] == [("pass", "right"), ("pass", "right"), ("fail", "invalid"),
                        ("fail", "wrong (axis)"), ("fail", "2/4")]
    assert "4 graded, mean score 1.8 of 4; all right: 1" in html and "Grade(" not in html
    assert c._repr_markdown_() == exercise.class_table(c)[0]


@pytest.mark.slow
def test_a_zero_gradient_answered_zero_scores_full_marks(tmp_path, capsys) -> None:
    """∂L/∂b₁ before a batchnorm is exactly 0 (issue 11, F3): answering 0 is right."""
    code, _, _ = run(capsys, "exercise", ROOT / "examples" / "digits_bn_dropout.toml",
                     "--count", 8, "-o", tmp_path / "bn.md")
    assert code == 0
    sheet = (tmp_path / "bn.md").read_text(encoding="utf-8")
    assert ("8. **q8.** Derive $\\frac{\\partial L}{\\partial b_{1}}$, a vector of length 64 (the "
            "shape of b₁).") in sheet
    numpy = re.findall(r"^   numpy: `(.*)`$", (tmp_path / "bn.key.md").read_text("utf-8"), re.M)
    assert numpy[-1] == "sum(dZ1, axis=0)"
    for zero in ("0 * b1", "0"):
        answers = tmp_path / "me.txt"
        answers.write_text("".join(f"q{i}: {a}\n" for i, a in enumerate([*numpy[:-1], zero], 1)),
                           encoding="utf-8")
        code, out, err = run(capsys, "grade", tmp_path / "bn.toml", answers)
        assert (code, err) == (0, ""), out
        assert "q8   ∂L/∂b₁       right\n       yours:     " + zero + "\n" in out
        assert out.splitlines()[-1] == "score: 8/8"


def test_a_concats_questions_are_asked_with_their_slices() -> None:
    """The gradients through a concat are column slices of its cotangent, which verify reads
    (issue 11, F12): every question of the network is offered, keys included."""
    from symgrad.spec import Layer, Spec

    spec = Spec("cat2", 3, (Layer(2, "tanh"), Layer(4, input="X"),
                            Layer(type="concat", inputs=("A1", "A2", "X")), Layer(2)), loss="mse")
    ws = worksheet(spec, count=13)  # all of them
    assert [q.wrt for q in ws.questions] == [
        "Z4", "W4", "b4", "A3", "Z3", "A2", "Z2", "W2", "b2", "A1", "Z1", "W1", "b1"]
    keys = {ws.question(q).wrt: a.numpy for q, a in exercise._answers(ws).items()}
    assert keys["A1"] == "dZ3[:, :n1]" and keys["Z2"] == "dZ3[:, n1:n1 + n2]"
    assert keys["Z1"] == "dZ3[:, :n1] * (1 - A1**2)"
    g = exercise._Grader(ws).grade(Answers("me", {"q10": "dZ3[:, 0:2]", "q11": "dZ3[:, n1:n1+n2]"}))
    assert [r.status for r in g.results if r.answer] == ["right", "wrong"]
