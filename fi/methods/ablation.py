"""Head ablation during evaluation: the paper's section 4 experiment, as interventions
(fi.engine.interventions) on the heads' hook_z.

Modes (what replaces the heads' hook_z):
  patch   the head's output from the normal prompt (the paper's: "patch from base"), all positions.
          The normal prompts are scored first, unablated (patching a run from itself changes
          nothing), and that same run captures the heads' z; the contrast prompts are then scored
          with it patched in. No extra forward pass.
  mean    the head's mean output over a reference set of prompts (the cell's normal prompts, all
          token positions), at every position, on both prompts.
  zero    zeros, on both prompts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pandas as pd
import torch

from fi.engine.answers import answer_vocabulary
from fi.engine.interventions import Intervention, by_layer, z_hook
from fi.engine.readout import capture
from fi.methods.evaluation import PROMPT_KINDS, ModelInput, encode_examples, model_inputs, readout_route, run_inputs, score_inputs

MODES = ("patch", "mean", "zero")
Head = tuple[int, int]


def mean_z(model, encoded, heads: Sequence[Head], batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Mean hook_z of the heads (per layer: [len(heads of that layer), d_head]) over every real token
    of the reference (normal) prompts."""
    layers = by_layer(heads)
    sums = {layer: 0.0 for layer in layers}
    count = 0
    prompts = [e.prompts["normal"] for e in encoded]
    for start in range(0, len(prompts), batch_size):
        tokens, mask = model.right_pad(prompts[start:start + batch_size])
        store: dict = {}
        with torch.inference_mode():
            model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=capture(store, [z_hook(layer) for layer in layers]),
                                        stop_at_layer=max(layers) + 1)
        m = mask.to(model.device)
        for layer, hs in layers.items():
            z = store[z_hook(layer)][:, :, hs]  # [B, T, H_sel, d]
            sums[layer] = sums[layer] + (z * m[..., None, None]).sum((0, 1)).float().cpu()
        count += int(mask.sum())
    return {layer: sums[layer] / count for layer in layers}


def constant_interventions(values: dict[int, torch.Tensor], heads: Sequence[Head]):
    """Every row's heads replaced by a fixed per-layer value (a mean, or zeros)."""
    layers = by_layer(heads)
    return lambda batch, width: [Intervention.constant(z_hook(layer), values[layer], heads=hs)
                                 for layer, hs in layers.items()]


def patch_from_captured(captured: dict, captured_heads: dict[int, list[int]], normal_of: dict, heads: Sequence[Head],
                        misaligned: set):
    """Each contrast row's heads take the z its normal prompt had with the same answer prefix
    (captured while scoring the normal prompts: per layer, the heads `captured_heads[layer]`, of
    which `heads` are some). Rows whose normal source is not as long (BPE tokenizers can split the
    shifted numbers differently) cannot line up: left unpatched and recorded in `misaligned`, to be
    dropped."""
    layers = by_layer(heads)
    columns = {layer: [captured_heads[layer].index(h) for h in hs] for layer, hs in layers.items()}

    def interventions(batch: list[ModelInput], width: int) -> list:
        out = []
        for layer, hs in layers.items():
            name, cols = z_hook(layer), columns[layer]
            first = captured[(normal_of[(batch[0].example, batch[0].suffix)], name)][:, cols]
            value = torch.zeros((len(batch), width) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device)
            positions = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, inp in enumerate(batch):
                src = captured[(normal_of[(inp.example, inp.suffix)], name)]
                if src.shape[0] != len(inp.tokens):
                    misaligned.add(inp.example)
                    continue
                value[row, : src.shape[0]] = src[:, cols]
                positions[row, : src.shape[0]] = True
            out.append(Intervention(name, value, tuple(hs), positions))
        return out
    return interventions


def ablated_scores(model, family, variant, records, shots: int, heads: Sequence[Head], mode: str = "patch",
                   batch_size: int = 64):
    """Per-example scores (as fi.methods.evaluation) with `heads` ablated; an empty set is no ablation."""
    return ablated_scores_many(model, family, variant, records, shots, [heads], mode, batch_size)[0]


def ablated_scores_many(model, family, variant, records, shots: int, head_sets: Sequence[Sequence[Head]],
                        mode: str = "patch", batch_size: int = 64) -> list[pd.DataFrame]:
    """Per-example scores with each head set of `head_sets` ablated in turn (an empty set: no
    ablation), on one encoding of the cell and one probe of its readout route. What every set
    shares is run once: the unablated normal prompts (which patch mode patches from: their run
    captures every set's heads) and the unablated contrast prompts. The same batches as one set at
    a time, so the same numbers."""
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; expected one of {MODES}")
    examples = family.examples(records, variant, shots)
    vocab = answer_vocabulary(model, examples[0].contrast_prompt, family.answer_space(variant))
    encoded = encode_examples(model, examples)
    inputs = model_inputs(encoded, PROMPT_KINDS)
    residual = readout_route(model, inputs, vocab)
    normal = [x for x in inputs if x.prompt_kind == "normal"]
    contrast = [x for x in inputs if x.prompt_kind == "contrast"]
    patched = sorted({tuple(h) for heads in head_sets for h in heads}) if mode == "patch" else []
    captured_heads = by_layer(patched)
    unablated: dict[str, list] = {}
    captured: dict = {}
    if patched or any(not heads for heads in head_sets):
        capture = {z_hook(layer): hs for layer, hs in captured_heads.items()}
        unablated["normal"], captured = run_inputs(model, normal, vocab, batch_size, capture=capture,
                                                   residual_readout=residual)
    normal_of = {(x.example, x.suffix): k for k, x in enumerate(normal)}
    out = []
    for heads in head_sets:
        misaligned: set[int] = set()
        if not heads:
            if "contrast" not in unablated:
                unablated["contrast"], _ = run_inputs(model, contrast, vocab, batch_size, residual_readout=residual)
            ordered, restricted = normal + contrast, unablated["normal"] + unablated["contrast"]
        elif mode == "patch":
            done_contrast, _ = run_inputs(model, contrast, vocab, batch_size,
                                          patch_from_captured(captured, captured_heads, normal_of, heads, misaligned),
                                          residual_readout=residual)
            ordered, restricted = normal + contrast, unablated["normal"] + done_contrast
        else:
            values = (mean_z(model, encoded, heads, batch_size) if mode == "mean" else
                      {layer: torch.zeros(len(hs), model.bridge.cfg.d_head) for layer, hs in by_layer(heads).items()})
            ordered = inputs
            restricted, _ = run_inputs(model, inputs, vocab, batch_size, constant_interventions(values, heads),
                                       residual_readout=residual)
        df = score_inputs(model, encoded, ordered, restricted, vocab)
        df.insert(1, "normal_answer", [e.normal_answer for e in examples])
        df.insert(2, "contrast_answer", [e.contrast_answer for e in examples])
        if misaligned:
            df = df[~df["example"].isin(misaligned)].reset_index(drop=True)
            if df.empty:
                raise ValueError(f"{model.name}: no example of {variant.name} has normal and contrast prompts of "
                                 "the same token length; patch-from-base needs them aligned (use mode mean or zero)")
        out.append(df)
    return out


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
