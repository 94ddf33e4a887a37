"""Answer tokens, derived from each tokenizer (never hard-coded ids).

An answer's tokens are the tokens that the full string `prompt + answer` has after the prompt's own
tokens, which is what a model sees when it writes the answer itself. Single-digit tokenizers (Llama-2,
Gemma) give one token per digit, multi-digit ones (Llama-3: up to three digits) may give one token for
"123", and BPE tokenizers (GPT-2) fold leading spaces into the token; all come out right this way.
"""

from __future__ import annotations

import torch


class AnswerTokenizationError(ValueError):
    pass


def answer_token_ids(model, prompt: str, answer: str, prompt_ids: list[int] | None = None) -> list[int]:
    prompt_ids = model.encode(prompt) if prompt_ids is None else prompt_ids
    full = model.encode(prompt + answer)
    if full[: len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
        # The tokenizer merged across the prompt/answer boundary: the answer has no tokens of its
        # own, so it cannot be scored position by position. Name the strings so users can see why.
        raise AnswerTokenizationError(
            f"{model.name}: answer {answer!r} does not tokenize separately after prompt "
            f"ending {prompt[-20:]!r}")
    return full[len(prompt_ids):]


def first_difference(normal: list[int], contrast: list[int]) -> int | None:
    """Index of the first token where two answers differ: where the logit difference between them is
    read, after their common prefix (teacher-forced). A character tokenizer spells the cipher's
    answers ' b' / ' c' as [' ', 'b'] / [' ', 'c'] and two-digit sums 12 / 13 as ['1', '2'] /
    ['1', '3']: their first tokens agree and carry no signal. None when the answers are equal or
    one is a prefix of the other."""
    for j, (a, b) in enumerate(zip(normal, contrast)):
        if a != b:
            return j
    return None


def answer_vocabulary(model, probe_prompt: str, answers: list[str]) -> torch.Tensor:
    """Sorted ids of every token any of `answers` uses after `probe_prompt`.

    The paper restricts each answer position's argmax to the digit tokens of its model; this is the
    same restriction, derived from the tokenizer and the task's answer space."""
    prompt_ids = model.encode(probe_prompt)
    ids: set[int] = set()
    for answer in answers:
        ids.update(answer_token_ids(model, probe_prompt, answer, prompt_ids))
    return torch.tensor(sorted(ids), dtype=torch.long)
