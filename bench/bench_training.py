"""Training throughput of the built-in model against its FLOP limit, side by side in one run.

Trains the default recipe (config.yaml's built-in model, schema defaults filled in) for --steps steps
with the code before this change (the HF tokenizer called per segment, no prefetching: `make_batch`
reproduced below) and with fi.build.training as it is, at 1 and 2 threads; checks that every variant ends
at the same weights bit for bit; prints tokens/s (all sequence positions, pads included, and real
tokens), ms per step, and the FLOP limit: 6 x non-embedding params x tokens (+ attention) over a
measured float32 matmul rate of this machine at that thread count.

    python -m bench.bench_training [--steps 60] [--config config.yaml] [--model fi-toy]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fi.build.training as training
from fi.plan.config import validate_config


def make_batch_before(rng, cfg, tokenizer, size, with_sources=False):
    """fi.build.training.make_batch before this change: one HF tokenizer call per segment."""
    names = [n for n, w in cfg["mix"].items() if w > 0]
    weights = [cfg["mix"][n] for n in names]
    seqs, masks, sources = [], [], []
    for _ in range(size):
        source = rng.choices(names, weights)[0]
        ids, mask = [tokenizer.bos_token_id], [False]
        for text, target in training.SOURCES[source](rng, cfg):
            t = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += t
            mask += [target] * len(t)
        seqs.append(ids[: cfg["max_len"]])
        masks.append(mask[: cfg["max_len"]])
        sources.append(source)
    width = max(map(len, seqs))
    tokens = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)
    target_mask = torch.zeros((size, width), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        tokens[i, : len(s)] = torch.tensor(s)
        target_mask[i, : len(m)] = torch.tensor(m)
    return (tokens, target_mask, sources) if with_sources else (tokens, target_mask)


def matmul_flops(threads: int, n: int = 64, m: int = 8192, k: int = 256, repeats: int = 30) -> float:
    """float32 FLOP/s of [m, k] @ [k, n]-shaped products like the model's (and a large square one)."""
    torch.set_num_threads(threads)
    best = {}
    for name, (a, b) in {"model-shaped": (torch.randn(m, k), torch.randn(k, n)),
                         "1024^3": (torch.randn(1024, 1024), torch.randn(1024, 1024))}.items():
        for _ in range(3):
            a @ b
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        dt = (time.perf_counter() - t) / repeats
        best[name] = 2 * a.shape[0] * a.shape[1] * b.shape[1] / dt
    return best


def train_flops_per_token(cfg: dict, seq_len: int) -> tuple[int, float]:
    tok = training.build_tokenizer()
    model = training.build_model(cfg, len(tok), tok)
    emb = model.get_input_embeddings().weight.numel()
    non_emb = sum(p.numel() for p in model.parameters()) - emb  # the unembedding counts: it is a matmul
    attn = 2 * 2 * cfg["n_layers"] * seq_len * cfg["d_model"] / 2  # QK^T and AV, causal half, forward
    return non_emb, 6 * non_emb + 3 * attn


def run(cfg, threads, before: bool, prefetch: int, out: Path) -> float:
    saved = training.make_batch
    if before:
        training.make_batch = make_batch_before
    try:
        t = time.perf_counter()
        training.train_model(cfg, out, threads=threads, progress=False, prefetch=prefetch)
        return time.perf_counter() - t
    finally:
        training.make_batch = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--model", default="fi-toy")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    validate_config(config)
    full = config["models"][args.model]["train"]
    cfg = dict(full, steps=args.steps, checkpoints=[], checkpoint_every=0)
    tok = training.build_tokenizer()
    sample = [training.make_batch(random.Random(i), full, tok, full["batch_size"]) for i in range(20)]
    positions = sum(t.numel() for t, _ in sample) / len(sample)
    real = sum((t != tok.pad_token_id).sum().item() for t, _ in sample) / len(sample)
    width = sum(t.shape[1] for t, _ in sample) / len(sample)
    non_emb, flops_tok = train_flops_per_token(full, int(width))
    rb = random.Random(0)
    t = time.perf_counter()
    for _ in range(20):
        make_batch_before(rb, full, tok, full["batch_size"])
    mb_before = (time.perf_counter() - t) / 20
    ra = random.Random(0)
    t = time.perf_counter()
    for _ in range(20):
        training.make_batch(ra, full, tok, full["batch_size"])
    mb_after = (time.perf_counter() - t) / 20
    print(f"recipe: {args.model} d_model {full['d_model']} layers {full['n_layers']} batch {full['batch_size']}, "
          f"{non_emb} non-embedding params, {positions:.0f} positions per batch ({real:.0f} real, width {width:.0f}), "
          f"{flops_tok / 1e6:.2f} MFLOP per position trained; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"make_batch: before {mb_before * 1e3:.1f} ms, after {mb_after * 1e3:.1f} ms per batch")
    tmp = Path(tempfile.mkdtemp())
    variants = [("before (tokenizer per segment, no prefetch)", True, 0), ("after, no prefetch", False, 0),
                ("after (char table + prefetch)", False, 4)]
    results = []
    for threads in args.threads:
        peak = matmul_flops(threads)
        for name, before, prefetch in variants:
            out = tmp / f"{threads}-{len(results)}"
            secs = run(cfg, threads, before, prefetch, out)
            results.append((threads, name, secs, out, peak))
    from safetensors.torch import load_file

    ref = load_file(results[0][3] / "model.safetensors")
    print(f"\n{'threads':>7}  {'variant':<45} {'ms/step':>8} {'pos/s':>8} {'real tok/s':>10} {'GFLOP/s':>8} "
          f"{'matmul GFLOP/s (model-shaped / 1024^3)':>40} {'of limit':>8} {'2000 steps':>10}  same weights")
    for threads, name, secs, out, peak in results:
        w = load_file(out / "model.safetensors")
        same = all(torch.equal(ref[k], w[k]) for k in ref)
        step = secs / args.steps
        achieved = flops_tok * positions / step
        print(f"{threads:>7}  {name:<45} {step * 1e3:8.0f} {positions / step:8.0f} {real / step:10.0f} "
              f"{achieved / 1e9:8.1f} {peak['model-shaped'] / 1e9:19.1f} / {peak['1024^3'] / 1e9:6.1f}"
              f"{achieved / peak['model-shaped']:17.0%} {step * 2000 / 60:8.1f} min  {same}")


if __name__ == "__main__":
    main()
