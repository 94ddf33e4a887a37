"""Every architecture of the paper's grid through the one engine, on tiny random 3-layer checkpoints
with sliding windows of 8 tokens where the architecture has them (tests/tiny_checkpoints.py,
`PAPER_ARCHITECTURES`): Llama, Mistral, Gemma-2, Qwen-2, Phi-3, GPT-NeoX and Gemma-3.

For each: the bridge's logits are plain transformers' logits; prompts begin as the model's own
TransformerLens adapter says (BOS or not); the engine takes the route expected of the architecture;
path patching to the output and to q / k / v inputs equals the paper's loop (fi.engine.reference) on the
model, and under grouped-query attention on its ungrouped copy (one key-value head per query head,
as the paper's `set_ungroup_grouped_query_attention(True)`); activation patching equals
TransformerLens' `get_act_patch_attn_head_out_all_pos`."""

from __future__ import annotations

import pytest
import torch

from fi.engine.models import load_model
from fi.engine.pairs import build_patching_data, logit_diff
from fi.engine.patching import Patcher, Receiver
from fi.engine.reference import reference_path_patching
from fi.plan.tasks import get_family
from tests.tiny_checkpoints import PAPER_ARCHITECTURES, save_checkpoint

ADDITION = get_family("addition")
VARIANT = ADDITION.parse_variant("setting1_nmax9_offset1")
N_LAYERS, WINDOW = 3, 8
# parallel attention and MLP: a head's output reaches the MLP of its own block only through the
# residual of the blocks above, so run 1 of path patching cannot go through the analytic route
NO_ANALYTIC_ROUTE = {"gpt_neox"}
NO_BOS = {"gpt_neox", "qwen2"}  # TransformerLens' adapters set default_prepend_bos = False
# head 2 and head 3 share key-value head 1 (4 query heads on 2): receivers of one group
RECEIVERS = ("2.3.q", "2.3.k", "2.2.v", "1.1.k")
TOL = 1e-4  # on the logit-difference scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=sorted(PAPER_ARCHITECTURES))
def arch(request, tmp_path_factory):
    name = request.param
    path = save_checkpoint(tmp_path_factory.mktemp(name) / name, name, PAPER_ARCHITECTURES[name],
                           n_layers=N_LAYERS, sliding_window=WINDOW)
    model = load_model(f"tiny-{name}", path=str(path), dtype="float32", device="cpu")
    records = ADDITION.generate(VARIANT, {"n_examples": 6, "n_demos": 32, "seed": 42})
    data = build_patching_data(model, ADDITION, VARIANT, records, 4)
    assert data.size == 6 and data.contrast.shape[1] > 3 * WINDOW  # the windows cut the prompts
    return name, path, model, data


def on_ld_scale(a, b, patcher) -> float:
    """Largest difference of two normalised score maps on the logit-difference scale (normalised
    scores divide by LD_contrast - LD_normal, tiny for a random model)."""
    return float(((a - b) * abs(patcher.ld_contrast - patcher.ld_normal)).abs().max())


def ungrouped_copy(src_dir, out_dir):
    """The same model with one key-value head per query head: each key-value head's projections (and
    biases; Phi-3's share of the fused qkv projection) repeated for its query heads, as
    TransformerLens' `ungroup_grouped_query_attention`. Its logits are the grouped model's."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(src_dir)
    cfg = src.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    group = n_heads // n_kv

    def repeat(w):  # [n_kv * d_head, ...] -> [n_heads * d_head, ...]
        return w.reshape(n_kv, d_head, *w.shape[1:]).repeat_interleave(group, 0).reshape(n_heads * d_head, *w.shape[1:])
    state = {}
    for name, w in src.state_dict().items():
        if name.endswith("qkv_proj.weight"):
            q, k, v = w.split([n_heads * d_head, n_kv * d_head, n_kv * d_head])
            w = torch.cat([q, repeat(k), repeat(v)])
        elif name.endswith((".k_proj.weight", ".v_proj.weight", ".k_proj.bias", ".v_proj.bias")):
            w = repeat(w)
        state[name] = w
    dst = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**cfg.to_dict(), "num_key_value_heads": n_heads}))
    dst.load_state_dict(state)
    dst.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(src_dir).save_pretrained(out_dir)
    return out_dir


def test_bridge_logits_equal_transformers(arch):
    from transformers import AutoModelForCausalLM

    name, path, model, data = arch
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        theirs, ours = hf(data.contrast).logits, model.bridge(data.contrast)
    assert float((theirs - ours).abs().max()) <= 1e-4, name


def test_prompts_begin_with_bos_where_the_model_does(arch):
    name, _, model, data = arch
    bos = model.tokenizer.bos_token_id
    assert bos is not None  # every tiny tokenizer has one: whether it is prepended is the model's
    assert (data.contrast[:, 0] == bos).all() == (name not in NO_BOS), name
    assert model.encode("1+1=")[0] == (model.tokenizer("1", add_special_tokens=False)["input_ids"][0]
                                       if name in NO_BOS else bos)


def test_route_is_the_architectures(arch):
    name, _, model, data = arch
    route = Patcher(model, data, batch_size=3).route
    assert route.residual_readout
    assert route.analytic_output_path == (name not in NO_ANALYTIC_ROUTE), name


def test_path_patching_to_the_output_equals_the_papers_loop(arch):
    name, _, model, data = arch
    patcher = Patcher(model, data, batch_size=3, rows_per_pass=8)
    ref = reference_path_patching(model, data, "output", batch=3)
    assert on_ld_scale(patcher.path_patching("output"), ref, patcher) <= TOL, name
    hooked = patcher.with_route(analytic_output_path=False)
    assert on_ld_scale(hooked.path_patching("output"), ref, patcher) <= TOL, name


@pytest.mark.slow
def test_path_patching_to_head_inputs_equals_the_papers_loop_on_the_ungrouped_model(arch, tmp_path):
    name, path, model, data = arch
    patcher = Patcher(model, data, batch_size=3, rows_per_pass=8)
    scores = patcher.path_patching_to_heads(RECEIVERS)
    grouped = int(getattr(model.bridge.cfg, "n_key_value_heads", None) or model.n_heads) < model.n_heads
    oracles = [model]
    if grouped:
        oracles.append(load_model(f"ungrouped-{name}", path=str(ungrouped_copy(path, tmp_path / "u")), device="cpu"))
        with torch.inference_mode():  # the same function
            assert torch.allclose(oracles[1].bridge(data.contrast), model.bridge(data.contrast), atol=1e-4)
    for receiver in RECEIVERS:
        for oracle in oracles:
            ref = reference_path_patching(oracle, data, receiver, batch=3)
            assert on_ld_scale(scores[Receiver.parse(receiver)], ref, patcher) <= TOL, (name, receiver, oracle.name)
    if grouped:  # two heads of one key-value group see different keys
        assert on_ld_scale(scores[Receiver.parse("2.3.k")], patcher.path_patching("2.2.k"), patcher) > 10 * TOL, name


def test_activation_patching_equals_transformer_lens(arch):
    import transformer_lens.patching as tlp

    name, _, model, data = arch
    patcher = Patcher(model, data, batch_size=3, rows_per_pass=8)
    _, clean_cache = model.bridge.run_with_cache(data.normal)

    def metric(logits):
        return logit_diff(logits, data.last, data.normal_answer, data.contrast_answer).mean()
    theirs = tlp.get_act_patch_attn_head_out_all_pos(model.bridge, data.contrast, clean_cache, metric)
    assert on_ld_scale(patcher.activation_patching(), patcher.normalise(torch.as_tensor(theirs).cpu()), patcher) <= TOL, name
