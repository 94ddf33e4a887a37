"""The one patching engine: activation, path and attribution patching over attention heads, and the
head-output patches that ablation uses. Every analysis in `fi` goes through `Patcher`.

Conventions (the paper's, section 2):
  * A *normal* prompt shows the plain function (a+b); its *contrast* prompt the same demos shifted
    (a+b+k). Patches copy activations from the normal run into the contrast run.
  * The metric is the logit difference at the first answer token, normal-answer logit minus
    contrast-answer logit, averaged over examples: LD. Where the two answers share leading tokens
    (a character tokenizer spells ' b' / ' c' as [' ', 'b'] / [' ', 'c']), both prompts go on with
    that common prefix and LD is read at the first token where the answers differ
    (fi.answers.first_difference; evaluation's logit differences use the same position).
  * A patched run's score is normalised as (LD_patched - LD_contrast) / (LD_contrast - LD_normal):
    0 means no effect, -1 means the patch fully restores the normal behaviour (answering a+b).

Examples whose normal and contrast prompts tokenize to different lengths (possible with BPE
tokenizers), whose answer merges into the prompt's last token (see fi.answers), or whose two answers
never differ (offset 0), carry no signal and are dropped; the count dropped is reported.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import torch
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from fi.answers import AnswerTokenizationError, answer_token_ids, first_difference

RECEIVER_OUTPUT = "output"
QKV = ("q", "k", "v")
FINAL_RESID = "ln_final.hook_in"  # the residual stream after the last block


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def qkv_hook(layer: int, which: str) -> str:
    return f"blocks.{layer}.attn.hook_{which}"


@dataclass(frozen=True)
class Receiver:
    """Where a path ends: the model's output, or one head's query / key / value input."""

    layer: int | None = None
    head: int | None = None
    which: str | None = None  # q, k or v

    @classmethod
    def parse(cls, text: str) -> "Receiver":
        """'output' or 'L.H.q' / 'L.H.k' / 'L.H.v'."""
        if text == RECEIVER_OUTPUT:
            return cls()
        parts = text.split(".")
        if len(parts) != 3 or parts[2] not in QKV or not all(p.isdigit() for p in parts[:2]):
            raise ValueError(f"receiver {text!r}: expected 'output' or 'LAYER.HEAD.q|k|v'")
        return cls(int(parts[0]), int(parts[1]), parts[2])

    @property
    def is_output(self) -> bool:
        return self.layer is None

    def __str__(self) -> str:
        return RECEIVER_OUTPUT if self.is_output else f"{self.layer}.{self.head}.{self.which}"


@dataclass
class PatchingData:
    """Aligned normal / contrast prompts (right-padded to one width), each followed by the two
    answers' common prefix, and the answers' first differing tokens (see fi.answers.first_difference)."""

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

    def subset(self, idx: slice) -> "PatchingData":
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
    width = max(len(r[0]) for r in rows)
    normal = torch.full((len(rows), width), model.pad_id, dtype=torch.long)
    contrast = normal.clone()
    groups = {g: torch.zeros((len(rows), width), dtype=torch.bool) for g in POSITION_GROUPS}
    for i, (n_ids, c_ids, _, _, masks) in enumerate(rows):
        normal[i, : len(n_ids)] = torch.tensor(n_ids)
        contrast[i, : len(c_ids)] = torch.tensor(c_ids)
        for g in POSITION_GROUPS:
            groups[g][i, : len(c_ids)] = torch.tensor(masks[g])  # c_ids: prompt + common prefix
    return PatchingData(normal, contrast, torch.tensor([len(r[1]) - 1 for r in rows]),
                        torch.tensor([r[2] for r in rows]), torch.tensor([r[3] for r in rows]), groups, dropped)


def logit_diff(logits: torch.Tensor, last: torch.Tensor, normal_answer: torch.Tensor,
               contrast_answer: torch.Tensor) -> torch.Tensor:
    """Per-row normal-answer minus contrast-answer logit at each row's last prompt token."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    final = logits[rows, last.to(logits.device)]
    return (final.gather(1, normal_answer.to(logits.device)[:, None])
            - final.gather(1, contrast_answer.to(logits.device)[:, None]))[:, 0]


