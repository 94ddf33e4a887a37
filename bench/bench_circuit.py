"""The circuit stage (iterated path patching) and the greedy completeness search against the paper's
per-receiver loop, side by side in one run.

Cell: the discovery cell (addition setting1, nmax 9, offset +1, 4 shots), as the workflow's circuit
stage uses it. What is timed:

* the stage: `fi.engine.patching.build_cache` (the normal and contrast runs, once) + `fi.methods.circuit.
  iterated_path_patching` (path patching to the output, then to each receiver head's v input, level
  by level). Every receiver the stage visits is recorded (its full [L, H] score matrix too).
* the paper's per-receiver loop for the same receivers (the output and every receiver visited):
  - `fi.engine.reference.reference_path_patching`, as it stands: per receiver, per sender head, per batch of
    4 prompts, the normal and contrast runs again (z cached) and then run 1 (every head's z frozen to
    its contrast value but the sender's) and, for a head receiver, run 2 (a clean contrast run with
    the receiver's v input from run 1); full logits. It runs all L x H senders for every receiver.
  - the same loop with the normal and contrast runs hoisted out of the sender loop (once per batch
    and receiver: what the paper's notebooks do), i.e. one (output) or two (a head's input) full
    passes per sender and batch. On a large model it runs on a subset of senders per receiver and
    is extrapolated: in this loop every sender costs the same (full passes whatever its layer), so
    its time is baselines + per-sender time x senders. Two sender counts: all L x H (what the loop
    and fi.engine.reference run) and, for a head receiver, only the senders below its layer (a lower bound
    for the paper's loop: the others have no path to it).
  Agreement: max |fi - loop| over the senders run, on the logit-difference scale (normalised score x
  |LD_contrast - LD_normal|) <= 1e-4, as tests/test_patching.py's `scaled_close`.
* `fi.methods.circuit.completeness_search` (variants stacked along the batch by `circuit_lds`) against
  the same search with one variant per `circuit_lds` call; patched runs counted (variants x
  prompts, and batched forward passes), same rollouts checked.

Models: the built-in model (a trained 2 x 4 recipe model: --model, or trained here in ~1 min with
tests.conftest's TRAINED_TOY recipe) with the stage's defaults (40 prompts, batch 16, threshold 0.05,
depth 3, inputs v, 8 receivers; search 10 rollouts x 5 steps x 5 candidates), and Gemma-3-270M (the
converted folder; configs/real-lms.yaml's circuit settings, batch 8, depth 2, 4 receivers, search
3 x 3 x 3, on 8 prompts by default where the config has 16: --gemma-examples 16 doubles the run, ~20
CPU-minutes). Everything runs in one process: peak RSS is printed after each model.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python -m bench.bench_circuit [--threads 2]

Measured 2026-11-21, 2 threads, on the 2-core machine shared with other jobs (load 5-10; 512 s wall,
368 s CPU, peak RSS 2.3 GB): built-in model, stage 0.29 s vs fi.engine.reference 5.63 s (19.6x) and the
hoisted loop 1.81 s (6.3x); search 1.95 s stacked vs 4.57 s unstacked (2.3x; quiet, 1 thread: 10.5x,
5.1x, 1.2x). Gemma-3-270M, 8 prompts: stage 243 s (7 s runs + 236 s path patching, 4 head receivers at
48-66 s each) vs the loop extrapolated 2909 s all senders (12.0x) / 1941 s senders below (8.0x),
agreement 1.9e-5; search 34.7 s stacked vs 35.9 s unstacked (1.0x: CPU-bound full passes). Gemma has
one kv head a layer, so receivers 11.2.v and 11.3.v got identical scores (a whole receiver's work
repeated).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bench_patching import paper_sender_loop, timed
from fi.engine.interventions import z_hook
from fi.engine.models import load_model
from fi.engine.pairs import build_patching_data, logit_diff
from fi.engine.patching import Receiver, build_cache
from fi.engine.reference import frozen_z_hooks, head_receiver_logits, reference_path_patching
from fi.methods import circuit as fc
from fi.plan.tasks import get_family

ROOT = Path(__file__).resolve().parents[1]
VARIANT, SHOTS = "setting1_nmax9_offset1", 4
TOL = 1e-4
GEMMA = Path("/work/wt-realbench/results/models/gemma3-270m")


def peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def discovery_data(model, n):
    family = get_family("addition")
    v = family.parse_variant(VARIANT)
    records = family.generate(v, {"n_examples": max(100, 2 * n), "n_demos": 32, "seed": 42})
    return build_patching_data(model, family, v, records, SHOTS, max_examples=n)


class Recorder:
    """Wraps fi.methods.circuit's `path_patching` (the output) and `path_patching_to_heads` (a level's
    receiver set) to record every receiver the stage visits and its scores; a set's seconds are
    split evenly over its receivers."""

    def __init__(self):
        self.calls: list[tuple[str, torch.Tensor, float]] = []
        self.inner = fc.path_patching
        self.inner_set = fc.path_patching_to_heads

    def __enter__(self):
        def recorded(model, cache, receiver, *a, **k):
            t0 = time.perf_counter()
            out = self.inner(model, cache, receiver, *a, **k)
            self.calls.append((str(receiver), out.clone(), time.perf_counter() - t0))
            return out

        def recorded_set(model, cache, receivers, *a, **k):
            t0 = time.perf_counter()
            out = self.inner_set(model, cache, receivers, *a, **k)
            share = (time.perf_counter() - t0) / max(1, len(out))
            self.calls += [(str(r), scores.clone(), share) for r, scores in out.items()]
            return out
        fc.path_patching, fc.path_patching_to_heads = recorded, recorded_set
        return self

    def __exit__(self, *exc):
        fc.path_patching, fc.path_patching_to_heads = self.inner, self.inner_set


class RunCounter:
    """Counts fi.methods.circuit's patched runs: batched forward passes and rows (variants x prompts)."""

    def __init__(self):
        self.passes = self.rows = self.variants = 0
        self.inner = fc.run_with_interventions

    def __enter__(self):
        def counted(model, cache, i, variants, *a, **k):
            self.passes += 1
            self.rows += len(variants) * cache.chunks[i].size
            if i == 0:
                self.variants += len(variants)
            return self.inner(model, cache, i, variants, *a, **k)
        fc.run_with_interventions = counted
        return self

    def __exit__(self, *exc):
        fc.run_with_interventions = self.inner


