"""The one patching engine against plain references and TransformerLens' own helpers."""

from __future__ import annotations

import pytest
import torch

from fi.engine.interventions import z_hook
from fi.engine.pairs import POSITION_GROUPS, build_patching_data, logit_diff
from fi.engine.patching import Patcher, Receiver
from fi.engine.reference import reference_activation_patching, reference_path_patching
from fi.plan.tasks import get_family

ADDITION = get_family("addition")
PARAMS = {"n_examples": 12, "n_demos": 32, "seed": 42}
TOL = 1e-4


def data_for(model, variant="setting1_nmax9_offset1", shots=4, n=8):
    v = ADDITION.parse_variant(variant)
    return build_patching_data(model, ADDITION, v, ADDITION.generate(v, PARAMS), shots, max_examples=n)


@pytest.fixture(scope="module")
def gqa_model(tiny_gqa_llama_dir):
    from fi.engine.models import load_model

    return load_model("tiny-gqa", path=str(tiny_gqa_llama_dir), device="cpu")


@pytest.fixture(scope="module", params=["trained", "gqa"])
def model(request, trained_toy, gqa_model):
    return trained_toy if request.param == "trained" else gqa_model


def scaled_close(a, b, patcher):
    # compare on the logit-difference scale: normalised scores divide by (LD_contrast - LD_normal),
    # which is tiny for a random-initialised model and would magnify float noise
    scale = abs(patcher.ld_contrast - patcher.ld_normal)
    return float(((a - b) * scale).abs().max()) <= TOL


@pytest.mark.parametrize("receiver", ["output", "1.0.q", "1.1.k", "1.2.v"])
def test_path_patching_equals_the_papers_two_pass_loop(model, receiver):
    data = data_for(model)
    patcher = Patcher(model, data, batch_size=3, rows_per_pass=8)
    ours = patcher.path_patching(receiver)
    ref = reference_path_patching(model, data, receiver, batch=4)
    assert ours.shape == (model.n_layers, model.n_heads)
    assert scaled_close(ours, ref, patcher), (ours, ref)


def test_a_receiver_set_equals_each_receiver_alone(tmp_path):
    """path_patching_to_heads (one run 1 per sender for a whole level of the circuit search) gives each
    receiver the scores of the paper's loop for that receiver alone, across layers and q / k / v, on
    a 3-layer model with a known circuit (tests/planted_circuit.py), whose scores are O(1)."""
    from planted_circuit import save_planted_checkpoint

    from fi.engine.models import load_model
    from fi.engine.patching import build_cache, path_patching_to_heads

    model = load_model("planted", path=str(save_planted_checkpoint(tmp_path / "planted")), device="cpu")
    data = data_for(model, n=6)
    cache = build_cache(model, data, batch_size=4)
    receivers = ["2.0.v", "2.1.q", "1.0.v", "1.0.k", "1.1.v"]
    together = path_patching_to_heads(model, cache, receivers, rows_per_pass=8)
    for receiver in receivers:
        ref = reference_path_patching(model, data, receiver, batch=4)
        assert torch.allclose(together[Receiver.parse(receiver)], ref, atol=1e-4), receiver
    assert float(together[Receiver.parse("2.0.v")][1, 0]) == pytest.approx(-1.0, abs=1e-4)  # the planted F -> C edge


