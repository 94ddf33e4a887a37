"""Batched, teacher-forced scoring of normal and contrast prompts.

For every example four (prompt, answer) pairs are scored, as in the paper's section 4:
  normal prompt   -> normal answer   (`normal_acc`)   and contrast answer (`normal_on_contrast`)
  contrast prompt -> contrast answer (`cf_acc`, the paper's)   and normal answer (`orig_acc`)
An answer counts as produced when, at every answer position, the argmax over the answer vocabulary
(see fi.engine.answers) is the answer's token, with the earlier answer tokens fed in (teacher forcing). That
is exactly the paper's eval.py, batched: the model runs on `prompt + answer[:-1]` only once per
distinct input, right-padded (a causal model never attends to the pads on its right, so padding
changes no logit), and only the answer vocabulary's logits at the answer positions are computed
(from the final residual stream; see fi.engine.readout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from fi.engine.answers import answer_token_ids, answer_vocabulary, first_difference
from fi.engine.interventions import hooks_for
from fi.engine.readout import capture as capture_hooks
from fi.engine.readout import compared_logits, readout_holds
from fi.io import progress
from fi.plan.tasks import Example

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
    """One distinct sequence the model runs on: `prompt_kind`'s prompt of example `example` followed
    by `suffix` (an answer's tokens but its last, for teacher forcing)."""

    example: int
    prompt_kind: str
    prompt_len: int
    suffix: tuple
    tokens: tuple


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


# What changes a batch's run: given the batch's inputs and its padded width, the interventions to
# apply (fi.engine.interventions), rows in batch order.
InterventionsFor = Callable[[list[ModelInput], int], list]


def model_inputs(encoded: Sequence[EncodedExample], prompt_kinds: Sequence[str] = PROMPT_KINDS) -> list[ModelInput]:
    """The distinct (prompt, answer prefix) sequences to run, of the given prompt kinds."""
    inputs, seen = [], set()
    for i, enc in enumerate(encoded):
        for pk in prompt_kinds:
            for ak in PROMPT_KINDS:
                suffix = tuple(enc.answers[ak][:-1])
                if (i, pk, suffix) not in seen:
                    seen.add((i, pk, suffix))
                    inputs.append(ModelInput(i, pk, len(enc.prompts[pk]), suffix, tuple(enc.prompts[pk]) + suffix))
    return inputs


def batches(inputs: Sequence[ModelInput], batch_size: int) -> list[list[int]]:
    """Indices of `inputs` in batches: by prompt kind (normal first), then by length, so that a
    batch holds sequences of similar widths."""
    order = sorted(range(len(inputs)), key=lambda i: (PROMPT_KINDS.index(inputs[i].prompt_kind), len(inputs[i].tokens)))
    out = []
    for kind in PROMPT_KINDS:
        of_kind = [i for i in order if inputs[i].prompt_kind == kind]
        out += [of_kind[s:s + batch_size] for s in range(0, len(of_kind), batch_size)]
    return out


def readout_route(model, inputs: Sequence[ModelInput], vocab: torch.Tensor) -> bool:
    """Whether the answer vocabulary's logits can be read from the final residual stream (see
    fi.engine.readout): the model's recorded answer, or checked on up to 8 inputs at their last
    answer position."""
    probe = list(inputs[:8])
    tokens, _ = model.right_pad([p.tokens for p in probe])
    positions = torch.tensor([len(p.tokens) - 1 for p in probe])
    return readout_holds(model, tokens.to(model.device), positions, vocab[None].repeat(len(probe), 1))


def run_inputs(model, inputs: Sequence[ModelInput], vocab: torch.Tensor, batch_size: int = 64,
               interventions: InterventionsFor | None = None, capture: dict | None = None,
               residual_readout: bool | None = None) -> tuple[list, dict]:
    """Run every input once, in `batches`. Returns, per input, the answer vocabulary's logits at its
    answer positions ([answer length, |vocab|] float32), and the activations `capture` asks for
    ({hook name: head indices} -> {(input index, hook name): [its length, heads, ...]}).

    Logits come from the final residual (only `vocab`'s unembedding rows) when `residual_readout`
    (decided by `readout_route` when None), else from the full logits."""
    if residual_readout is None:
        residual_readout = readout_route(model, inputs, vocab)
    vocab_dev = vocab.to(model.device)
    restricted: list = [None] * len(inputs)
    captured: dict = {}
    for idx in progress(batches(inputs, batch_size), "batches"):
        batch = [inputs[i] for i in idx]
        tokens, _ = model.right_pad([b.tokens for b in batch])
        hooks = hooks_for(interventions(batch, tokens.shape[1])) if interventions else []
        if capture:
            store: dict = {}
            hooks += capture_hooks(store, capture, lambda name, x: x[:, :, capture[name]].detach().clone())
        spans = [(inputs[i].prompt_len - 1, len(inputs[i].tokens)) for i in idx]
        rows = torch.cat([torch.full((b - a,), row) for row, (a, b) in enumerate(spans)])
        positions = torch.cat([torch.arange(a, b) for a, b in spans])
        with torch.inference_mode():
            logits = compared_logits(model, tokens.to(model.device), rows, positions, vocab_dev,
                                     hooks, residual_readout).float().cpu()
        for name in capture or {}:
            for row, i in enumerate(idx):
                captured[(i, name)] = store[name][row, : len(inputs[i].tokens)]
        start = 0
        for i, (a, b) in zip(idx, spans):
            restricted[i] = logits[start:start + b - a]
            start += b - a
    return restricted, captured


def score_inputs(model, encoded: Sequence[EncodedExample], inputs: Sequence[ModelInput], restricted: list,
                 vocab: torch.Tensor, prompt_kinds: Sequence[str] = PROMPT_KINDS) -> pd.DataFrame:
    """Per-example scores from `run_inputs`' logits: the correctness flags, predictions and logit
    differences of the given prompt kinds."""
    where = {(inp.example, inp.prompt_kind, inp.suffix): k for k, inp in enumerate(inputs)}
    vocab_index = {int(t): j for j, t in enumerate(vocab.tolist())}
    rows = []
    for i, enc in enumerate(encoded):
        rec: dict = {"example": i}
        for (pk, ak), col in SCORED_PAIRS.items():
            if pk not in prompt_kinds:
                continue
            answer = enc.answers[ak]
            r = restricted[where[(i, pk, tuple(answer[:-1]))]]
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
            at = restricted[where[(i, pk, tuple(enc.answers[pk][:-1]))]][j]
            rec[f"{pk}_logit_diff"] = float(at[vocab_index[n_ans[j]]] - at[vocab_index[c_ans[j]]])
        rows.append(rec)
    return pd.DataFrame(rows)


def score_examples(model, encoded: Sequence[EncodedExample], vocab: torch.Tensor, batch_size: int = 64,
                   interventions: InterventionsFor | None = None,
                   prompt_kinds: Sequence[str] = PROMPT_KINDS, residual_readout: bool | None = None) -> pd.DataFrame:
    """Per-example scores of the given prompt kinds (both by default; the paper's cf_acc / orig_acc
    need only "contrast"), with `interventions` applied to every batch when given."""
    inputs = model_inputs(encoded, prompt_kinds)
    restricted, _ = run_inputs(model, inputs, vocab, batch_size, interventions, residual_readout=residual_readout)
    return score_inputs(model, encoded, inputs, restricted, vocab, prompt_kinds)


def evaluate_task(model, family, variant, records, shots: int, batch_size: int = 64,
                  prompt_kinds: Sequence[str] = PROMPT_KINDS) -> pd.DataFrame:
    """Score one cell (model x task variant x shots); returns per-example rows."""
    examples = family.examples(records, variant, shots)
    vocab = answer_vocabulary(model, examples[0].contrast_prompt, family.answer_space(variant))
    encoded = encode_examples(model, examples)
    df = score_examples(model, encoded, vocab, batch_size, prompt_kinds=prompt_kinds)
    df.insert(1, "normal_answer", [e.normal_answer for e in examples])
    df.insert(2, "contrast_answer", [e.contrast_answer for e in examples])
    return df
