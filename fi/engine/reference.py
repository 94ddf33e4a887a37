"""Plain reference implementations, kept as yardsticks for the fast engine (tests and bench/).

They follow the paper's notebooks literally: one sender (or head) at a time, two full forward passes
per sender for path patching, a small batch of prompts at a time. Slow by design; never used by the
workflow.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# The oracle imports nothing from the engine it checks (fi.engine.patching, interventions, readout):
# hook names, receivers and the metric are written out here, plainly. Prompt pairs come as any object
# with the fields of fi.engine.pairs.PatchingData (normal, contrast [N, T] token ids; last [N],
# the read position; normal_answer, contrast_answer [N]; groups: name -> [N, T] bool; size; subset).
PatchingData = object


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def qkv_hook(layer: int, which: str) -> str:
    return f"blocks.{layer}.attn.hook_{which}"


def pattern_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


class Receiver(NamedTuple):
    """'output', or 'L.H.q|k|v': one head's query / key / value input."""

    layer: int | None
    head: int | None
    which: str | None

    @classmethod
    def parse(cls, text) -> Receiver:
        if isinstance(text, cls):
            return text
        text = str(text)  # a string, or the engine's Receiver (its str is this text)
        if text == "output":
            return cls(None, None, None)
        layer, head, which = text.split(".")
        return cls(int(layer), int(head), which)

    @property
    def is_output(self) -> bool:
        return self.layer is None


def logit_diff(logits: torch.Tensor, last: torch.Tensor, normal_answer: torch.Tensor,
               contrast_answer: torch.Tensor) -> torch.Tensor:
    """Per row: the normal answer's logit minus the contrast answer's at the row's read position."""
    rows = torch.arange(logits.shape[0])
    final = logits[rows, last.to(logits.device)]
    return final[rows, normal_answer.to(logits.device)] - final[rows, contrast_answer.to(logits.device)]


def _runs(model, data: PatchingData, batch: int):
    for i in range(0, data.size, batch):
        yield data.subset(slice(i, i + batch))


def _ld(model, chunk, logits, metric=None):
    """LD per row from full logits, or `metric` of the two answers' logits at the read position."""
    if metric is None:
        return logit_diff(logits, chunk.last, chunk.normal_answer, chunk.contrast_answer)
    rows = torch.arange(logits.shape[0])
    final = logits[rows, chunk.last]
    return metric(torch.stack([final[rows, chunk.normal_answer], final[rows, chunk.contrast_answer]], 1))


def frozen_z_hooks(cache_contrast, cache_normal, n_layers: int, layer: int, head: int) -> list:
    """Run 1 of path patching for one sender: every head's z frozen to its contrast value, the
    sender (layer, head) given its normal value."""
    def freeze(lyr):
        def hook(z, hook):
            z = cache_contrast[z_hook(lyr)].clone()
            if lyr == layer:
                z[:, :, head] = cache_normal[z_hook(lyr)][:, :, head]
            return z
        return hook
    return [(z_hook(lyr), freeze(lyr)) for lyr in range(n_layers)]


def reference_baselines(model, data: PatchingData, batch: int = 4, metric=None):
    n, c = [], []
    with torch.inference_mode():
        for chunk in _runs(model, data, batch):
            n.append(_ld(model, chunk, model.bridge(chunk.normal.to(model.device)), metric))
            c.append(_ld(model, chunk, model.bridge(chunk.contrast.to(model.device)), metric))
    return float(torch.cat(n).mean()), float(torch.cat(c).mean())


