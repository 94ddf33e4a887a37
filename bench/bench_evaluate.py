"""Batched evaluation against the paper's per-example loop, side by side in one run.

The paper's eval.py runs, per example, one forward pass on contrast prompt + contrast answer and one
on contrast prompt + normal answer. `fi.methods.evaluation` scores the same two things (plus the normal
prompt's two) in length-sorted batches. Both run here on the same model and prompts; the script
checks that the answers agree and prints both times and the ratio.

    python -m bench.bench_evaluate [--model results/models/fi-toy] [--variant setting1_nmax9_offset1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fi.engine.answers import answer_token_ids, answer_vocabulary
from fi.engine.models import load_model
from fi.methods.evaluation import evaluate_task
from fi.plan.tasks import get_family


def paper_loop(model, examples, vocab):
    cf, orig = [], []
    for ex in examples:
        prompt_ids = model.encode(ex.contrast_prompt)
        for answer, out in ((ex.contrast_answer, cf), (ex.normal_answer, orig)):
            ans = answer_token_ids(model, ex.contrast_prompt, answer, prompt_ids)
            with torch.no_grad():
                logits = model.bridge(torch.tensor([prompt_ids + ans], device=model.device))[0]
            pos = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(ans))
            out.append([int(vocab[logits[p, vocab].argmax()]) for p in pos] == ans)
    return cf, orig


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="results/models/fi-toy",
                    help="checkpoint folder (a random-initialised one is made when it is missing)")
    ap.add_argument("--variants", nargs="+", default=["setting1_nmax9_offset1", "normal_nmax99_offset3"])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    path = Path(args.model)
    if not (path / "config.json").exists():
        from tests.conftest import save_random_checkpoint

        path = save_random_checkpoint(Path(tempfile.mkdtemp()) / "random", n_layers=2, d_model=64, d_mlp=256)
        print(f"(no checkpoint at {args.model}; using a random-initialised one)")
    model = load_model("bench", path=str(path), device="cpu")
    family = get_family("addition")
    print(f"model {path} ({model.n_layers} layers x {model.n_heads} heads), {args.shots} shots, "
          f"100 examples per variant, best of {args.repeats}")
    for name in args.variants:
        v = family.parse_variant(name)
        records = family.generate(v, {"n_examples": 100, "n_demos": 32, "seed": 42})
        examples = family.examples(records, v, args.shots)
        vocab = answer_vocabulary(model, examples[0].contrast_prompt, family.answer_space(v))
        t_same, t_full, t_loop = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            # like for like: the contrast prompt's two scores, which is all the paper's loop computes
            same_work = evaluate_task(model, family, v, records, args.shots, batch_size=args.batch_size,
                                      prompt_kinds=("contrast",))
            t1 = time.perf_counter()
            full = evaluate_task(model, family, v, records, args.shots, batch_size=args.batch_size)
            t2 = time.perf_counter()
            cf, orig = paper_loop(model, examples, vocab)
            t3 = time.perf_counter()
            t_same.append(t1 - t0)
            t_full.append(t2 - t1)
            t_loop.append(t3 - t2)
        same = all(df["cf_correct"].tolist() == cf and df["orig_correct"].tolist() == orig
                   for df in (same_work, full))
        loop = min(t_loop)
        print(f"{name:24s} paper loop {loop:6.3f}s | fi, same 2 scores {min(t_same):6.3f}s: "
              f"{loop / min(t_same):4.1f}x | fi, all 4 scores {min(t_full):6.3f}s: "
              f"{loop / min(t_full):4.1f}x | same answers: {same}")
        if not same:
            raise SystemExit("batched evaluation disagrees with the per-example loop")


if __name__ == "__main__":
    main()
