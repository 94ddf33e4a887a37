"""`fi`'s patching methods side by side with the peer libraries, on one model, one set of prompt
pairs and one metric, in one run.

Model: a random-initialised GPT-2-small-size checkpoint (12 layers x 12 heads, d_model 768; the
character tokenizer), as HF model (nnsight, captum) and TransformerBridge (fi, TransformerLens).
Prompts: `--examples` prompt pairs of the discovery cell (addition setting1, nmax 9, offset +1,
4 shots). Metric: the mean logit difference (normal answer - contrast answer) at the read position.
A head's output is TransformerLens' `hook_z`, which is the input of GPT-2's `attn.c_proj` sliced
by head (how nnsight and captum reach it).

Methods and peers:
  exact path patching to the logits  fi (Patcher.path_patching("output")); TransformerLens 4 and
        nnsight as the paper's loop (per sender head one run, every head's output frozen to the
        contrast run's but the sender's, which takes the normal run's; TransformerLens ships no
        path patching)
  activation patching (each head's output at every position from the normal run)  fi;
        TransformerLens `patching.get_act_patch_attn_head_out_all_pos`; nnsight (one trace a head)
  attribution patching (gradient of the metric times the head's normal - contrast output)  fi;
        TransformerLens (backward hooks); nnsight (`.grad` in a trace); captum
        (`LayerGradientXActivation` on the 12 `c_proj` inputs, multiply_by_inputs=False)
Every score is compared with fi's on the logit-difference scale (the largest |difference|).
AutoCircuit and the EAP-IG package need TransformerLens 2.x: with `--peer-env PYTHON` (the Python of
an environment that has them, see docs/benchmarks.md) bench/peers_side.py runs them there on the same
checkpoint, token ids and metric:
  head -> logits edges, exact   AutoCircuit (`patch_mode` on one edge a run): the direct path only,
        a different quantity from fi's path patching to the logits, where later MLPs see the sender
        (the difference is printed)
  edge attribution patching     AutoCircuit (`mask_gradient_prune_scores`) and EAP-IG
        (`attribute(method="EAP")`), each head's outgoing edges summed: by the chain rule on the
        residual stream, the head's attribution patching score

    pip install -e '.[peers]'
    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_peers [--examples 8] [--threads 2] [--small] [--peer-env PY]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fi.engine.interventions import z_hook
from fi.engine.models import load_model
from fi.engine.pairs import build_patching_data, logit_diff
from fi.engine.patching import Patcher
from fi.engine.reference import frozen_z_hooks
from fi.plan.tasks import get_family
from tests.conftest import save_random_checkpoint


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class Setup:
    def __init__(self, examples: int, small: bool):
        from transformers import AutoModelForCausalLM

        shape = (dict(n_layers=4, n_heads=4, d_model=128, d_mlp=512) if small
                 else dict(n_layers=12, n_heads=12, d_model=768, d_mlp=3072))
        path = save_random_checkpoint(Path(tempfile.mkdtemp()) / "gpt2", architecture="gpt2", **shape)
        self.path = path
        self.model = load_model("gpt2-random", path=str(path), device="cpu")
        self.hf = AutoModelForCausalLM.from_pretrained(path).eval()
        family = get_family("addition")
        v = family.parse_variant("setting1_nmax9_offset1")
        records = family.generate(v, {"n_examples": 100, "n_demos": 32, "seed": 42})
        self.data = build_patching_data(self.model, family, v, records, 4, max_examples=examples)
        self.L, self.H = self.model.n_layers, self.model.n_heads
        self.d_head = shape["d_model"] // self.H

    def ld(self, logits) -> torch.Tensor:
        d = self.data
        return logit_diff(logits, d.last, d.normal_answer, d.contrast_answer).mean()

    def heads(self):
        return [(layer, head) for layer in range(self.L) for head in range(self.H)]

    def cols(self, head):
        return slice(head * self.d_head, (head + 1) * self.d_head)


# ---- TransformerLens 4 ----------------------------------------------------------------------------

def tl_z(s: Setup, tokens):
    with torch.inference_mode():
        _, cache = s.model.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    return cache


def tl_path_to_logits(s: Setup) -> torch.Tensor:
    b, d = s.model.bridge, s.data
    zn, zc = tl_z(s, d.normal), tl_z(s, d.contrast)
    out = torch.zeros(s.L, s.H)
    for layer, head in s.heads():
        with torch.inference_mode():  # fi.engine.reference's hooks are plain TransformerLens hooks
            out[layer, head] = s.ld(b.run_with_hooks(d.contrast, fwd_hooks=frozen_z_hooks(zc, zn, s.L, layer, head)))
    return out


def tl_activation(s: Setup) -> torch.Tensor:
    import transformer_lens.patching as tlp

    with torch.inference_mode():
        _, clean = s.model.bridge.run_with_cache(s.data.normal)
        return torch.as_tensor(tlp.get_act_patch_attn_head_out_all_pos(s.model.bridge, s.data.contrast, clean, s.ld)).cpu()


def tl_attribution(s: Setup) -> torch.Tensor:
    b, d = s.model.bridge, s.data
    zn = tl_z(s, d.normal)
    grads, acts = {}, {}

    def keep(lyr):
        def hook(z, hook):
            acts[lyr] = z
            z.register_hook(lambda g: grads.__setitem__(lyr, g))
            return z
        return hook
    with torch.enable_grad():
        logits = b.run_with_hooks(d.contrast, fwd_hooks=[(z_hook(lyr), keep(lyr)) for lyr in range(s.L)])
        s.ld(logits).backward()
    b.zero_grad(set_to_none=True)
    # the gradient of the mean over prompts: already divided by their number
    return torch.stack([(grads[lyr] * (zn[z_hook(lyr)] - acts[lyr].detach())).sum((0, 1, 3))
                        for lyr in range(s.L)]).detach()


# ---- nnsight ---------------------------------------------------------------------------------------

def nn_outputs(s: Setup, net, tokens):
    saved = []
    with torch.no_grad(), net.trace(tokens):
        for lyr in range(s.L):
            saved.append(net.transformer.h[lyr].attn.c_proj.input.save())
    return [x.detach().clone() for x in saved]


def nn_patch_loop(s: Setup, net, patch) -> torch.Tensor:
    """Mean LD [L, H] of one trace of the contrast prompts per head, `patch(layer, head)` setting
    the `c_proj` inputs inside it."""
    out = torch.zeros(s.L, s.H)
    for layer, head in s.heads():
        with torch.no_grad(), net.trace(s.data.contrast):
            patch(layer, head)
            logits = net.output.logits.save()
        out[layer, head] = s.ld(logits)
    return out


def nn_path_to_logits(s: Setup, net) -> torch.Tensor:
    zn, zc = nn_outputs(s, net, s.data.normal), nn_outputs(s, net, s.data.contrast)

    def freeze_all_but(layer, head):
        for lyr in range(s.L):
            frozen = zc[lyr].clone()
            if lyr == layer:
                frozen[:, :, s.cols(head)] = zn[lyr][:, :, s.cols(head)]
            net.transformer.h[lyr].attn.c_proj.input[:] = frozen
    return nn_patch_loop(s, net, freeze_all_but)


def nn_activation(s: Setup, net) -> torch.Tensor:
    zn = nn_outputs(s, net, s.data.normal)

    def one_head(layer, head):
        net.transformer.h[layer].attn.c_proj.input[:, :, s.cols(head)] = zn[layer][:, :, s.cols(head)]
    return nn_patch_loop(s, net, one_head)


def nn_attribution(s: Setup, net) -> torch.Tensor:
    d = s.data
    zn = nn_outputs(s, net, d.normal)
    acts, grads = [], []
    with net.trace(d.contrast):
        for lyr in range(s.L):
            acts.append(net.transformer.h[lyr].attn.c_proj.input.save())
        metric = s.ld(net.output.logits)
        with metric.backward():
            for lyr in reversed(range(s.L)):  # gradients come back in the reverse order of the forward pass
                grads.append(acts[lyr].grad.save())
    grads = grads[::-1]
    s.hf.zero_grad(set_to_none=True)
    return torch.stack([(g * (zn[lyr] - a.detach())).reshape(d.size, -1, s.H, s.d_head).sum((0, 1, 3))
                        for lyr, (g, a) in enumerate(zip(grads, acts))]).detach()


# ---- captum ----------------------------------------------------------------------------------------

def captum_attribution(s: Setup, net_outputs) -> torch.Tensor:
    from captum.attr import LayerGradientXActivation

    d = s.data
    zn = net_outputs(d.normal)
    zc = net_outputs(d.contrast)

    def per_example_ld(tokens):
        return logit_diff(s.hf(tokens).logits, d.last, d.normal_answer, d.contrast_answer)
    # captum differentiates each prompt's own metric: the mean over prompts is taken below
    layers = [s.hf.transformer.h[lyr].attn.c_proj for lyr in range(s.L)]
    method = LayerGradientXActivation(per_example_ld, layers, multiply_by_inputs=False)
    with torch.enable_grad():
        grads = method.attribute(d.contrast, attribute_to_layer_input=True)
    s.hf.zero_grad(set_to_none=True)
    return torch.stack([(g * (zn[lyr] - zc[lyr])).reshape(d.size, -1, s.H, s.d_head).sum((0, 1, 3)) / d.size
                        for lyr, g in enumerate(grads)]).detach()


# ---- AutoCircuit and EAP-IG (TransformerLens 2.x, their own environment) ----------------------------

def peer_side(s: Setup, python: str, threads: int) -> dict:
    """bench/peers_side.py run by `python` on this bench's checkpoint and prompt pairs."""
    d = s.data
    width = int(d.last.max()) + 1
    if not bool((d.last == width - 1).all()):
        raise SystemExit("peers_side needs prompt pairs of one length, read at the last position")
    request = {"model_dir": str(s.path), "threads": threads,
               "normal": d.normal[:, :width].tolist(), "contrast": d.contrast[:, :width].tolist(),
               "normal_answer": d.normal_answer.tolist(), "contrast_answer": d.contrast_answer.tolist()}
    with tempfile.TemporaryDirectory() as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        subprocess.run([python, str(Path(__file__).with_name("peers_side.py")), str(req), str(res)], check=True,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        return json.loads(res.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="a 4-layer d_model 128 model (a quick check of the bench)")
    ap.add_argument("--peer-env", default=None, help="Python of an environment with AutoCircuit and EAP-IG")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from nnsight import NNsight

    s = Setup(args.examples, args.small)
    net = NNsight(s.hf)
    print(f"model: random GPT-2 shape, {s.L} layers x {s.H} heads, d_model {s.model.bridge.cfg.d_model}; "
          f"{s.data.size} prompt pairs of {s.data.contrast.shape[1]} tokens; {args.threads} threads; "
          f"torch {torch.__version__}")

    patcher = Patcher(s.model, s.data, batch_size=16)
    _, t_cache = timed(lambda: patcher.cache)
    ld_n, ld_c = patcher.ld_normal, patcher.ld_contrast
    scale = abs(ld_c - ld_n)

    def normalised(mean_ld):  # a peer's mean patched LD [L, H] -> fi's normalisation
        return (mean_ld - ld_c) / (ld_c - ld_n)

    rows = []

    def row(method, library, seconds, scores, ours, t_ours, note=""):
        diff = float(((scores - ours) * scale).abs().max())
        rows.append((method, library, seconds, seconds / t_ours, diff, note))
        print(f"  {method:28s} {library:16s} {seconds:8.2f}s  {seconds / t_ours:6.1f}x fi  max|diff| {diff:.1e} LD  {note}",
              flush=True)

    print("\nmethod                       library           seconds   vs fi    difference from fi (logit-difference scale)")
    fresh = lambda: Patcher(s.model, s.data, batch_size=16)  # noqa: E731  each fi time includes its own runs
    ours, t_ours = timed(lambda: fresh().path_patching("output"))
    ours_path, t_path = ours, t_ours  # AutoCircuit's head -> logits edges are compared with these below
    row("path patching -> logits", "fi", t_ours, ours, ours, t_ours, f"(analytic run 1: {patcher.route.analytic_output_path})")
    tl, t = timed(lambda: normalised(tl_path_to_logits(s)))
    row("path patching -> logits", "TransformerLens", t, tl, ours, t_ours, "hook loop")
    nn, t = timed(lambda: normalised(nn_path_to_logits(s, net)))
    row("path patching -> logits", "nnsight", t, nn, ours, t_ours, "trace loop")

    ours, t_ours = timed(lambda: fresh().activation_patching())
    row("activation patching", "fi", t_ours, ours, ours, t_ours)
    tl, t = timed(lambda: normalised(tl_activation(s)))
    row("activation patching", "TransformerLens", t, tl, ours, t_ours, "get_act_patch_attn_head_out_all_pos")
    nn, t = timed(lambda: normalised(nn_activation(s, net)))
    row("activation patching", "nnsight", t, nn, ours, t_ours, "trace loop")

    ours, t_ours = timed(lambda: fresh().attribution_patching())
    row("attribution patching", "fi", t_ours, ours, ours, t_ours)
    tl, t = timed(lambda: tl_attribution(s) / (ld_c - ld_n))
    row("attribution patching", "TransformerLens", t, tl, ours, t_ours, "backward hooks")
    nn, t = timed(lambda: nn_attribution(s, net) / (ld_c - ld_n))
    row("attribution patching", "nnsight", t, nn, ours, t_ours, ".grad in a trace")
    cap, t = timed(lambda: captum_attribution(s, lambda tokens: nn_outputs(s, net, tokens)) / (ld_c - ld_n))
    row("attribution patching", "captum", t, cap, ours, t_ours, "LayerGradientXActivation")

    if args.peer_env:
        side = peer_side(s, args.peer_env, args.threads)
        print(f"  (peers' environment: {side['versions']}; its model's logits vs transformers': "
              f"max|diff| {side['logits_vs_hf']:.1e}; LD normal {side['ld_normal']:.4f} / contrast "
              f"{side['ld_contrast']:.4f} vs fi's {ld_n:.4f} / {ld_c:.4f})")
        m = side["methods"]
        edge = normalised(torch.tensor(m["autocircuit_edge_to_logits"]["scores"]))
        row("head -> logits edges (direct)", "AutoCircuit", m["autocircuit_edge_to_logits"]["seconds"], edge, ours_path,
            t_path, "vs fi's path patching -> logits: the direct path only, a different quantity")
        for key, library, note in (("autocircuit_eap", "AutoCircuit", "mask gradient, outgoing edges summed"),
                                   ("eap_eap", "EAP-IG", "EAP, outgoing edges summed")):
            peer = torch.tensor(m[key]["scores"]) / (ld_c - ld_n)
            row("attribution patching", library, m[key]["seconds"], peer, ours, t_ours, note)

    print(f"\nfi's times include building its cache of the two runs ({t_cache:.2f}s here); the peers' include "
          "their own clean runs.")
    for method in dict.fromkeys(r[0] for r in rows):
        peers = [r for r in rows if r[0] == method and r[1] != "fi"]
        fastest = min(peers, key=lambda r: r[2])
        print(f"{method}: fastest peer {fastest[1]} {fastest[2]:.2f}s = {fastest[3]:.1f}x fi's time; "
              f"largest difference {max(r[4] for r in peers):.1e}")


if __name__ == "__main__":
    main()
