"""Head-type scores (on patterns we control) and FI-head selection."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from fi.methods.heads import head_type_scores, select_heads


class FakeBridge:
    """Returns designed attention patterns: head 0 previous-token, head 1 induction, head 2
    duplicate-token, head 3 attends to BOS."""

    def __init__(self, seq_len):
        self.seq_len = seq_len

    def run_with_cache(self, tokens, names_filter=None):
        b, t = tokens.shape
        pattern = torch.zeros(b, 4, t, t)
        for q in range(t):
            pattern[:, 0, q, max(q - 1, 0)] = 1
            pattern[:, 3, q, 0] = 1
            if q > self.seq_len:  # second copy: positions seq_len+1 .. 2*seq_len
                pattern[:, 1, q, q - self.seq_len + 1] = 1
                pattern[:, 2, q, q - self.seq_len] = 1
            else:
                pattern[:, 1, q, 0] = 1
                pattern[:, 2, q, 0] = 1
        return None, {"blocks.0.attn.hook_pattern": pattern}


def fake_model(seq_len):
    tokenizer = type("Tok", (), {"all_special_ids": [0, 1], "bos_token_id": 1, "__len__": lambda self: 50})()
    return SimpleNamespace(tokenizer=tokenizer, bridge=FakeBridge(seq_len), device="cpu", n_layers=1, n_heads=4, bos_id=1)


def test_head_type_scores_on_designed_patterns():
    df = head_type_scores(fake_model(10), seq_len=10, n_seqs=3).set_index("head")
    assert df.loc[0, "previous_token_score"] == pytest.approx(1.0)
    assert df.loc[1, "induction_score"] == pytest.approx(1.0)
    assert df.loc[2, "duplicate_token_score"] == pytest.approx(1.0)
    assert list(df["type"]) == ["previous_token", "induction", "duplicate_token", ""]
    assert df.loc[3, ["previous_token_score", "induction_score", "duplicate_token_score"]].max() < 0.3


def test_head_type_scores_run_on_a_real_model(tiny_llama):
    df = head_type_scores(tiny_llama, seq_len=8, n_seqs=4)
    assert len(df) == tiny_llama.n_layers * tiny_llama.n_heads
    for col in ("previous_token_score", "duplicate_token_score", "induction_score"):
        assert df[col].between(0, 1).all()


def test_select_heads():
    scores = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": [-0.1, -0.8, -0.3, 0.2]})
    assert select_heads(scores, "top_k", top_k=2)[["layer", "head"]].values.tolist() == [[0, 1], [1, 0]]
    assert select_heads(scores, "threshold", threshold=0.25)[["layer", "head"]].values.tolist() == [[0, 1], [1, 0]]
    assert select_heads(scores, "threshold", threshold=0.9).empty
    with pytest.raises(ValueError, match="unknown discovery criterion"):
        select_heads(scores, "best")


def test_random_strings_on_a_built_in_model_use_only_the_characters_its_training_draws():
    """The built-in vocabulary holds characters no training source draws (capitals, most punctuation);
    their embeddings stay at initialisation, and a head that copies repeated strings of trained
    characters does nothing on them. Any other tokenizer keeps every ordinary token."""
    from fi.build.training import DRAWN_CHARACTERS, build_tokenizer, drawn_token_ids

    seen = []

    class RecordingBridge(FakeBridge):
        def run_with_cache(self, tokens, names_filter=None):
            seen.append(tokens)
            return super().run_with_cache(tokens, names_filter)

    tok = build_tokenizer()
    model = SimpleNamespace(tokenizer=tok, bridge=RecordingBridge(10), device="cpu", n_layers=1, n_heads=4,
                            bos_id=tok.bos_token_id)
    head_type_scores(model, seq_len=10, n_seqs=8)
    drawn = seen[0][:, 1:]
    assert set(tok.convert_ids_to_tokens(drawn.flatten().tolist())) <= set(DRAWN_CHARACTERS)
    assert len(set(drawn.flatten().tolist())) > 20  # and it draws from all of them, not a few
    assert drawn_token_ids(fake_model(10).tokenizer) is None
