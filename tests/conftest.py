"""Shared fixtures: tiny checkpoints the tests build themselves (no downloads, ever)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get(
    "FI_REFERENCE_DIR", REPO.parent / "shared" / "reference" / "function-induction"))


def tiny_train_cfg(**overrides) -> dict:
    """A complete `train` section (as the schema's defaults fill it) for a tiny model."""
    cfg = dict(architecture="llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=0, d_mlp=64,
               max_len=256, steps=5, batch_size=8, lr=2e-3, weight_decay=0.01, warmup_steps=2,
               log_every=1, seed=0, mix={"addition": 1.0, "letter_shift": 0.0, "repeated_tokens": 0.0},
               nmax=[9], items=17, p_zero=0.4, max_offset=3, max_word_len=4, repeat_len=12)
    cfg.update(overrides)
    return cfg


def save_random_checkpoint(path: Path, **overrides) -> Path:
    """A random-initialised HF checkpoint with the character tokenizer, saved with save_pretrained."""
    import torch

    from fi.build.training import build_model, build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(tiny_train_cfg(**overrides), len(tok), tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_gqa_llama_dir(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny_gqa"), n_kv_heads=2)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny_gpt2"), architecture="gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    from fi.engine.models import load_model

    return load_model("tiny-llama", path=str(tiny_llama_dir), device="cpu")


# The built-in model's recipe (fi.build.training) at a size and length that trains in well under a minute
# on 2 cores and still learns off-by-k addition with one clear FI head.
TRAINED_TOY = dict(d_model=64, d_mlp=256, n_layers=2, n_heads=4, steps=350, batch_size=32, warmup_steps=30,
                   log_every=50, items=13, seed=0)


@pytest.fixture(scope="session")
def trained_toy_dir(tmp_path_factory) -> Path:
    from fi.build.training import train_model

    out = tmp_path_factory.mktemp("trained") / "fi-toy"
    train_model(tiny_train_cfg(**TRAINED_TOY), out, threads=2, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_toy(trained_toy_dir):
    from fi.engine.models import load_model

    return load_model("fi-toy", path=str(trained_toy_dir), device="cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Models this small run fastest on one thread; with two, torch's OpenMP threads spin-wait and a
    busy machine makes every op up to 100x slower (measured: 5 ms vs 870 ms per forward pass)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """The finished base grid of tests/grid_runs.py, run on first use in the session (a failure is
    raised again to every test that asks for it, by pytest's fixture cache)."""
    from tests.grid_runs import run_base_grid

    return run_base_grid(tmp_path_factory.mktemp("base_run"))
