"""Ablation during evaluation: exactness, the FI heads' effect, random sets."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from fi.engine.pairs import build_patching_data
from fi.engine.patching import Patcher
from fi.methods.ablation import ablated_scores, ablated_scores_many, random_head_sets
from fi.methods.evaluation import evaluate_task
from fi.plan.tasks import get_family

ADDITION = get_family("addition")
PARAMS = {"n_examples": 100, "n_demos": 32, "seed": 42}
FLAGS = ["normal_correct", "normal_on_contrast_correct", "cf_correct", "orig_correct"]


def cell(variant="setting1_nmax9_offset1"):
    v = ADDITION.parse_variant(variant)
    return v, ADDITION.generate(v, PARAMS)


@pytest.mark.parametrize("mode", ["patch", "mean", "zero"])
def test_empty_head_set_equals_unablated_evaluation_exactly(tiny_llama, mode):
    v, records = cell("normal_nmax99_offset2")
    base = evaluate_task(tiny_llama, ADDITION, v, records[:10], 4)
    empty = ablated_scores(tiny_llama, ADDITION, v, records[:10], 4, [], mode)
    pd.testing.assert_frame_equal(base, empty)


@pytest.mark.parametrize("mode", ["patch", "mean"])
def test_many_head_sets_at_once_equal_one_call_each(tiny_llama, mode):
    """An ablate job's head sets scored in one call (the unablated runs shared, every set's heads
    captured in one normal run) give exactly the tables of one call per set."""
    v, records = cell()
    sets = [[], [(1, 0)], [(0, 1), (1, 0)], [(0, 3)], []]
    many = ablated_scores_many(tiny_llama, ADDITION, v, records[:12], 4, sets, mode, batch_size=5)
    for heads, df in zip(sets, many, strict=True):
        pd.testing.assert_frame_equal(df, ablated_scores(tiny_llama, ADDITION, v, records[:12], 4, heads, mode, 5))
    assert not many[1].equals(many[0])  # a set that changes something (the comparison can fail)


@pytest.fixture(scope="module")
def fi_heads(trained_toy):
    """The trained model's FI head, found by path patching to the output on the discovery cell."""
    v, records = cell()
    patcher = Patcher(trained_toy, build_patching_data(trained_toy, ADDITION, v, records, 4), batch_size=32)
    scores = patcher.path_patching("output")
    layer, head = divmod(int(scores.argmin()), trained_toy.n_heads)
    return [(layer, head)]


# The fixture trains on 13 items a sequence (tests/conftest.py TRAINED_TOY): at 16 shots its prompts
# are longer than any it saw, and whether it generalises there depends on the seed (seed 2: cf_acc
# 0.58); at 8 shots every seed tried clears these bounds with margin (bench/bench_fixture_margin.py
# --shots 8: lowest cf_acc 0.99, plain answers after the patch 0.96, random heads change <= 0.02).
SHOTS = 8


def test_patching_the_fi_heads_from_the_normal_prompt_gives_the_plain_answer(trained_toy, fi_heads):
    v, records = cell()
    base = ablated_scores(trained_toy, ADDITION, v, records, SHOTS, [], "patch")
    assert base["cf_correct"].mean() >= 0.9  # the model does off-by-one
    ablated = ablated_scores(trained_toy, ADDITION, v, records, SHOTS, fi_heads, "patch")
    assert ablated["orig_correct"].mean() >= 0.9  # and answers a+b once its FI heads see a+b demos
    # the normal prompt is untouched by patch-from-base
    assert ablated["normal_correct"].equals(base["normal_correct"])


def test_random_head_sets_barely_change_the_answers(trained_toy, fi_heads):
    v, records = cell()
    base = ablated_scores(trained_toy, ADDITION, v, records, SHOTS, [], "patch")
    for heads in random_head_sets(trained_toy.n_layers, trained_toy.n_heads, fi_heads, 5, seed=0, exclude=fi_heads):
        df = ablated_scores(trained_toy, ADDITION, v, records, SHOTS, heads, "patch")
        changed = (df["cf_correct"] != base["cf_correct"]).mean()
        assert changed <= 0.1, (heads, changed)


