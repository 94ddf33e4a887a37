"""Function vectors (fi.methods.function_vectors): the engine against a plain reference of the definition,
the null cases, the derived measures and the stage's table."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from fi.engine.pairs import build_patching_data
from fi.methods.function_vectors import (
    ALL,
    CONTRAST,
    FI,
    NORMAL,
    SHIFT_COLUMNS,
    NaivePrompts,
    digit_logits,
    effects,
    function_vector_shifts,
    function_vectors,
    naive_prompts,
    plus_j_effect,
    set_vectors,
    vector_sets,
)
from fi.plan.tasks import get_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEADS = [(0, 1), (1, 2), (1, 3)]  # two in one layer: one hook, two interventions
OFFSETS = (1, -2)
SCALES = (0.0, 1.0, 2.5)
SHOTS = 4


def records(k: int, n: int = 8) -> list[dict]:
    family = get_family("addition")
    return family.generate(family.parse_variant(f"setting1_nmax9_offset{k}"), {"n_examples": n, "n_demos": 32, "seed": 42})


def patching_data(model, k: int):
    family = get_family("addition")
    data = build_patching_data(model, family, family.parse_variant(f"setting1_nmax9_offset{k}"), records(k), SHOTS)
    assert data.n_dropped == 0
    return data


# ---- a plain reference: one prompt at a time, hand-written hooks, full logits ------------------------

def reference_vector(model, k: int, head: tuple[int, int]) -> torch.Tensor:
    """Mean hook_z of `head` at the last token of each contrast prompt (the query's '=')."""
    family = get_family("addition")
    layer, h = head
    outs = []
    for ex in family.examples(records(k), family.parse_variant(f"setting1_nmax9_offset{k}"), SHOTS):
        tokens = torch.tensor([model.encode(ex.contrast_prompt)])
        _, cache = model.bridge.run_with_cache(tokens)
        outs.append(cache[f"blocks.{layer}.attn.hook_z"][0, -1, h])
    return torch.stack(outs).mean(0)


def reference_digit_logits(model, prompt: str, adds: dict, scale: float) -> torch.Tensor:
    """The ten digit logits after `prompt`, with `scale * vector` added to hook_z of each
    (layer, head) -> vector in `adds` at the last position; full logits of model.bridge."""
    tokens = torch.tensor([model.encode(prompt)])
    digits = [model.encode(prompt + str(d))[len(tokens[0])] for d in range(10)]

    def hook_for(layer):
        def hook(z, hook):
            z = z.clone()
            for (lay, h), vec in adds.items():
                if lay == layer:
                    z[0, -1, h] = z[0, -1, h] + scale * vec
            return z
        return hook
    hooks = [(f"blocks.{layer}.attn.hook_z", hook_for(layer)) for layer in sorted({lay for lay, _ in adds})]
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks) if hooks else model.bridge(tokens)
    return logits[0, -1, digits]


def reference_shifts(model, offsets=OFFSETS, scales=SCALES) -> pd.DataFrame:
    rows = []
    for k in offsets:
        vecs = {h: reference_vector(model, k, h) for h in HEADS}
        sets = [(f"L{a}H{b}", {(a, b): vecs[(a, b)]}) for a, b in HEADS] + [(ALL, vecs)]
        for label, adds in sets:
            for scale in scales:
                for i, prompt in enumerate(naive_prompts()):
                    shift = reference_digit_logits(model, prompt, adds, scale) - reference_digit_logits(model, prompt, {}, 0)
                    rows += [(k, label, scale, i, d, float(shift[d])) for d in range(10)]
    return pd.DataFrame(rows, columns=["offset", "heads", "scale", "input", "output", "shift"])


def test_naive_prompts_are_the_papers():
    # the paper's: the demo is the previous digit, wrapping (9 before 0), never "-1"
    assert naive_prompts() == ["9=9\n0=", "0=0\n1=", "1=1\n2=", "2=2\n3=", "3=3\n4=", "4=4\n5=", "5=5\n6=",
                               "6=6\n7=", "7=7\n8=", "8=8\n9="]


