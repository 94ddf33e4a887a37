"""The peers of bench/bench_peers.py that need TransformerLens 2.x, run in their own environment:
AutoCircuit (auto-circuit 1.0.1) and the EAP-IG package (hannamw/EAP-IG, `eap` 2.0.0). This script
imports nothing from `fi`: only those libraries, TransformerLens 2.x, transformers and torch.

    /tmp/fi-peers-env/bin/python bench/peers_side.py REQUEST.json RESULT.json

The request (written by bench_peers) names the GPT-2 checkpoint folder and gives the token ids of
the prompt pairs (the same length each; the read position is the last), the normal and contrast
answer tokens and the thread count. The model is built as a HookedTransformer from the checkpoint's
weights (no folding, so its logits are the checkpoint's). Per method the result holds [layers,
heads] scores and seconds:

  autocircuit_edge_to_logits  exact: the contrast run with one edge, head -> logits, carrying the
                              head's normal-run output (AutoCircuit `patch_mode` on that edge);
                              mean logit difference. The direct path only: later heads and MLPs
                              keep their contrast inputs.
  autocircuit_eap             the mask gradient of every edge (`mask_gradient_prune_scores`,
                              grad_function "logit", mask_val 0: Syed et al.'s edge attribution
                              patching), summed over each head's outgoing edges
  eap_eap                     EAP-IG's `attribute(method="EAP")` edge scores, summed over each
                              head's outgoing edges (its score matrix is allocated on "cuda"
                              unconditionally: on a machine without one, that allocation is moved
                              to the CPU here)
The metric is the mean over prompts of LD = logit(normal answer) - logit(contrast answer) at the
read position; the contrast prompts are the peers' "clean" inputs and the normal prompts their
"corrupt" ones, so that an edge carries the normal run's value as in fi's path patching.
"""

from __future__ import annotations

import json
import sys
import time


def load_tl2_gpt2(model_dir: str, **flags):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
        normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", default_prepend_bos=False, **flags)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model.eval(), hf


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    import torch

    request = json.loads(open(sys.argv[1]).read())
    torch.set_num_threads(request["threads"])
    normal, contrast = torch.tensor(request["normal"]), torch.tensor(request["contrast"])
    n_ans, c_ans = torch.tensor(request["normal_answer"]), torch.tensor(request["contrast_answer"])
    rows = torch.arange(len(normal))

    def mean_ld(logits):  # logits [B, T, V] or [B, V] at the read position (the last)
        at = logits[:, -1] if logits.dim() == 3 else logits
        return (at[rows, n_ans] - at[rows, c_ans]).mean()

    out = {"versions": {}, "methods": {}}
    from importlib.metadata import version

    import auto_circuit
    import transformer_lens
    import transformers
    out["versions"] = {"torch": torch.__version__, "transformer_lens": version("transformer_lens"),
                       "transformers": transformers.__version__, "auto_circuit": version("auto_circuit"),
                       "eap": version("eap")}
    del auto_circuit, transformer_lens

    # ---- AutoCircuit ----
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType
    from auto_circuit.utils.ablation_activations import src_ablations
    from auto_circuit.utils.graph_utils import patch_mode, patchable_model

    model, hf = load_tl2_gpt2(request["model_dir"], use_attn_result=True, use_split_qkv_input=True,
                              use_hook_mlp_in=True)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    with torch.inference_mode():
        out["logits_vs_hf"] = float((model(contrast) - hf(contrast).logits).abs().max())
        out["ld_normal"] = float(mean_ld(model(normal)))
        out["ld_contrast"] = float(mean_ld(model(contrast)))

    def head_of(node) -> tuple[int, int]:  # AutoCircuit names a head "A<block>.<head>"
        block, head = node.name[1:].split(".")
        return int(block), int(head)

    def autocircuit_model():
        return patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                               device=torch.device("cpu"))

    def edge_to_logits():
        pm = autocircuit_model()
        src_outs = src_ablations(pm, normal, AblationType.RESAMPLE)  # every source's normal-run output
        scores = torch.zeros(L, H)
        for edge in pm.edges:
            if edge.dest.name == "Resid End" and edge.src.head_idx is not None:
                with torch.inference_mode(), patch_mode(pm, src_outs, edges=[edge]):
                    scores[head_of(edge.src)] = mean_ld(pm(contrast))
        return pm, scores
    (pm, scores), seconds = timed(edge_to_logits)
    out["methods"]["autocircuit_edge_to_logits"] = {"scores": scores.tolist(), "seconds": seconds}

    def autocircuit_eap(pm):
        dataset = PromptDataset(contrast, normal, [a[None] for a in n_ans], [a[None] for a in c_ans])
        loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=len(normal), shuffle=False)
        grads = mask_gradient_prune_scores(pm, loader, None, grad_function="logit", answer_function="avg_diff",
                                           mask_val=0.0)
        scores = torch.zeros(L, H)
        for edge in pm.edges:
            if edge.src.head_idx is not None:
                # the loss is minus the mean LD: the mask's gradient is minus the edge's attribution
                scores[head_of(edge.src)] -= float(grads[edge.dest.module_name][edge.patch_idx])
        return scores
    scores, seconds = timed(lambda: autocircuit_eap(pm))
    out["methods"]["autocircuit_eap"] = {"scores": scores.tolist(), "seconds": seconds}

    # ---- EAP-IG ----
    import eap.attribute as eap_attribute
    from eap.graph import Graph

    model, _ = load_tl2_gpt2(request["model_dir"], use_attn_result=True, use_split_qkv_input=True,
                             use_hook_mlp_in=True)
    real_zeros = torch.zeros

    class TorchOnCPU:  # eap.attribute's `torch`, with its one device="cuda" allocation on the CPU
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def zeros(*args, **kwargs):
            if kwargs.get("device") == "cuda" and not torch.cuda.is_available():
                kwargs["device"] = "cpu"
            return real_zeros(*args, **kwargs)
    eap_attribute.torch = TorchOnCPU()

    def tokens_as_given(model, inputs, max_length=None):  # the pairs come as token ids, fi's
        tokens = torch.stack(list(inputs))
        return tokens, torch.ones_like(tokens), torch.full((len(tokens),), tokens.shape[1]), tokens.shape[1]
    eap_attribute.tokenize_plus = tokens_as_given

    def metric(logits, clean_logits, input_lengths, label):
        # summed over the batch: EAP-IG divides its scores by the number of prompts
        return (logits[rows, -1, label[:, 0]] - logits[rows, -1, label[:, 1]]).sum()

    def eap_scores():
        graph = Graph.from_model(model)
        loader = [(contrast, normal, torch.stack([n_ans, c_ans], 1))]
        eap_attribute.attribute(model, graph, loader, metric, method="EAP", quiet=True)
        scores = torch.zeros(L, H)
        for name, node in graph.nodes.items():
            if name.startswith("a") and ".h" in name:
                layer, head = node.layer, node.head
                scores[layer, head] = float(graph.scores[graph.forward_index(node, attn_slice=False)].sum())
        return scores
    scores, seconds = timed(eap_scores)
    out["methods"]["eap_eap"] = {"scores": scores.tolist(), "seconds": seconds}
    open(sys.argv[2], "w").write(json.dumps(out))


if __name__ == "__main__":
    main()