def test_patch_mode_reuses_the_matching_normal_input(tiny_llama):
    """Patching every head of every layer from the normal prompt turns the contrast run into the
    normal run exactly (z is all attention contributes), also for multi-token answers."""
    v, records = cell("normal_nmax99_offset3")
    heads = [(layer, h) for layer in range(tiny_llama.n_layers) for h in range(tiny_llama.n_heads)]
    df = ablated_scores(tiny_llama, ADDITION, v, records[:8], 3, heads, "patch")
    assert df["orig_correct"].equals(df["normal_correct"])
    assert df["cf_correct"].equals(df["normal_on_contrast_correct"])
    assert torch.allclose(torch.tensor(df["contrast_logit_diff"].values), torch.tensor(df["normal_logit_diff"].values), atol=1e-4)


def test_zero_and_mean_modes_change_both_prompts(trained_toy, fi_heads):
    v, records = cell()
    base = ablated_scores(trained_toy, ADDITION, v, records[:30], 4, [], "zero")
    for mode in ("zero", "mean"):
        df = ablated_scores(trained_toy, ADDITION, v, records[:30], 4, fi_heads, mode)
        assert not df["normal_logit_diff"].equals(base["normal_logit_diff"])
        assert not df["contrast_logit_diff"].equals(base["contrast_logit_diff"])


def test_unknown_mode_is_an_error(tiny_llama):
    v, records = cell()
    with pytest.raises(ValueError, match="unknown ablation mode 'scrub'"):
        ablated_scores(tiny_llama, ADDITION, v, records[:2], 2, [(0, 0)], "scrub")


def test_random_head_sets_are_deterministic_and_exclusive():
    fi = [(0, 1), (1, 2)]
    a = random_head_sets(4, 8, fi, 5, seed=3, exclude=fi)
    assert a == random_head_sets(4, 8, fi, 5, seed=3, exclude=fi)
    assert a != random_head_sets(4, 8, fi, 5, seed=4, exclude=fi)
    assert all(len(s) == 2 and not set(s) & set(fi) for s in a)
    matched = random_head_sets(4, 8, fi, 5, seed=3, layer_matched=True, exclude=fi)
    assert all(sorted(layer for layer, _ in s) == [0, 1] for s in matched)
    with pytest.raises(ValueError, match="layer 0 has only"):
        random_head_sets(1, 2, [(0, 0), (0, 1)], 1, seed=0, layer_matched=True, exclude=[(0, 0)])


def test_random_head_sets_are_distinct_while_distinct_sets_remain():
    """In a 2 x 4 model with one FI head, 7 single heads remain: 5 sets are 5 different heads, and
    9 sets use all 7 before any repeats."""
    for seed in range(10):
        five = random_head_sets(2, 4, [(0, 0)], 5, seed=seed, exclude=[(0, 0)])
        assert len({tuple(map(tuple, s)) for s in five}) == 5
        nine = random_head_sets(2, 4, [(0, 0)], 9, seed=seed, exclude=[(0, 0)])
        assert len({tuple(map(tuple, s)) for s in nine}) == 7
        matched = random_head_sets(2, 4, [(0, 0)], 4, seed=seed, layer_matched=True, exclude=[(0, 0)])
        assert {tuple(map(tuple, s)) for s in matched} == {((0, 1),), ((0, 2),), ((0, 3),)}


def test_ablate_stage_writes_the_four_accuracies(trained_toy_dir, fi_heads, tmp_path):
    from fi.io import write_jsonl
    from fi.plan.params import AblationParams, ModelSpec
    from fi.stages import ablate

    v, records = cell()
    dataset = tmp_path / "d.jsonl"
    write_jsonl(records[:20], dataset)
    heads_file = tmp_path / "heads.json"
    heads_file.write_text(json.dumps({"heads": [list(h) for h in fi_heads]}))
    out = ablate(ModelSpec("fi-toy", str(trained_toy_dir)), "addition", v.name, 8, str(dataset), str(heads_file),
                 str(tmp_path / "a.parquet"), AblationParams(modes=("patch", "zero"), n_random=2), device="cpu")
    assert sorted(set(out["head_set"])) == ["fi", "none", "random"]
    assert len(out) == 2 * (1 + 1 + 2)
    for acc in ("normal_acc", "normal_on_contrast_acc", "cf_acc", "orig_acc"):
        assert out[acc].between(0, 1).all() and (out[f"{acc}_lo"] <= out[acc] + 1e-9).all()
    fi_row = out[(out["head_set"] == "fi") & (out["mode"] == "patch")].iloc[0]
    assert fi_row["orig_acc"] >= 0.9
