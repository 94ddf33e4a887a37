"""How a model is read, decided once per set of prompt pairs and recorded with results (`Route`):
the metric from the final residual stream through the final norm and only the two answers'
unembedding rows, or from full logits; path patching's run 1 analytic at the read position (sequential
blocks, post-sublayer norms included), or hooked. Decided by checks with full logits, on the first
chunk's own runs where full logits are cheap, else on a short probe (ROUTE_PROBE). Also the parts of
a block the analytic routes rebuild a run from (`attn_write`, `mlp_write`, ...)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fi.engine.interventions import z_hook
from fi.engine.pairs import Metric, PatchingData, answer_pair, logit_difference
from fi.engine.readout import FINAL_RESID, ROUTE_RTOL, capture, compared_logits, record_readout, unembed_tokens


@dataclass(frozen=True)
class Route:
    """How metrics are read on one model, decided once (build_cache, ROUTE_PROBE) and
    recorded with results.

    residual_readout      LD from the final residual stream at the read position, through the final
                          norm and the two answers' unembedding rows only (else from full logits)
    analytic_output_path  path patching to the output computes run 1 analytically at the last
                          position (sequential blocks, post-sublayer norms included: Llama,
                          GPT-2, Gemma-2/3; else hooked runs)"""

    residual_readout: bool
    analytic_output_path: bool


def metric_from_resid(model, resid_last: torch.Tensor, normal_answer: torch.Tensor,
                   contrast_answer: torch.Tensor, metric: Metric = logit_difference) -> torch.Tensor:
    """The metric per row from final-residual vectors at the read position [N, d_model]."""
    return metric(unembed_tokens(model, resid_last, answer_pair(normal_answer, contrast_answer)))


def _post_norm(block, name: str):
    """The block's norm applied to a sublayer's output before it joins the residual stream
    (Gemma-2/3: `ln1_post` after attention, `ln2_post` after the MLP), or None."""
    return getattr(block, name, None)


def attn_out(block, z_flat: torch.Tensor) -> torch.Tensor:
    """What the attention sublayer adds to the residual stream, from head outputs [N, T, H * d_head]:
    the output projection, then the post-attention norm where the block has one. [N, T, d_model]"""
    out = block.attn.o(z_flat)
    post = _post_norm(block, "ln1_post")
    return out if post is None else post(out)


def mlp_out(block, resid: torch.Tensor) -> torch.Tensor:
    """What the MLP sublayer adds to the residual stream [N, T, d_model] (pre-norm, MLP, post-norm)."""
    out = block.mlp(block.ln2(resid))
    post = _post_norm(block, "ln2_post")
    return out if post is None else post(out)


def attn_write(block, z_flat: torch.Tensor) -> torch.Tensor:
    """`_attn_out` at one position: head outputs [N, 1, H * d_head] -> [N, d_model]."""
    return attn_out(block, z_flat)[:, 0]


def mlp_write(block, resid: torch.Tensor) -> torch.Tensor:
    """`_mlp_out` at one position: [N, d_model] -> [N, d_model]."""
    return mlp_out(block, resid[:, None])[:, 0]


def final_metric(model, resid: torch.Tensor, normal_answer: torch.Tensor, contrast_answer: torch.Tensor,
              residual_readout: bool, metric: Metric = logit_difference) -> torch.Tensor:
    """The metric per row from final-residual vectors [N, d_model], by the route's reader."""
    if residual_readout:
        return metric_from_resid(model, resid, normal_answer, contrast_answer, metric)
    logits = model.bridge.unembed(model.bridge.ln_final(resid[:, None]))[:, 0]
    return metric(logits.gather(1, answer_pair(normal_answer, contrast_answer).to(logits.device)))


def _analytic_path_holds(model, chunk: PatchingData, contrast: dict, expected: torch.Tensor,
                         residual_readout: bool, metric: Metric) -> bool:
    """The analytic run 1 (see _path_output_analytic) assumes sequential blocks, each adding its
    attention output (through the output projection and any post-attention norm) and then its MLP
    output (pre-norm, MLP, any post-MLP norm) to the residual stream. Checked on this model by
    rebuilding the contrast run's LD that way from its head outputs (`contrast`: that run's z and
    first resid_pre), read as the route will read it, against `expected`, the run's own LD from full
    logits; architectures that differ (parallel attention and MLP, ...) take the hooked run 1."""
    bridge = model.bridge
    rows = torch.arange(chunk.size)
    try:
        with torch.inference_mode():
            resid = contrast["blocks.0.hook_resid_pre"][rows, chunk.last]
            for layer in range(model.n_layers):
                blk = bridge.blocks[layer]
                z = contrast[z_hook(layer)][rows, chunk.last][:, None]
                resid = resid + attn_write(blk, z.flatten(-2))
                resid = resid + mlp_write(blk, resid)
            rebuilt = final_metric(model, resid, chunk.normal_answer, chunk.contrast_answer, residual_readout, metric)
    except Exception:  # a block without these parts
        return False
    scale = max(1.0, float(expected.abs().max()))
    return bool((rebuilt.float().cpu() - expected.float().cpu()).abs().max() <= ROUTE_RTOL * scale)


