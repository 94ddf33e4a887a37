"""Head ablation during evaluation: the paper's section 4 experiment.

Modes (what replaces the heads' hook_z):
  patch   the head's output from the normal prompt (the paper's: "patch from base"), all positions.
          Rows of the normal prompt are left alone (patching a run from itself changes nothing).
          The normal runs come first in every scoring call, so their z is captured on the way and
          reused: no extra forward pass.
  mean    the head's mean output over a reference set of prompts (the cell's normal prompts, all
          token positions), at every position, on both prompts.
  zero    zeros, on both prompts.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch

from fi.evaluation import ModelInput, encode_examples, score_examples
from fi.answers import answer_vocabulary
from fi.patching import z_hook

MODES = ("patch", "mean", "zero")
Head = tuple[int, int]


def by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out


class PatchFromNormal:
    """Hook factory: capture the heads' z on normal rows, write it into the matching contrast rows
    (the normal input with the same answer tokens appended, so every position lines up)."""

    def __init__(self, heads: Sequence[Head]):
        self.layers = by_layer(heads)
        self.store: dict[tuple[int, int], torch.Tensor] = {}  # (input index, layer) -> [T, H_sel, d]
        # examples whose contrast input is not as long as its normal source (BPE tokenizers can
        # split the shifted numbers differently): positions would not line up, so they are dropped
        self.misaligned: set[int] = set()

    def __call__(self, batch: list[ModelInput], width: int) -> list:
        hooks = []
        for layer, heads in self.layers.items():
            if batch[0].prompt_kind == "normal":
                def capture(z, hook, layer=layer, heads=heads):
                    for row, inp in enumerate(batch):
                        self.store[(inp.index, layer)] = z[row, : len(inp.tokens), heads].detach().clone()
                    return z
                hooks.append((z_hook(layer), capture))
            else:
                def patch(z, hook, layer=layer, heads=heads):
                    for row, inp in enumerate(batch):
                        src = self.store[(inp.source, layer)]
                        if src.shape[0] != len(inp.tokens):
                            self.misaligned.add(inp.example)
                            continue
                        z[row, : src.shape[0], heads] = src.to(z.dtype)
                    return z
                hooks.append((z_hook(layer), patch))
        return hooks


class Replace:
    """Hook factory: the heads' z replaced by a fixed [H_sel, d] vector per layer on every row."""

    def __init__(self, values: dict[int, tuple[list[int], torch.Tensor]]):
        self.values = values

    def __call__(self, batch: list[ModelInput], width: int) -> list:
        hooks = []
        for layer, (heads, value) in self.values.items():
            def replace(z, hook, heads=heads, value=value):
                z[:, :, heads] = value.to(z.device, z.dtype)
                return z
            hooks.append((z_hook(layer), replace))
        return hooks


def mean_z(model, encoded, heads: Sequence[Head], batch_size: int = 64) -> dict[int, tuple[list[int], torch.Tensor]]:
    """Mean hook_z of the heads over every real token of the reference (normal) prompts."""
    layers = by_layer(heads)
    sums = {layer: 0.0 for layer in layers}
    count = 0
    prompts = [e.prompts["normal"] for e in encoded]
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(map(len, chunk))
        tokens = torch.full((len(chunk), width), model.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, p in enumerate(chunk):
            tokens[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = True
        names = {z_hook(layer) for layer in layers}
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(tokens.to(model.device), names_filter=lambda n: n in names)
        m = mask.to(model.device)
        for layer, hs in layers.items():
            z = cache[z_hook(layer)][:, :, hs]  # [B, T, H_sel, d]
            sums[layer] = sums[layer] + (z * m[..., None, None]).sum((0, 1)).float().cpu()
        count += int(mask.sum())
    return {layer: (hs, sums[layer] / count) for layer, hs in layers.items()}


def hook_factory_for(mode: str, model, encoded, heads: Sequence[Head], batch_size: int = 64):
    if not heads:
        return None
    if mode == "patch":
        return PatchFromNormal(heads)
    if mode == "mean":
        return Replace(mean_z(model, encoded, heads, batch_size))
    if mode == "zero":
        return Replace({layer: (hs, torch.zeros(len(hs), model.bridge.cfg.d_head))
                        for layer, hs in by_layer(heads).items()})
    raise ValueError(f"unknown ablation mode {mode!r}; expected one of {MODES}")


def ablated_scores(model, family, variant, records, shots: int, heads: Sequence[Head], mode: str = "patch",
                   batch_size: int = 64):
    """Per-example scores (as fi.evaluation) with `heads` ablated; an empty set is no ablation."""
    examples = family.examples(records, variant, shots)
    vocab = answer_vocabulary(model, examples[0].contrast_prompt, family.answer_space(variant))
    encoded = encode_examples(model, examples)
    factory = hook_factory_for(mode, model, encoded, heads, batch_size)
    df = score_examples(model, encoded, vocab, batch_size, factory)
    df.insert(1, "normal_answer", [e.normal_answer for e in examples])
    df.insert(2, "contrast_answer", [e.contrast_answer for e in examples])
    dropped = getattr(factory, "misaligned", set())
    if dropped:
        df = df[~df["example"].isin(dropped)].reset_index(drop=True)
        if df.empty:
            raise ValueError(f"{model.name}: no example of {variant.name} has normal and contrast prompts of "
                             "the same token length; patch-from-base needs them aligned (use mode mean or zero)")
    return df


def random_head_sets(n_layers: int, n_heads: int, like: Sequence[Head], n_sets: int, seed: int,
                     layer_matched: bool = False, exclude: Sequence[Head] = ()) -> list[list[Head]]:
    """`n_sets` random head sets of len(like) heads, never containing a head of `exclude`; with
    `layer_matched`, each set takes as many heads from each layer as `like` does. The sets are
    distinct while distinct sets remain (a small model has few: 7 single heads besides one FI head
    in a 2 x 4 model); only then does a set repeat."""
    rng = random.Random(seed)
    banned = {tuple(h) for h in exclude}
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in banned]
    # strata: (candidate heads, how many to take); one stratum per layer when layer-matched
    if layer_matched:
        strata = []
        for layer, hs in sorted(by_layer(like).items()):
            cands = [x for x in pool if x[0] == layer]
            if len(cands) < len(hs):
                raise ValueError(f"layer {layer} has only {len(cands)} heads outside the set; "
                                 "cannot draw a layer-matched random set")
            strata.append((cands, len(hs)))
    else:
        if len(pool) < len(like):
            raise ValueError("not enough heads outside the set to draw a random set of the same size")
        strata = [(pool, len(like))]
    n_distinct = math.prod(math.comb(len(cands), k) for cands, k in strata)

    def draw() -> list[Head]:
        return sorted(h for cands, k in strata for h in rng.sample(cands, k))
    sets: list[list[Head]] = []
    seen: set[tuple] = set()
    for _ in range(n_sets):
        chosen = draw()
        # rejection sampling; distinct sets are plentiful whenever drawing one takes long
        while tuple(chosen) in seen and len(seen) < n_distinct:
            chosen = draw()
        seen.add(tuple(chosen))
        sets.append(chosen)
    return sets
