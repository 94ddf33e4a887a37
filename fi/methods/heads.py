"""Head types on repeated random tokens, and the choice of FI heads from attribution scores."""

from __future__ import annotations

import pandas as pd
import torch

HEAD_TYPES = ("previous_token", "duplicate_token", "induction")


def head_type_scores(model, seq_len: int = 20, n_seqs: int = 32, seed: int = 0, threshold: float = 0.3) -> pd.DataFrame:
    """Previous-token, duplicate-token and induction scores (the ARENA IOI / induction exercises'
    definitions) on `n_seqs` sequences BOS + r + r, r being `seq_len` random ordinary tokens:
      previous_token   mean attention from each position to the one before it
      duplicate_token  mean attention from the repeat to the earlier copy of the same token
      induction        mean attention from the repeat to the token after the earlier copy
    A head's `type` is its highest score's name when that score reaches `threshold`, else ''.
    On a built-in model r is drawn from the characters its training draws (digits, lowercase letters):
    the rest of its vocabulary is never trained, and random strings of it find no induction head even in
    a model that copies repeated strings (configs/organism.yaml); elsewhere from every ordinary token."""
    from fi.build.training import drawn_token_ids

    special = set(model.tokenizer.all_special_ids)
    vocab = torch.tensor(drawn_token_ids(model.tokenizer)
                         or [i for i in range(len(model.tokenizer)) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    rand = vocab[torch.randint(len(vocab), (n_seqs, seq_len), generator=gen)]
    bos = model.bos_id
    parts = ([torch.full((n_seqs, 1), bos)] if bos is not None else []) + [rand, rand]
    tokens = torch.cat(parts, dim=1).to(model.device)
    off = 1 if bos is not None else 0
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(model.n_layers)}
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    rows = []
    second = torch.arange(off + seq_len, off + 2 * seq_len)
    for layer in range(model.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].float()  # [B, H, T, T]
        prev = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., off:].mean((0, -1))
        dup = pattern[:, :, second, second - seq_len].mean((0, -1))
        ind = pattern[:, :, second, second - seq_len + 1].mean((0, -1))
        for head in range(model.n_heads):
            scores = {"previous_token": float(prev[head]), "duplicate_token": float(dup[head]),
                      "induction": float(ind[head])}
            best = max(scores, key=scores.get)
            rows.append({"layer": layer, "head": head, **{f"{k}_score": v for k, v in scores.items()},
                         "type": best if scores[best] >= threshold else ""})
    return pd.DataFrame(rows)


def select_heads(scores: pd.DataFrame, criterion: str = "top_k", top_k: int = 1, threshold: float = 0.2) -> pd.DataFrame:
    """FI heads from a layer x head table of normalised effects (`score`; -1 = full restoration of
    the normal answer): the `top_k` most negative, or every head at or below -threshold."""
    ranked = scores.sort_values(["score", "layer", "head"], kind="stable")
    if criterion == "top_k":
        chosen = ranked.head(top_k)
    elif criterion == "threshold":
        chosen = ranked[ranked["score"] <= -threshold]
    else:
        raise ValueError(f"unknown discovery criterion {criterion!r}; expected top_k or threshold")
    return chosen.sort_values(["layer", "head"]).reset_index(drop=True)