def reference_normal_vector(model, k: int, head: tuple[int, int]) -> torch.Tensor:
    """Mean hook_z of `head` over the NORMAL prompts (plain a+b demos) of the offset-k examples, read
    where the contrast vector is read: the last token of the prompt followed by the two answers'
    common prefix. One prompt at a time, a hand-written TransformerLens hook."""
    family = get_family("addition")
    layer, h = head
    outs = []
    for ex in family.examples(records(k), family.parse_variant(f"setting1_nmax9_offset{k}"), SHOTS):
        c_ids = model.encode(ex.contrast_prompt)
        n_ans, c_ans = (model.encode(ex.contrast_prompt + a)[len(c_ids):] for a in (ex.normal_answer, ex.contrast_answer))
        prefix = []
        for a, b in zip(n_ans, c_ans):
            if a != b:
                break
            prefix.append(a)
        tokens = torch.tensor([model.encode(ex.normal_prompt) + prefix])
        seen = []

        def grab(z, hook):
            seen.append(z[0, -1, h].detach().clone())
        with torch.no_grad():
            model.bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", grab)])
        outs.append(seen[0])
    return torch.stack(outs).mean(0)


def test_vectors_match_the_reference(tiny_llama):
    for k in OFFSETS:
        got = function_vectors(tiny_llama, patching_data(tiny_llama, k), HEADS, batch_size=3)
        want = torch.stack([reference_vector(tiny_llama, k, h) for h in HEADS])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_normal_prompt_vectors_match_a_plain_reference(tiny_llama):
    # the control: the same heads' mean output on the normal prompts of the same examples
    sets = vector_sets(HEADS, None)
    assert [(s.group, s.prompts) for s in sets] == [(FI, CONTRAST), (FI, NORMAL)]
    for k in OFFSETS:
        data = patching_data(tiny_llama, k)
        contrast, normal = set_vectors(tiny_llama, data, sets, batch_size=3)
        want = torch.stack([reference_normal_vector(tiny_llama, k, h) for h in HEADS])
        torch.testing.assert_close(normal, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(function_vectors(tiny_llama, data, HEADS, prompts=NORMAL), want, atol=1e-6, rtol=0)
        assert (contrast - normal).abs().max() > 1e-3  # the two prompts' vectors are not the same thing
        torch.testing.assert_close(contrast, torch.stack([reference_vector(tiny_llama, k, h) for h in HEADS]),
                                   atol=1e-6, rtol=0)


def test_vector_sets_come_from_the_circuit_else_the_discovery_heads():
    discovery = [[0, 1], [1, 3]]
    circuit = {"previous_token": [[0, 0]], "function_induction": [[1, 2], [0, 3]], "consolidation": []}
    sets = vector_sets(discovery, circuit)
    assert [(s.group, s.prompts, s.head_source, s.heads) for s in sets] == [
        (FI, CONTRAST, "circuit", ((1, 2), (0, 3))), (FI, NORMAL, "circuit", ((1, 2), (0, 3))),
        ("previous_token", CONTRAST, "circuit", ((0, 0),))]  # the empty consolidation group: no set
    fallback = vector_sets(discovery, {**circuit, "function_induction": []})
    assert [(s.group, s.head_source, s.heads) for s in fallback[:2]] == [(FI, "discovery", ((0, 1), (1, 3)))] * 2
    assert [s.group for s in fallback[2:]] == ["previous_token"]
    assert [(s.prompts, s.head_source) for s in vector_sets(discovery, None)] == [(CONTRAST, "discovery"),
                                                                                 (NORMAL, "discovery")]


@pytest.mark.parametrize("residual_readout", [True, False])
def test_shifts_match_the_reference(tiny_llama, residual_readout, monkeypatch):
    if not residual_readout:  # the full-logits route, as if the model's route check had failed
        monkeypatch.setattr(tiny_llama, "residual_readout", False)
    vectors = {k: function_vectors(tiny_llama, patching_data(tiny_llama, k), HEADS) for k in OFFSETS}
    got = function_vector_shifts(tiny_llama, vectors, HEADS, SCALES, rows_per_pass=40)
    want = reference_shifts(tiny_llama)
    keys = ["offset", "heads", "scale", "input", "output"]
    merged = got.merge(want, on=keys, suffixes=("", "_ref"), validate="one_to_one")
    assert len(merged) == len(want) == len(OFFSETS) * (len(HEADS) + 1) * len(SCALES) * 100
    assert (merged["shift"] - merged["shift_ref"]).abs().max() < 1e-5
    assert merged["shift_ref"].abs().max() > 1e-2  # the vectors do move the logits
    assert (merged["target"] == (merged["output"] - merged["input"] == merged["offset"])).all()


def test_shifts_match_the_reference_on_the_trained_toy(trained_toy):
    vectors = {1: function_vectors(trained_toy, patching_data(trained_toy, 1), HEADS)}
    got = function_vector_shifts(trained_toy, vectors, HEADS, [1.0])
    want = reference_shifts(trained_toy, offsets=(1,), scales=(1.0,))
    merged = got.merge(want, on=["offset", "heads", "scale", "input", "output"], suffixes=("", "_ref"))
    assert len(merged) == len(want) == (len(HEADS) + 1) * 100
    assert (merged["shift"] - merged["shift_ref"]).abs().max() < 1e-5


def test_empty_head_set_changes_nothing(tiny_llama):
    prompts = NaivePrompts.build(tiny_llama)
    empty = ([], torch.zeros(0, 8), 3.0)
    logits = digit_logits(tiny_llama, prompts, [[], [empty]], rows_per_pass=10)
    assert torch.equal(logits[0], logits[1])
    table = function_vector_shifts(tiny_llama, {1: torch.zeros(0, 8)}, [], SCALES)
    assert set(table["heads"]) == {ALL} and (table["shift"] == 0).all()


def test_own_mean_output_at_scale_zero_is_the_clean_run(tiny_llama):
    vec = function_vectors(tiny_llama, patching_data(tiny_llama, 1), HEADS)
    prompts = NaivePrompts.build(tiny_llama)
    for j, head in enumerate(HEADS):
        logits = digit_logits(tiny_llama, prompts, [[], [([head], vec[j:j + 1], 0.0)]], rows_per_pass=10)
        assert torch.equal(logits[0], logits[1])
    # the whole table at scale 0, all heads stacked in one pass
    table = function_vector_shifts(tiny_llama, {1: vec}, HEADS, [0.0, 1.0])
    assert (table.loc[table["scale"] == 0, "shift"] == 0).all()
    assert (table.loc[table["scale"] == 1, "shift"] != 0).any()
    # and the reference hook at scale 0 equals the plain forward pass bit for bit
    prompt = naive_prompts()[3]
    assert torch.equal(reference_digit_logits(tiny_llama, prompt, {HEADS[0]: vec[0]}, 0.0),
                       reference_digit_logits(tiny_llama, prompt, {}, 0.0))


def test_plus_j_effect_and_shares():
    shift = torch.zeros(10, 10)
    for i in range(9):
        shift[i, i + 1] = 2.0  # a clean +1 function
    shift += 5.0  # a uniform shift counts nothing
    assert plus_j_effect(shift, 1) == (pytest.approx(2.0), 9)  # inputs 0..8
    assert plus_j_effect(shift, -2)[1] == 8
    # j = 0: inputs 0..8 have 5 - (8 * 5 + 7) / 9 = -2/9, input 9 has 0
    assert plus_j_effect(shift, 0) == (pytest.approx(-0.2), 10)

    def table(label, scale):
        rows = []
        for i in range(10):
            for d in range(10):
                rows.append(("m", 1, label, 1.0, i, d, scale * float(d == i + 1)))
        return rows
    rows = table("0.1", 1.0) + table("1.2", 3.0) + table(ALL, 4.0)
    df = pd.DataFrame(rows, columns=["model", "offset", "heads", "scale", "input", "output", "shift"])
    out = effects(df)
    at_k = out[out["measured_offset"] == 1].set_index("heads")
    assert at_k.loc["0.1", "share"] == pytest.approx(0.25) and at_k.loc["1.2", "share"] == pytest.approx(0.75)
    assert at_k.loc[ALL, "share_sum"] == pytest.approx(1.0) and pd.isna(at_k.loc[ALL, "share"])
    assert set(out["measured_offset"]) == {-2, -1, 0, 1, 2}


def test_stage_writes_the_documented_table(tiny_llama_dir, tmp_path):
    from fi.io import write_jsonl
    from fi.plan.params import FunctionVectorParams, ModelSpec, PlotParams
    from fi.stages import aggregate_function_vectors, plot_function_vectors
    from fi.stages import function_vectors as stage

    heads_file = tmp_path / "heads.json"
    heads_file.write_text(json.dumps({"heads": [[0, 1], [1, 3]]}))
    circuit_file = tmp_path / "circuit.json"  # the groups as fi.stages.find_circuit writes them
    groups = {"previous_token": [[0, 0]], "function_induction": [[1, 2], [0, 3], [1, 0]], "consolidation": [[1, 1]]}
    circuit_file.write_text(json.dumps({"groups": groups}))
    datasets = []
    for k in (-1, 2):
        path = tmp_path / f"setting1_nmax9_offset{k}.jsonl"
        write_jsonl(records(k, 4), path)
        datasets.append(str(path))
    params = FunctionVectorParams(offsets=(-1, 2), setting="setting1", nmax=9, shots=2, scales=(0, 1),
                                  max_examples=3, batch_size=2)
    out = tmp_path / "fv" / "tiny.parquet"
    model = ModelSpec("tiny-llama", str(tiny_llama_dir))
    stage(model, str(heads_file), datasets, str(out), params, circuit_file=str(circuit_file), device="cpu")
    df = pd.read_parquet(out)
    assert list(df.columns) == SHIFT_COLUMNS
    # the circuit's FI heads (not the discovery heads) on contrast and normal prompts, and both other groups
    heads_of = {key: set(g["heads"]) for key, g in df.groupby(["group", "prompts", "head_source"])}
    fi_heads = {"L1H2", "L0H3", "L1H0", ALL}
    assert heads_of == {(FI, CONTRAST, "circuit"): fi_heads, (FI, NORMAL, "circuit"): fi_heads,
                        ("previous_token", CONTRAST, "circuit"): {"L0H0", ALL},
                        ("consolidation", CONTRAST, "circuit"): {"L1H1", ALL}}
    # offsets x head sets (4 + 4 + 2 + 2) x scales x 10 inputs x 10 digits
    assert len(df) == 2 * 12 * 2 * 100 and (df["n_prompts"] == 3).all()
    assert (df.loc[df["heads"] == ALL, ["layer", "head"]] == -1).all().all()
    assert (df["model"] == "tiny-llama").all() and (df["shots"] == 2).all() and (df["setting"] == "setting1").all()
    moved = df[df["scale"] == 1].groupby(["group", "prompts"])["shift"].apply(lambda x: x.abs().max())
    assert (moved > 1e-3).all() and (df.loc[df["scale"] == 0, "shift"] == 0).all()  # every set has a vector
    assert (df.loc[df["scale"] == 1, "vector_norm"] > 0).all()
    # the control's vectors differ from the function vectors of the same heads
    fi_rows = df[(df["group"] == FI) & (df["scale"] == 1)].pivot_table(
        index=["offset", "heads", "input", "output"], columns="prompts", values="shift")
    assert (fi_rows[CONTRAST] - fi_rows[NORMAL]).abs().max() > 1e-3

    aggregate_function_vectors([str(out)], str(tmp_path / "t.parquet"), str(tmp_path / "e.parquet"))
    eff = pd.read_parquet(tmp_path / "e.parquet")
    assert {"effect", "share", "share_sum", "measured_offset", "group", "prompts", "head_source"} <= set(eff.columns)
    # shares are of each set's own all-heads effect: every set's shares are there, and add up per set
    at_k = eff[(eff["measured_offset"] == eff["offset"]) & (eff["heads"] == ALL) & (eff["scale"] == 1)]
    assert len(at_k) == 4 * 2 and at_k["share_sum"].notna().all()
    plot_function_vectors(str(out), str(tmp_path / "fv.png"), PlotParams(dpi=50))
    assert (tmp_path / "fv.png").stat().st_size > 5_000

    # the fallback: no circuit (stage off), or an empty FI group: the discovery heads, labelled so
    circuit_file.write_text(json.dumps({"groups": {**groups, "function_induction": []}}))
    for circuit in (str(circuit_file), None):
        stage(model, str(heads_file), datasets, str(out), dataclasses.replace(params, scales=(1,)),
              circuit_file=circuit, device="cpu")
        df = pd.read_parquet(out)
        fi_rows = df[df["group"] == FI]
        assert set(fi_rows["heads"]) == {"L0H1", "L1H3", ALL} and (fi_rows["head_source"] == "discovery").all()
        assert set(fi_rows["prompts"]) == {CONTRAST, NORMAL}
        others = {"previous_token", "consolidation"} if circuit else set()
        assert set(df["group"]) - {FI} == others and (df.loc[df["group"] != FI, "head_source"] == "circuit").all()
