"""Batched, teacher-forced scoring of normal and contrast prompts.

For every example four (prompt, answer) pairs are scored, as in the paper's section 4:
  normal prompt   -> normal answer   (`normal_acc`)   and contrast answer (`normal_on_contrast`)
  contrast prompt -> contrast answer (`cf_acc`, the paper's)   and normal answer (`orig_acc`)
An answer counts as produced when, at every answer position, the argmax over the answer vocabulary
(see fi.answers) is the answer's token, with the earlier answer tokens fed in (teacher forcing). That
is exactly the paper's eval.py, batched: the model runs on `prompt + answer[:-1]` only once per
distinct input, right-padded (a causal model never attends to the pads on its right, so padding
changes no logit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch

from fi.answers import answer_token_ids, answer_vocabulary, first_difference
from fi.tasks import Example

PROMPT_KINDS = ("normal", "contrast")
# (prompt kind, answer kind) -> per-example column
SCORED_PAIRS = {
    ("normal", "normal"): "normal_correct",
    ("normal", "contrast"): "normal_on_contrast_correct",
    ("contrast", "contrast"): "cf_correct",
    ("contrast", "normal"): "orig_correct",
}


@dataclass(frozen=True)
class EncodedExample:
    prompts: dict  # kind -> token ids of the prompt
    answers: dict  # kind -> token ids of the answer


@dataclass(frozen=True)
class ModelInput:
    """One distinct sequence the model runs on; hooks see these to know what each row is."""

    index: int  # position in the list of inputs of one scoring call
    example: int
    prompt_kind: str
    prompt_len: int
    tokens: tuple
    source: int  # index of the normal-prompt input with the same answer tokens appended


def encode_examples(model, examples: Sequence[Example]) -> list[EncodedExample]:
    encoded = []
    for ex in examples:
        prompts = {"normal": model.encode(ex.normal_prompt), "contrast": model.encode(ex.contrast_prompt)}
        text = {"normal": (ex.normal_prompt, ex.normal_answer), "contrast": (ex.contrast_prompt, ex.contrast_answer)}
        answers = {
            "normal": answer_token_ids(model, ex.contrast_prompt, ex.normal_answer, prompts["contrast"]),
            "contrast": answer_token_ids(model, ex.contrast_prompt, ex.contrast_answer, prompts["contrast"]),
        }
        # The same answer after the normal prompt must tokenize the same way, or the four scores
        # would not compare like with like.
        for kind in PROMPT_KINDS:
            again = answer_token_ids(model, text["normal"][0], text[kind][1], prompts["normal"])
            if again != answers[kind]:
                raise ValueError(f"{model.name}: answer {text[kind][1]!r} tokenizes differently after "
                                 "the normal and the contrast prompt")
        encoded.append(EncodedExample(prompts, answers))
    return encoded


HookFactory = Callable[[list[ModelInput], int], list]


def _run(model, inputs: list[ModelInput], batch_size: int, hook_factory: HookFactory | None):
    """Yield (batch of inputs, logits [B, T, V]) over `inputs` in length-sorted batches, all
    normal-prompt inputs before any contrast-prompt input (so that hooks may reuse what the normal
    runs produced: ablation's patch-from-base does)."""
    order = sorted(range(len(inputs)), key=lambda i: (inputs[i].prompt_kind != "normal", len(inputs[i].tokens)))
    batches = []
    for kind in PROMPT_KINDS:
        of_kind = [i for i in order if inputs[i].prompt_kind == kind]
        batches += [of_kind[s:s + batch_size] for s in range(0, len(of_kind), batch_size)]
    for idx in batches:
        batch = [inputs[i] for i in idx]
        width = max(len(b.tokens) for b in batch)
        tokens = torch.full((len(batch), width), model.pad_id, dtype=torch.long)
        for row, b in enumerate(batch):
            tokens[row, : len(b.tokens)] = torch.tensor(b.tokens)
        tokens = tokens.to(model.device)
        with torch.inference_mode():
            if hook_factory is None:
                logits = model.bridge(tokens)
            else:
                logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hook_factory(batch, width))
        yield idx, logits


