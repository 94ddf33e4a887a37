"""Loading any checkpoint through TransformerLens 4's TransformerBridge.

One path for every model: the built-in model is a local HF checkpoint folder like any other, and an
HF / TransformerLens name goes through the same `boot_transformers` call (offline when
HF_HUB_OFFLINE=1 and the weights are in the local HF cache).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from fi.models_check import check_local_checkpoint_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Loading sets process-wide state for its duration (transformers sets torch's default dtype to the
# model's): jobs that are threads of one process (workflow/rules/common.smk, in_process) load one
# at a time.
_LOADING = threading.Lock()


class ModelLoadError(ValueError):
    """A model entry that cannot be loaded; the message names the model."""


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_local_checkpoint(path: str | os.PathLike, name: str) -> Path:
    """Fail early, naming the model, on a missing folder or one without config / weights."""
    errors = check_local_checkpoint_files(path, name)
    if errors:
        raise ModelLoadError(errors[0])
    return Path(path).expanduser().resolve()


@dataclass
class LoadedModel:
    """A booted bridge plus the facts every stage needs."""

    name: str
    bridge: object
    tokenizer: object
    device: str
    dtype: torch.dtype

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with BOS prepended when the tokenizer has one (TransformerLens'
        default for string inputs, which the paper's evaluation used)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + ids

    def right_pad(self, sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists right-padded to one width: (tokens [N, W] long, real-token mask [N, W] bool).
        A causal model never attends to pads on the right of real tokens, so padding changes no
        logit of a real position."""
        width = max(len(s) for s in sequences)
        tokens = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.bool)
        for i, seq in enumerate(sequences):
            tokens[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, : len(seq)] = True
        return tokens, mask

    @property
    def pad_id(self) -> int:
        # Pads only ever sit to the right of real tokens, so a causal model never attends to them
        # and their id does not matter.
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0


def load_model(name: str, path: str | None = None, dtype: str = "float32",
               device: str = "auto") -> LoadedModel:
    """Boot `path` (a local checkpoint folder) or `name` (a HF / TransformerLens model name)."""
    from transformer_lens.model_bridge import TransformerBridge

    if dtype not in DTYPES:
        raise ModelLoadError(f"model {name!r}: unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    target = str(check_local_checkpoint(path, name)) if path else name
    resolved = resolve_device(device)
    try:
        with _LOADING:
            bridge = TransformerBridge.boot_transformers(target, device=resolved, dtype=DTYPES[dtype])
    except (OSError, ValueError) as err:  # HF raises OSError for unknown / unreachable repos
        raise ModelLoadError(f"model {name!r}: could not load {target!r}: {err}") from err
    bridge.eval()
    return LoadedModel(name=name, bridge=bridge, tokenizer=bridge.tokenizer, device=resolved,
                       dtype=DTYPES[dtype])
