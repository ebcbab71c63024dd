"""Every numpy line symgrad prints reads back (issue 13, F11): for every entry of the
Cookbook table (tests/test_cookbook_table.py), the linear-algebra table
(tests/test_expr_linalg.py) and the structure/vocabulary table (tests/test_expr_vocab.py),
the ``numpy:`` line that ``derive --expr`` prints for each gradient is fed back to
``verify --expr``, which must answer CORRECT (with its symbolic proof); and (a sample of
every fourth row) the ``correct:`` line that ``verify`` prints under a WRONG answer is that
line, and reads back the same way.

(np.linalg.matrix_power, the one-hot of an arg-max with ``==``, einsum over the blocks of a
Kronecker cotangent, ``np.expand_dims``, ``np.broadcast_to``, solves against 𝟏 …: whatever
the lowering writes, the parser reads.)  Each row is derived once; verify reuses that
derivation (it derives the same problem again otherwise), so the check is its reading and
its numeric and symbolic comparison.
"""

from __future__ import annotations

import pytest
from test_cookbook_table import ROWS as COOKBOOK
from test_expr_linalg import TABLE as LINALG
from test_expr_vocab import TABLE as VOCAB

import symgrad.exprmode as exprmode
from symgrad.exprmode import Assumptions, derive_expr, gradient_code, parse_problem, verify_expr

ROWS = ([("cookbook-" + r[0], r[1], r[2], list(r[3]), r[4]) for r in COOKBOOK]
        + [("linalg-" + r[0], r[1], r[2], list(r[3]), {}) for r in LINALG]
        + [("vocab-" + r[0], r[1], r[2], list(r[3]), {}) for r in VOCAB])
IDS = [r[0] for r in ROWS]


def test_every_table_is_covered():
    assert len(ROWS) == len(COOKBOOK) + len(LINALG) + len(VOCAB) >= 100
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_printed_numpy_line_reads_back_as_correct(row, monkeypatch):
    _, expr, shapes, wrt, assume = row
    problem = parse_problem(expr, shapes, wrt, Assumptions.parse(**assume))
    d = derive_expr(problem)
    monkeypatch.setattr(exprmode, "derive_expr",
                        lambda p, prove_rules=False: d if p is problem else derive_expr(p))
    for w in wrt:
        line = gradient_code(d.gradients[w], w)  # derive's "numpy:" line
        verdict = verify_expr(problem, w, line)
        assert verdict.ok, verdict.text()
        assert verdict.text().startswith("CORRECT: ∂f/∂") and "symbolic: proved" in (
            verdict.text()), verdict.text()
        if IDS.index(row[0]) % 4:
            continue  # a sample: verify's "correct:" line is the same line, read back again
        wrong = verify_expr(problem, w, f"{line} + 1")  # its "correct:" line reads back
        assert not wrong.ok
        correct = [s for s in wrong.text().splitlines() if s.startswith("  correct: ")]
        assert correct == [f"  correct: {line}"], wrong.text()
        assert verify_expr(problem, w, correct[0].removeprefix("  correct: ")).ok
