"""Clamping heads during training (issue 13's "artificial optogenetics", Singh et al. 2024): which heads
are changed, how, over which steps, through the project's one intervention value
(fi.engine.interventions). Used by fi.build.training, and by fi.methods.dynamics to measure a clamped run's checkpoints
through the same clamped forward.

A `Clamp` says which heads are changed, how, and over which training steps [start, stop). Steps it
covers run through a TransformerBridge built around the very parameters being trained (a shadow copy
of the HF module tree whose parameters are the trained model's own), with the clamp's
`fi.engine.interventions.Intervention`s as hooks, so gradients flow through everything the clamp leaves in
place; steps no clamp covers stay the plain HF forward (sdpa attention), bit for bit.

Kinds (each on the listed heads only):
  zero                    the head's output (hook_z) is zero
  mean                    the head's output is its mean over the batch's rows at each position (detached)
  pattern_uniform         its attention pattern is uniform over the positions it may attend to
  pattern_previous_token  a perfect previous-token head: each position attends only to the one before
                          it (position 0, with nothing before it, to itself)
  pattern_answers         a perfect function-induction pattern (answer_pattern): each position that
                          predicts an answer token (an item's separator, '=' or the '>' of ' ->', and
                          its answer's tokens) attends uniformly to the answer tokens of the earlier
                          items of its sequence; every other position, and one with no earlier answer,
                          attends to itself (so the head moves nothing between positions there)
  pattern_ref             its attention pattern is a reference model's on the same batch
  value_ref               its values (hook_v) are a reference model's on the same batch
  output_ref              its output (hook_z) is a reference model's on the same batch
Every pattern kind fixes the head's whole pattern, so its query and key weights get no gradient while
it holds; values and output still learn.

Checkpoints: the checkpoint at step s holds the weights after s updates, the weights the training
forward of step s runs with, so its measures run with the clamps that cover step s (start <= s <
stop, `active_at_checkpoint`): a clamp over [0, 200) is on at checkpoint 0 and off at checkpoint 200
(the released network, trained under the clamp). The final checkpoint has no step of its own and
takes the last step's clamps, so a clamp to the end (stop null, or stop = the run's steps) is on there.
`clamped` applies them to a loaded checkpoint's bridge.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fi.engine.interventions import Intervention, by_layer, hooks_for, pattern_hook, qkv_hook, z_hook
from fi.plan.dynamics_runs import KINDS, REF_KINDS

# Kinds whose hooks need the batch's tokens (the others need only its width).
TOKEN_KINDS = ("pattern_answers",) + REF_KINDS


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
        for head in self.heads:
            if len(head) != 2 or not all(isinstance(x, int) and x >= 0 for x in head):
                raise ValueError(f"clamp {self.kind}: head {head} is not a [layer, head] pair of non-negative integers")
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            raise ValueError(f"clamp {self.kind}: steps [{self.start}, {self.stop}) are not [start, stop) with "
                             "0 <= start <= stop")

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

    def describe(self) -> dict:
        """What is recorded with a measure: kind, heads and steps (not the reference's local path)."""
        return {"kind": self.kind, "heads": [list(h) for h in self.heads], "steps": [self.start, self.stop]}


def active_at_checkpoint(clamps: Sequence[Clamp], step: int, total: int) -> list[Clamp]:
    """The clamps a checkpoint's measures run with (see the module's docstring): those covering the
    training step that runs with its weights, `step`, or for the final checkpoint (step = total, no
    step of its own) the last step, total - 1."""
    at = min(int(step), int(total) - 1) if total > 0 else int(step)
    return [c for c in clamps if c.covers(at)]


def uniform_pattern(n: int) -> torch.Tensor:
    """[n, n] causal uniform attention: query q attends 1/(q+1) to each key 0..q."""
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1, dtype=torch.float32)[:, None]


def previous_token_pattern(n: int) -> torch.Tensor:
    """[n, n] perfect previous-token attention: query q attends to q - 1, query 0 to itself."""
    out = torch.zeros(n, n)
    out[torch.arange(n), (torch.arange(n) - 1).clamp(min=0)] = 1.0
    return out


