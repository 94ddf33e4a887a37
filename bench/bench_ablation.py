"""Ablated evaluation (patch FI heads from the normal prompt) against the paper's per-example loop,
side by side in one run, on the same model, heads and prompts.

The paper's loop (section 4 notebooks): per example, four forward passes: the normal prompt with
each of the two answers appended (caching the FI heads' z), then the contrast prompt with each
answer appended and the FI heads' z patched from the matching normal run. `fi.methods.ablation` scores the
same four (prompt, answer) pairs in length-sorted batches and takes the normal runs' z on the way.

    python -m bench.bench_ablation [--model results/models/fi-toy] [--heads 0.3]
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
from fi.engine.models import load_model  # noqa: E402
from fi.engine.patching import z_hook  # noqa: E402
from fi.methods.ablation import ablated_scores, by_layer  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "results/models/fi-toy"))
    ap.add_argument("--heads", nargs="+", default=None, help="LAYER.HEAD ...; default: results/heads/fi-toy.json")
    ap.add_argument("--variant", default="setting1_nmax9_offset1")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.heads:
        heads = [tuple(int(x) for x in h.split(".")) for h in args.heads]
    else:
        heads = [tuple(h) for h in json.loads((ROOT / "results/heads/fi-toy.json").read_text())["heads"]]
    model = load_model("bench", path=args.model, device="cpu")
    family = get_family("addition")
    v = family.parse_variant(args.variant)
    records = family.generate(v, {"n_examples": 100, "n_demos": 32, "seed": 42})
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
