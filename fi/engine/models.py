"""Loading any checkpoint through TransformerLens 4's TransformerBridge.

One path for every model: the built-in model is a local HF checkpoint folder like any other, and an
HF / TransformerLens name goes through the same `boot_transformers` call (offline when
HF_HUB_OFFLINE=1 and the weights are in the local HF cache).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fi.plan.models_check import check_local_checkpoint_files

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Loading sets process-wide state for its duration (transformers sets torch's default dtype to the
# model's): jobs that are threads of one process (fi_workflow.run, profiles/default) load one
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
    # held by the job that uses the model (ModelCache.use): hooks and interventions are added to the
    # model for the duration of a run, so two jobs never run it at once
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # whether the compared tokens' logits may be read from the final residual stream
    # (fi.engine.readout.readout_holds): checked once, on the first batch read, None until then
    residual_readout: bool | None = field(default=None, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    @property
    def bos_id(self) -> int | None:
        """The BOS token prompts begin with, or None: the tokenizer's BOS where the model's
        TransformerLens adapter prepends it by default (`cfg.default_prepend_bos`, as the paper's
        `to_tokens` did; False for GPT-NeoX / Pythia and Qwen-2), else None."""
        if not getattr(self.bridge.cfg, "default_prepend_bos", True):
            return None
        return self.tokenizer.bos_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, after BOS where the model takes one (`bos_id`)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.bos_id
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


class ModelCache:
    """The models loaded in this process, shared by the jobs it runs: a model entry's bridge is
    booted once per (name, path, dtype, device) and job slot, not once per job (a 7-9B model takes
    tens of seconds to load, one evaluation cell seconds of GPU work). A job holds its copy alone
    (hooks are added to a model for the duration of a run); a job that finds every copy of its
    model in use gets one more, so jobs that run side by side (threads of one process) keep running
    side by side, and a process that runs N jobs at a time boots each model at most N times.

    Keeps the copies of the `capacity` most recently used models (environment variable
    FI_MODEL_CACHE, default 1, so that a run over several large models never holds two of them on a
    GPU; 0 keeps none): a job of another model drops those of the least recently used one.
    `loads` counts the boots per key (benches, tests)."""

    def __init__(self, capacity: int | None = None):
        self.capacity = int(os.environ.get("FI_MODEL_CACHE", "1")) if capacity is None else capacity
        self._models: OrderedDict[tuple, list[LoadedModel]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads: dict[tuple, int] = {}

    @staticmethod
    def key(name: str, path: str | None, dtype: str, device: str) -> tuple:
        where = str(Path(path).expanduser().resolve()) if path else None
        return (name, where, dtype, resolve_device(device))

    @contextmanager
    def use(self, name: str, path: str | None = None, dtype: str = "float32", device: str = "auto"):
        """A copy of the model, held by this job alone until the block ends."""
        key = self.key(name, path, dtype, device)
        with self._lock:
            copies = self._models.get(key, [])
            loaded = next((m for m in copies if m.lock.acquire(blocking=False)), None)
            if loaded is None:
                t0 = time.perf_counter()
                loaded = load_model(name, path=path, dtype=dtype, device=device)
                self.loads[key] = self.loads.get(key, 0) + 1
                log.info("model %s booted in %.1fs (%s, %s; boot %d of it in process %d)", name,
                         time.perf_counter() - t0, dtype, loaded.device, self.loads[key], os.getpid())
                loaded.lock.acquire()
                copies.append(loaded)
            if self.capacity > 0:
                self._models[key] = copies
                self._models.move_to_end(key)  # now the most recently used
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)  # a job still using a copy keeps its reference
        try:
            yield loaded
        finally:
            loaded.lock.release()

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self.loads.clear()


MODEL_CACHE = ModelCache()
