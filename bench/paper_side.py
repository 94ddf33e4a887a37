"""The paper's side of bench/bench_paper_parity.py: runs the paper's released code under
TransformerLens 2.x, in a separate Python environment, and writes what it computes as JSON.

This script imports nothing from `fi` (the project's environment has TransformerLens 4, the paper's
code needs 2.x): only the paper's modules, imported at run time from the reference checkout (never
copied here), TransformerLens 2.x, transformers, torch and the standard library.

    /tmp/fi-paper-env/bin/python bench/paper_side.py REQUEST.json RESULT.json

The request (written by bench_paper_parity) names the code folder, the model checkpoint (a local
Llama-style HF folder with a tokenizer.json), the dataset files and what to compute: the paper's
`eval.py` accuracies, path patching to the output and to heads' value inputs (`patching_utils`, as
`2_circuit_discovery/*_offline.py` call it), `eval_circuit_batched` on named circuits,
`get_completeness_score` for sets K, and `one_greedy_search` per seed. Circuits come in the paper's
format without "positions": those are derived here from this side's own tokenization.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path


def load_tl2_model(model_dir: str, fold: bool = True):
    """A TransformerLens 2.x HookedTransformer of a local Llama-style checkpoint, processed as the
    paper's `HookedTransformer.from_pretrained(name)` processes its models (fold_ln,
    center_writing_weights, center_unembed: its defaults). from_pretrained itself cannot be used: it
    looks the name up in TransformerLens' list and fetches the config from the hub. Returns
    (model, hf_model, tokenizer)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = json.loads((Path(model_dir) / "config.json").read_text())
    if raw.get("model_type") != "llama":
        raise SystemExit(f"paper_side: {model_dir} is a {raw.get('model_type')!r} checkpoint; only Llama-style "
                         "checkpoints (the built-in model's architecture) are converted here")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    c = hf.config
    # transformers >= 5 writes the rotary base under rope_parameters, which 4.x does not read
    rope = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta", 10000.0))
    d_head = c.hidden_size // c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    # the fields TransformerLens 2.x's convert_hf_model_config sets for LlamaForCausalLM, plus the
    # rotary base it leaves at its default and the RMSPre that fold_ln makes of RMS
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps,
        d_vocab=c.vocab_size, act_fn=c.hidden_act,
        n_key_value_heads=n_kv if n_kv != c.num_attention_heads else None,
        normalization_type="RMSPre" if fold else "RMS", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=d_head, final_rms=True, gated_mlp=True, rotary_base=float(rope),
        original_architecture="LlamaForCausalLM", default_prepend_bos=True, dtype=torch.float32, device="cpu")
    model = HookedTransformer(cfg, _tokenizer_for_tl2(model_dir, AutoTokenizer), move_to_device=False)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=fold, center_writing_weights=fold,
                                      center_unembed=fold, fold_value_biases=fold)
    model.eval()
    if cfg.n_key_value_heads is not None:
        model.set_ungroup_grouped_query_attention(True)  # as the paper's discovery and evaluation scripts
    return model, hf, model.tokenizer