def score_examples(model, encoded: Sequence[EncodedExample], vocab: torch.Tensor, batch_size: int = 64,
                   hook_factory: HookFactory | None = None,
                   prompt_kinds: Sequence[str] = PROMPT_KINDS) -> pd.DataFrame:
    """Per-example scores: the correctness flags, predictions and first-token logit diffs of the
    given prompt kinds (both by default; the paper's cf_acc / orig_acc need only "contrast")."""
    inputs: list[ModelInput] = []
    where: dict[tuple, int] = {}
    for i, enc in enumerate(encoded):
        for pk in ("normal", *[k for k in prompt_kinds if k != "normal"]):
            for ak in PROMPT_KINDS:
                suffix = enc.answers[ak][:-1]
                seq = tuple(enc.prompts[pk] + suffix)
                key = (i, pk, seq)
                if key not in where:
                    source = where.get((i, "normal", tuple(enc.prompts["normal"] + suffix)), -1)
                    where[key] = len(inputs)
                    inputs.append(ModelInput(len(inputs), i, pk, len(enc.prompts[pk]), seq,
                                             len(inputs) if pk == "normal" else source))
    vocab_dev = vocab.to(model.device)
    vocab_index = {int(t): j for j, t in enumerate(vocab.tolist())}
    restricted: list = [None] * len(inputs)  # per input: [T_answer_positions..., |vocab|] float32
    for idx, logits in _run(model, inputs, batch_size, hook_factory):
        for row, i in enumerate(idx):
            start = inputs[i].prompt_len - 1
            restricted[i] = logits[row, start:len(inputs[i].tokens), :][:, vocab_dev].float().cpu()

    rows = []
    for i, enc in enumerate(encoded):
        rec: dict = {"example": i}
        for (pk, ak), col in SCORED_PAIRS.items():
            if pk not in prompt_kinds:
                continue
            answer = enc.answers[ak]
            r = restricted[where[(i, pk, tuple(enc.prompts[pk] + answer[:-1]))]]
            pred = [int(vocab[j]) for j in r[: len(answer)].argmax(-1).tolist()]
            rec[col] = pred == answer
            if pk == ak:
                rec[f"{pk}_pred"] = model.tokenizer.decode(pred)
        n_ans, c_ans = enc.answers["normal"], enc.answers["contrast"]
        j = first_difference(n_ans, c_ans)
        for pk in prompt_kinds:
            # normal-answer logit minus contrast-answer logit at the first token where the answers
            # differ, after their common prefix (the same position in either teacher-forced run);
            # 0 when they never differ (offset 0)
            if j is None:
                rec[f"{pk}_logit_diff"] = 0.0
                continue
            at = restricted[where[(i, pk, tuple(enc.prompts[pk] + enc.answers[pk][:-1]))]][j]
            rec[f"{pk}_logit_diff"] = float(at[vocab_index[n_ans[j]]] - at[vocab_index[c_ans[j]]])
        rows.append(rec)
    return pd.DataFrame(rows)


def evaluate_task(model, family, variant, records, shots: int, batch_size: int = 64,
                  hook_factory: HookFactory | None = None,
                  prompt_kinds: Sequence[str] = PROMPT_KINDS) -> pd.DataFrame:
    """Score one cell (model x task variant x shots); returns per-example rows."""
    examples = family.examples(records, variant, shots)
    vocab = answer_vocabulary(model, examples[0].contrast_prompt, family.answer_space(variant))
    encoded = encode_examples(model, examples)
    df = score_examples(model, encoded, vocab, batch_size, hook_factory, prompt_kinds)
    df.insert(1, "normal_answer", [e.normal_answer for e in examples])
    df.insert(2, "contrast_answer", [e.contrast_answer for e in examples])
    return df
