"""The denominator guard (top-level `min_ld_gap`) and the held-out prompts of the circuit evaluation."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from fi.io import write_jsonl
from fi.plan.params import DiscoveryParams, HeldOut, ModelSpec
from fi.plan.tasks import get_family
from fi.stages import LowGapError, aggregate_attribution, discover_heads, heldout_records

CELL = {"task": "addition", "variant": "setting1_nmax9_offset1", "shots": 4}
DISCOVERY = DiscoveryParams.from_config({"cell": CELL, "method": "path", "criterion": "top_k", "top_k": 1,
                                         "threshold": 0.2})
MODEL = ModelSpec("m", "unused")


def attribution_table(path, ld_normal: float, ld_contrast: float) -> str:
    rows = [{"model": "m", "task": "addition", "variant": CELL["variant"], "shots": 4, "method": "path",
             "receiver": "output", "positions": "all", "layer": 0, "head": h, "score": -0.5 * h,
             "ld_normal": ld_normal, "ld_contrast": ld_contrast} for h in range(4)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def test_discovery_refuses_a_cell_whose_gap_is_below_the_floor(tmp_path):
    table = attribution_table(tmp_path / "a.parquet", 0.741, 0.618)  # Gemma-3-270M's discovery cell
    with pytest.raises(LowGapError, match=r"addition setting1_nmax9_offset1 shots=4 .* 0\.1230 logits.*min_ld_gap"):
        discover_heads(MODEL, str(tmp_path / "h.json"), DISCOVERY, attribution=table, min_ld_gap=0.5)
    assert not (tmp_path / "h.json").exists()
    # the same scores on a cell the model does: chosen
    out = discover_heads(MODEL, str(tmp_path / "h.json"), DISCOVERY,
                         attribution=attribution_table(tmp_path / "b.parquet", 3.0, -2.0), min_ld_gap=0.5)
    assert out["heads"] == [[0, 3]]


def test_attribution_table_flags_low_gaps(tmp_path):
    cells = [attribution_table(tmp_path / "low.parquet", 0.741, 0.618),
             attribution_table(tmp_path / "ok.parquet", 3.0, -2.0)]
    types = tmp_path / "types.parquet"
    pd.DataFrame([{"model": "m", "layer": 0, "head": h, "type": ""} for h in range(4)]).to_parquet(types)
    out = aggregate_attribution(cells, [str(types)], [], str(tmp_path / "t.parquet"), min_ld_gap=0.5)
    gaps = out.groupby("ld_normal")[["ld_gap", "low_ld_gap"]].first()
    assert gaps.loc[0.741, "ld_gap"] == pytest.approx(0.123) and bool(gaps.loc[0.741, "low_ld_gap"])
    assert gaps.loc[3.0, "ld_gap"] == pytest.approx(5.0) and not bool(gaps.loc[3.0, "low_ld_gap"])


def test_heldout_prompts_are_fresh_and_deterministic(tmp_path):
    family = get_family("addition")
    v = family.parse_variant(CELL["variant"])
    generation = {"n_examples": 100, "n_demos": 32, "seed": 42}
    used = family.generate(v, generation)
    write_jsonl(used, tmp_path / "d.jsonl")
    heldout = HeldOut(shots=16, max_examples=100, seed=None)
    a = heldout_records("addition", CELL["variant"], generation, heldout, used)
    assert a == heldout_records("addition", CELL["variant"], generation, heldout, used)
    assert len(a) == 100 and not any(r in used for r in a)
    assert a == family.generate(v, {**generation, "seed": 43})  # the dataset's seed + 1
    # a record that is also a discovery record is left out
    assert heldout_records("addition", CELL["variant"], generation, heldout, used + a[:3]) == a[3:]
    with pytest.raises(ValueError, match="heldout.seed 42 is the dataset's own seed"):
        heldout_records("addition", CELL["variant"], generation, dataclasses.replace(heldout, seed=42), used)