def _tokenizer_for_tl2(model_dir: str, auto_tokenizer):
    """The checkpoint's tokenizer.json behind a tokenizer_config that transformers 4.x reads
    (transformers 5 names its own class, TokenizersBackend). TransformerLens reloads the tokenizer
    from its folder (get_tokenizer_with_bos), so the folder must outlive the model: it is left in
    the temporary directory."""
    src = Path(model_dir)
    conf = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").exists() else {}
    if conf.get("tokenizer_class") in (None, "TokenizersBackend"):
        folder = Path(tempfile.mkdtemp(prefix="fi-paper-tok-"))
        shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
        kept = {k: conf[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in conf}
        (folder / "tokenizer_config.json").write_text(json.dumps({**kept, "tokenizer_class": "PreTrainedTokenizerFast"}))
        return auto_tokenizer.from_pretrained(str(folder))
    return auto_tokenizer.from_pretrained(model_dir)


def derived_positions(model, data: list[dict]) -> dict:
    """The paper's position lists (`identified_circuit`'s keys "c", "=", "all=", "test=") found in
    this side's tokenization of the contrast prompts: every '=' token, and the token after each
    demo's '='. The paper's code applies one list to a whole batch, so every prompt must give the
    same lists; `consistent` says whether they do."""
    tokens = model.to_tokens([d["contrast_input"] for d in data])
    eq = int(model.to_tokens("=", prepend_bos=False)[0, 0])
    per_row = []
    for row in tokens.tolist():
        seps = [i for i, t in enumerate(row) if t == eq]
        per_row.append({"c": [p + 1 for p in seps[:-1]], "=": seps[:-1], "all=": seps, "test=": seps[-1:]})
    return {**per_row[0], "consistent": all(r == per_row[0] for r in per_row), "seq_len": int(tokens.shape[1]),
            "tokens": tokens.tolist()}


def with_positions(circuit: dict, positions: dict) -> dict:
    """A request circuit ({head_circuit, head_seq_pos_to_keep}) completed with the position lists,
    heads as tuples (the paper's code takes set differences of them)."""
    return {"head_circuit": {g: [tuple(h) for h in hs] for g, hs in circuit["head_circuit"].items()},
            "head_seq_pos_to_keep": dict(circuit["head_seq_pos_to_keep"]),
            "positions": {k: positions[k] for k in ("c", "=", "all=", "test=")} | {"all": list(range(positions["seq_len"]))}}


def main(argv: list[str]) -> int:
    request_path, result_path = argv
    req = json.loads(Path(request_path).read_text())
    code = Path(req["code_dir"]).resolve()
    # the paper's scripts run from their own subfolder (parent_dir = cwd/..) with the code folder
    # on PYTHONPATH (its README); eval.py and circuit_eval_offline.py live in two subfolders
    sys.path[:0] = [str(code), str(code / "1_off_by_one_addition_eval"), str(code / "3_circuit_eval_and_analysis")]
    os.chdir(code / "3_circuit_eval_and_analysis")

    import torch
    import transformer_lens
    import transformers

    torch.set_num_threads(int(req.get("threads", 1)))
    data_utils = importlib.import_module("data_utils")
    patching_utils = importlib.import_module("patching_utils")
    circuit_eval_utils = importlib.import_module("circuit_eval_utils")
    circuit_eval_offline = importlib.import_module("circuit_eval_offline")
    paper_eval = importlib.import_module("eval")

    t0 = time.perf_counter()
    model, hf, tok = load_tl2_model(req["model_dir"], fold=req.get("fold", True))
    from importlib.metadata import version
    out: dict = {"versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                              "transformer_lens": version("transformer_lens"), "transformers": transformers.__version__},
                 "tl_module": transformer_lens.__file__, "seconds": {}}

    # the model itself: TransformerLens 2.x against transformers in this environment, and the
    # log-probabilities for the other side to compare with its TransformerBridge
    if req.get("probe_tokens"):
        toks = torch.tensor(req["probe_tokens"])
        with torch.no_grad():
            lp_tl = model(toks).log_softmax(-1)
            lp_hf = hf(toks).logits.float().log_softmax(-1)
        out["probe"] = {"tl2_vs_hf_max_abs": float((lp_tl - lp_hf).abs().max()), "tl2_logprobs": lp_tl.tolist(),
                        "to_tokens": model.to_tokens(req["probe_texts"]).tolist() if req.get("probe_texts") else None}

    # (a) eval.py's run_inference: its digit ids are per model name; the built-in model's are derived
    # from its tokenizer and registered under the name the request gives
    if req.get("eval"):
        name = req.get("model_name", "fi-toy")
        paper_eval.DIGIT_IDS_DICT[name] = [int(model.to_tokens(str(d), prepend_bos=False)[0, 0]) for d in range(10)]
        cells = []
        t = time.perf_counter()
        for cell in req["eval"]:
            data = data_utils.process_dataset(data_utils.read_jsonl(cell["data_file"]), n_icl_examples=cell["shots"],
                                              offset=cell["offset"])[: cell.get("max_examples") or None]
            dps, cf_acc, orig_acc = paper_eval.run_inference(model, data, cell["nmax"], name)
            lds = []
            for dp in dps:
                # LD at the first digit where the answers differ, from the contrast-answer run's
                # digit logits (its earlier digits are the answers' common prefix)
                n_out, c_out = dp["normal_output"], dp["contrast_output"]
                j = next((i for i, (a, b) in enumerate(zip(n_out, c_out)) if a != b), None)
                row = dp["all_digit_logit"][j] if j is not None else None
                lds.append(None if j is None else row[int(n_out[j])] - row[int(c_out[j])])
            cells.append({**cell, "cf_acc": cf_acc, "orig_acc": orig_acc, "contrast_pred": [d["contrast_pred"] for d in dps],
                          "contrast_logit_diff": lds})
        out["eval"] = cells
        out["seconds"]["eval"] = time.perf_counter() - t

    pat = req.get("patching")
    if pat:
        data = data_utils.process_dataset(data_utils.read_jsonl(pat["data_file"]), n_icl_examples=pat["shots"],
                                          offset=pat["offset"])[: pat["max_examples"]]
        bs = pat.get("batch_size", 4)
        positions = derived_positions(model, data)
        out["positions"] = positions
        # the closed-form lists of the paper's identified_circuit, for the same shot count
        out["paper_formula_positions"] = circuit_eval_utils.identified_circuit(n_shot=pat["shots"])["positions"]
        n = len(data)

        # (b) path patching to the output, as the *_offline.py scripts: to the last layer's resid_post
        if pat.get("path_output", True):
            t = time.perf_counter()
            p, ld_n, ld_c = patching_utils.batched_get_path_patch_to_repr(
                [model.cfg.n_layers - 1], "resid_post", model, data, begin_layer=0, batch_size=bs)
            out["path_output"] = {"scores": ((p - ld_c) / (ld_c - ld_n)).tolist(),
                                  "ld_normal": float(ld_n) / n, "ld_contrast": float(ld_c) / n}
            out["seconds"]["path_output"] = time.perf_counter() - t
        # ... and to heads' value inputs, zeroed from the receiver's layer up as the scripts do
        out["path_value"] = {}
        t = time.perf_counter()
        for layer, head in pat.get("value_receivers", []):
            p, ld_n, ld_c = patching_utils.batched_get_path_patch_to_head(
                [(layer, head)], "v", model, data, begin_layer=0, batch_size=bs)
            rel = (p - ld_c) / (ld_c - ld_n)
            rel[layer:, :] = 0.0
            out["path_value"][f"{layer}.{head}"] = rel.tolist()
        out["seconds"]["path_value"] = time.perf_counter() - t

        # (c) eval_circuit_batched: sums over the prompts of the circuit run's, the normal run's and
        # the contrast run's LD
        out["circuits"] = {}
        t = time.perf_counter()
        for name, circ in pat.get("circuits", {}).items():
            a, b, c = circuit_eval_utils.eval_circuit_batched(model, data, with_positions(circ, positions), bs)
            a, b, c = float(a), float(b), float(c)
            out["circuits"][name] = {"ld": a / n, "ld_normal": b / n, "ld_contrast": c / n, "f": (a - b) / (c - b)}
        out["seconds"]["circuits"] = time.perf_counter() - t

        # (d) completeness scores (mean LDs of C \ K and M \ K) and the greedy search
        if pat.get("completeness"):
            comp = pat["completeness"]
            C, M = with_positions(comp["C"], positions), with_positions(comp["M"], positions)
            t = time.perf_counter()
            scores = []
            for K in comp.get("k_sets", []):
                a, b = circuit_eval_utils.get_completeness_score(model, data, C, [tuple(h) for h in K], M, batch_size=bs)
                scores.append({"k": K, "a": a, "b": b})
            out["completeness"] = scores
            out["seconds"]["completeness"] = time.perf_counter() - t
            t = time.perf_counter()
            searches = []
            for seed in comp.get("greedy_seeds", []):
                random.seed(seed)  # the paper seeds the global generator (random.seed(202505)) before its rollouts
                try:
                    k, diff = circuit_eval_offline.one_greedy_search(model, data, C, M, batch_size=bs)
                    searches.append({"seed": seed, "k": [list(h) for h in k], "diff": float(diff), "error": None})
                except ValueError as err:  # random.sample: fewer candidates left than it draws
                    searches.append({"seed": seed, "k": None, "diff": None, "error": str(err)})
            out["greedy"] = searches
            out["seconds"]["greedy"] = time.perf_counter() - t

    out["seconds"]["total"] = time.perf_counter() - t0
    Path(result_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
