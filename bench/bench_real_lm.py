"""The real pretrained LMs of configs/real-lms.yaml against the paper's loops, side by side in one run.

On each converted GGUF model (results/models/<name>/, made by `snakemake results/models/<name>
--configfile configs/real-lms.yaml` or fi.build.gguf), on the discovery cell (addition setting1, nmax 9,
offset +1, 4 shots):

* evaluation: `fi.methods.evaluation.evaluate_task` (length-sorted batches, final residual stream read at the
  answer positions, only the answer vocabulary's unembedding rows) against the paper's per-example
  loop (one prompt + answer per forward pass, full logits), same answers checked; also the
  full-logit route of the same batched engine (what the restricted readout buys), and the batched
  time against the FLOP limit: 2 x non-embedding parameters x tokens / the matmul FLOP/s measured
  here (the attention's own FLOPs and the unembedding are left out of the limit);
* exact path patching to the output: `fi.engine.patching.Patcher(...).path_patching("output")` against the
  paper's loop (per batch of 4 prompts, per sender head, two full forward passes: run 1 with every
  head's z frozen to its contrast value except the sender's, run 2 a clean contrast run with the
  final residual stream taken from run 1), on a subset of senders: in the paper's loop every sender
  costs the same (two full-model passes whatever its layer), so its time for all L x H senders is
  the baselines' time + the measured per-sender time x L x H. Same numbers checked (max |diff| on
  the normalised scale <= 1e-4 on the senders run). Also fi with full logits
  (`with_route(residual_readout=False)`) and attribution patching;
* peak memory (ru_maxrss) after evaluation (what an evaluate job holds: the model and one cell) and
  at the end. Run one model per process for a clean peak.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python -m bench.bench_real_lm gemma3-270m --eval-n 50 --patch-n 8
    OMP_WAIT_POLICY=PASSIVE nice -n 10 python -m bench.bench_real_lm smollm2-135m --eval-n 50 --patch-n 8
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bench_evaluate import paper_loop
from bench.bench_patching import paper_sender_ld, paper_sender_loop
from fi.engine.answers import answer_vocabulary
from fi.engine.models import load_model
from fi.engine.pairs import build_patching_data
from fi.engine.patching import Patcher
from fi.methods.evaluation import encode_examples, evaluate_task, model_inputs, score_examples
from fi.plan.tasks import get_family

ROOT = Path(__file__).resolve().parents[1]
VARIANT, SHOTS = "setting1_nmax9_offset1", 4


def peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def matmul_flops(d_model: int, d_mlp: int, repeat: int = 5) -> float:
    """Best measured float32 matmul rate (FLOP/s) over a model-shaped and a square product."""
    best = 0.0
    for m, k, n in ((512, d_model, d_mlp), (1024, 1024, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


def non_embedding_params(model) -> int:
    hf = model.bridge.original_model
    seen, total = set(), 0
    for name, p in hf.named_parameters():
        if id(p) in seen or "embed_tokens" in name or "lm_head" in name:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def paper_path_loop(model, data, senders, batch=4):
    """bench_patching.paper_loop_output restricted to `senders` (two full forward passes a sender).
    Returns (normalised scores {sender: score}, baseline seconds, seconds spent on the senders)."""
    b, L = model.bridge, model.n_layers
    return paper_sender_loop(model, data, senders,
                             lambda chunk, cache_c, cache_n, layer, head:
                             paper_sender_ld(b, chunk, cache_c, cache_n, L, layer, head), batch)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_model(name, path, args, cfg):
    batch_size = int(cfg["models"].get(name, {}).get("batch_size", 8))
    patch_bs = int(cfg.get("attribution", {}).get("batch_size", 8))
    t0 = time.perf_counter()
    model = load_model(name, path=str(path), dtype="float32", device="cpu")
    t_load = time.perf_counter() - t0
    bcfg = model.bridge.cfg
    p_ne = non_embedding_params(model)
    flops = matmul_flops(int(bcfg.d_model), int(getattr(bcfg, "d_mlp", 4 * bcfg.d_model)))
    vocab_size = int(bcfg.d_vocab)
    print(f"\n== {name}: {model.n_layers} layers x {model.n_heads} heads, d_model {bcfg.d_model}, vocabulary "
          f"{vocab_size}, {p_ne / 1e6:.1f}M non-embedding parameters; loaded in {t_load:.1f}s; "
          f"{torch.get_num_threads()} torch threads, matmul {flops / 1e9:.1f} GFLOP/s measured")

    family = get_family("addition")
    v = family.parse_variant(VARIANT)
    records = family.generate(v, {"n_examples": args.eval_n, "n_demos": 32, "seed": 42})
    examples = family.examples(records, v, SHOTS)
    vocab = answer_vocabulary(model, examples[0].contrast_prompt, family.answer_space(v))
    encoded = encode_examples(model, examples)

    agree = True
    if "eval" in args.parts:
        agree = bench_evaluation(model, family, v, records, examples, vocab, encoded, batch_size, p_ne, flops, args)
    if "patch" not in args.parts:
        return agree
    return bench_path_patching(model, family, v, records, patch_bs, args) and agree


def bench_evaluation(model, family, v, records, examples, vocab, encoded, batch_size, p_ne, flops, args):
    tok_contrast = sum(len(x.tokens) for x in model_inputs(encoded, ("contrast",)))
    tok_all = sum(len(x.tokens) for x in model_inputs(encoded))
    same, t_same = timed(lambda: evaluate_task(model, family, v, records, SHOTS, batch_size=batch_size,
                                               prompt_kinds=("contrast",)))
    full, t_full = timed(lambda: evaluate_task(model, family, v, records, SHOTS, batch_size=batch_size))
    old, t_old = timed(lambda: score_examples(model, encoded, vocab, batch_size, prompt_kinds=("contrast",),
                                              residual_readout=False))
    (cf, orig), t_loop = timed(lambda: paper_loop(model, examples, vocab))
    agree = all(df["cf_correct"].tolist() == cf and df["orig_correct"].tolist() == orig for df in (same, full, old))
    lim_same, lim_full = 2 * p_ne * tok_contrast / flops, 2 * p_ne * tok_all / flops
    eval_peak = peak_mb()
    print(f"-- evaluation, {VARIANT}, {SHOTS} shots, {args.eval_n} prompts (batch {batch_size}); "
          f"cf_acc {sum(cf) / len(cf):.2f}, orig_acc {sum(orig) / len(orig):.2f}")
    print(f"paper per-example loop (full logits)          {t_loop:8.2f}s")
    print(f"fi, full-logit route, same 2 scores           {t_old:8.2f}s   {t_loop / t_old:6.1f}x the loop")
    print(f"fi evaluate_task, same 2 scores               {t_same:8.2f}s   {t_loop / t_same:6.1f}x the loop, "
          f"{t_old / t_same:4.1f}x the full-logit route; FLOP limit {lim_same:.2f}s "
          f"({tok_contrast} tokens) -> {t_same / lim_same:.1f}x the limit")
    print(f"fi evaluate_task, all 4 scores (a job's work) {t_full:8.2f}s   FLOP limit {lim_full:.2f}s "
          f"({tok_all} tokens) -> {t_full / lim_full:.1f}x the limit")
    print(f"same answers (loop, fi, fi full-logit route): {agree}")
    print(f"peak RSS after evaluation (load + one cell): {eval_peak} MB")
    return agree


def bench_path_patching(model, family, v, records, patch_bs, args):
    data = build_patching_data(model, family, v, records, SHOTS, max_examples=args.patch_n)
    patcher = Patcher(model, data, batch_size=patch_bs)  # route check + run cache included in its time
    fast, t_fast = timed(lambda: patcher.path_patching("output"))
    scale = abs(patcher.ld_contrast - patcher.ld_normal)
    attr, t_attr = timed(lambda: Patcher(model, data, batch_size=patch_bs).attribution_patching())
    old_pp, t_oldpp = (None, None)
    if not args.skip_full_logits:
        old_pp, t_oldpp = timed(lambda: patcher.with_route(residual_readout=False).path_patching("output"))
    L, H = model.n_layers, model.n_heads
    top = [divmod(int(i), H) for i in torch.topk(fast.flatten().abs(), 2).indices]
    spread = [(round(j * (L - 1) / (args.senders - 1)), j % H) for j in range(args.senders)]
    senders = list(dict.fromkeys(top + spread))
    ref, t_base, t_send = paper_path_loop(model, data, senders)
    per_sender = t_send / len(senders)
    t_ref_full = t_base + per_sender * L * H
    diff = max(abs(float(fast[s]) - r) for s, r in ref.items())
    ok = diff * scale <= 1e-4
    print(f"-- path patching to the output, {data.size} prompts, {L * H} senders (fi batch {patch_bs}; route "
          f"{patcher.route})")
    print(f"fi exact path patching (restricted readout)   {t_fast:8.2f}s")
    if old_pp is not None:
        print(f"fi exact path patching, full logits           {t_oldpp:8.2f}s   restricted readout "
              f"{t_oldpp / t_fast:4.1f}x faster; max |diff| {float((old_pp - fast).abs().max()):.1e} normalised, "
              f"{float((old_pp - fast).abs().max()) * scale:.1e} on the LD scale")
    print(f"fi attribution patching                       {t_attr:8.2f}s")
    print(f"paper loop, {len(senders)} senders {senders}: baselines {t_base:.2f}s + {t_send:.2f}s "
          f"({per_sender:.2f}s a sender)")
    print(f"paper loop, all {L * H} senders (extrapolated: baselines + per-sender x {L * H}) {t_ref_full:8.1f}s")
    print(f"  ratio exact path patching paper/fi          {t_ref_full / t_fast:8.1f}x")
    print(f"  max |fi - paper loop| on the {len(senders)} senders: {diff:.2e} normalised (scores divide by "
          f"LD_contrast - LD_normal = {patcher.ld_contrast:.3f} - {patcher.ld_normal:.3f}), {diff * scale:.2e} on "
          f"the LD scale (logits: float32 noise)  {'OK' if ok else 'ABOVE 1e-4'} (<= 1e-4 on the LD scale, "
          f"as tests/test_real_models.py checks)")
    print("  fi's strongest senders: " + ", ".join(f"L{a}H{b} {float(fast[a, b]):+.3f}" for a, b in top))
    print(f"peak RSS at the end: {peak_mb()} MB")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["gemma3-270m"], help="model names of configs/real-lms.yaml")
    ap.add_argument("--models-dir", default=str(ROOT / "results/models"))
    ap.add_argument("--config", default=str(ROOT / "configs/real-lms.yaml"))
    ap.add_argument("--eval-n", type=int, default=50, help="prompts in the evaluation cell")
    ap.add_argument("--patch-n", type=int, default=8, help="prompts for path patching")
    ap.add_argument("--senders", type=int, default=6, help="senders spread over the layers for the paper's "
                    "loop (plus fi's two strongest)")
    ap.add_argument("--skip-full-logits", action="store_true", help="skip fi's full-logit path patching")
    ap.add_argument("--parts", nargs="+", default=["eval", "patch"], choices=["eval", "patch"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    ok = True
    for name in args.models:
        path = Path(args.models_dir) / name
        if not (path / "config.json").exists():
            raise SystemExit(f"{name}: no converted model at {path}; run `snakemake results/models/{name} "
                             "--cores 2 --configfile configs/real-lms.yaml` first")
        ok &= bench_model(name, path, args, cfg)
    if not ok:
        raise SystemExit("fi disagrees with the paper's loop")


if __name__ == "__main__":
    main()
