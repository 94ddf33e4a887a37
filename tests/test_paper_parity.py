"""fi against the paper's released code (bench/bench_paper_parity.py) on a small trained model.

The comparison needs a second Python environment with TransformerLens 2.x (docs/paper-parity.md) and
the paper's code under ../shared/reference/function-induction/code; it is skipped, saying which is
missing, when either is absent. The circuit mapping it relies on is tested without them.
"""

from __future__ import annotations

import pytest

from bench.bench_paper_parity import (
    default_circuit,
    everything,
    find_paper_python,
    k_sets_for,
    paper_circuit,
    reference_code,
    run_parity,
)
from tests.conftest import REFERENCE


def test_paper_circuit_maps_groups_and_positions():
    """fi's groups become the paper's, in fi's group order (the order the paper's greedy search lists
    candidates in), at the paper's positions: previous-token heads at "c", FI and consolidation
    heads at "all=", the full model at "all"."""
    c = paper_circuit({"consolidation": [[1, 2]], "previous_token": [[0, 1], [0, 3]], "function_induction": [[1, 0]]})
    assert list(c["head_circuit"]) == ["prev_token", "function_induction", "consolidate"]
    assert c["head_circuit"]["prev_token"] == [[0, 1], [0, 3]]
    assert c["head_seq_pos_to_keep"] == {"prev_token": "c", "function_induction": "all=", "consolidate": "all="}
    m = paper_circuit(everything(2, 2))
    assert m == {"head_circuit": {"default": [[0, 0], [0, 1], [1, 0], [1, 1]]}, "head_seq_pos_to_keep": {"default": "all"}}
    assert paper_circuit({}) == {"head_circuit": {}, "head_seq_pos_to_keep": {}}


def test_default_circuit_and_k_sets():
    import torch

    direct = torch.tensor([[0.1, -0.5, 0.0, 0.2], [-0.9, 0.3, 0.05, -0.4]])
    c = default_circuit(direct, 2)
    assert c == {"previous_token": [[0, 1], [0, 3]], "function_induction": [[1, 0], [1, 3]],
                 "consolidation": [[1, 1], [1, 2]]}
    ks = k_sets_for(c, 2, 4)
    assert ks[0] == [] and [[0, 1], [0, 3]] in ks and [[1, 1]] in ks
    assert ks[-1] == [[0, 0]]  # a head outside the circuit: it changes M \ K only


# decided at collection, so that a skipped run does not train the fixture first
PAPER_PYTHON = find_paper_python()
HAS_CODE = reference_code(REFERENCE) is not None


@pytest.mark.skipif(PAPER_PYTHON is None, reason="no paper environment (TransformerLens 2.x): set FI_PAPER_PYTHON or "
                    "create /tmp/fi-paper-env as docs/paper-parity.md says")
@pytest.mark.skipif(not HAS_CODE, reason=f"the paper's code is not under {REFERENCE}/code (FI_REFERENCE_DIR moves it)")
def test_fi_matches_the_papers_code(trained_toy_dir, tmp_path):
    """eval.py's accuracies, path patching to the output and to value inputs, eval_circuit_batched,
    get_completeness_score and one_greedy_search's K, each equal to fi's (1e-4, scaled by values above 1)."""
    report = run_parity(trained_toy_dir, PAPER_PYTHON, REFERENCE, eval_cells=(("setting1", 1, 4), ("setting2", -1, 8)),
                        eval_examples=12, n_examples=8, greedy_seeds=(0, 3), workdir=tmp_path, verbose=False)
    failed = [r for r in report.rows if not r.ok]
    assert not failed, "\n" + report.table()
    kinds = {r.what for r in report.rows}
    assert {"model", "(a) eval", "positions", "(b) paths", "(c) circuit", "(d) K", "(d) greedy"} <= kinds
    assert sum(r.what == "(d) greedy" for r in report.rows) == 4  # two seeds: same K, same gap
