"""Head selection (fi.methods.circuit.Selection) against the heads the paper chose by hand from its own
released path-patching scores (../shared/reference/function-induction/circuit_discovery/; skipped
when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from fi.plan.params import Selection
from tests.conftest import REFERENCE

needs_reference = pytest.mark.skipif(not (REFERENCE / "circuit_discovery").is_dir(),
                                     reason=f"the paper's released scores are not at {REFERENCE}/circuit_discovery")


@needs_reference
def test_default_selection_recovers_every_output_level_head_of_the_four_models():
    from fi.methods.paper_scores import selection_table

    table = selection_table(REFERENCE)
    output = table[(table["level"] == "output") & table["rule"].str.startswith("strong+weak")]
    assert len(output) == 4
    assert (output["recall"] == 1.0).all(), output
    assert (output["selected"] - output["truth"]).max() <= 2  # at most two heads the paper left out
    # the 0.05 tier alone misses heads on every model: why the weaker tier is the default
    strong = table[(table["level"] == "output") & table["rule"].str.startswith("strong ")]
    assert (strong["recall"] < 1.0).all()


@needs_reference
def test_default_selection_recovers_gemmas_previous_token_heads_by_rank():
    from fi.methods.paper_scores import selection_table

    row = selection_table(REFERENCE).query("level.str.startswith('previous_token')", engine="python")
    assert len(row) == 1 and row["recall"].iloc[0] == 1.0 and row["precision"].iloc[0] >= 0.75
    # a threshold alone at the output level's 0.02 would find almost none of them
    loose = selection_table(REFERENCE, Selection(receiver_top_k=100, receiver_threshold=0.02))
    assert loose.query("level.str.startswith('previous_token')", engine="python")["recall"].iloc[0] <= 0.5


def test_selection_rules():
    scores = np.zeros((3, 4))
    scores[2, 0], scores[2, 1], scores[1, 3], scores[0, 2] = -0.3, 0.03, 0.01, -0.021
    rule = Selection()
    assert rule.direct(scores) == [((2, 0), -0.3), ((2, 1), 0.03), ((0, 2), -0.021)]
    assert [rule.tier(s) for _, s in rule.direct(scores)] == ["strong", "weak", "weak"]
    # senders of a layer-2 receiver: below layer 2 only, strongest first, top_k of them
    assert Selection(receiver_top_k=1).senders(scores, 2) == [((0, 2), -0.021)]
    assert Selection().senders(scores, 2) == [((0, 2), -0.021), ((1, 3), 0.01)]
    assert Selection(receiver_threshold=0.015).senders(scores, 2) == [((0, 2), -0.021)]
