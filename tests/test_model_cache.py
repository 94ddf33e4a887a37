"""One load per model, not per job: jobs that share a process share the loaded model
(fi.engine.models.ModelCache), and never run it at the same time."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from fi.engine.models import ModelCache
from fi.io import write_jsonl
from fi.plan.tasks import get_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def use(cache, name, path, **kw):
    with cache.use(name, path=str(path), device="cpu", **kw) as loaded:
        return loaded


def test_a_model_is_loaded_once_per_path_dtype_and_device(tiny_llama_dir, tiny_gpt2_dir):
    cache = ModelCache(capacity=2)
    first = use(cache, "m", tiny_llama_dir)
    assert use(cache, "m", f"{tiny_llama_dir}/") is first  # the same folder
    half = use(cache, "m", tiny_llama_dir, dtype="bfloat16")
    assert half is not first and next(half.bridge.parameters()).dtype != next(first.bridge.parameters()).dtype
    assert sorted(cache.loads.values()) == [1, 1]
    # a third model drops the least recently used one (capacity 2): the float32 llama, used first
    use(cache, "g", tiny_gpt2_dir)
    again = use(cache, "m", tiny_llama_dir)
    assert again is not first and cache.loads[cache.key("m", str(tiny_llama_dir), "float32", "cpu")] == 2


def test_capacity_zero_loads_for_every_job(tiny_llama_dir):
    cache = ModelCache(capacity=0)
    assert use(cache, "m", tiny_llama_dir) is not use(cache, "m", tiny_llama_dir)
    assert list(cache.loads.values()) == [2]


def test_jobs_side_by_side_get_copies_of_their_own_and_later_jobs_reuse_them(tiny_llama_dir):
    """Two jobs at once never hold one copy (hooks are added to a model during a run), yet run side
    by side: the second gets a copy of its own. Later jobs reuse the two copies: at most as many
    loads as jobs ran at once."""
    cache = ModelCache(capacity=1)
    both_in, held = threading.Barrier(2, timeout=30), []

    def job():
        with cache.use("m", path=str(tiny_llama_dir), device="cpu") as loaded:
            held.append(loaded)
            both_in.wait()  # both jobs are inside at the same time
    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 2 and held[0] is not held[1]
    for _ in range(3):
        assert use(cache, "m", tiny_llama_dir) in held
    assert list(cache.loads.values()) == [2]


def test_evaluation_jobs_of_one_process_share_one_load_and_score_as_a_fresh_load(tiny_llama_dir, tmp_path, monkeypatch):
    from fi import stages

    monkeypatch.setattr("fi.engine.models.MODEL_CACHE", ModelCache(capacity=2))
    import fi.engine.models

    family = get_family("addition")
    from fi.plan.params import ModelSpec

    entry = ModelSpec("tiny", str(tiny_llama_dir))
    tables = []
    for k in (1, 2):
        variant = f"setting1_nmax9_offset{k}"
        data = tmp_path / f"{variant}.jsonl"
        write_jsonl(family.generate(family.parse_variant(variant), {"n_examples": 6, "n_demos": 8, "seed": 0}), data)
        tables.append(stages.evaluate(entry, "addition", variant, 4, str(data), str(tmp_path / f"{variant}.parquet"),
                                      batch_size=4, device="cpu"))
    assert list(fi.engine.models.MODEL_CACHE.loads.values()) == [1]
    # a process of its own (no cache) scores the cell alike
    monkeypatch.setattr("fi.engine.models.MODEL_CACHE", ModelCache(capacity=0))
    alone = stages.evaluate(entry, "addition", "setting1_nmax9_offset2", 4, str(tmp_path / "setting1_nmax9_offset2.jsonl"),
                            str(tmp_path / "alone.parquet"), batch_size=4, device="cpu")
    pd.testing.assert_frame_equal(alone, tables[1])


def test_the_process_cache_is_bounded_by_the_environment(monkeypatch):
    monkeypatch.setenv("FI_MODEL_CACHE", "0")
    assert ModelCache().capacity == 0
