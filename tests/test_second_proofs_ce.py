"""Issue 15's proof grid, its cross-entropy part (tests/test_second_proofs.py has the rest
and says how the grid is built): every activation as the hidden layer's under softmax∘
cross-entropy, the Hessian-vector product against the scalar-expansion proof. A file of
its own so that make test-slow (one file per worker) runs it beside the other losses'."""

from __future__ import annotations

import pytest
from test_second_network import ACTIVATIONS
from test_second_proofs import proved


@pytest.mark.slow
@pytest.mark.parametrize("hidden", ACTIVATIONS)
def test_hvp_equals_the_scalar_expansion_for_cross_entropy(hidden):
    """Softmax∘cross-entropy at N = 1 (685 s of SymPy at N = 2 for the fifteen, gelu's erf
    under the softmax 80 s of it; N = 1 about half)."""
    proved(hidden, "cross_entropy", "softmax", batch=1)
