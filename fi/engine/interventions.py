"""What an intervention is, and how it becomes TransformerLens hooks.

One value, `Intervention`, says which hook, which heads, which positions and which batch rows are
changed, and what they become: another run's activation, a mean, zeros, a frozen attention pattern
(replace), or a vector added to them (add). `hooks_for` turns a list of them into `fwd_hooks` for
`run_with_hooks`. Every analysis (activation, path and attribution patching, ablation, circuit
evaluation, function vectors) and clamping during training build their runs from these values, so a
hook is written in one place only.

Axes, by hook (TransformerLens' conventions):
  hook_z, hook_q, hook_k, hook_v, hook_result   [batch, pos, head, d]       (k / v: key-value heads)
  hook_pattern, hook_attn_scores                [batch, head, query, key]   (positions: query axis)
  anything else (resid_pre, attn_out, ...)      [batch, pos, d]             (no head axis)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

OPS = ("replace", "add")
_HEAD_FIRST = ("hook_pattern", "hook_attn_scores")
_HEAD_SECOND = ("hook_z", "hook_q", "hook_k", "hook_v", "hook_result")


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def qkv_hook(layer: int, which: str) -> str:
    return f"blocks.{layer}.attn.hook_{which}"


def pattern_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def axes(hook: str) -> tuple[int | None, int]:
    """(head axis or None, position axis) of a hook's activation."""
    leaf = hook.rsplit(".", 1)[-1]
    if leaf in _HEAD_FIRST:
        return 1, 2
    if leaf in _HEAD_SECOND:
        return 2, 1
    return None, 1


@dataclass(frozen=True, eq=False)
class Intervention:
    """Change the activation at `hook` on rows `rows` (a slice of the batch; None: every row), heads
    `heads` (None: every head, or a hook without a head axis) and positions `positions` (a [rows, pos]
    or [pos] bool mask; None: every position).

    `value` is broadcast against the selected slice, whose axes are the hook's with the head axis
    narrowed to `heads` (e.g. hook_z: [rows, pos, len(heads), d]; a [len(heads), d] mean broadcasts).
    With op "replace" the slice becomes `value`; with op "add" `value` is added to it. A value with
    more rows than selected (a stacked run's source) is not allowed: select the rows first."""

    hook: str
    value: torch.Tensor
    heads: tuple[int, ...] | None = None
    positions: torch.Tensor | None = None
    rows: slice | None = None
    op: str = "replace"

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"intervention at {self.hook}: unknown op {self.op!r}; expected one of {OPS}")
        if self.heads is not None and axes(self.hook)[0] is None:
            raise ValueError(f"intervention at {self.hook}: this hook has no head axis, so heads must be None")

    # ---- the usual kinds ------------------------------------------------------------------------
    @classmethod
    def patch(cls, hook: str, source: torch.Tensor, heads: Sequence[int] | None = None,
              positions: torch.Tensor | None = None, rows: slice | None = None) -> Intervention:
        """The selected slice takes its value from `source`, another run's full activation at this hook
        (same shape as the selected rows: [rows, pos, head, d] for hook_z)."""
        heads = None if heads is None else tuple(int(h) for h in heads)
        head_axis = axes(hook)[0]
        value = source if heads is None else source.index_select(head_axis, torch.tensor(heads, device=source.device))
        return cls(hook, value, heads, positions, rows, "replace")

    @classmethod
    def zero(cls, hook: str, heads: Sequence[int] | None = None, positions: torch.Tensor | None = None,
             rows: slice | None = None) -> Intervention:
        return cls(hook, torch.zeros(()), None if heads is None else tuple(int(h) for h in heads), positions,
                   rows, "replace")

    @classmethod
    def constant(cls, hook: str, value: torch.Tensor, heads: Sequence[int] | None = None,
                 positions: torch.Tensor | None = None, rows: slice | None = None) -> Intervention:
        """A fixed value (a mean, a frozen pattern) broadcast over the selected rows and positions."""
        return cls(hook, value, None if heads is None else tuple(int(h) for h in heads), positions, rows, "replace")

    @classmethod
    def add(cls, hook: str, vector: torch.Tensor, heads: Sequence[int] | None = None,
            positions: torch.Tensor | None = None, rows: slice | None = None, scale: float = 1.0) -> Intervention:
        """`scale * vector` added to the selected slice (a function vector)."""
        return cls(hook, vector * scale, None if heads is None else tuple(int(h) for h in heads), positions,
                   rows, "add")

    # ---- application ------------------------------------------------------------------------------
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The activation with this intervention applied. In place under inference mode; out of place
        (through a clone) when gradients are recorded, so autograd sees the replacement (a replaced
        slice passes no gradient to what it replaced, the rest of the activation does)."""
        if torch.is_grad_enabled() and x.requires_grad:
            x = x.clone()
        head_axis, pos_axis = axes(self.hook)
        rows = self.rows if self.rows is not None else slice(None)
        view = x[rows]
        index: list = [slice(None)] * x.dim()
        if self.heads is not None:
            index[head_axis] = list(self.heads)
        current = view[tuple(index)]
        value = self.value.to(device=x.device, dtype=x.dtype)
        new = current + value if self.op == "add" else value.expand_as(current)
        if self.positions is not None:
            mask = self.positions.to(x.device)
            if mask.dim() == 1:
                mask = mask[None]
            # bring the [rows, pos] mask to the slice's axes: batch first, positions at pos_axis
            shape = [1] * current.dim()
            shape[0], shape[pos_axis] = mask.shape[0], mask.shape[1]
            if pos_axis != 1:
                mask = mask.reshape(shape)
            else:
                mask = mask.reshape(mask.shape + (1,) * (current.dim() - 2))
            new = torch.where(mask, new, current)
        if self.heads is None:
            view[...] = new
        else:
            view[tuple(index)] = new
        return x


def hooks_for(interventions: Sequence[Intervention]) -> list[tuple[str, callable]]:
    """`fwd_hooks` for `run_with_hooks`: one hook per hook name, applying that name's interventions in
    the order given (later ones see earlier ones' results)."""
    by_hook: dict[str, list[Intervention]] = {}
    for iv in interventions:
        by_hook.setdefault(iv.hook, []).append(iv)

    def make(ivs):
        def hook(x, hook):
            for iv in ivs:
                x = iv.apply(x)
            return x
        return hook
    return [(name, make(ivs)) for name, ivs in by_hook.items()]


def by_layer(heads: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """(layer, head) pairs grouped by layer, in the order given."""
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out
