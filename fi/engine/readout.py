"""Reading metrics without computing logits that are not compared.

Every metric of this project compares a few tokens (two answers' tokens, or the answer vocabulary's
digits) at a few positions. A full forward pass computes the whole vocabulary's logits at every
position: on Gemma-3 (262k tokens) that is most of a run's time. Instead the run stops at the final
residual stream (`ln_final.hook_in`), and only the positions read are put through the final norm and
only the compared tokens' rows of the unembedding, with the model's logit soft-capping applied
exactly. Whether that equals the model's own logits is checked once per model (`residual_readout_holds`);
where it does not (an architecture that transforms logits in a way not modelled here), every reader
falls back to full logits.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformer_lens.model_bridge.exceptions import StopAtLayerException

FINAL_RESID = "ln_final.hook_in"  # the residual stream after the last block
# One tolerance for every route check: float32 noise between two routes is ~1e-7 relative; a
# structural difference (soft-capping not applied, a missing norm) is orders of magnitude larger.
ROUTE_RTOL = 1e-4


def _softcap(model) -> float | None:
    cfg = getattr(getattr(model.bridge, "original_model", None), "config", None)
    cap = getattr(cfg, "final_logit_softcapping", None)
    return float(cap) if cap else None


def unembed_tokens(model, resid: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of `tokens` only, from final-residual vectors.

    resid: [N, d_model]; tokens: [K] (the same tokens for every row) or [N, K] (per row).
    Returns [N, K]: ln_final, the tokens' unembedding rows (and bias), then soft-capping."""
    bridge = model.bridge
    normed = bridge.ln_final(resid[:, None])[:, 0]
    lm_head = bridge.unembed.original_component
    weight = lm_head.weight
    bias = getattr(lm_head, "bias", None)
    tokens = tokens.to(weight.device)
    if tokens.dim() == 1:
        logits = normed @ weight[tokens].T
    else:
        logits = torch.einsum("nd,nkd->nk", normed, weight[tokens])
    if bias is not None:  # bias[tokens] is [K] or [N, K], as the logits' rows need
        logits = logits + bias[tokens]
    cap = _softcap(model)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _pass_hidden_states(*args, **kwargs):
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def _blocks_skipped(bridge, below: int):
    """TransformerBridge's `start_at_layer=k` feeds the residual to the HF model as inputs_embeds,
    runs blocks 0..k-1 on it and then swaps the residual back in at block k, discarding what they
    computed: k/L of a forward pass spent for nothing (measured: a run from layer 6 of 12 cost as
    much as a full one). Meanwhile each of those blocks hands its input on unchanged (every decoder
    layer of transformers 5 takes and returns the hidden states as a tensor)."""
    skipped = list(bridge.blocks)[:below]
    for block in skipped:
        # an instance attribute, which nn.Module.__call__ finds before the class's forward (set on
        # the object itself: the bridge's __setattr__ would pass it on to the HF module)
        object.__setattr__(block, "forward", _pass_hidden_states)
    try:
        yield
    finally:
        for block in skipped:
            object.__delattr__(block, "forward")


def run_hooked(model, inputs: torch.Tensor, fwd_hooks=(), start_at_layer: int | None = None, **kwargs):
    """`bridge.run_with_hooks`; with `start_at_layer`, `inputs` is the residual [B, T, d_model]
    entering that layer and only the blocks from it up run (hooks below it never fire)."""
    if start_at_layer is None:
        return model.bridge.run_with_hooks(inputs, fwd_hooks=list(fwd_hooks), **kwargs)
    with _blocks_skipped(model.bridge, start_at_layer):
        return model.bridge.run_with_hooks(inputs, fwd_hooks=list(fwd_hooks), start_at_layer=start_at_layer, **kwargs)


def run_to_final_resid(model, tokens: torch.Tensor, fwd_hooks: list = (), start_at_layer: int | None = None) -> torch.Tensor:
    """The final residual stream [B, T, d_model] of a (hooked) run, without the unembedding."""
    def stop(resid, hook):
        raise StopAtLayerException(resid)
    return run_hooked(model, tokens, list(fwd_hooks) + [(FINAL_RESID, stop)], start_at_layer)


def capture(store: dict, names, pick=None) -> list[tuple[str, callable]]:
    """Hooks that keep each named activation in `store[name]` (under the name asked for: the bridge
    may call the hook under an alias), changing nothing; `pick(name, x)` chooses what is kept (default:
    the tensor itself). The one capture hook of the engine: every method reads activations this way."""
    def keep(name):
        def hook(x, hook):
            store[name] = x if pick is None else pick(name, x)
            return x
        return hook
    return [(name, keep(name)) for name in names]


def compared_logits(model, inputs: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                    compared: torch.Tensor, fwd_hooks=(), residual_readout: bool = True,
                    start_at_layer: int | None = None) -> torch.Tensor:
    """The runner every method reads a model through: one (hooked) run on `inputs` (tokens [B, T], or
    with `start_at_layer` the residual [B, T, d_model] entering that layer) -> the logits of the
    `compared` tokens ([K] for every read, or [N, K] per read) at the N read positions
    (`rows[n]`, `positions[n]`): [N, K]. From the final residual stream through `unembed_tokens` when
    `residual_readout` (see `readout_holds`), else from the model's full logits."""
    if residual_readout:
        resid = run_to_final_resid(model, inputs, fwd_hooks, start_at_layer)
        return unembed_tokens(model, resid[rows.to(resid.device), positions.to(resid.device)], compared)
    logits = run_hooked(model, inputs, fwd_hooks, start_at_layer)
    picked = logits[rows.to(logits.device), positions.to(logits.device)]
    compared = compared.to(logits.device)
    return picked[:, compared] if compared.dim() == 1 else picked.gather(1, compared)


def residual_readout_holds(model, tokens: torch.Tensor, positions: torch.Tensor, compared: torch.Tensor) -> bool:
    """Whether `unembed_tokens` on the final residual equals the model's own logits, checked on one
    batch: `tokens` [B, T], the position read in each row [B], the compared token ids [B, K]."""
    if FINAL_RESID not in model.bridge.hook_dict:
        return False
    store: dict = {}
    rows = torch.arange(tokens.shape[0])
    with torch.inference_mode():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=capture(store, [FINAL_RESID]))
        full = logits[rows, positions].gather(1, compared.to(logits.device))
        try:
            short = unembed_tokens(model, store[FINAL_RESID][rows, positions], compared)
        except Exception:  # no ln_final / unembedding components of this shape
            return False
    scale = max(1.0, float(full.abs().max()))
    return bool((short.float().cpu() - full.float().cpu()).abs().max() <= ROUTE_RTOL * scale)


def readout_holds(model, tokens: torch.Tensor, positions: torch.Tensor, compared: torch.Tensor) -> bool:
    """`residual_readout_holds` decided once per loaded model, on the first batch any method reads, and
    kept on the model (`LoadedModel.residual_readout`): the check is a property of the architecture
    (final norm, unembedding, soft-capping), not of the prompts."""
    if getattr(model, "residual_readout", None) is None:
        model.residual_readout = residual_readout_holds(model, tokens, positions, compared)
    return model.residual_readout


def record_readout(model, holds: bool) -> None:
    """Keep a route check made elsewhere (fi.engine.patching checks it within its first runs)."""
    if getattr(model, "residual_readout", None) is None:
        model.residual_readout = holds
