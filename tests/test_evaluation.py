"""Batched teacher-forced scoring against the paper's per-example loop, answer tokens, padding."""

from __future__ import annotations

import pytest
import torch

from fi.engine.answers import AnswerTokenizationError, answer_token_ids, answer_vocabulary
from fi.methods.evaluation import evaluate_task
from fi.plan.tasks import get_family

PARAMS = {"n_examples": 12, "n_demos": 32, "seed": 42}


def paper_loop(model, examples, vocab):
    """The paper's eval.py method: per example, one forward pass on contrast prompt + contrast
    answer and one on contrast prompt + normal answer; restricted argmax at each answer position."""
    cf, orig = [], []
    for ex in examples:
        for answer, out in ((ex.contrast_answer, cf), (ex.normal_answer, orig)):
            prompt_ids = model.encode(ex.contrast_prompt)
            ans = answer_token_ids(model, ex.contrast_prompt, answer, prompt_ids)
            with torch.no_grad():
                logits = model.bridge(torch.tensor([prompt_ids + ans]))[0]
            pos = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(ans))
            pred = [int(vocab[logits[p, vocab].argmax()]) for p in pos]
            out.append(pred == ans)
    return cf, orig


@pytest.mark.parametrize("variant", ["setting1_nmax9_offset1", "normal_nmax99_offset-3", "setting2_nmax999_offset5"])
def test_batched_scoring_equals_paper_loop(tiny_llama, variant):
    family = get_family("addition")
    v = family.parse_variant(variant)
    records = family.generate(v, PARAMS)
    df = evaluate_task(tiny_llama, family, v, records, shots=4, batch_size=5)
    examples = family.examples(records, v, 4)
    vocab = answer_vocabulary(tiny_llama, examples[0].contrast_prompt, family.answer_space(v))
    cf, orig = paper_loop(tiny_llama, examples, vocab)
    assert df["cf_correct"].tolist() == cf
    assert df["orig_correct"].tolist() == orig


def test_batch_size_and_padding_change_nothing(tiny_llama):
    family = get_family("addition")
    v = family.parse_variant("normal_nmax99_offset2")
    records = family.generate(v, PARAMS)
    a = evaluate_task(tiny_llama, family, v, records, shots=3, batch_size=1)
    b = evaluate_task(tiny_llama, family, v, records, shots=3, batch_size=64)
    pd_cols = ["cf_correct", "orig_correct", "normal_correct", "normal_on_contrast_correct",
               "normal_pred", "contrast_pred"]
    assert a[pd_cols].equals(b[pd_cols])
    assert torch.allclose(torch.tensor(a["contrast_logit_diff"].values),
                          torch.tensor(b["contrast_logit_diff"].values), atol=1e-4)


def test_logit_diff_is_normal_minus_contrast_first_token(tiny_llama):
    family = get_family("addition")
    v = family.parse_variant("setting1_nmax9_offset1")
    records = family.generate(v, PARAMS)[:3]
    df = evaluate_task(tiny_llama, family, v, records, shots=2)
    ex = family.examples(records, v, 2)[0]
    ids = tiny_llama.encode(ex.contrast_prompt)
    with torch.no_grad():
        last = tiny_llama.bridge(torch.tensor([ids]))[0, -1]
    n = answer_token_ids(tiny_llama, ex.contrast_prompt, ex.normal_answer)[0]
    c = answer_token_ids(tiny_llama, ex.contrast_prompt, ex.contrast_answer)[0]
    assert df["contrast_logit_diff"].iloc[0] == pytest.approx(float(last[n] - last[c]), abs=1e-4)


def test_logit_diff_is_read_where_the_answers_first_differ(tiny_llama):
    """The character tokenizer spells the cipher's answers ' b' / ' c' as [' ', 'b'] / [' ', 'c']:
    the logit difference is read after the shared ' ', at the letters."""
    family = get_family("cipher")
    v = family.parse_variant("maxlen1_offset1")
    records = family.generate(v, PARAMS)[:3]
    df = evaluate_task(tiny_llama, family, v, records, shots=4)
    ex = family.examples(records, v, 4)[0]
    n = answer_token_ids(tiny_llama, ex.contrast_prompt, ex.normal_answer)
    c = answer_token_ids(tiny_llama, ex.contrast_prompt, ex.contrast_answer)
    assert n[0] == c[0] and n[1] != c[1]
    ids = tiny_llama.encode(ex.contrast_prompt) + n[:1]
    with torch.no_grad():
        last = tiny_llama.bridge(torch.tensor([ids]))[0, -1]
    assert df["contrast_logit_diff"].iloc[0] == pytest.approx(float(last[n[1]] - last[c[1]]), abs=1e-4)
    assert df["contrast_logit_diff"].iloc[0] != 0


def test_answer_tokens_come_from_the_tokenizer(tiny_llama):
    # character tokenizer: one token per digit, and the ids are the tokenizer's own
    ids = answer_token_ids(tiny_llama, "1+2=", "123")
    assert ids == [tiny_llama.tokenizer.convert_tokens_to_ids(c) for c in "123"]
    vocab = answer_vocabulary(tiny_llama, "1+2=", [str(i) for i in range(10)])
    assert sorted(tiny_llama.tokenizer.convert_ids_to_tokens(vocab.tolist())) == list("0123456789")


def test_empty_answer_is_an_error(tiny_llama):
    with pytest.raises(AnswerTokenizationError, match="does not tokenize"):
        answer_token_ids(tiny_llama, "1+2=", "")


def test_four_scores_are_consistent_at_offset_zero(tiny_llama):
    # with k = 0 the normal and the contrast prompt and answers coincide
    family = get_family("addition")
    v = family.parse_variant("normal_nmax9_offset0")
    df = evaluate_task(tiny_llama, family, v, family.generate(v, PARAMS), shots=4)
    assert (df["cf_correct"] == df["orig_correct"]).all()
    assert (df["cf_correct"] == df["normal_correct"]).all()
    assert (df["contrast_logit_diff"] == 0).all()