class Patcher:
    """Caches the normal and contrast runs of `data` once and answers every patching question on
    them. Work is done in chunks of `batch_size` examples; senders / heads are stacked along the
    batch dimension (`rows_per_pass` rows per forward pass)."""

    def __init__(self, model, data: PatchingData, batch_size: int = 16, rows_per_pass: int = 256):
        self.model = model
        self.bridge = model.bridge
        self.data = data
        self.batch_size = batch_size
        self.rows_per_pass = rows_per_pass
        self.n_layers = model.n_layers
        self.n_heads = model.n_heads
        self.n_kv_heads = int(getattr(self.bridge.cfg, "n_key_value_heads", None) or self.n_heads)
        self.device = model.device
        self.chunks = [data.subset(slice(i, i + batch_size)) for i in range(0, data.size, batch_size)]

    # The caches and the quantities derived from them are built on first use: attribution patching
    # alone needs far less (see attribution_patching).
    @cached_property
    def _caches(self) -> list[dict]:
        return [self._cache(c) for c in self.chunks]

    @cached_property
    def ld_normal(self) -> float:
        return float(torch.cat([c["ld_normal"] for c in self._caches]).mean())

    @cached_property
    def ld_contrast(self) -> float:
        return float(torch.cat([c["ld_contrast"] for c in self._caches]).mean())

    @cached_property
    def fast_output_path(self) -> bool:
        return self._fast_path_holds()

    def _fast_path_holds(self, atol: float = 1e-3) -> bool:
        """The analytic run 1 (see _frozen_resid_at_last) assumes a pre-norm sequential block:
        resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp(ln2(resid_mid)). Check it
        on this model by rebuilding the contrast run's final logits that way; architectures that
        differ (parallel attention and MLP, extra norms) use the hooked run 1 instead."""
        chunk, cache = self.chunks[0], self._caches[0]
        c = cache["contrast"]
        rows = torch.arange(chunk.size)
        try:
            with torch.inference_mode():
                resid = c["blocks.0.hook_resid_pre"][rows, chunk.last]
                for layer in range(self.n_layers):
                    blk = self.bridge.blocks[layer]
                    z = c[z_hook(layer)][rows, chunk.last][:, None]
                    resid = resid + blk.attn.o(z.flatten(-2))[:, 0]
                    resid = resid + blk.mlp(blk.ln2(resid[:, None]))[:, 0]
                logits = self.bridge.unembed(self.bridge.ln_final(resid[:, None]))[:, 0]
            ld = logits[rows, chunk.normal_answer] - logits[rows, chunk.contrast_answer]
        except Exception:  # a block without these parts
            return False
        scale = max(1.0, float(cache["ld_contrast"].abs().max()))
        return bool((ld.float().cpu() - cache["ld_contrast"]).abs().max() <= atol * scale)

    # ---- caches -------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [z_hook(layer), f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid",
                      f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
        return names

    def _cache(self, chunk: PatchingData) -> dict:
        names = set(self._names())
        out = {}
        with torch.inference_mode():
            for kind, tokens in (("normal", chunk.normal), ("contrast", chunk.contrast)):
                logits, cache = self.bridge.run_with_cache(tokens.to(self.device), names_filter=lambda n: n in names)
                out[f"ld_{kind}"] = logit_diff(logits, chunk.last, chunk.normal_answer, chunk.contrast_answer).float().cpu()
                out[kind] = {n: cache[n] for n in names}
        return out

    def normalise(self, ld: torch.Tensor | float) -> torch.Tensor | float:
        return (ld - self.ld_contrast) / (self.ld_contrast - self.ld_normal)

    def _mean_over_chunks(self, per_chunk: Iterable[torch.Tensor]) -> torch.Tensor:
        """Per-chunk sums of LD (any leading shape, examples last) -> mean over all examples."""
        total = None
        for s in per_chunk:
            total = s if total is None else total + s
        return total / self.data.size

    # ---- activation patching ------------------------------------------------------------------
    def activation_patching(self, group: str | None = None) -> torch.Tensor:
        """[layers, heads]: each head's hook_z copied from the normal run into the contrast run, at
        all positions or only at a position group's positions; normalised."""
        heads = [(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]
        sums = self._mean_over_chunks(self._act_patch_chunk(i, heads, group) for i in range(len(self.chunks)))
        return self.normalise(sums).reshape(self.n_layers, self.n_heads)

    def _stacked(self, chunk: PatchingData, items: Sequence, run) -> torch.Tensor:
        """Per-item sums of LD over the chunk, the contrast prompt repeated once per item along the
        batch (`rows_per_pass` rows a pass); `run(block, tokens)` runs one block of items."""
        b = chunk.size
        per_pass = max(1, self.rows_per_pass // b)
        sums = []
        for start in range(0, len(items), per_pass):
            block = items[start:start + per_pass]
            tokens = chunk.contrast.to(self.device).repeat(len(block), 1)
            with torch.inference_mode():
                logits = run(block, tokens)
            ld = logit_diff(logits, chunk.last.repeat(len(block)), chunk.normal_answer.repeat(len(block)),
                            chunk.contrast_answer.repeat(len(block)))
            sums.append(ld.float().cpu().reshape(len(block), b).sum(1))
        return torch.cat(sums) if sums else torch.zeros(0)

    @staticmethod
    def _rows_of_layer(block, layer):
        return [(i, h) for i, (lyr, h) in enumerate(block) if lyr == layer]

    def _act_patch_chunk(self, ci: int, heads: Sequence[tuple[int, int]], group: str | None) -> torch.Tensor:
        chunk, cache = self.chunks[ci], self._caches[ci]
        mask = chunk.groups[group].to(self.device) if group else None

        def run(block, tokens):
            hooks = [(z_hook(layer), self._patch_z_rows(self._rows_of_layer(block, layer),
                                                        cache["normal"][z_hook(layer)], chunk.size, mask))
                     for layer in sorted({layer for layer, _ in block})]
            return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        return self._stacked(chunk, heads, run)

    @staticmethod
    def _patch_z_rows(rows, source, b, mask):
        def hook(z, hook):
            for i, h in rows:
                sl = slice(i * b, (i + 1) * b)
                if mask is None:
                    z[sl, :, h] = source[:, :, h]
                else:
                    z[sl, :, h] = torch.where(mask[..., None], source[:, :, h], z[sl, :, h])
            return z
        return hook

    # ---- path patching ------------------------------------------------------------------------
    def path_patching(self, receiver: Receiver | str = RECEIVER_OUTPUT) -> torch.Tensor:
        """[layers, heads]: the paper's path patching from every sender head to `receiver`.

        Run 1: the contrast prompt with every head's hook_z frozen to its contrast value except the
        sender's, which takes its normal value; MLPs and norms recompute. To the output, the metric
        is read from run 1. To a head's q/k/v: its input is taken from run 1 and patched into a
        clean contrast run (run 2)."""
        receiver = Receiver.parse(receiver) if isinstance(receiver, str) else receiver
        senders = [(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]
        if receiver.is_output and self.fast_output_path:
            sums = self._mean_over_chunks(self._path_output_chunk(i) for i in range(len(self.chunks)))
        elif receiver.is_output:
            sums = self._mean_over_chunks(self._path_output_chunk_hooked(i, senders) for i in range(len(self.chunks)))
        else:
            sums = self._mean_over_chunks(self._path_head_chunk(i, senders, receiver) for i in range(len(self.chunks)))
        return self.normalise(sums).reshape(self.n_layers, self.n_heads)

    def _frozen_resid_at_last(self, ci: int, sender_layer: int) -> torch.Tensor:
        """Run 1 at the last prompt position for every sender head of `sender_layer`, stacked
        [heads * B, d_model]. With every head frozen, attention moves nothing between positions, so
        the last position evolves alone: the sender's changed head output enters through the output
        projection, and only norms and MLPs recompute, layer by layer."""
        chunk, cache = self.chunks[ci], self._caches[ci]
        c, n = cache["contrast"], cache["normal"]
        b, rows = chunk.size, torch.arange(chunk.size)
        last = chunk.last
        heads = self.n_heads
        block = self.bridge.blocks[sender_layer]
        z_c = c[z_hook(sender_layer)][rows, last]  # [B, H, d]
        z_n = n[z_hook(sender_layer)][rows, last]
        z = z_c.unsqueeze(0).repeat(heads, 1, 1, 1)  # [H_sender, B, H, d]
        idx = torch.arange(heads)
        z[idx, :, idx] = z_n.permute(1, 0, 2)[idx]
        attn_out = block.attn.o(z.reshape(heads * b, 1, -1))[:, 0]  # [H*B, d]
        resid = c[f"blocks.{sender_layer}.hook_resid_pre"][rows, last].repeat(heads, 1) + attn_out
        for layer in range(sender_layer, self.n_layers):
            blk = self.bridge.blocks[layer]
            if layer > sender_layer:  # every head frozen: the contrast run's attention output
                resid = resid + c[f"blocks.{layer}.hook_attn_out"][rows, last].repeat(heads, 1)
            resid = resid + blk.mlp(blk.ln2(resid[:, None]))[:, 0]
        return resid

    def _path_output_chunk(self, ci: int) -> torch.Tensor:
        chunk = self.chunks[ci]
        sums = []
        with torch.inference_mode():
            for layer in range(self.n_layers):
                resid = self._frozen_resid_at_last(ci, layer)
                logits = self.bridge.unembed(self.bridge.ln_final(resid[:, None]))[:, 0]  # [H*B, V]
                rows = torch.arange(logits.shape[0])
                na = chunk.normal_answer.repeat(self.n_heads).to(logits.device)
                ca = chunk.contrast_answer.repeat(self.n_heads).to(logits.device)
                ld = logits[rows, na] - logits[rows, ca]
                sums.append(ld.float().cpu().reshape(self.n_heads, chunk.size).sum(1))
        return torch.cat(sums)

    def _frozen_hooks(self, cache: dict, block, b: int, n_layers: int) -> list:
        return [(z_hook(layer), self._freeze_z(cache["contrast"][z_hook(layer)], cache["normal"][z_hook(layer)],
                                               self._rows_of_layer(block, layer), b))
                for layer in range(n_layers)]

    def _path_output_chunk_hooked(self, ci: int, senders) -> torch.Tensor:
        """Run 1 as batched hooked forward passes (any architecture), metric read from its logits."""
        chunk, cache = self.chunks[ci], self._caches[ci]

        def run(block, tokens):
            return self.bridge.run_with_hooks(tokens, fwd_hooks=self._frozen_hooks(cache, block, chunk.size, self.n_layers))
        return self._stacked(chunk, senders, run)

    def _path_head_chunk(self, ci: int, senders, receiver: Receiver) -> torch.Tensor:
        """Run 1 and run 2 as batched hooked forward passes, senders stacked along the batch; run 1
        stops at the receiver's layer. Senders at or above the receiver's layer cannot reach its input
        (their effect is exactly 0: run 2 is then the clean contrast run)."""
        chunk, cache = self.chunks[ci], self._caches[ci]
        live = [(layer, head) for layer, head in senders if layer < receiver.layer]
        out = torch.full((len(senders),), float(cache["ld_contrast"].sum()))
        recv_hook = qkv_hook(receiver.layer, receiver.which)
        group = self.n_heads // self.n_kv_heads
        recv_index = receiver.head if receiver.which == "q" else receiver.head // group

        def run(block, tokens):
            captured = {}

            def capture(x, hook):
                captured["x"] = x[:, :, recv_index].clone()
                return x

            def patch(x, hook):
                x[:, :, recv_index] = captured["x"]
                return x
            hooks = self._frozen_hooks(cache, block, chunk.size, receiver.layer)
            self.bridge.run_with_hooks(tokens, fwd_hooks=hooks + [(recv_hook, capture)], stop_at_layer=receiver.layer + 1)
            return self.bridge.run_with_hooks(tokens, fwd_hooks=[(recv_hook, patch)])
        for (layer, head), s in zip(live, self._stacked(chunk, live, run)):
            out[layer * self.n_heads + head] = s
        return out

    @staticmethod
    def _freeze_z(contrast_z, normal_z, sender_rows, b):
        """Every head frozen to its contrast value; each stacked sender row-block gets its sender
        head's normal value."""
        def hook(z, hook):
            n = z.shape[0] // b
            z = contrast_z.repeat(n, 1, 1, 1).clone()
            for i, h in sender_rows:
                z[i * b:(i + 1) * b, :, h] = normal_z[:, :, h]
            return z
        return hook

    # ---- attribution patching -----------------------------------------------------------------
    def attribution_patching(self) -> torch.Tensor:
        """[layers, heads]: first-order estimate of activation patching for every head, normalised
        like the exact methods: sum over positions of (z_normal - z_contrast) . dLD/dz at the
        contrast run.

        Per chunk: one forward pass on the normal prompt (hook_z only; skipped when the caches
        exist), one on the contrast prompt with gradients, one backward. Its cost does not grow with
        the number of heads, and three things keep it small:
          * the estimate for head h of layer l is the derivative of LD along z_l + a_h (z_normal -
            z_contrast) at a = 0, so the backward pass computes gradients only for L x H scalars
            a, not for the weights (they are frozen for the pass);
          * both runs stop at the final residual stream, and LD is read from the last position only
            (final norm + unembedding of two rows instead of every position's full vocabulary);
            checked against the full logits on the first chunk, with full runs as the fallback;
          * the normal run caches hook_z only."""
        total = torch.zeros(self.n_layers, self.n_heads)
        have_caches = "_caches" in self.__dict__
        ld_sums = {"normal": 0.0, "contrast": 0.0}
        for ci, chunk in enumerate(self.chunks):
            if have_caches:
                normal_z = {layer: self._caches[ci]["normal"][z_hook(layer)] for layer in range(self.n_layers)}
            else:
                check = ci == 0 and "_ld_from_final_resid_holds" not in self.__dict__
                normal_z, ld_n, holds = self._normal_z_and_ld(chunk, check=check)
                if check:
                    self._ld_from_final_resid_holds = holds
                ld_sums["normal"] += float(ld_n.sum())
            alphas = {}

            def along_delta(layer):
                def hook(z, hook):
                    alpha = torch.zeros(self.n_heads, dtype=z.dtype, device=z.device, requires_grad=True)
                    alphas[layer] = alpha
                    delta = normal_z[layer] - z.detach()
                    return z + alpha[:, None] * delta
                return hook
            hooks = [(z_hook(layer), along_delta(layer)) for layer in range(self.n_layers)]
            with torch.enable_grad(), _frozen_parameters(self.bridge):
                ld = self._run_ld(chunk, hooks)
                grads = torch.autograd.grad(ld.sum(), [alphas[layer] for layer in range(self.n_layers)])
            ld_sums["contrast"] += float(ld.detach().sum())
            for layer, g in enumerate(grads):
                # pads sit right of every real token and get no gradient
                total[layer] += g.float().cpu()
        if not have_caches:  # the same numbers the caches would give, from this method's own runs
            self.__dict__.setdefault("ld_normal", ld_sums["normal"] / self.data.size)
            self.__dict__.setdefault("ld_contrast", ld_sums["contrast"] / self.data.size)
        return total / self.data.size / (self.ld_contrast - self.ld_normal)

    def _ld_from_final_resid(self, resid: torch.Tensor, chunk: PatchingData) -> torch.Tensor:
        rows = torch.arange(chunk.size)
        logits = self.bridge.unembed(self.bridge.ln_final(resid[rows, chunk.last][:, None]))[:, 0]
        return logits[rows, chunk.normal_answer] - logits[rows, chunk.contrast_answer]

    @cached_property
    def _ld_from_final_resid_holds(self) -> bool:
        """Whether LD read from the final residual stream (final norm + unembedding of the last
        position) equals LD from the model's logits: false for models that transform logits after
        the unembedding (Gemma-2's soft-capping, scaled logits), checked on the first chunk's normal
        prompt (attribution_patching folds this check into a run it needs anyway)."""
        return self._normal_z_and_ld(self.chunks[0], check=True)[2]

    def _normal_z_and_ld(self, chunk: PatchingData, check: bool = False) -> tuple[dict, torch.Tensor, bool]:
        """hook_z of every layer and LD per example of the normal run; with `check`, a full run
        that also tells whether LD can be read from the final residual stream (third value)."""
        store = {}

        def keep(layer):
            def hook(z, hook):
                store[layer] = z
                return z
            return hook
        hooks = [(z_hook(layer), keep(layer)) for layer in range(self.n_layers)]
        tokens = chunk.normal.to(self.device)
        with torch.inference_mode():
            if not check:
                return store, self._run_ld(chunk, hooks, tokens=tokens), True
            hf_config = getattr(getattr(self.bridge, "original_model", None), "config", None)
            if FINAL_RESID not in self.bridge.hook_dict or getattr(hf_config, "final_logit_softcapping", None):
                logits = self.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
                return store, logit_diff(logits, chunk.last, chunk.normal_answer, chunk.contrast_answer), False

            def grab(resid, hook):
                store["final"] = resid
                return resid
            logits = self.bridge.run_with_hooks(tokens, fwd_hooks=hooks + [(FINAL_RESID, grab)])
            full = logit_diff(logits, chunk.last, chunk.normal_answer, chunk.contrast_answer)
            try:
                short = self._ld_from_final_resid(store.pop("final"), chunk)
            except Exception:  # no ln_final / unembed components of this shape
                return store, full, False
        # float noise between the two routes is ~1e-7 in float32; a transform of the logits (or
        # half precision's rounding, which then takes the slower route) shows as far more
        scale = max(1.0, float(full.abs().max()))
        return store, full, bool((short.float() - full.float()).abs().max() <= 1e-5 * scale)

    def _run_ld(self, chunk: PatchingData, hooks: list, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """LD per example of one run under `hooks`: the contrast prompt unless `tokens` is given."""
        tokens = (chunk.contrast if tokens is None else tokens).to(self.device)
        if self._ld_from_final_resid_holds:
            def stop(resid, hook):
                raise StopAtLayerException(resid)
            resid = self.bridge.run_with_hooks(tokens, fwd_hooks=hooks + [(FINAL_RESID, stop)])
            return self._ld_from_final_resid(resid, chunk)
        logits = self.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        return logit_diff(logits, chunk.last, chunk.normal_answer, chunk.contrast_answer)

    # ---- patched runs used by ablation and discovery checks -------------------------------------
    def patched_logit_diff(self, heads: Sequence[tuple[int, int]]) -> float:
        """Normalised effect of patching a *set* of heads' hook_z from the normal run at once."""
        sums = []
        for chunk, cache in zip(self.chunks, self._caches):
            hooks = []
            for layer in sorted({lyr for lyr, _ in heads}):
                rows = [(0, h) for lyr, h in heads if lyr == layer]
                hooks.append((z_hook(layer), self._patch_z_rows(rows, cache["normal"][z_hook(layer)], chunk.size, None)))
            with torch.inference_mode():
                logits = self.bridge.run_with_hooks(chunk.contrast.to(self.device), fwd_hooks=hooks)
            sums.append(logit_diff(logits, chunk.last, chunk.normal_answer, chunk.contrast_answer).sum().float().cpu())
        return float(self.normalise(self._mean_over_chunks(sums)))


@contextmanager
def _frozen_parameters(module: torch.nn.Module):
    """requires_grad off for every parameter during the block (restored after), so a backward pass
    computes only the gradients asked for."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
