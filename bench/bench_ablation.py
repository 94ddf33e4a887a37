"""Ablated evaluation (patch FI heads from the normal prompt) against the paper's per-example loop,
side by side in one run, on the same model, heads and prompts.

The paper's loop (section 4 notebooks): per example, four forward passes: the normal prompt with
each of the two answers appended (caching the FI heads' z), then the contrast prompt with each
answer appended and the FI heads' z patched from the matching normal run. `fi.methods.ablation` scores the
same four (prompt, answer) pairs in length-sorted batches and takes the normal runs' z on the way.

With `--sets N`, an ablate job's head sets instead (no ablation, the FI heads, N random sets of the
same size): one `ablated_scores` call a set (the cell encoded, its route probed and its unablated
normal prompts run once a set) against one `ablated_scores_many` call (all of that once), tables
compared.

    python -m bench.bench_ablation [--model results/models/fi-toy] [--heads 0.3] [--sets 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fi.engine.answers import answer_token_ids, answer_vocabulary  # noqa: E402
from fi.engine.interventions import z_hook  # noqa: E402
from fi.engine.models import load_model  # noqa: E402
from fi.methods.ablation import ablated_scores, ablated_scores_many, by_layer, random_head_sets  # noqa: E402
from fi.plan.tasks import get_family  # noqa: E402


def paper_loop(model, examples, vocab, heads):
    layers = by_layer(heads)
    b = model.bridge
    cf, orig = [], []
    for ex in examples:
        n_ids, c_ids = model.encode(ex.normal_prompt), model.encode(ex.contrast_prompt)
        for answer, out in ((ex.contrast_answer, cf), (ex.normal_answer, orig)):
            ans = answer_token_ids(model, ex.contrast_prompt, answer, c_ids)
            with torch.inference_mode():
                _, cache = b.run_with_cache(torch.tensor([n_ids + ans]), names_filter=lambda n: n.endswith("hook_z"))

                def patch(layer, hs):
                    def hook(z, hook):
                        z[:, :, hs] = cache[z_hook(layer)][:, :, hs]
                        return z
                    return hook
                logits = b.run_with_hooks(torch.tensor([c_ids + ans]),
                                          fwd_hooks=[(z_hook(lyr), patch(lyr, hs)) for lyr, hs in layers.items()])[0]
            pos = range(len(c_ids) - 1, len(c_ids) - 1 + len(ans))
            out.append([int(vocab[logits[p, vocab].argmax()]) for p in pos] == ans)
    return cf, orig


def head_sets_side_by_side(model, family, v, records, shots: int, heads, n_sets: int, repeats: int,
                           batch_size: int) -> None:
    sets = [[], heads] + random_head_sets(model.n_layers, model.n_heads, heads, n_sets, seed=0, exclude=heads)
    t_each, t_many = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        each = [ablated_scores(model, family, v, records, shots, h, "patch", batch_size) for h in sets]
        t1 = time.perf_counter()
        many = ablated_scores_many(model, family, v, records, shots, sets, "patch", batch_size)
        t2 = time.perf_counter()
        t_each.append(t1 - t0)
        t_many.append(t2 - t1)
    same = all(a.equals(b) for a, b in zip(each, many))
    print(f"{len(sets)} head sets (none, FI {heads}, {n_sets} random), {v.name}, {shots} shots, {len(records)} "
          f"examples, batch {batch_size}, best of {repeats}")
    print(f"a call per set {min(t_each):.3f}s | one call for all {min(t_many):.3f}s | ratio "
          f"{min(t_each) / min(t_many):.2f}x | equal tables: {same}")
    if not same:
        raise SystemExit("ablated_scores_many disagrees with one call per set")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "results/models/fi-toy"))
    ap.add_argument("--heads", nargs="+", default=None, help="LAYER.HEAD ...; default: results/heads/fi-toy.json")
    ap.add_argument("--variant", default="setting1_nmax9_offset1")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sets", type=int, default=0, help="time an ablate job's head sets: none, FI and this many random")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.heads:
        heads = [tuple(int(x) for x in h.split(".")) for h in args.heads]
    else:
        heads = [tuple(h) for h in json.loads((ROOT / "results/heads/fi-toy.json").read_text())["heads"]]
    model = load_model("bench", path=args.model, device="cpu")
    family = get_family("addition")
    v = family.parse_variant(args.variant)
    records = family.generate(v, {"n_examples": 100, "n_demos": 32, "seed": 42})
    if args.sets:
        head_sets_side_by_side(model, family, v, records, args.shots, heads, args.sets, args.repeats, args.batch_size)
        return
    examples = family.examples(records, v, args.shots)
    vocab = answer_vocabulary(model, examples[0].contrast_prompt, family.answer_space(v))
    t_ours, t_loop = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        df = ablated_scores(model, family, v, records, args.shots, heads, "patch")
        t1 = time.perf_counter()
        cf, orig = paper_loop(model, examples, vocab, heads)
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_loop.append(t2 - t1)
    same = df["cf_correct"].tolist() == cf and df["orig_correct"].tolist() == orig
    print(f"{args.model}: FI heads {heads}, {args.variant}, {args.shots} shots, 100 examples, best of {args.repeats}")
    print(f"paper loop (4 passes/example) {min(t_loop):.3f}s | fi batched (all 4 scores) {min(t_ours):.3f}s | "
          f"ratio {min(t_loop) / min(t_ours):.1f}x | same answers: {same} | orig_acc after ablation "
          f"{df['orig_correct'].mean():.2f}")
    if not same:
        raise SystemExit("batched ablation disagrees with the per-example loop")


if __name__ == "__main__":
    main()
