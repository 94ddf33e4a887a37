"""Clamping heads during training (issue 13's "artificial optogenetics", Singh et al. 2024): which heads
are changed, how, over which steps, through the project's one intervention value
(fi.interventions). Used by fi.training; analyses of the runs live in fi.dynamics.

A `Clamp` says which heads are changed, how, and over which training steps [start, stop). Steps it
covers run through a TransformerBridge built around the very parameters being trained (a shadow copy
of the HF module tree whose parameters are the trained model's own), with the clamp's
`fi.interventions.Intervention`s as hooks, so gradients flow through everything the clamp leaves in
place; steps no clamp covers stay the plain HF forward (sdpa attention), bit for bit.

Kinds (each on the listed heads only):
  zero             the head's output (hook_z) is zero
  mean             the head's output is its mean over the batch's rows at each position (detached)
  pattern_uniform  its attention pattern is uniform over the positions it may attend to
  pattern_ref      its attention pattern is a reference model's on the same batch
  value_ref        its values (hook_v) are a reference model's on the same batch
  output_ref       its output (hook_z) is a reference model's on the same batch
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fi.dynamics_runs import REF_KINDS
from fi.interventions import Intervention, by_layer, hooks_for, pattern_hook, qkv_hook, z_hook

KINDS = ("zero", "mean", "pattern_uniform", "pattern_ref", "value_ref", "output_ref")


@dataclass(frozen=True)
class Clamp:
    heads: tuple[tuple[int, int], ...]
    kind: str = "zero"
    start: int = 0
    stop: int | None = None  # exclusive; None: to the end of training
    reference: str | None = None  # a model folder, for the *_ref kinds

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"clamp: unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.kind in REF_KINDS and not self.reference:
            raise ValueError(f"clamp {self.kind}: needs a reference model folder")

    @classmethod
    def from_config(cls, entry: dict, reference: str | None = None) -> Clamp:
        """`{heads: [[layer, head], ...], kind: zero, steps: [start, stop]}` (stop null: to the end)."""
        steps = entry.get("steps") or [0, None]
        return cls(tuple((int(a), int(b)) for a, b in entry["heads"]), entry.get("kind", "zero"),
                   int(steps[0]), None if steps[1] is None else int(steps[1]), reference)

    def covers(self, step: int) -> bool:
        return bool(self.heads) and self.start <= step < (math.inf if self.stop is None else self.stop)

    def active_steps(self, total: int) -> bool:
        return bool(self.heads) and self.start < min(total, math.inf if self.stop is None else self.stop)


def uniform_pattern(n: int) -> torch.Tensor:
    """[n, n] causal uniform attention: query q attends 1/(q+1) to each key 0..q."""
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1, dtype=torch.float32)[:, None]


class ClampedForward:
    """The trained model's forward pass with clamps as hooks, through a TransformerBridge that shares
    the model's parameters (gradients and optimizer updates land on the same tensors)."""

    def __init__(self, model, tokenizer):
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        shadow = copy.deepcopy(model)
        params = dict(model.named_parameters())
        for name, _ in list(shadow.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            setattr(shadow.get_submodule(owner), leaf, params[name])
        with tempfile.TemporaryDirectory() as folder:  # the bridge wants a tokenizer loaded from a folder
            tokenizer.save_pretrained(folder)
            tok = AutoTokenizer.from_pretrained(folder)
            self.bridge = TransformerBridge.boot_transformers(folder, hf_model=shadow, tokenizer=tok,
                                                              device=str(next(model.parameters()).device))
        ids = {id(p) for p in model.parameters()}
        if {id(p) for p in self.bridge.parameters()} != ids:
            raise RuntimeError("clamped forward: the bridge does not share the trained model's parameters")
        self.bridge.train(model.training)
        self._references: dict[str, object] = {}

    def reference(self, path: str):
        if path not in self._references:
            from fi.models import load_model

            self._references[path] = load_model(Path(path).name, path=path, device="cpu")
        return self._references[path]

    def hooks(self, tokens: torch.Tensor, clamps: Sequence[Clamp]) -> list:
        """fwd_hooks for one batch: the clamps' interventions (a mean is taken in the hook itself)."""
        fixed: list[Intervention] = []
        dynamic: list[tuple[str, callable]] = []
        n = tokens.shape[1]
        for clamp in clamps:
            layers = by_layer(clamp.heads)
            ref_cache = None
            if clamp.kind in REF_KINDS:
                names = {_ref_hook(clamp.kind, layer) for layer in layers}
                ref = self.reference(clamp.reference)
                with torch.no_grad():
                    _, ref_cache = ref.bridge.run_with_cache(tokens.to(ref.device), names_filter=lambda h: h in names)
            for layer, heads in layers.items():
                if clamp.kind == "zero":
                    fixed.append(Intervention.zero(z_hook(layer), heads))
                elif clamp.kind == "pattern_uniform":
                    fixed.append(Intervention.constant(pattern_hook(layer), uniform_pattern(n), heads))
                elif clamp.kind == "mean":
                    dynamic.append((z_hook(layer), _mean_hook(z_hook(layer), heads)))
                else:
                    hook = _ref_hook(clamp.kind, layer)
                    fixed.append(Intervention.patch(hook, ref_cache[hook].detach(), heads))
        return hooks_for(fixed) + dynamic

    def __call__(self, tokens: torch.Tensor, clamps: Sequence[Clamp], extra_hooks: Sequence = ()) -> torch.Tensor:
        with self.bridge.hooks(fwd_hooks=self.hooks(tokens, clamps) + list(extra_hooks)):
            return self.bridge(tokens)


def _mean_hook(name: str, heads: list[int]):
    def hook(x, hook):
        value = x.detach()[:, :, heads].mean(0, keepdim=True)
        return Intervention.constant(name, value, heads).apply(x)
    return hook


def _ref_hook(kind: str, layer: int) -> str:
    return {"pattern_ref": pattern_hook(layer), "value_ref": qkv_hook(layer, "v"), "output_ref": z_hook(layer)}[kind]


# ---- progress measures on checkpoints ----------------------------------------------------------------
