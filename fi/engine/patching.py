"""The intervention engine: activation, path and attribution patching over attention heads, and the
patched runs that circuit evaluation uses, in the shape of TransformerLens' `patching.py`: one
generic function (`run_with_interventions`: a contrast run, stacked once per variant along the batch,
each variant with its own `fi.engine.interventions.Intervention`s, read through one metric) and thin
specialisations, each a function of (model, cache, interventions, metric).

Conventions (the paper's, section 2):
  * A *normal* prompt shows the plain function (a+b); its *contrast* prompt the same demos shifted
    (a+b+k). Patches copy activations from the normal run into the contrast run.
  * The metric is a parameter (`Metric`, fixed when a `RunCache` is built, read by every method on
    it): a function of the two answers' logits at the read position. The paper's, and the default,
    is the logit difference at the first answer token, normal-answer logit minus contrast-answer
    logit, averaged over examples: LD (the names below say LD for whatever metric the cache
    reads). Where the two answers share leading tokens (a character tokenizer spells ' b' / ' c'
    as [' ', 'b'] / [' ', 'c']), both prompts go on with that common prefix and LD is read at the
    first token where the answers differ
    (fi.engine.answers.first_difference; evaluation's logit differences use the same position).
  * A patched run's score is normalised as (LD_patched - LD_contrast) / (LD_contrast - LD_normal):
    0 means no effect, -1 means the patch fully restores the normal behaviour (answering a+b).

What is computed once, immutably: `RunCache` holds the normal and contrast runs' activations and LDs
per chunk of examples; `fi.engine.route.Route` records how this model is read (LD from the final
residual with only the two answers' unembedding rows, or from full logits; path patching's run 1
analytic at the last position, or hooked), decided once from checks with full logits on the first
chunk's own runs or, where full logits are costly, on a short probe (build_cache, ROUTE_PROBE).

The prompt pairs (`fi.engine.pairs.PatchingData`, `build_patching_data`) drop examples whose normal and
contrast prompts tokenize to different lengths (possible with BPE tokenizers), whose answer merges
into the prompt's last token (see fi.engine.answers), or whose two answers never differ (offset 0):
they carry no signal; the count dropped is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from fi.engine.interventions import Intervention, by_layer, hooks_for, pattern_hook, qkv_hook, z_hook
from fi.engine.pairs import Metric, PatchingData, logit_difference
from fi.engine.readout import capture, run_hooked
from fi.engine.route import Route, attn_out, attn_write, final_metric, mlp_out, mlp_write, read_ld, route_and_first_runs
from fi.io import progress

RECEIVER_OUTPUT = "output"
QKV = ("q", "k", "v")
Head = tuple[int, int]

__all__ = ["Receiver", "RunCache", "Patcher", "activation_patching", "attribution_patching", "build_cache",
           "build_normal_cache", "patched_effect", "path_patching", "path_patching_to_heads", "run_with_interventions"]


@dataclass(frozen=True)
class Receiver:
    """Where a path ends: the model's output, or one head's query / key / value input."""

    layer: int | None = None
    head: int | None = None
    which: str | None = None  # q, k or v

    @classmethod
    def parse(cls, text: str) -> Receiver:
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


# ---- the cache: the normal and contrast runs, built once ------------------------------------------

def cache_names(n_layers: int) -> list[str]:
    """What the methods read from the cached runs: each layer's head outputs (z) and the residual
    entering it (runs start there)."""
    names = []
    for layer in range(n_layers):
        names += [z_hook(layer), f"blocks.{layer}.hook_resid_pre"]
    return names


@dataclass(frozen=True)
class RunCache:
    """The normal and contrast runs of `data`, chunk by chunk, built once by `build_cache`.

    chunks[i]              the i-th `batch_size` examples (PatchingData)
    normal[i], contrast[i] hook name -> activation of that run: z [B, T, H, d_head], resid_pre
                           [B, T, d_model]
    ld_normal, ld_contrast [N] the metric per example of each run (ld_contrast None and contrast
                           empty in a normal-run-only cache: build_normal_cache)
    metric                 what every run on this cache is read as (default: LD)
    variant_lds            mean LD of each circuit variant already run on these prompts
                           (fi.methods.circuit.circuit_lds), so that no variant runs twice"""

    data: PatchingData
    route: Route
    chunks: tuple
    normal: tuple
    contrast: tuple
    ld_normal: torch.Tensor
    ld_contrast: torch.Tensor | None
    n_layers: int
    n_heads: int
    metric: Metric = field(default=logit_difference, compare=False, repr=False)
    variant_lds: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def mean_ld_normal(self) -> float:
        return float(self.ld_normal.mean())

    @property
    def mean_ld_contrast(self) -> float:
        return float(self.ld_contrast.mean())

    def normalise(self, ld):
        """(LD - LD_contrast) / (LD_contrast - LD_normal): 0 no effect, -1 the normal behaviour."""
        return (ld - self.mean_ld_contrast) / (self.mean_ld_contrast - self.mean_ld_normal)

    def source(self, run: str, i: int) -> dict:
        return (self.normal if run == "normal" else self.contrast)[i]


def _capture_run(model, route: Route, chunk: PatchingData, tokens: torch.Tensor, names: set,
                 metric: Metric) -> tuple[dict, torch.Tensor]:
    store: dict = {}
    with torch.inference_mode():
        ld = read_ld(model, route, tokens.to(model.device), capture(store, sorted(names)), chunk.last,
                     chunk.normal_answer, chunk.contrast_answer, metric=metric)
    return store, ld.float().cpu()


def build_cache(model, data: PatchingData, route: Route | None = None, batch_size: int = 16,
                names: Sequence[str] | None = None, metric: Metric = logit_difference) -> RunCache:
    """Run the normal and contrast prompts of `data` once, keeping `names` (default: cache_names),
    read by `route` (default: decided once, see ROUTE_PROBE) as `metric` (every method on the cache
    reads its runs so)."""
    wanted = set(names if names is not None else cache_names(model.n_layers))
    chunks = tuple(data.subset(slice(i, i + batch_size)) for i in range(0, data.size, batch_size))
    route, first = route_and_first_runs(model, data, chunks[0], wanted, route, True, metric)
    normal, contrast, ld_n, ld_c = [], [], [], []
    for i, chunk in enumerate(progress(chunks, "normal and contrast runs")):
        if i == 0 and first is not None:
            acts_n, ld_normal, acts_c, ld_contrast = first
        else:
            acts_n, ld_normal = _capture_run(model, route, chunk, chunk.normal, wanted, metric)
            acts_c, ld_contrast = _capture_run(model, route, chunk, chunk.contrast, wanted, metric)
        normal.append(acts_n)
        ld_n.append(ld_normal)
        contrast.append(acts_c)
        ld_c.append(ld_contrast)
    return RunCache(data, route, chunks, tuple(normal), tuple(contrast), torch.cat(ld_n), torch.cat(ld_c),
                    model.n_layers, model.n_heads, metric)


def build_normal_cache(model, data: PatchingData, batch_size: int = 16, route: Route | None = None,
                       metric: Metric = logit_difference) -> RunCache:
    """The normal run only, keeping every layer's head outputs: all attribution patching needs (its
    contrast run is its own gradient pass). Without a route, whether LD may be read from the final
    residual is checked once (see ROUTE_PROBE); the route records no analytic path (attribution has
    none)."""
    wanted = {z_hook(layer) for layer in range(model.n_layers)}
    chunks = tuple(data.subset(slice(i, i + batch_size)) for i in range(0, data.size, batch_size))
    route, first = route_and_first_runs(model, data, chunks[0], wanted, route, False, metric)
    normal, ld_n = [], []
    for i, chunk in enumerate(progress(chunks, "normal runs")):
        if i == 0 and first is not None:
            acts, ld = first[0], first[1]
        else:
            acts, ld = _capture_run(model, route, chunk, chunk.normal, wanted, metric)
        normal.append(acts)
        ld_n.append(ld)
    return RunCache(data, route, chunks, tuple(normal), (), torch.cat(ld_n), None, model.n_layers, model.n_heads,
                    metric)


# ---- the one generic function ---------------------------------------------------------------------

def run_with_interventions(model, cache: RunCache, i: int, variants: Sequence[Sequence[Intervention]],
                           start_at_layer: int | None = None, extra_hooks: Sequence = (),
                           stop_at_layer: int | None = None, last_position_only: bool = False) -> torch.Tensor:
    """LD [V, B] of chunk i's contrast prompt run once per variant, stacked along the batch: variant
    v's interventions (given for one chunk's B rows) act on rows v*B..(v+1)*B.

    With `start_at_layer`, the runs start at that layer from the cached contrast residual (exact when
    no variant changes anything below it). With `last_position_only` as well, only the read position's
    residual goes in (one position per row: exact when every head's output is fixed by the
    interventions, since attention then moves nothing between positions; interventions are given at
    that one position). With `stop_at_layer`, the run stops before that layer and nothing is read
    (returns None): `extra_hooks` then capture what is wanted."""
    chunk = cache.chunks[i]
    b, n_var = chunk.size, len(variants)
    interventions = [replace(iv, rows=slice(v * b, (v + 1) * b)) for v, ivs in enumerate(variants) for iv in ivs]
    hooks = hooks_for(interventions) + list(extra_hooks)
    last = chunk.last
    if start_at_layer is not None:
        resid = cache.contrast[i][f"blocks.{start_at_layer}.hook_resid_pre"]
        if last_position_only:
            resid, last = resid[torch.arange(b), chunk.last][:, None], torch.zeros_like(chunk.last)
        inputs = resid.repeat(n_var, 1, 1)
    else:
        inputs = chunk.contrast.to(model.device).repeat(n_var, 1)
    with torch.inference_mode():
        if stop_at_layer is not None:
            run_hooked(model, inputs, hooks, start_at_layer, stop_at_layer=stop_at_layer)
            return None
        ld = read_ld(model, cache.route, inputs, hooks, last.repeat(n_var), chunk.normal_answer.repeat(n_var),
                     chunk.contrast_answer.repeat(n_var), start_at_layer, cache.metric)
    return ld.float().cpu().reshape(n_var, b)


def default_rows_per_pass(model) -> int:
    """How many rows (variants x prompts) one stacked run holds by default. On a CPU a forward pass
    costs more per row as the batch grows past a few dozen rows (a 12-layer d_model 768 model, 29
    tokens: 0.062 s a row at 8 rows, 0.079 at 96; activation patching 38 s with 16-row passes
    against 48 s with 256: bench/bench_peers.py), while an accelerator wants wide batches."""
    return 16 if str(model.device).startswith("cpu") else 256


def _blocks(items: Sequence, b: int, rows_per_pass: int):
    per_pass = max(1, rows_per_pass // b)
    for start in range(0, len(items), per_pass):
        yield items[start:start + per_pass]


def _all_heads(cache: RunCache) -> list[Head]:
    return [(layer, head) for layer in range(cache.n_layers) for head in range(cache.n_heads)]


def _per_head_mean(cache: RunCache, per_chunk_sums) -> torch.Tensor:
    """Per-chunk [L*H] LD sums -> normalised [L, H] scores."""
    total = sum(per_chunk_sums)
    return cache.normalise(total / cache.data.size).reshape(cache.n_layers, cache.n_heads)


# ---- activation patching ------------------------------------------------------------------------

def activation_patching(model, cache: RunCache, group: str | None = None, rows_per_pass: int = 256) -> torch.Tensor:
    """[layers, heads]: each head's hook_z copied from the normal run into the contrast run, at all
    positions or at a position group's; normalised. Each layer's heads run from that layer on,
    starting from the cached contrast residual (layers below are the contrast run's); on the
    analytic route without recomputing the patched layer's attention (`_activation_ld_analytic`)."""
    sums = []
    for i, chunk in enumerate(progress(cache.chunks, f"activation patching ({group or 'all'})")):
        mask = chunk.groups[group].to(model.device) if group else None
        out = torch.zeros(cache.n_layers * cache.n_heads)
        for layer in range(cache.n_layers):
            source = cache.normal[i][z_hook(layer)]
            heads = list(range(cache.n_heads))
            for block in _blocks(heads, chunk.size, rows_per_pass):
                if cache.route.analytic_output_path:
                    ld = _activation_ld_analytic(model, cache, i, layer, block, mask)
                else:
                    variants = [[Intervention.patch(z_hook(layer), source, heads=[h], positions=mask)] for h in block]
                    ld = run_with_interventions(model, cache, i, variants, start_at_layer=layer)
                out[[layer * cache.n_heads + h for h in block]] = ld.sum(1)
        sums.append(out)
    return _per_head_mean(cache, sums)


def _activation_ld_analytic(model, cache: RunCache, i: int, layer: int, heads: Sequence[int],
                            mask: torch.Tensor | None) -> torch.Tensor:
    """LD [V, B] of activation patching of `heads` at `layer` (one variant each) on chunk i, with
    the parts of the blocks that the route's check validated (sequential blocks: residual + attention
    write + MLP write, post-norms included): the patched layer's attention output is its output
    projection of the cached head outputs with one head's replaced (its queries, keys and values are
    the contrast run's, so they need no recomputing), and the last layer's MLP runs at the read
    position only. The layers between run as usual."""
    chunk = cache.chunks[i]
    b, last = chunk.size, chunk.last
    blocks, n_layers, n_var = model.bridge.blocks, cache.n_layers, len(heads)
    c = cache.contrast[i]
    z = c[z_hook(layer)].unsqueeze(0).repeat(n_var, 1, 1, 1, 1)  # [V, B, T, H, d_head]
    normal = cache.normal[i][z_hook(layer)]
    for v, h in enumerate(heads):
        z[v, :, :, h] = normal[:, :, h] if mask is None else torch.where(mask[..., None], normal[:, :, h], z[v, :, :, h])
    pre = c[f"blocks.{layer}.hook_resid_pre"].repeat(n_var, 1, 1)
    with torch.inference_mode():
        mid = pre + attn_out(blocks[layer], z.flatten(-2).reshape(n_var * b, z.shape[2], -1))
        if layer < n_layers - 1:
            resid = mid + mlp_out(blocks[layer], mid)

            def stop(x, hook):
                raise StopAtLayerException(x)
            mid = run_hooked(model, resid, [(f"blocks.{n_layers - 1}.hook_resid_mid", stop)], layer + 1)
        at = mid[torch.arange(n_var * b), last.repeat(n_var)]  # [V * B, d_model]
        final = at + mlp_write(blocks[n_layers - 1], at)
        ld = final_metric(model, final, chunk.normal_answer.repeat(n_var), chunk.contrast_answer.repeat(n_var),
                       cache.route.residual_readout, cache.metric)
    return ld.float().cpu().reshape(n_var, b)


def patched_effect(model, cache: RunCache, heads: Sequence[Head]) -> float:
    """Normalised effect of patching a *set* of heads' hook_z from the normal run at once, at every
    position (fi.methods.circuit patches by position)."""
    total = 0.0
    for i in range(len(cache.chunks)):
        ivs = [Intervention.patch(z_hook(layer), cache.normal[i][z_hook(layer)], heads=hs)
               for layer, hs in by_layer(heads).items()]
        total += float(run_with_interventions(model, cache, i, [ivs]).sum())
    return float(cache.normalise(total / cache.data.size))


# ---- path patching --------------------------------------------------------------------------------

def _frozen(cache: RunCache, i: int, sender: Head, from_layer: int, to_layer: int,
            at_last: bool = False) -> list[Intervention]:
    """Run 1 of path patching for one sender: every head of layers from_layer..to_layer-1 frozen to
    its contrast value, the sender given its normal value (at every position, or with `at_last` at
    the read position only, for runs of that one position)."""
    layer, head = sender
    chunk = cache.chunks[i]

    def z(run, lyr):
        act = cache.source(run, i)[z_hook(lyr)]
        return act[torch.arange(chunk.size), chunk.last][:, None] if at_last else act
    ivs = [Intervention.patch(z_hook(lyr), z("contrast", lyr)) for lyr in range(from_layer, to_layer)]
    return ivs + [Intervention.patch(z_hook(layer), z("normal", layer), heads=[head])]


def path_patching(model, cache: RunCache, receiver: Receiver | str = RECEIVER_OUTPUT,
                  rows_per_pass: int = 256) -> torch.Tensor:
    """[layers, heads]: the paper's path patching from every sender head to `receiver`.

    Run 1: the contrast prompt with every head's hook_z frozen to its contrast value except the
    sender's, which takes its normal value; MLPs and norms recompute. To the output, the metric is
    read from run 1. To a head's q/k/v: its input is taken from run 1 and patched into a clean
    contrast run (run 2; see `path_patching_to_heads`). Layers below the sender are the contrast
    run's in both runs, so each sender's runs start at its layer from the cached residual."""
    receiver = Receiver.parse(receiver) if isinstance(receiver, str) else receiver
    if not receiver.is_output:
        return path_patching_to_heads(model, cache, [receiver], rows_per_pass)[receiver]
    if cache.route.analytic_output_path:
        return _per_head_mean(cache, (_path_output_analytic(model, cache, i) for i in range(len(cache.chunks))))
    sums = []
    for i, chunk in enumerate(progress(cache.chunks, "path patching -> output")):
        out = torch.zeros(cache.n_layers * cache.n_heads)
        for layer in range(cache.n_layers):
            for block in _blocks(list(range(cache.n_heads)), chunk.size, rows_per_pass):
                # every head frozen: the read position evolves alone, so run 1 needs only it
                variants = [_frozen(cache, i, (layer, h), layer, cache.n_layers, at_last=True) for h in block]
                ld = run_with_interventions(model, cache, i, variants, start_at_layer=layer, last_position_only=True)
                out[[layer * cache.n_heads + h for h in block]] = ld.sum(1)
        sums.append(out)
    return _per_head_mean(cache, sums)


def path_patching_to_heads(model, cache: RunCache, receivers: Sequence[Receiver | str],
                           rows_per_pass: int = 256) -> dict[Receiver, torch.Tensor]:
    """{receiver: [layers, heads]}: path patching from every sender head to each of a set of head
    inputs (q / k / v), the whole set at once (one level of the circuit search).

    Run 1 does not depend on the receiver (every head frozen to its contrast value but the sender's,
    normal), so one run 1 per sender, from the sender's layer up to the highest receiver, captures
    every receiver's input; run 2 (the contrast run from a receiver's layer on, that input patched
    in) is stacked over the receivers of one layer. A sender at or above a receiver's layer cannot
    reach its input: its score is exactly 0 (run 2 is then the clean contrast run).

    With grouped-query attention each receiver is one query head's input, as in the paper's ungrouped
    model (TransformerLens' `set_ungroup_grouped_query_attention(True)`, where every query head has
    its own copy of its group's keys and values): only that head sees the patched values
    (`value_seen_by_one_head`) or keys (`key_seen_by_one_head`); the other heads of its key-value
    group keep their clean outputs."""
    receivers = list(dict.fromkeys(Receiver.parse(r) if isinstance(r, str) else r for r in receivers))
    if any(r.is_output for r in receivers):
        raise ValueError("path_patching_to_heads: receivers are head inputs (L.H.q|k|v); "
                         "path_patching reads the output")
    n_kv = int(getattr(model.bridge.cfg, "n_key_value_heads", None) or cache.n_heads)
    group = cache.n_heads // n_kv
    index = {r: r.head if r.which == "q" else r.head // group for r in receivers}  # the hook's head axis
    sums: dict[Receiver, list] = {r: [] for r in receivers}
    for i, chunk in enumerate(progress(cache.chunks, f"path patching -> {len(receivers)} receiver(s)")):
        b = chunk.size
        out = {r: torch.zeros(cache.n_layers * cache.n_heads) for r in receivers}
        for layer in range(cache.n_layers):
            reached = [r for r in receivers if r.layer > layer]
            if not reached:
                continue
            top = max(r.layer for r in reached)
            names = sorted({qkv_hook(r.layer, r.which) for r in reached})
            for block in _blocks(list(range(cache.n_heads)), b, rows_per_pass):
                captured: dict = {}
                run_with_interventions(model, cache, i, [_frozen(cache, i, (layer, h), layer, top) for h in block],
                                       start_at_layer=layer, stop_at_layer=top + 1,
                                       extra_hooks=capture(captured, names, lambda name, x: x.clone()))
                for at in sorted({r.layer for r in reached}):
                    pairs = [(r, v) for r in reached if r.layer == at for v in range(len(block))]
                    for part in _blocks(pairs, b, rows_per_pass):
                        variants, one_head_values, one_head_keys = [], [], []
                        for k, (r, v) in enumerate(part):
                            x = captured[qkv_hook(r.layer, r.which)][v * b:(v + 1) * b]
                            if r.which == "v" and group > 1:
                                variants.append([])
                                one_head_values.append((k, r.head, x[:, :, index[r]]))
                            else:
                                variants.append([Intervention.patch(qkv_hook(r.layer, r.which), x, heads=[index[r]])])
                                if r.which == "k" and group > 1:
                                    one_head_keys.append((k, r.head))
                        hooks = (value_seen_by_one_head(at, one_head_values, b)
                                 + key_seen_by_one_head(at, one_head_keys, b, group, cache.contrast[i][z_hook(at)]))
                        ld = run_with_interventions(model, cache, i, variants, start_at_layer=at, extra_hooks=hooks)
                        for (r, v), total in zip(part, ld.sum(1)):
                            out[r][layer * cache.n_heads + block[v]] = total
        for r in receivers:
            sums[r].append(out[r])
    scores = {r: _per_head_mean(cache, sums[r]) for r in receivers}
    for r in receivers:
        scores[r][r.layer:] = 0.0  # senders that cannot reach the input: 0 by definition
    return scores


def value_seen_by_one_head(layer: int, values: Sequence[tuple[int, int, torch.Tensor]], b: int) -> list:
    """Hooks for run 2 of path patching to single query heads' value inputs under grouped-query
    attention, for the stacked variants `values` = (variant k, query head, its patched values
    [B, T, d_head]): the head's output is recomputed as its attention pattern (unchanged: q and k are
    the clean run's) times those values; the other heads of its key-value group keep the clean values."""
    if not values:
        return []
    store: dict = {}
    pattern = pattern_hook(layer)

    def one_head(z, hook):
        z = z.clone()
        for k, head, v in values:
            rows = slice(k * b, (k + 1) * b)
            z[rows, :, head] = torch.einsum("bts,bsd->btd", store[pattern][rows, head].to(z.dtype), v.to(z.dtype))
        return z
    return capture(store, [pattern]) + [(z_hook(layer), one_head)]


def key_seen_by_one_head(layer: int, keys: Sequence[tuple[int, int]], b: int, group: int,
                         clean_z: torch.Tensor) -> list:
    """Hook for run 2 of path patching to single query heads' key inputs under grouped-query
    attention, for the stacked variants `keys` = (variant k, query head) whose rows patch the key of
    that head's whole key-value group: the other heads of the group get back their clean outputs
    (`clean_z` [B, T, H, d_head], the contrast run's, cached), so only the receiver's pattern sees the
    patched keys, as in the ungrouped model. Exact because run 2 starts at this layer from the clean
    residual: a head's output there depends on the patched key only through its own pattern."""
    if not keys:
        return []

    def others_clean(z, hook):
        z = z.clone()
        for k, head in keys:
            rows = slice(k * b, (k + 1) * b)
            first = head - head % group
            others = [h for h in range(first, first + group) if h != head]
            z[rows, :, others] = clean_z[:, :, others].to(z.dtype)
        return z
    return [(z_hook(layer), others_clean)]


def _path_output_analytic(model, cache: RunCache, i: int) -> torch.Tensor:
    """Run 1 of path patching to the output for every sender head, at the read position only, summed
    LD per sender [layers * heads]. With every head frozen, attention moves nothing between
    positions, so the read position evolves alone: a sender's changed head output enters through the
    output projection (and any post-attention norm), every layer above adds the contrast run's
    attention output, and only the MLPs and their norms recompute. All senders go up together: at
    each layer the rows of the senders below it (heads * B each, stacked) and those of its own heads,
    so each layer's MLP runs once on all of them."""
    chunk = cache.chunks[i]
    c, n = cache.contrast[i], cache.normal[i]
    b, rows, last = chunk.size, torch.arange(chunk.size), chunk.last
    heads = cache.n_heads
    blocks = model.bridge.blocks
    idx = torch.arange(heads)
    resid = None  # [senders so far * B, d_model], row (layer * heads + head) * B + example
    with torch.inference_mode():
        for layer in range(cache.n_layers):
            contrast_z = c[z_hook(layer)][rows, last]  # [B, H, d_head]
            if resid is not None:  # senders below: this layer's heads frozen to the contrast run
                resid = resid + attn_write(blocks[layer], contrast_z.flatten(-2)[:, None]).repeat(len(resid) // b, 1)
            z = contrast_z.unsqueeze(0).repeat(heads, 1, 1, 1)  # [H_sender, B, H, d_head]
            z[idx, :, idx] = n[z_hook(layer)][rows, last].permute(1, 0, 2)[idx]  # the sender's own normal z
            started = (c[f"blocks.{layer}.hook_resid_pre"][rows, last].repeat(heads, 1)
                       + attn_write(blocks[layer], z.reshape(heads * b, 1, -1)))
            resid = started if resid is None else torch.cat([resid, started])
            resid = resid + mlp_write(blocks[layer], resid)
        senders = cache.n_layers * heads
        ld = final_metric(model, resid, chunk.normal_answer.repeat(senders), chunk.contrast_answer.repeat(senders),
                       cache.route.residual_readout, cache.metric)
    return ld.float().cpu().reshape(senders, b).sum(1)


# ---- attribution patching -------------------------------------------------------------------------

def attribution_patching(model, cache: RunCache) -> torch.Tensor:
    """[layers, heads]: first-order estimate of activation patching for every head, normalised
    like the exact methods: sum over positions of (z_normal - z_contrast) . dLD/dz at the contrast
    run.

    Per chunk one contrast run with gradients and one backward pass, whatever the number of heads:
    the estimate for head h of layer l is the derivative of LD along z_l + a_h (z_normal -
    z_contrast) at a = 0, so the backward pass computes gradients only for L x H scalars a, not for
    the weights (frozen for the pass), and LD is read through the route (final residual, two
    unembedding rows). Its normal z comes from the cache: a full one, or the cheaper
    `build_normal_cache`."""
    total = torch.zeros(cache.n_layers, cache.n_heads)
    ld_contrast = 0.0
    for i, chunk in enumerate(progress(cache.chunks, "attribution patching")):
        alphas = {}

        def along_delta(layer):
            normal_z = cache.normal[i][z_hook(layer)]

            def hook(z, hook):
                alpha = torch.zeros(cache.n_heads, dtype=z.dtype, device=z.device, requires_grad=True)
                alphas[layer] = alpha
                return z + alpha[:, None] * (normal_z - z.detach())
            return hook
        hooks = [(z_hook(layer), along_delta(layer)) for layer in range(cache.n_layers)]
        with torch.enable_grad(), _frozen_parameters(model.bridge):
            ld = read_ld(model, cache.route, chunk.contrast.to(model.device), hooks, chunk.last,
                         chunk.normal_answer, chunk.contrast_answer, metric=cache.metric)
            grads = torch.autograd.grad(ld.sum(), [alphas[layer] for layer in range(cache.n_layers)])
        ld_contrast += float(ld.detach().sum())
        for layer, g in enumerate(grads):
            # pads sit right of every real token and get no gradient
            total[layer] += g.float().cpu()
    # the contrast LD of a full cache, else this pass's own (the same runs, unpatched)
    mean_contrast = cache.mean_ld_contrast if cache.ld_contrast is not None else ld_contrast / cache.data.size
    return total / cache.data.size / (mean_contrast - cache.mean_ld_normal)


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


# ---- convenience: one model and one set of prompt pairs ------------------------------------------

class Patcher:
    """A model and its prompt pairs, with the methods above as methods. What it computes is built on
    first use and then fixed: `cache` (both runs, for the exact methods, with the route decided
    when it is built unless one is given), and
    `normal_cache` (the normal run only: attribution patching alone needs no more,
    so it costs one normal pass and its own gradient pass)."""

    def __init__(self, model, data: PatchingData, batch_size: int = 16, rows_per_pass: int | None = None,
                 route: Route | None = None, metric: Metric = logit_difference):
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.rows_per_pass = rows_per_pass or default_rows_per_pass(model)
        self._given_route = route
        self.metric = metric

    def with_route(self, **changes) -> Patcher:
        """The same prompts read another way (tests compare routes)."""
        return Patcher(self.model, self.data, self.batch_size, self.rows_per_pass, replace(self.route, **changes),
                       self.metric)

    @property
    def route(self) -> Route:
        """The route given, or the one decided when the cache was built."""
        return self._given_route or self.cache.route

    @cached_property
    def cache(self) -> RunCache:
        return build_cache(self.model, self.data, self._given_route, self.batch_size, metric=self.metric)

    @cached_property
    def normal_cache(self) -> RunCache:
        return build_normal_cache(self.model, self.data, self.batch_size, self._given_route, self.metric)

    @property
    def ld_normal(self) -> float:
        return self.cache.mean_ld_normal

    @property
    def ld_contrast(self) -> float:
        return self.cache.mean_ld_contrast

    def normalise(self, ld):
        return self.cache.normalise(ld)

    def activation_patching(self, group: str | None = None) -> torch.Tensor:
        return activation_patching(self.model, self.cache, group, self.rows_per_pass)

    def path_patching(self, receiver: Receiver | str = RECEIVER_OUTPUT) -> torch.Tensor:
        return path_patching(self.model, self.cache, receiver, self.rows_per_pass)

    def path_patching_to_heads(self, receivers: Sequence[Receiver | str]) -> dict[Receiver, torch.Tensor]:
        return path_patching_to_heads(self.model, self.cache, receivers, self.rows_per_pass)

    def attribution_patching(self) -> torch.Tensor:
        return attribution_patching(self.model, self.normal_cache)

    def patched_effect(self, heads: Sequence[Head]) -> float:
        return patched_effect(self.model, self.cache, heads)
