"""The engine on an accelerator against float32 on the CPU, on the same models and prompts.

For each model (the built-in model results/models/fi-toy when trained, else a tiny random Llama
built here, whose normalised scores divide by a near-zero logit-difference gap and so magnify any
rounding; plus any local checkpoint folders given, e.g. the real LMs converted by
`snakemake --configfile configs/real-lms.yaml`: results/models/<name>):
  answers     evaluation of the discovery cell (addition setting1, nmax 9, offset +1, 8 shots) in
              each --dtype on --device against float32 on the CPU: the share of prompts whose
              predicted answer agrees (target >= 0.99)
  scores      exact path patching to the output on 24 prompt pairs (4 shots): the largest
              |difference| of the normalised scores from CPU float32's (targets: 1e-2 in bfloat16 and
              float16, 1e-4 in float32)
  time        evaluation and path patching, device against CPU (each after one warm-up run)
Exits 0 with a message where the device is missing (no CUDA), 1 where a target is missed.

    python -m bench.gpu_check [--device cuda] [--dtype bfloat16 float32] [--model DIR ...]
    python -m bench.gpu_check --device cpu --dtype bfloat16   # the same checks, CPU half precision
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fi.engine.models import load_model
from fi.engine.pairs import build_patching_data
from fi.engine.patching import Patcher
from fi.methods.evaluation import evaluate_task
from fi.plan.tasks import get_family

TARGET_AGREE = 0.99
TARGET_SCORE = {"bfloat16": 1e-2, "float16": 1e-2, "float32": 1e-4}
ADDITION = get_family("addition")
VARIANT = ADDITION.parse_variant("setting1_nmax9_offset1")


def synced(device: str, fn):
    """fn() and its wall time, the device's queue drained before the clock stops."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def measure(name: str, path: str, device: str, dtype: str, records) -> dict:
    model = load_model(name, path=path, dtype=dtype, device=device)
    evaluate = lambda: evaluate_task(model, ADDITION, VARIANT, records, 8, batch_size=32)  # noqa: E731
    evaluate()  # warm-up: kernels, caches
    df, t_eval = synced(device, evaluate)
    data = build_patching_data(model, ADDITION, VARIANT, records, 4, max_examples=24)
    Patcher(model, data, batch_size=8).path_patching("output")
    scores, t_path = synced(device, lambda: Patcher(model, data, batch_size=8).path_patching("output"))
    return {"pred": df["contrast_pred"].tolist(),
            "scores": scores.float().cpu(), "t_eval": t_eval, "t_path": t_path}


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import save_random_checkpoint

    return save_random_checkpoint(folder, n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"], choices=sorted(TARGET_SCORE))
    ap.add_argument("--model", nargs="*", default=[], help="local checkpoint folders")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing checked")
        return 0
    records = ADDITION.generate(VARIANT, {"n_examples": 100, "n_demos": 32, "seed": 42})
    builtin = Path(__file__).resolve().parents[1] / "results" / "models" / "fi-toy"
    models = ([("fi-toy", str(builtin))] if (builtin / "config.json").exists()
              else [("tiny-llama-gqa (random)", str(tiny_model(Path(tempfile.mkdtemp()) / "tiny")))])
    models += [(Path(m).name, m) for m in args.model]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({device_name}); torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    print(f"{'model':24s} {'dtype':9s} {'answers agree':>13s} {'max|score diff|':>15s} "
          f"{'eval s (cpu/dev)':>18s} {'path s (cpu/dev)':>18s}  ok")
    failed = False
    for name, path in models:
        ref = measure(name, path, "cpu", "float32", records)
        for dtype in args.dtype:
            got = measure(name, path, args.device, dtype, records)
            agree = sum(a == b for a, b in zip(got["pred"], ref["pred"])) / len(ref["pred"])
            diff = float((got["scores"] - ref["scores"]).abs().max())
            ok = agree >= TARGET_AGREE and diff <= TARGET_SCORE[dtype]
            failed |= not ok
            print(f"{name:24s} {dtype:9s} {agree:13.3f} {diff:15.1e} "
                  f"{ref['t_eval']:8.2f}/{got['t_eval']:<8.2f} {ref['t_path']:8.2f}/{got['t_path']:<8.2f}  "
                  f"{'yes' if ok else 'NO'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