def head_receiver_logits(bridge, contrast, run1_hooks, receiver: Receiver, n_heads: int, n_kv: int,
                         clean_z: torch.Tensor | None = None) -> torch.Tensor:
    """Path patching's two passes to a head's q / k / v input, plainly: run 1 (`run1_hooks`, the
    frozen heads and the sender's normal z) captures the receiver's input, run 2 is a clean contrast
    run with that input patched in; run 2's logits. Under grouped-query attention the input is one
    query head's, as in the paper's ungrouped model: with a patched value input that head's output is
    its unchanged pattern times the patched values; with a patched key input the group's key is
    patched and the group's other heads are given back their clean outputs (`clean_z`, the clean
    contrast run's hook_z at the receiver's layer). Tests check both against the ungrouped copy."""
    which = receiver.head if receiver.which == "q" else receiver.head // (n_heads // n_kv)
    name = qkv_hook(receiver.layer, receiver.which)
    store = {}

    def grab(x, hook):
        store["x"] = x[:, :, which].clone()
        return x
    bridge.run_with_hooks(contrast, fwd_hooks=run1_hooks + [(name, grab)])

    def put(x, hook):
        x[:, :, which] = store["x"]
        return x

    def keep(p, hook):
        store["p"] = p[:, receiver.head].clone()
        return p

    def head_z(z, hook):
        z[:, :, receiver.head] = store["p"] @ store["x"]
        return z
    group = n_heads // n_kv
    first = receiver.head - receiver.head % group
    others = [h for h in range(first, first + group) if h != receiver.head]

    def others_clean(z, hook):
        z[:, :, others] = clean_z[:, :, others]
        return z
    if receiver.which == "v" and n_kv < n_heads:
        fwd = [(pattern_hook(receiver.layer), keep), (z_hook(receiver.layer), head_z)]
    elif receiver.which == "k" and n_kv < n_heads:
        fwd = [(name, put), (z_hook(receiver.layer), others_clean)]
    else:
        fwd = [(name, put)]
    return bridge.run_with_hooks(contrast, fwd_hooks=fwd)


def reference_path_patching(model, data: PatchingData, receiver: Receiver | str = "output", batch: int = 4,
                            metric=None) -> torch.Tensor:
    """The paper's per-sender two-pass path patching, normalised as in fi.engine.patching (read as LD,
    or as `metric` of the two answers' logits)."""
    receiver = Receiver.parse(receiver)
    b = model.bridge
    L, H = model.n_layers, model.n_heads
    n_kv = int(getattr(b.cfg, "n_key_value_heads", None) or H)
    ld_n, ld_c = reference_baselines(model, data, batch, metric)
    out = torch.zeros(L, H)
    for layer in range(L):
        for head in range(H):
            total = 0.0
            for chunk in _runs(model, data, batch):
                normal, contrast = chunk.normal.to(model.device), chunk.contrast.to(model.device)
                with torch.inference_mode():
                    _, cache_n = b.run_with_cache(normal, names_filter=lambda nm: nm.endswith("hook_z"))
                    _, cache_c = b.run_with_cache(contrast, names_filter=lambda nm: nm.endswith("hook_z"))

                    hooks = frozen_z_hooks(cache_c, cache_n, L, layer, head)
                    if receiver.is_output:  # pass 1 is the whole story
                        logits = b.run_with_hooks(contrast, fwd_hooks=hooks)
                    else:
                        logits = head_receiver_logits(b, contrast, hooks, receiver, H, n_kv,
                                                      cache_c[z_hook(receiver.layer)])
                total += float(_ld(model, chunk, logits, metric).sum())
            out[layer, head] = total / data.size
    return (out - ld_c) / (ld_c - ld_n)


def reference_activation_patching(model, data: PatchingData, group: str | None = None, batch: int = 4) -> torch.Tensor:
    """One head at a time: its hook_z from the normal run into the contrast run."""
    b = model.bridge
    ld_n, ld_c = reference_baselines(model, data, batch)
    out = torch.zeros(model.n_layers, model.n_heads)
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            total = 0.0
            for chunk in _runs(model, data, batch):
                with torch.inference_mode():
                    _, cache_n = b.run_with_cache(chunk.normal.to(model.device), names_filter=z_hook(layer))
                    mask = chunk.groups[group].to(model.device) if group else None

                    def patch(z, hook):
                        src = cache_n[z_hook(layer)][:, :, head]
                        z[:, :, head] = src if mask is None else torch.where(mask[..., None], src, z[:, :, head])
                        return z
                    logits = b.run_with_hooks(chunk.contrast.to(model.device), fwd_hooks=[(z_hook(layer), patch)])
                total += float(_ld(model, chunk, logits).sum())
            out[layer, head] = total / data.size
    return (out - ld_c) / (ld_c - ld_n)
