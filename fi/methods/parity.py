"""Parity: do the numbers we compute come from the model we think we loaded?

Every stage runs a checkpoint through TransformerLens' TransformerBridge (fi.engine.models.load_model).
`parity` runs the same prompts through plain `transformers` (AutoModelForCausalLM with eager
attention, the bridge's own attention implementation) and compares the logits at every position:
the largest absolute difference and the share of positions whose argmax agrees. Expected: 0 or
float noise in float32; in float16 / bfloat16 differences of the order of the dtype's resolution
times the logit scale, with (almost) full argmax agreement.

The two models are loaded one after the other (bridge first, its logits kept on the CPU), so a large
model needs its memory once, not twice.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import pandas as pd
import torch

from fi.engine.models import DTYPES, check_local_checkpoint, load_model, resolve_device

# Task-shaped prompts (addition, cipher, base-k addition) and plain text.
DEFAULT_PROMPTS = (
    "3+4=7\n1+1=2\n5+2=7\n2+6=",
    "41+17=59\n23+35=59\n60+12=",
    " a b c -> b c d\n x y z -> y z a\n q r s ->",
    "12+7=21\n5+6=13\n10+4=",
    "The capital of France is Paris. The capital of Italy is",
)

COLUMNS = ["model", "path", "dtype", "device", "n_prompts", "n_positions", "max_abs_diff", "max_abs_logit",
           "argmax_agreement", "bridge_load_s", "hf_load_s"]


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _hf_logits(target: str, dtype: torch.dtype, device: str, token_lists: list[list[int]]) -> tuple[list, float]:
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, attn_implementation="eager")
    hf = hf.to(device).eval()
    load_s = time.perf_counter() - t0
    out = []
    with torch.inference_mode():
        for ids in token_lists:
            out.append(hf(torch.tensor([ids], device=device)).logits[0].float().cpu())
    del hf
    _free(device)
    return out, load_s


def parity(name: str, path: str | None = None, dtype: str = "float32", device: str = "auto",
           prompts: Sequence[str] = DEFAULT_PROMPTS) -> pd.DataFrame:
    """One row: our bridge against plain transformers on `prompts` (tokenized once, by our
    `LoadedModel.encode`, so both models see identical ids)."""
    device = resolve_device(device)
    t0 = time.perf_counter()
    ours = load_model(name, path=path, dtype=dtype, device=device)
    bridge_load_s = time.perf_counter() - t0
    token_lists = [ours.encode(p) for p in prompts]
    bridge_logits = []
    with torch.inference_mode():
        for ids in token_lists:
            bridge_logits.append(ours.bridge(torch.tensor([ids], device=device))[0].float().cpu())
    del ours
    _free(device)
    target = str(check_local_checkpoint(path, name)) if path else name
    hf_logits, hf_load_s = _hf_logits(target, DTYPES[dtype], device, token_lists)
    max_diff, max_logit, agree, positions = 0.0, 0.0, 0, 0
    for a, b in zip(bridge_logits, hf_logits):
        if a.shape != b.shape:
            raise ValueError(f"model {name!r}: bridge logits {tuple(a.shape)} but transformers gives {tuple(b.shape)}")
        max_diff = max(max_diff, float((a - b).abs().max()))
        max_logit = max(max_logit, float(b.abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[0]
    row = dict(model=name, path=path, dtype=dtype, device=device, n_prompts=len(prompts), n_positions=positions,
               max_abs_diff=max_diff, max_abs_logit=max_logit, argmax_agreement=agree / positions,
               bridge_load_s=bridge_load_s, hf_load_s=hf_load_s)
    return pd.DataFrame([row], columns=COLUMNS)


def parity_table(models: Sequence[dict], output: str | None = None, dtypes: Sequence[str] | None = None,
                 prompts: Sequence[str] = DEFAULT_PROMPTS) -> pd.DataFrame:
    """`parity` for every model entry ({name, path, dtype, device}), in its configured dtype or in
    each of `dtypes`; written to `output` (CSV) when given."""
    import logging

    log = logging.getLogger("fi")
    rows = []
    for m in models:
        for dtype in dtypes or [m["dtype"]]:
            df = parity(m["name"], m.get("path"), dtype, m.get("device", "auto"), prompts)
            r = df.iloc[0]
            log.info("%s %s on %s: max |logit diff| %.3g (max |logit| %.3g), argmax agreement %.4f",
                     r["model"], r["dtype"], r["device"], r["max_abs_diff"], r["max_abs_logit"], r["argmax_agreement"])
            rows.append(df)
    table = pd.concat(rows, ignore_index=True)
    if output:
        from fi.io import write_csv

        write_csv(table, output)
    return table


def config_models(config: dict, names: Sequence[str] | None = None) -> list[dict]:
    """Model entries of a validated config as parity inputs; a built-in model must be trained."""
    from fi.plan.grid import ConfigError, models

    out = []
    known = [m.name for m in models(config)]
    for n in names or []:
        if n not in known:
            raise ConfigError(f"parity: model {n!r} is not in the config (models: {known})")
    for m in models(config):
        if names and m.name not in names:
            continue
        if m.builtin:
            from fi.plan.models_check import check_local_checkpoint_files

            if check_local_checkpoint_files(m.path, m.name):
                raise ConfigError(f"parity: the built-in model {m.name!r} is not trained yet; run "
                                  f"`snakemake --cores all {m.path}` first")
        out.append({**m.load_params, "device": m.cfg["device"]})
    return out