def read_ld(model, route: Route, tokens: torch.Tensor, fwd_hooks: list, last: torch.Tensor,
            normal_answer: torch.Tensor, contrast_answer: torch.Tensor,
            start_at_layer: int | None = None, metric: Metric = logit_difference) -> torch.Tensor:
    """The metric per row [B] of one hooked run on `tokens` [B, T] (or, with `start_at_layer`, on
    residuals [B, T, d_model] entering that layer), through the route's reader
    (fi.engine.readout.compared_logits)."""
    rows = torch.arange(tokens.shape[0])
    return metric(compared_logits(model, tokens, rows, last, answer_pair(normal_answer, contrast_answer), fwd_hooks,
                                  route.residual_readout, start_at_layer))


# The route checks need full logits at every position of the runs they look at. Where that is cheap
# (an unembedding no bigger than a block's weights, 12 d_model^2: the built-in and tiny models) they
# look at the first chunk's own runs, no extra pass; else (262k x 640 on Gemma-3) at a probe, the
# first ROUTE_PROBE examples cut to their first ROUTE_PROBE_TOKENS tokens, and no cache run computes
# full logits.
ROUTE_PROBE, ROUTE_PROBE_TOKENS = 2, 12


def _full_logits_cheap(model) -> bool:
    cfg = model.bridge.cfg
    return int(cfg.d_vocab) * int(cfg.d_model) <= 12 * int(cfg.d_model) ** 2


def _route_probe(data: PatchingData) -> PatchingData:
    """The first examples' first tokens, read at the last of them. What the route checks is a
    property of the architecture (the final norm and unembedding; blocks whose frozen heads move
    nothing between positions), the same at every position of every prompt."""
    probe = data.subset(slice(0, ROUTE_PROBE))
    width = min(ROUTE_PROBE_TOKENS, int(probe.last.min()) + 1)
    return PatchingData(probe.normal[:, :width], probe.contrast[:, :width], torch.full_like(probe.last, width - 1),
                        probe.normal_answer, probe.contrast_answer, {k: v[:, :width] for k, v in probe.groups.items()})


def checked_runs(model, chunk: PatchingData, names: set, analytic: bool,
                  metric: Metric = logit_difference) -> tuple[Route, tuple | None]:
    """Both route checks on `chunk`'s runs with full logits: whether LD read from the final residual
    stream reproduces the model's own (normal run), and (`analytic`) whether the analytic run 1
    rebuilds the contrast run's LD (_analytic_path_holds). Returns the route and the runs
    (normal acts, normal LD, contrast acts, contrast LD; contrast None without `analytic`)."""
    acts_n, ld_n, residual = _checked_capture_run(model, chunk, names, metric)
    record_readout(model, residual)
    if not analytic:
        return Route(residual_readout=residual, analytic_output_path=False), (acts_n, ld_n, None, None)
    needed = {z_hook(layer) for layer in range(model.n_layers)} | {"blocks.0.hook_resid_pre"}
    acts_c, ld_c, _ = _checked_capture_run(model, chunk, names | needed, metric, chunk.contrast)
    holds = needed <= set(acts_c) and _analytic_path_holds(model, chunk, acts_c, ld_c, residual, metric)
    acts_c = {k: v for k, v in acts_c.items() if k in names}  # the runs keep what was asked for
    return Route(residual_readout=residual, analytic_output_path=holds), (acts_n, ld_n, acts_c, ld_c)


def decide_route(model, data: PatchingData, analytic: bool = True) -> Route:
    """The route of `data` on `model`, from the checks (_checked_runs) on a probe (_route_probe)."""
    return checked_runs(model, _route_probe(data), set(), analytic)[0]


def route_and_first_runs(model, data: PatchingData, chunk: PatchingData, wanted: set, route: Route | None,
                          analytic: bool, metric: Metric) -> tuple[Route, tuple | None]:
    """The route (given, or decided) and, where the checks ran on `chunk` itself, its runs."""
    if route is not None:
        return route, None
    if _full_logits_cheap(model):
        return checked_runs(model, chunk, wanted, analytic, metric)
    return decide_route(model, data, analytic), None


def _checked_capture_run(model, chunk: PatchingData, names: set, metric: Metric,
                         tokens: torch.Tensor | None = None) -> tuple[dict, torch.Tensor, bool]:
    """A run (the normal prompt unless `tokens`) with full logits, keeping `names` and the final
    residual: its metric, and whether the residual readout reproduces it (ROUTE_RTOL)."""
    store: dict = {}
    rows = torch.arange(chunk.size)
    compared = answer_pair(chunk.normal_answer, chunk.contrast_answer)
    with torch.inference_mode():
        tokens = chunk.normal if tokens is None else tokens
        logits = model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=capture(store, sorted(names | {FINAL_RESID})))
        full = metric(logits[rows, chunk.last.to(logits.device)].gather(1, compared.to(logits.device))).float().cpu()
        try:
            resid = store.pop(FINAL_RESID)
            short = metric_from_resid(model, resid[rows, chunk.last.to(resid.device)],
                                   chunk.normal_answer, chunk.contrast_answer, metric).float().cpu()
            holds = bool((short - full).abs().max() <= ROUTE_RTOL * max(1.0, float(full.abs().max())))
        except Exception:  # no final residual hook / norm / unembedding of this shape
            holds = False
    return store, full, holds
