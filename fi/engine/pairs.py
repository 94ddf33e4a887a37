"""Prompt pairs and the metric read on them (the paper's section 2 conventions; fi.engine.patching
explains them): `PatchingData` holds aligned normal / contrast prompts with their answers' first
differing tokens and the position groups, built from a task's examples by `build_patching_data`; a
`Metric` maps the two answers' logits at the read position to one number per row (by default the
logit difference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fi.engine.answers import AnswerTokenizationError, answer_token_ids, first_difference


@dataclass
class PatchingData:
    """Aligned normal / contrast prompts (right-padded to one width), each followed by the two
    answers' common prefix, and the answers' first differing tokens (see fi.engine.answers.first_difference)."""

    normal: torch.Tensor  # [B, T] long
    contrast: torch.Tensor  # [B, T] long
    last: torch.Tensor  # [B] index of each sequence's last token (where the differing token is predicted)
    normal_answer: torch.Tensor  # [B] the normal answer's first token that differs from the contrast answer's
    contrast_answer: torch.Tensor  # [B] the contrast answer's token there
    groups: dict  # position group name -> [B, T] bool mask
    n_dropped: int = 0

    @property
    def size(self) -> int:
        return int(self.normal.shape[0])

    def subset(self, idx: slice) -> PatchingData:
        return PatchingData(self.normal[idx], self.contrast[idx], self.last[idx], self.normal_answer[idx],
                            self.contrast_answer[idx], {k: v[idx] for k, v in self.groups.items()}, 0)


POSITION_GROUPS = ("demo_answers", "separators", "query")


def position_groups(model, family, prompt: str, n_tokens: int) -> dict[str, list[bool]]:
    """Token masks of a prompt's demo answers, its separator tokens ('=' for addition) and its query
    line, found through the tokenizer's character offsets (so any fast tokenizer works)."""
    enc = model.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    shift = n_tokens - len(offsets)  # BOS
    spans: dict[str, list[tuple[int, int]]] = {g: [] for g in POSITION_GROUPS}
    sep, item_sep = family.separator, family.item_separator
    items = prompt.split(item_sep)
    pos = 0
    for i, item in enumerate(items):
        cut = item.rfind(sep)
        if i == len(items) - 1:
            spans["query"].append((pos, pos + len(item)))
        elif cut >= 0:
            spans["demo_answers"].append((pos + cut + len(sep), pos + len(item)))
        if cut >= 0:
            spans["separators"].append((pos + cut, pos + cut + len(sep)))
        pos += len(item) + len(item_sep)
    masks = {g: [False] * n_tokens for g in POSITION_GROUPS}
    for t, (a, b) in enumerate(offsets):
        for g, ss in spans.items():
            if any(a < e and b > s for s, e in ss):
                masks[g][t + shift] = True
    return masks


def build_patching_data(model, family, variant, records, shots: int, max_examples: int | None = None) -> PatchingData:
    examples = family.examples(records, variant, shots)
    rows, dropped = [], 0
    for ex in examples:
        n_ids, c_ids = model.encode(ex.normal_prompt), model.encode(ex.contrast_prompt)
        try:
            n_toks = answer_token_ids(model, ex.contrast_prompt, ex.normal_answer, c_ids)
            c_toks = answer_token_ids(model, ex.contrast_prompt, ex.contrast_answer, c_ids)
        except AnswerTokenizationError:  # the answer merges into the prompt's last token
            dropped += 1
            continue
        j = first_difference(n_toks, c_toks)
        if len(n_ids) != len(c_ids) or j is None:
            dropped += 1
            continue
        # both prompts go on with the answers' common prefix (teacher-forced), part of the query line
        masks = position_groups(model, family, ex.contrast_prompt, len(c_ids))
        for g in POSITION_GROUPS:
            masks[g] += [g == "query"] * j
        prefix = c_toks[:j]
        rows.append((n_ids + prefix, c_ids + prefix, n_toks[j], c_toks[j], masks))
        if max_examples and len(rows) >= max_examples:
            break
    if not rows:
        raise ValueError(f"{model.name}: no example of {variant.name} at {shots} shots has aligned normal "
                         "and contrast prompts with different, separately tokenized answers; nothing to "
                         f"patch ({dropped} of {len(examples)} examples dropped)")
    normal, _ = model.right_pad([r[0] for r in rows])
    contrast, _ = model.right_pad([r[1] for r in rows])
    groups = {g: torch.zeros(normal.shape, dtype=torch.bool) for g in POSITION_GROUPS}
    for i, (_, c_ids, _, _, masks) in enumerate(rows):
        for g in POSITION_GROUPS:
            groups[g][i, : len(c_ids)] = torch.tensor(masks[g])  # c_ids: prompt + common prefix
    return PatchingData(normal, contrast, torch.tensor([len(r[1]) - 1 for r in rows]),
                        torch.tensor([r[2] for r in rows]), torch.tensor([r[3] for r in rows]), groups, dropped)


def logit_diff(logits: torch.Tensor, last: torch.Tensor, normal_answer: torch.Tensor,
               contrast_answer: torch.Tensor) -> torch.Tensor:
    """Per-row normal-answer minus contrast-answer logit at each row's last prompt token, from full
    logits [B, T, V] (the fallback route, and the references')."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    final = logits[rows, last.to(logits.device)]
    return (final.gather(1, normal_answer.to(logits.device)[:, None])
            - final.gather(1, contrast_answer.to(logits.device)[:, None]))[:, 0]


# A metric: the two compared tokens' logits at each row's read position, [N, 2] (normal answer,
# contrast answer), -> one number per row [N]. Every method reads its runs through the cache's metric
# (RunCache.metric); the paper's, and the default, is the logit difference.
Metric = Callable[[torch.Tensor], torch.Tensor]


def logit_difference(compared: torch.Tensor) -> torch.Tensor:
    """The paper's metric, LD: normal-answer logit minus contrast-answer logit."""
    return compared[:, 0] - compared[:, 1]


def answer_pair(normal_answer: torch.Tensor, contrast_answer: torch.Tensor) -> torch.Tensor:
    """The two compared tokens per row, [N, 2]: what a `Metric` reads the logits of."""
    return torch.stack([normal_answer, contrast_answer], 1)