def _ungrouped_copy(grouped_dir, out_dir):
    """The same Llama with one key-value head per query head: each group's k / v projections repeated
    for its heads (TransformerLens' ungroup_grouped_query_attention), so its logits are the same."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = AutoModelForCausalLM.from_pretrained(grouped_dir)
    cfg = src.config
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    cfg_out = type(cfg).from_dict({**cfg.to_dict(), "num_key_value_heads": cfg.num_attention_heads})
    dst = LlamaForCausalLM(cfg_out)
    state = src.state_dict()
    d_head = cfg.hidden_size // cfg.num_attention_heads
    for name, w in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = w.reshape(cfg.num_key_value_heads, d_head, -1).repeat_interleave(group, 0).reshape(-1, w.shape[-1])
    dst.load_state_dict(state)
    dst.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(grouped_dir).save_pretrained(out_dir)
    return out_dir


@pytest.mark.parametrize("which", ["v", "k"])
def test_a_head_input_is_one_query_heads_under_grouped_query_attention(gqa_model, tiny_gqa_llama_dir, tmp_path, which):
    """With grouped-query attention, path patching to head h's value or key input patches what head
    h alone sees, as in the paper's ungrouped model: equal to the paper's loop on the ungrouped copy
    of the model (one key-value head per query head), and different for two heads of one group."""
    from fi.engine.models import load_model

    ungrouped = load_model("ungrouped", path=str(_ungrouped_copy(tiny_gqa_llama_dir, tmp_path / "u")), device="cpu")
    data = data_for(gqa_model)
    patcher = Patcher(gqa_model, data, batch_size=3, rows_per_pass=8)
    assert abs(patcher.ld_contrast - Patcher(ungrouped, data, batch_size=3).ld_contrast) < 1e-4  # same model
    for receiver in (f"1.0.{which}", f"1.1.{which}"):
        ours = patcher.path_patching(receiver)
        ref = reference_path_patching(ungrouped, data, receiver, batch=4)
        assert scaled_close(ours, ref, patcher), (receiver, ours, ref)
        assert scaled_close(ours, reference_path_patching(gqa_model, data, receiver, batch=4), patcher)
    # heads 0 and 1 share a key-value head (4 query heads on 2), yet their value inputs differ
    assert not torch.allclose(patcher.path_patching(f"1.0.{which}")[0], patcher.path_patching(f"1.1.{which}")[0])


def test_fast_output_path_is_used_and_equals_the_hooked_run(model):
    patcher = Patcher(model, data_for(model), batch_size=4)
    assert patcher.route.analytic_output_path  # pre-norm sequential blocks: Llama
    fast = patcher.path_patching("output")
    hooked = patcher.with_route(analytic_output_path=False).path_patching("output")
    assert scaled_close(fast, hooked, patcher)


def test_senders_above_a_head_receiver_have_no_effect(model):
    patcher = Patcher(model, data_for(model), batch_size=4)
    scores = patcher.path_patching("1.0.q")
    assert torch.allclose(scores[1:], torch.zeros_like(scores[1:]), atol=1e-6)


def test_activation_patching_equals_transformer_lens(model):
    import transformer_lens.patching as tlp

    data = data_for(model)
    patcher = Patcher(model, data, batch_size=3, rows_per_pass=5)
    ours = patcher.activation_patching()
    _, clean_cache = model.bridge.run_with_cache(data.normal)

    def metric(logits):
        return logit_diff(logits, data.last, data.normal_answer, data.contrast_answer).mean()

    theirs = tlp.get_act_patch_attn_head_out_all_pos(model.bridge, data.contrast, clean_cache, metric)
    assert scaled_close(ours, patcher.normalise(torch.as_tensor(theirs).cpu()), patcher)


def test_the_metric_is_a_parameter_of_every_method(model):
    """A cache built with another metric (here the normal answer's logit alone) is read through it by
    every method: activation patching equals TransformerLens' helper given that metric, and path
    patching to the output equals the paper's loop read with it, on both routes."""
    import transformer_lens.patching as tlp

    from fi.engine.patching import build_cache, path_patching

    data = data_for(model)

    def normal_logit(compared):
        return compared[:, 0]

    patcher = Patcher(model, data, batch_size=3, rows_per_pass=5, metric=normal_logit)
    ours = patcher.activation_patching()
    _, clean_cache = model.bridge.run_with_cache(data.normal)
    rows = torch.arange(data.size)

    def metric(logits):
        return logits[rows, data.last, data.normal_answer].mean()

    theirs = torch.as_tensor(tlp.get_act_patch_attn_head_out_all_pos(model.bridge, data.contrast, clean_cache, metric))
    with torch.inference_mode():
        assert patcher.ld_contrast == pytest.approx(float(metric(model.bridge(data.contrast))), abs=TOL)
        assert patcher.ld_normal == pytest.approx(float(metric(model.bridge(data.normal))), abs=TOL)
    assert scaled_close(ours, patcher.normalise(theirs.cpu()), patcher)
    assert not scaled_close(ours, Patcher(model, data, batch_size=3).activation_patching(), patcher)
    ref = reference_path_patching(model, data, "output", batch=4, metric=normal_logit)
    for residual_readout in (True, False):
        route = patcher.route.__class__(residual_readout, patcher.route.analytic_output_path)
        cache = build_cache(model, data, route, batch_size=3, metric=normal_logit)
        assert scaled_close(path_patching(model, cache, "output", rows_per_pass=8), ref, patcher)


@pytest.mark.parametrize("group", POSITION_GROUPS)
def test_activation_patching_by_position_group_equals_reference(model, group):
    data = data_for(model)
    patcher = Patcher(model, data, batch_size=4)
    assert scaled_close(patcher.activation_patching(group), reference_activation_patching(model, data, group), patcher)


def test_position_groups_partition_the_prompt(trained_toy):
    data = data_for(trained_toy, shots=2, n=1)
    tokens = trained_toy.tokenizer.convert_ids_to_tokens(data.contrast[0].tolist())
    pick = {g: "".join(t for t, m in zip(tokens, data.groups[g][0].tolist()) if m) for g in POSITION_GROUPS}
    # "a+b=c\nd+e=f\ng+h=" with contrast answers: demo answers are the two digits after '=', the
    # separators the three '=', the query its last line
    assert len(pick["demo_answers"]) == 2 and pick["demo_answers"].isdigit()
    assert pick["separators"] == "==="
    assert pick["query"].endswith("=") and len(pick["query"]) == 4


def test_attribution_patching_is_the_first_order_term(model):
    """Attribution patching is d LD / d eps at z = z_contrast + eps * (z_normal - z_contrast) for
    one head at a time; check it against a central finite difference of the true patched run."""
    data = data_for(model, n=4)
    patcher = Patcher(model, data, batch_size=4)
    attr = patcher.attribution_patching()
    _, cache_n = model.bridge.run_with_cache(data.normal)
    _, cache_c = model.bridge.run_with_cache(data.contrast)
    eps = 1e-2
    for layer, head in [(0, 0), (1, 3), (0, 2)]:
        def run(e):
            def hook(z, hook):
                delta = cache_n[z_hook(layer)][:, :, head] - cache_c[z_hook(layer)][:, :, head]
                z[:, :, head] = z[:, :, head] + e * delta
                return z
            with torch.no_grad():
                logits = model.bridge.run_with_hooks(data.contrast, fwd_hooks=[(z_hook(layer), hook)])
            return float(logit_diff(logits, data.last, data.normal_answer, data.contrast_answer).mean())
        derivative = (run(eps) - run(-eps)) / (2 * eps)
        expected = derivative / (patcher.ld_contrast - patcher.ld_normal)
        assert attr[layer, head] == pytest.approx(expected, rel=2e-2, abs=2e-3)


def test_attribution_patching_is_the_same_by_every_route(model):
    """Attribution patching reads LD from the final residual stream when that equals the logits,
    and reuses the normal run's cache when one exists; every route gives the same numbers."""
    data = data_for(model, n=6)
    flags = [p.requires_grad for p in model.bridge.parameters()]
    alone = Patcher(model, data, batch_size=4)
    attr = alone.attribution_patching()
    assert alone.route.residual_readout  # Llama: final norm + unembedding, nothing after
    full_logits = Patcher(model, data, batch_size=4).with_route(residual_readout=False)
    cached = Patcher(model, data, batch_size=4)
    cached.path_patching("output")  # builds the caches first
    for other in (full_logits, cached):
        assert torch.allclose(other.attribution_patching(), attr, atol=1e-5)
        assert other.ld_normal == pytest.approx(alone.ld_normal, abs=1e-5)
        assert other.ld_contrast == pytest.approx(alone.ld_contrast, abs=1e-5)
    assert [p.requires_grad for p in model.bridge.parameters()] == flags  # restored after the pass


def test_patching_reads_the_same_logit_difference_as_evaluation(tiny_llama):
    """One convention everywhere: on the cipher, whose answers share their leading ' ' token under a
    character tokenizer, no example is dropped, both prompts go on with the shared token, and the
    patching engine's LD per prompt kind equals evaluation's mean logit difference."""
    from fi.methods.evaluation import evaluate_task

    cipher = get_family("cipher")
    v = cipher.parse_variant("maxlen1_offset2")
    records = cipher.generate(v, {"n_examples": 6, "n_demos": 32, "seed": 42})
    data = build_patching_data(tiny_llama, cipher, v, records, 4)
    assert data.size == 6 and data.n_dropped == 0
    space = tiny_llama.tokenizer.convert_tokens_to_ids(" ")
    assert (data.contrast[torch.arange(6), data.last] == space).all()
    assert (data.normal[torch.arange(6), data.last] == space).all()
    assert data.groups["query"][torch.arange(6), data.last].all()
    patcher = Patcher(tiny_llama, data)
    df = evaluate_task(tiny_llama, cipher, v, records, shots=4)
    assert patcher.ld_contrast == pytest.approx(df["contrast_logit_diff"].mean(), abs=1e-4)
    assert patcher.ld_normal == pytest.approx(df["normal_logit_diff"].mean(), abs=1e-4)


def test_receiver_parsing():
    assert Receiver.parse("output").is_output
    r = Receiver.parse("3.7.k")
    assert (r.layer, r.head, r.which, str(r)) == (3, 7, "k", "3.7.k")
    for bad in ["3.7", "a.b.q", "3.7.z", "outputs"]:
        with pytest.raises(ValueError, match="receiver"):
            Receiver.parse(bad)


def test_normalisation_convention(trained_toy):
    patcher = Patcher(trained_toy, data_for(trained_toy), batch_size=4)
    assert patcher.normalise(patcher.ld_contrast) == 0
    assert patcher.normalise(patcher.ld_normal) == pytest.approx(-1)
    # nothing patched: no effect
    assert patcher.patched_effect([]) == pytest.approx(0, abs=1e-6)