def one_variant_at_a_time(model, cache, variants, rows_per_pass=256):
    return [ld for v in variants for ld in STACKED(model, cache, [v], rows_per_pass)]


STACKED = fc.circuit_lds


def unstacked_search(model, cache, circuit, *args):
    fc.circuit_lds = one_variant_at_a_time
    try:
        return fc.completeness_search(model, cache, circuit, *args)
    finally:
        fc.circuit_lds = STACKED


def kv_sharing(model, calls):
    """Head receivers that share a key-value group: path patching to a GQA head's k input patches
    the group's one k (fi.engine.patching and fi.engine.reference alike), so such receivers get identical scores;
    q and v inputs are each head's own."""
    H = model.n_heads
    n_kv = int(getattr(model.bridge.cfg, "n_key_value_heads", None) or H)
    groups: dict = {}
    for r, scores, _ in calls:
        if r != "output":
            rec = Receiver.parse(r)
            key = (rec.layer, rec.which, rec.head // (H // n_kv) if rec.which == "k" else rec.head)
            groups.setdefault(key, []).append((r, scores))
    shared = [g for g in groups.values() if len(g) > 1]
    same = all(torch.equal(g[0][1], x[1]) for g in shared for x in g[1:])
    n_head = sum(len(g) for g in groups.values())
    return (f"{n_head} head receivers, {len(groups)} distinct inputs ({H} query heads / {n_kv} kv heads a layer; "
            "k inputs shared by a group)"
            + (f"; receivers sharing a key input, identical scores: {same} ("
               + "; ".join(", ".join(r for r, _ in g) for g in shared) + ")" if shared else ""))


def paper_loop(model, data, receiver: Receiver, senders, batch=4):
    """The paper's per-receiver loop on `senders`: per batch of 4 prompts the normal and contrast runs
    (z cached, LDs from full logits), then per sender run 1 (frozen z, the sender's normal) and, for a
    head receiver, run 2 (clean contrast run, the receiver's input from run 1;
    fi.engine.reference.head_receiver_logits). Full passes, full logits. Returns ({sender: normalised
    score}, baseline seconds, sender seconds)."""
    b = model.bridge
    L, H = model.n_layers, model.n_heads
    n_kv = int(getattr(b.cfg, "n_key_value_heads", None) or H)

    def sender_ld(chunk, cache_c, cache_n, layer, head):
        hooks = frozen_z_hooks(cache_c, cache_n, L, layer, head)
        contrast = chunk.contrast.to(model.device)
        if receiver.is_output:
            logits = b.run_with_hooks(contrast, fwd_hooks=hooks)
        else:
            logits = head_receiver_logits(b, contrast, hooks, receiver, H, n_kv, cache_c[z_hook(receiver.layer)])
        return float(logit_diff(logits, chunk.last, chunk.normal_answer, chunk.contrast_answer).sum())
    return paper_sender_loop(model, data, senders, sender_ld, batch)


def stage(model, data, batch_size, threshold, depth, max_receivers, repeat=1):
    cache, t_cache = timed(lambda: build_cache(model, data, batch_size=batch_size), repeat)
    with Recorder() as rec:  # records the receivers and their scores (the last call's), and times each
        def run():
            rec.calls.clear()
            selection = fc.Selection(output_threshold=threshold, max_receivers=max_receivers)
            return fc.iterated_path_patching(model, cache, selection, depth, ("v",))
        (edges, _), t_ipp = timed(run, repeat)
    return cache, edges, rec.calls, t_cache, t_ipp


def search_bench(model, cache, circuit, rollouts, steps, candidates, repeat=1):
    members = fc.circuit_heads(circuit)
    with RunCounter() as cnt:  # counts (the per-call overhead is a few integer additions)
        fast, t_fast = timed(lambda: fc.completeness_search(model, cache, circuit, rollouts, steps, candidates, 0)[
            "rollouts"], repeat)
    with RunCounter() as cnt1:
        slow, t_slow = timed(lambda: unstacked_search(model, cache, circuit, rollouts, steps, candidates, 0)[
            "rollouts"], repeat)
    for c in (cnt, cnt1):
        c.passes, c.rows, c.variants = c.passes // repeat, c.rows // repeat, c.variants // repeat
    same_k = [r["k"] for r in fast] == [r["k"] for r in slow]
    diff = max((abs(a[key] - b[key]) for a, b in zip(fast, slow) for key in ("f_model_minus_k", "f_circuit_minus_k")),
               default=0.0)
    ok = same_k and diff * abs(cache.mean_ld_contrast - cache.mean_ld_normal) <= TOL
    print(f"-- completeness search, {rollouts} rollouts x {steps} steps x {candidates} candidates, circuit of "
          f"{len(members)} (head, group) members {circuit}")
    print(f"   {cnt.variants} patched runs (variants, each over the {cache.data.size} prompts: {cnt.rows} prompt "
          f"rows), in {cnt.passes} batched forward passes stacked vs {cnt1.passes} one variant at a time")
    print(f"fi completeness search, variants stacked        {t_fast:8.2f}s")
    print(f"same search, one variant per call (unstacked)   {t_slow:8.2f}s   ratio unstacked/stacked "
          f"{t_slow / t_fast:5.1f}x")
    print(f"   same rollouts (K sets) {same_k}, max |F diff| {diff:.1e} (x |LD_c - LD_n| = "
          f"{diff * abs(cache.mean_ld_contrast - cache.mean_ld_normal):.1e})  {'OK' if ok else 'DISAGREE'}; "
          f"max |LD(C\\K) - LD(M\\K)| {max([r['difference'] for r in fast] or [0.0]):.3f}")
    return ok


def discovered_circuit(model, cache, edges, attention_threshold=0.2):
    groups = fc.classify(edges, fc.attention_statistics(model, cache), attention_threshold)["groups"]
    if not fc.circuit_heads(groups):  # nothing classified: the heads with a direct effect
        groups = {"consolidation": [list(h) for h in sorted({e.sender for e in edges if e.receiver == "output"})]}
    return groups


def bench_builtin(args):
    path = Path(args.model)
    if not (path / "config.json").exists():
        from fi.build.training import train_model
        from tests.conftest import TRAINED_TOY, tiny_train_cfg
        path = Path(tempfile.mkdtemp()) / "toy"
        print(f"(no trained built-in model at {args.model}: training tests.conftest's TRAINED_TOY recipe)")
        train_model(tiny_train_cfg(**TRAINED_TOY), path, threads=torch.get_num_threads(), progress=False)
    model = load_model("fi-toy", path=str(path), device="cpu")
    data = discovery_data(model, args.examples)
    L, H = model.n_layers, model.n_heads
    cache, edges, calls, t_cache, t_ipp = stage(model, data, args.batch_size, 0.05, args.depth, 8, repeat=3)
    scale = abs(cache.mean_ld_contrast - cache.mean_ld_normal)
    receivers = [r for r, _, _ in calls]
    print(f"\n== built-in model ({path}): {L} layers x {H} heads, d_model {model.bridge.cfg.d_model}; {data.size} "
          f"prompts of the discovery cell, cache batch {args.batch_size}; {torch.get_num_threads()} torch threads")
    print(f"-- iterated path patching, threshold 0.05, depth {args.depth}, inputs v, max 8 receivers: {len(edges)} "
          f"edges; receivers visited (fi's seconds each): {', '.join(f'{r} {t:.2f}s' for r, _, t in calls)} "
          f"(route {cache.route})")
    print(f"fi stage: normal + contrast runs {t_cache:.2f}s + iterated path patching {t_ipp:.2f}s = "
          f"{t_cache + t_ipp:8.2f}s")
    print(f"   {kv_sharing(model, calls)}")
    t_ref = t_hoist = 0.0
    worst = worst_h = 0.0
    for r, fast, _ in calls:
        receiver = Receiver.parse(r)
        ref, t = timed(lambda: reference_path_patching(model, data, receiver))
        t_ref += t
        worst = max(worst, float((fast - ref).abs().max()) * scale)
        every = [(a, b) for a in range(L) for b in range(H)]
        (hoisted, t_b, t_s) = paper_loop(model, data, receiver, every)
        t_hoist += t_b + t_s
        worst_h = max(worst_h, max(abs(float(fast[s]) - v) for s, v in hoisted.items()) * scale)
        if r == receivers[0]:
            # the extrapolation used on Gemma, checked here: 3 senders, scaled to all L x H
            sub = [(0, 0), (L - 1, H - 1), (L // 2, 1 % H)]
            _, sb, ss = paper_loop(model, data, receiver, sub)
            extrap, measured = sb + ss / len(sub) * L * H, t_b + t_s
    ok = worst <= TOL and worst_h <= TOL
    print(f"paper loop, fi.engine.reference.reference_path_patching, same {len(calls)} receivers, all {L * H} senders each "
          f"(normal + contrast runs redone per sender) {t_ref:8.2f}s   ratio paper/fi stage "
          f"{t_ref / (t_cache + t_ipp):6.1f}x")
    print(f"paper loop, normal + contrast runs once per batch, same receivers and senders              "
          f"{t_hoist:8.2f}s   ratio paper/fi stage {t_hoist / (t_cache + t_ipp):6.1f}x")
    print(f"   extrapolation check (receiver {receivers[0]}, 3 senders scaled to {L * H}): {extrap:.2f}s "
          f"predicted, {measured:.2f}s measured")
    print(f"   max |fi - loop| on the LD scale (LD_c - LD_n = {cache.mean_ld_contrast:.3f} - "
          f"{cache.mean_ld_normal:.3f}): reference {worst:.1e}, hoisted {worst_h:.1e}  "
          f"{'OK' if ok else 'ABOVE 1e-4'} (<= 1e-4, as tests/test_patching.py)")
    circuit = discovered_circuit(model, cache, edges)
    ok &= search_bench(model, cache, circuit, args.rollouts, args.steps, args.candidates, repeat=3)
    print(f"peak RSS after the built-in model: {peak_mb()} MB")
    return ok


def spread_senders(fast, receiver: Receiver, L, H, k):
    """The fi-strongest sender with a path to the receiver, plus senders spread over its layers."""
    top_layer = L if receiver.is_output else receiver.layer
    allowed = fast[:top_layer].flatten().abs()
    best = divmod(int(allowed.argmax()), H)
    spread = [(round(j * (top_layer - 1) / max(1, k - 2)), j % H) for j in range(k - 1)]
    return list(dict.fromkeys([best] + spread))[:k]


def bench_gemma(args):
    t0 = time.perf_counter()
    model = load_model(args.gemma.name, path=str(args.gemma), dtype="float32", device="cpu")
    t_load = time.perf_counter() - t0
    L, H = model.n_layers, model.n_heads
    data = discovery_data(model, args.gemma_examples)
    cache, edges, calls, t_cache, t_ipp = stage(model, data, 8, 0.05, 2, 4)
    scale = abs(cache.mean_ld_contrast - cache.mean_ld_normal)
    print(f"\n== {args.gemma.name}: {L} layers x {H} heads, d_model {model.bridge.cfg.d_model}, vocabulary "
          f"{model.bridge.cfg.d_vocab}, loaded in {t_load:.1f}s; {data.size} prompts ({data.n_dropped} dropped), "
          f"cache batch 8; {torch.get_num_threads()} torch threads")
    print(f"-- iterated path patching, threshold 0.05, depth 2, inputs v, max 4 receivers: {len(edges)} edges; "
          f"receivers visited (fi's seconds each): {', '.join(f'{r} {t:.2f}s' for r, _, t in calls)} (route "
          f"{cache.route})")
    print(f"fi stage: normal + contrast runs {t_cache:.2f}s + iterated path patching {t_ipp:.2f}s = "
          f"{t_cache + t_ipp:8.2f}s")
    print(f"   {kv_sharing(model, calls)}")
    total_all = total_below = 0.0
    worst, n_run = 0.0, 0
    for r, fast, _ in calls:
        receiver = Receiver.parse(r)
        senders = spread_senders(fast, receiver, L, H, args.senders)
        ref, t_b, t_s = paper_loop(model, data, receiver, senders)
        per = t_s / len(senders)
        below = L * H if receiver.is_output else receiver.layer * H
        total_all += t_b + per * L * H
        total_below += t_b + per * below
        n_run += len(senders)
        d = max(abs(float(fast[s]) - v) for s, v in ref.items()) * scale
        worst = max(worst, d)
        print(f"   paper loop -> {r:8s}: senders {senders}: baselines {t_b:.2f}s + {per:.2f}s a sender; "
              f"max |diff| {d:.1e} on the LD scale")
    fi_t = t_cache + t_ipp
    print(f"paper loop, same {len(calls)} receivers, all {L * H} senders each (extrapolated: baselines + per-sender "
          f"x {L * H}) {total_all:8.1f}s   ratio paper/fi stage {total_all / fi_t:6.1f}x")
    print(f"paper loop, only the senders below each head receiver (lower bound)              "
          f"{total_below:8.1f}s   ratio paper/fi stage {total_below / fi_t:6.1f}x")
    ok = worst <= TOL
    print(f"   max |fi - paper loop| on the {n_run} senders run: {worst:.1e} on the LD scale (LD_c - LD_n = "
          f"{cache.mean_ld_contrast:.3f} - {cache.mean_ld_normal:.3f})  {'OK' if ok else 'ABOVE 1e-4'}")
    circuit = discovered_circuit(model, cache, edges)
    ok &= search_bench(model, cache, circuit, 3, 3, 3)
    print(f"peak RSS at the end: {peak_mb()} MB")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/tmp/probe_trained", help="a trained built-in model folder (else trained "
                    "here with the test recipe)")
    ap.add_argument("--examples", type=int, default=40, help="prompts on the built-in model (stage default 40)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--gemma", type=Path, default=GEMMA)
    ap.add_argument("--gemma-examples", type=int, default=8,
                    help="prompts on Gemma (configs/real-lms.yaml: 16; 8 keeps the run near 10 CPU-minutes)")
    ap.add_argument("--senders", type=int, default=3, help="senders per receiver for Gemma's paper loop")
    ap.add_argument("--parts", nargs="+", default=["builtin", "gemma"], choices=["builtin", "gemma"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ok = True
    if "builtin" in args.parts:
        ok &= bench_builtin(args)
    if "gemma" in args.parts:
        ok &= bench_gemma(args)
    if not ok:
        raise SystemExit("fi disagrees with the paper's loop")


if __name__ == "__main__":
    main()
