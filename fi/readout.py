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
        if bias is not None:
            logits = logits + bias[tokens]
    else:
        logits = torch.einsum("nd,nkd->nk", normed, weight[tokens])
        if bias is not None:
            logits = logits + bias[tokens]
    cap = _softcap(model)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def run_to_final_resid(model, tokens: torch.Tensor, fwd_hooks: list = (), start_at_layer: int | None = None) -> torch.Tensor:
    """The final residual stream [B, T, d_model] of a (hooked) run, without the unembedding."""
    def stop(resid, hook):
        raise StopAtLayerException(resid)
    kwargs = {} if start_at_layer is None else {"start_at_layer": start_at_layer}
    return model.bridge.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + [(FINAL_RESID, stop)], **kwargs)


def residual_readout_holds(model, tokens: torch.Tensor, positions: torch.Tensor, compared: torch.Tensor) -> bool:
    """Whether `unembed_tokens` on the final residual equals the model's own logits, checked on one
    batch: `tokens` [B, T], the position read in each row [B], the compared token ids [B, K]."""
    if FINAL_RESID not in model.bridge.hook_dict:
        return False
    store = {}

    def grab(resid, hook):
        store["resid"] = resid
        return resid
    rows = torch.arange(tokens.shape[0])
    with torch.inference_mode():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=[(FINAL_RESID, grab)])
        full = logits[rows, positions].gather(1, compared.to(logits.device))
        try:
            short = unembed_tokens(model, store["resid"][rows, positions], compared)
        except Exception:  # no ln_final / unembedding components of this shape
            return False
    scale = max(1.0, float(full.abs().max()))
    return bool((short.float().cpu() - full.float().cpu()).abs().max() <= ROUTE_RTOL * scale)