def answer_positions(tokens: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence [B, T] bool masks of the separators and the answers of the function-induction
    sequences, read from the tokens (so they hold for training batches, evaluation prompts and any
    other text alike, with the character tokenizer): a separator is a '=' (addition) or the '>' of
    ' ->' (letter shift, cipher); an answer is the tokens after a separator up to the item's end (the
    next newline, excluded, or a pad): the same tokens as fi.engine.patching's `demo_answers` group and, in a
    training batch, the target tokens but the newline (tests)."""
    ids = tokenizer.convert_tokens_to_ids(["=", "-", ">", "\n"])
    if tokenizer.unk_token_id in ids or None in ids:
        raise ValueError("pattern_answers: the tokenizer has no single tokens for '=', '-', '>' and newline")
    eq, dash, gt, newline = ids
    tokens = tokens.cpu()
    after_dash = torch.zeros_like(tokens, dtype=torch.bool)
    after_dash[:, 1:] = tokens[:, :-1] == dash
    separators = (tokens == eq) | ((tokens == gt) & after_dash)
    ends = (tokens == newline) | (tokens == tokenizer.pad_token_id)
    answers = torch.zeros_like(separators)
    inside = torch.zeros(tokens.shape[0], dtype=torch.bool)
    for t in range(tokens.shape[1]):
        inside = ~ends[:, t] & ~separators[:, t] & (inside | (separators[:, t - 1] if t else inside))
        answers[:, t] = inside
    return separators, answers


def answer_pattern(tokens: torch.Tensor, tokenizer) -> torch.Tensor:
    """[B, T, T] the perfect function-induction pattern of each sequence (answer_positions): rows of a
    separator and of its answer's tokens (the positions that predict the answer) spread uniformly over
    the answer tokens before that separator (earlier items'); every other row, and one with no earlier
    answer, attends to itself."""
    separators, answers = answer_positions(tokens, tokenizer)
    b, n = separators.shape
    pos = torch.arange(n)
    # the latest separator at or before each position (-1: none)
    last_sep = torch.cummax(torch.where(separators, pos, torch.full_like(pos, -1).expand(b, n)), dim=1).values
    rows = separators | answers
    keys = answers[:, None, :] & (pos[None, None, :] < last_sep[:, :, None])  # [B, query, key]
    keys &= rows[:, :, None]
    weight = keys.float()
    count = weight.sum(-1, keepdim=True)
    own = torch.eye(n).expand(b, n, n)
    return torch.where(count > 0, weight / count.clamp(min=1), own)


class ClampHooks:
    """The fwd_hooks of a set of clamps for one batch: in training (ClampedForward) and in the
    measures of a clamped run's checkpoints (`clamped`), the same hooks."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._references: dict[str, object] = {}

    def reference(self, path: str):
        if path not in self._references:
            from fi.engine.models import load_model

            self._references[path] = load_model(Path(path).name, path=path, device="cpu")
        return self._references[path]

    def hooks(self, tokens: torch.Tensor | None, clamps: Sequence[Clamp], n: int | None = None) -> list:
        """fwd_hooks for one batch of `tokens` [B, T] (a mean is taken in the hook itself). Without
        tokens (a run from a residual stream, width `n`) the kinds that need them (TOKEN_KINDS) are
        left out: see `clamped`."""
        fixed: list[Intervention] = []
        dynamic: list[tuple[str, callable]] = []
        n = tokens.shape[1] if tokens is not None else n
        for clamp in clamps:
            if tokens is None and clamp.kind in TOKEN_KINDS:
                continue
            layers = by_layer(clamp.heads)
            ref_cache = None
            if clamp.kind in REF_KINDS:
                names = {_ref_hook(clamp.kind, layer) for layer in layers}
                ref = self.reference(clamp.reference)
                with torch.no_grad():
                    _, ref_cache = ref.bridge.run_with_cache(tokens.to(ref.device), names_filter=lambda h: h in names)
            answers = answer_pattern(tokens, self.tokenizer)[:, None] if clamp.kind == "pattern_answers" else None
            for layer, heads in layers.items():
                if clamp.kind == "zero":
                    fixed.append(Intervention.zero(z_hook(layer), heads))
                elif clamp.kind == "pattern_uniform":
                    fixed.append(Intervention.constant(pattern_hook(layer), uniform_pattern(n), heads))
                elif clamp.kind == "pattern_previous_token":
                    fixed.append(Intervention.constant(pattern_hook(layer), previous_token_pattern(n), heads))
                elif clamp.kind == "pattern_answers":
                    fixed.append(Intervention.constant(pattern_hook(layer), answers, heads))
                elif clamp.kind == "mean":
                    dynamic.append((z_hook(layer), _mean_hook(z_hook(layer), heads)))
                else:
                    hook = _ref_hook(clamp.kind, layer)
                    fixed.append(Intervention.patch(hook, ref_cache[hook].detach(), heads))
        return hooks_for(fixed) + dynamic


class ClampedForward(ClampHooks):
    """The trained model's forward pass with clamps as hooks, through a TransformerBridge that shares
    the model's parameters (gradients and optimizer updates land on the same tensors)."""

    def __init__(self, model, tokenizer):
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        super().__init__(tokenizer)
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

    def __call__(self, tokens: torch.Tensor, clamps: Sequence[Clamp], extra_hooks: Sequence = ()) -> torch.Tensor:
        with self.bridge.hooks(fwd_hooks=self.hooks(tokens, clamps) + list(extra_hooks)):
            return self.bridge(tokens)


@contextmanager
def clamped(model, clamps: Sequence[Clamp]):
    """Inside the block, every forward pass of `model.bridge` (a loaded checkpoint, fi.engine.models) runs with
    `clamps` as the training forward runs them (ClampHooks, built for that pass's own tokens), however
    it is called (the bridge itself, run_with_hooks, run_with_cache), so every measure of the
    checkpoint sees the clamped network. The clamps' hooks go first at their hook points, so a
    caller's hooks (a cache, a patch) see and override the clamped values, as they would an
    unclamped run's.

    Only a forward pass is clamped: fi.engine.patching's analytic path patching, which calls a block's
    parts directly on cached (clamped) head outputs, is not hooked twice. A pass that starts from a
    residual stream (start_at_layer: path patching's run 1, where every head from that layer up is
    frozen to a cached value anyway) has no tokens, so the kinds that need them (TOKEN_KINDS) are
    not applied there."""
    clamps = [c for c in clamps if c.heads]
    if not clamps:
        yield model
        return
    bridge = model.bridge
    builder = ClampHooks(model.tokenizer)
    points = bridge.hook_dict
    original = bridge.forward

    def forward(*args, **kwargs):
        inputs = args[0] if args else kwargs.get("input", kwargs.get("input_ids"))
        if not torch.is_tensor(inputs):
            raise TypeError(f"clamped {model.name}: pass token ids or residuals as a tensor, not {type(inputs).__name__}")
        is_tokens = kwargs.get("start_at_layer") is None and not torch.is_floating_point(inputs)
        hooks = builder.hooks(inputs if is_tokens else None, clamps, n=inputs.shape[1])
        added = []
        try:
            for name, fn in reversed(hooks):  # prepended, so reversed to keep their order
                point = points[name]
                added.append((point, point.add_hook(fn, dir="fwd", prepend=True)))
            return original(*args, **kwargs)
        finally:
            for point, handle in added:
                handle.hook.remove()
                point.fwd_hooks[:] = [h for h in point.fwd_hooks if h is not handle]

    bridge.forward = forward
    try:
        yield model
    finally:
        del bridge.forward


def _mean_hook(name: str, heads: list[int]):
    def hook(x, hook):
        value = x.detach()[:, :, heads].mean(0, keepdim=True)
        return Intervention.constant(name, value, heads).apply(x)
    return hook


def _ref_hook(kind: str, layer: int) -> str:
    return {"pattern_ref": pattern_hook(layer), "value_ref": qkv_hook(layer, "v"), "output_ref": z_hook(layer)}[kind]
