"""The paper's code as the oracle: fi against the paper's released code on the same model and prompts.

The paper's code (../shared/reference/function-induction/code/, MIT) is written for TransformerLens
2.x; fi runs on TransformerLens 4's TransformerBridge. This bench runs fi here and the paper's code
in a separate Python environment (bench/paper_side.py, a subprocess that imports the paper's modules
from the reference checkout at run time; none of that code is copied into this repository), on one
local checkpoint, and compares:

  model       TransformerLens 2.x's log-probabilities (built from the checkpoint as the paper's
              from_pretrained processes a model) against the TransformerBridge's, and against
              transformers in the paper's environment
  (a) eval    `1_off_by_one_addition_eval/eval.py::run_inference`'s cf_acc / orig_acc, per-example
              predictions and logit differences against `fi.methods.evaluation.evaluate_task`, per cell
  (b) paths   path patching to the output (`batched_get_path_patch_to_repr` to the last layer's
              resid_post, as `2_circuit_discovery/*_offline.py`) and to heads' value inputs
              (`batched_get_path_patch_to_head`) against `fi.engine.patching.path_patching`
  (c) circuit `circuit_eval_utils.eval_circuit_batched` on a circuit, each of its groups, the empty
              circuit and the full model, against `fi.methods.circuit.circuit_lds` (mean LD, and F)
  (d) K       `get_completeness_score(C, K, M)` against `fi.methods.circuit.completeness_lds`, and
              `circuit_eval_offline.one_greedy_search` after `random.seed(s)` against
              `fi.methods.circuit.greedy_completeness_search` with `random.Random(s)`: the same K

Prompts: the paper's released data files (data/addition/<setting>/addition_nmax9_offset<k>.jsonl),
which fi's generator reproduces (checked), rendered by each side's own code. Circuit positions: the
paper keeps FI and consolidation heads at "all=" (every '=', the query's included) and previous-token
heads at "c" (each demo's answer); the paper side derives those lists from its own tokenization, and
they are checked against fi's position masks (fi.methods.circuit.GROUP_POSITIONS) row by row.

The greedy search draws 5 candidates per step from the heads not yet in K, and the paper's code
fails when fewer are left; a circuit of fewer than 9 heads can run out. The built-in model has 8
heads, so the search is compared on a random-initialised 3-layer x 4-head sibling (same tokenizer,
every head in the circuit) unless the main circuit has 9 heads or more.

    python -m bench.bench_paper_parity --paper-python /tmp/fi-paper-env/bin/python [--model DIR]

(or FI_PAPER_PYTHON=...). Prints one row per comparison with its max abs diff and PASS/FAIL and
exits 1 on any FAIL. docs/paper-parity.md: how to build the paper's environment, measured numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "function-induction"
DEFAULT_PAPER_PYTHON = Path("/tmp/fi-paper-env/bin/python")
PAPER_SIDE = Path(__file__).resolve().parent / "paper_side.py"
DEFAULT_MODEL = ROOT / "results" / "models" / "fi-toy"
# where the bench trains a stand-in when the built-in model has not been built (git-ignored)
STANDIN = ROOT / "bench" / "out" / "paper-parity" / "fi-toy"

# fi's group names -> the paper's (identified_circuit's keys; "default" is complete_circuit's)
PAPER_GROUP = {"previous_token": "prev_token", "function_induction": "function_induction",
               "consolidation": "consolidate", "everywhere": "default"}
# fi.methods.circuit.GROUP_POSITIONS' values -> the paper's position keys
PAPER_POSITION = {"demo_answers": "c", "separators+read": "all=", "all": "all"}

# (setting, offset, shots) cells of eval.py, nmax 9 (the built-in model's numbers are one digit)
EVAL_CELLS = (("setting1", 1, 4), ("setting1", 1, 16), ("setting2", -1, 8), ("normal", 2, 2))
PATCHING_CELL = ("setting1", 1, 4)  # the paper's discovery cell (setting1, nmax 9, offset +1, 4 shots)
GREEDY_SEEDS = (0, 1, 202505)


@dataclass
class Row:
    """One comparison: `diff` is the max abs difference (None where the comparison is not numeric)."""

    what: str
    detail: str
    diff: float | None
    ok: bool
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    paper_versions: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def add(self, what: str, detail: str, diff: float | None, ok: bool, note: str = "") -> None:
        self.rows.append(Row(what, detail, diff, bool(ok), note))

    def close(self, what: str, detail: str, a, b, tol: float, note: str = "") -> None:
        """Numbers (or equally shaped nested lists) equal within `tol` times the larger of 1 and the
        largest magnitude compared: both sides compute in float32, whose rounding (relative, ~1e-7
        per operation) reaches 1e-4 on per-prompt LDs of 10-20 logits, as the built-in model's are."""
        import torch

        x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        if x.shape != y.shape:
            self.add(what, detail, None, False, f"shapes {tuple(x.shape)} vs {tuple(y.shape)}")
            return
        if not x.numel():
            self.add(what, detail, 0.0, True, note)
            return
        d = float((x - y).abs().max())
        scale = max(1.0, float(y.abs().max()))
        if scale > 1.0:
            note = (note + "; " if note else "") + f"max |value| {scale:.3g}"
        self.add(what, detail, d, d <= tol * scale, note)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        lines = [f"{'comparison':<12} {'what':<66} {'max abs diff':>12}  result", "-" * 104]
        for r in self.rows:
            d = "-" if r.diff is None else f"{r.diff:.2e}"
            lines.append(f"{r.what:<12} {r.detail:<66} {d:>12}  {'PASS' if r.ok else 'FAIL'}"
                         + (f"  ({r.note})" if r.note else ""))
        return "\n".join(lines)


# ---- locating the other side ------------------------------------------------------------------------

def find_paper_python(given: str | None = None) -> Path | None:
    """The paper environment's interpreter: the argument, else FI_PAPER_PYTHON, else the default
    venv of docs/paper-parity.md; None when none exists."""
    for cand in (given, os.environ.get("FI_PAPER_PYTHON"), DEFAULT_PAPER_PYTHON):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


def reference_code(reference: Path) -> Path | None:
    code = reference / "code"
    needed = ["data_utils.py", "patching_utils.py", "1_off_by_one_addition_eval/eval.py",
              "3_circuit_eval_and_analysis/circuit_eval_utils.py", "3_circuit_eval_and_analysis/circuit_eval_offline.py"]
    return code if all((code / n).exists() for n in needed) else None


def run_paper_side(python: Path, request: dict, workdir: Path, tag: str) -> dict:
    """Run bench/paper_side.py in the paper's environment on `request`; its JSON result. Its output
    (the paper code's prints and progress bars) goes to a log file beside the request."""
    req, res, log = workdir / f"{tag}-request.json", workdir / f"{tag}-result.json", workdir / f"{tag}.log"
    req.write_text(json.dumps(request))
    # the paper's environment is its own: none of this process's Python paths, no hub access
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(request.get("threads", 1)),
               TQDM_DISABLE="1")
    with open(log, "w") as fh:
        proc = subprocess.run([str(python), str(PAPER_SIDE), str(req), str(res)], stdout=fh, stderr=subprocess.STDOUT,
                              env=env, cwd=str(workdir))
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"paper side failed (exit {proc.returncode}); the end of {log}:\n{tail}")
    return json.loads(res.read_text())


# ---- circuits in the paper's format -----------------------------------------------------------------

def paper_circuit(circuit: dict) -> dict:
    """An fi circuit ({group: heads}) as the paper's circuit dict without its "positions" (the paper
    side adds them from its tokenization): head_circuit in fi's group order (GROUPS, then
    "everywhere"), which is the order the paper's greedy search lists its candidate heads in."""
    from fi.methods.circuit import GROUP_POSITIONS, GROUPS

    heads, keep = {}, {}
    for g in (*GROUPS, "everywhere"):
        if circuit.get(g):
            heads[PAPER_GROUP[g]] = [[int(a), int(b)] for a, b in circuit[g]]
            keep[PAPER_GROUP[g]] = PAPER_POSITION[GROUP_POSITIONS[g]]
    return {"head_circuit": heads, "head_seq_pos_to_keep": keep}


def everything(n_layers: int, n_heads: int) -> dict:
    """The full model M as a circuit: every head at every position."""
    return {"everywhere": [[a, b] for a in range(n_layers) for b in range(n_heads)]}


def default_circuit(direct, n_layers: int) -> dict:
    """A circuit from the direct effects (path patching to the output) when none is given: the two
    strongest heads above layer 0 as FI heads, the next two as consolidation heads, and the two
    strongest heads below the FI heads' lowest layer as previous-token heads. Parity needs a circuit
    with each group's positions, not the model's true one."""
    order = sorted(((layer, head) for layer in range(direct.shape[0]) for head in range(direct.shape[1])),
                   key=lambda h: (-abs(float(direct[h])), h))
    upper = [h for h in order if h[0] > 0]
    fi_heads, cons = upper[:2], upper[2:4]
    lowest = min(h[0] for h in fi_heads)
    prev = [h for h in order if h[0] < lowest and h not in cons][:2]
    return {"previous_token": [list(h) for h in prev], "function_induction": [list(h) for h in fi_heads],
            "consolidation": [list(h) for h in cons]}


# ---- the comparisons ----------------------------------------------------------------------------

def data_file(reference: Path, setting: str, offset: int, nmax: int = 9) -> Path:
    return reference / "data" / "addition" / setting / f"addition_nmax{nmax}_offset{offset}.jsonl"


def check_data(report: Report, reference: Path, cells) -> None:
    """fi's generator against the paper's released files (the prompts both sides render)."""
    from fi.io import read_jsonl
    from fi.plan.tasks import generate_addition

    for setting, offset in sorted({(s, k) for s, k, _ in cells}):
        path = data_file(reference, setting, offset)
        same = read_jsonl(path) == generate_addition(setting, 9, offset, n_examples=100, n_demos=32, seed=42)
        report.add("data", f"{path.name} ({setting}) = fi.plan.tasks.generate_addition", None, same)


def fi_eval(loaded, reference: Path, cells, max_examples: int | None) -> list[dict]:
    from fi.io import read_jsonl
    from fi.methods.evaluation import evaluate_task
    from fi.plan.tasks import get_family

    family = get_family("addition")
    out = []
    for setting, offset, shots in cells:
        v = family.parse_variant(f"{setting}_nmax9_offset{offset}")
        records = read_jsonl(data_file(reference, setting, offset))[:max_examples]
        df = evaluate_task(loaded, family, v, records, shots)
        out.append({"cf_acc": float(df["cf_correct"].mean()), "orig_acc": float(df["orig_correct"].mean()),
                    "contrast_pred": df["contrast_pred"].tolist(), "contrast_logit_diff": df["contrast_logit_diff"].tolist()})
    return out


def compare_eval(report: Report, cells, mine: list[dict], paper: list[dict], tol: float) -> None:
    for (setting, offset, shots), a, b in zip(cells, mine, paper):
        cell = f"{setting} nmax9 k{offset:+d} {shots}-shot, {len(a['contrast_pred'])} prompts"
        report.close("(a) eval", f"cf_acc {a['cf_acc']:.3f} vs {b['cf_acc']:.3f}; {cell}", a["cf_acc"], b["cf_acc"], 0.0)
        report.close("(a) eval", f"orig_acc {a['orig_acc']:.3f} vs {b['orig_acc']:.3f}; {cell}", a["orig_acc"],
                     b["orig_acc"], 0.0)
        wrong = sum(x != y for x, y in zip(a["contrast_pred"], b["contrast_pred"]))
        report.add("(a) eval", f"contrast predictions differing: {wrong}; {cell}", None, wrong == 0)
        report.close("(a) eval", f"contrast-prompt LD per prompt; {cell}", a["contrast_logit_diff"],
                     b["contrast_logit_diff"], tol)


def fi_patching_side(loaded, reference: Path, cell, n_examples: int, batch_size: int = 16):
    """fi's data and cache of the patching cell (the first `n_examples` prompts, none dropped)."""
    from fi.engine.pairs import build_patching_data
    from fi.engine.patching import build_cache
    from fi.io import read_jsonl
    from fi.plan.tasks import get_family

    setting, offset, shots = cell
    family = get_family("addition")
    v = family.parse_variant(f"{setting}_nmax9_offset{offset}")
    records = read_jsonl(data_file(reference, setting, offset))[:n_examples]
    data = build_patching_data(loaded, family, v, records, shots, n_examples)
    if data.size != n_examples:
        raise RuntimeError(f"fi dropped {data.n_dropped} of {n_examples} prompts; the two sides would differ")
    return build_cache(loaded, data, batch_size=batch_size)


def compare_positions(report: Report, cache, paper: dict, formula: dict) -> None:
    """The paper side's tokens and position lists against fi's prompts and position masks."""
    import torch

    from fi.methods.circuit import position_mask

    ok_tokens = paper["tokens"] == cache.data.contrast.tolist()
    report.add("positions", "paper side's contrast tokens = fi's (BOS + characters)", None, ok_tokens)
    report.add("positions", "one position list fits every prompt (as the paper's code assumes)", None, paper["consistent"])
    for group, key in (("previous_token", "c"), ("function_induction", "all="), ("consolidation", "all=")):
        masks = torch.cat([position_mask(chunk, group) for chunk in cache.chunks])
        want = torch.zeros_like(masks)
        want[:, paper[key]] = True
        report.add("positions", f"fi {group} mask = paper \"{key}\" {paper[key][:3]}...", None, bool((masks == want).all()))
    same = all(formula[k] == paper[k] for k in ("c", "=", "all=", "test="))
    report.add("positions", "paper identified_circuit() formula = derived lists", None, same)


def fi_circuit_side(loaded, cache, circuit: dict, variants: dict, k_sets) -> tuple[dict, list]:
    from fi.methods.circuit import circuit_lds, completeness_lds, to_f

    names = list(variants)
    lds = circuit_lds(loaded, cache, [variants[n] for n in names])
    faith = {n: {"ld": ld, "f": to_f(cache, ld)} for n, ld in zip(names, lds)}
    comp = completeness_lds(loaded, cache, circuit, k_sets) if k_sets else []
    return faith, comp


def circuit_variants(circuit: dict, n_layers: int, n_heads: int) -> tuple[dict, dict]:
    """Named circuits for (c): fi's (kept, knocked) variants and the paper's circuit dicts."""
    from fi.methods.circuit import GROUPS, circuit_heads

    fi_v = {"C": (circuit_heads(circuit), ())}
    paper_v = {"C": paper_circuit(circuit)}
    for g in GROUPS:
        if circuit.get(g):
            fi_v[g] = (circuit_heads({g: circuit[g]}), ())
            paper_v[g] = paper_circuit({g: circuit[g]})
    fi_v["empty"] = ([], ())
    paper_v["empty"] = paper_circuit({})
    # on the built-in model the circuit's positions miss where its layer-0 heads act (F(C) ~ 0);
    # with those heads kept everywhere F is near 1, a point away from both ends of the scale
    wide = {**circuit, "everywhere": [[0, h] for h in range(n_heads)]}
    fi_v["C + layer-0 heads everywhere"] = (circuit_heads(wide), ())
    paper_v["C + layer-0 heads everywhere"] = paper_circuit(wide)
    full = everything(n_layers, n_heads)
    fi_v["M (all heads, all positions)"] = (circuit_heads(full), ())
    paper_v["M (all heads, all positions)"] = paper_circuit(full)
    return fi_v, paper_v


def k_sets_for(circuit: dict, n_layers: int, n_heads: int) -> list[list[list[int]]]:
    """K sets for get_completeness_score: empty, each group, each circuit head alone, the first two
    circuit heads, and a head outside the circuit (it changes M \\ K only)."""
    from fi.methods.circuit import GROUPS, circuit_members

    members = list(dict.fromkeys(circuit_members(circuit)))
    ks = [[]] + [[list(h) for h in circuit[g]] for g in GROUPS if circuit.get(g)]
    ks += [[list(h)] for h in members] + [[list(h) for h in members[:2]]]
    outside = [[a, b] for a in range(n_layers) for b in range(n_heads) if (a, b) not in set(members)]
    return ks + ([[outside[0]]] if outside else [])


def wide_checkpoint(path: Path) -> Path:
    """A random-initialised Llama of 3 layers x 4 heads with the built-in model's tokenizer, for the
    greedy search (12 heads: the paper's 5 draws never run out in 5 steps)."""
    import torch

    from fi.build.training import build_tokenizer
    from tests.tiny_checkpoints import build_model

    if (path / "config.json").exists():
        return path
    tok = build_tokenizer()
    model = build_model("llama", tok, seed=0, n_layers=3, d_model=32, n_heads=4, n_kv_heads=4, d_mlp=64,
                        max_len=512, initializer_range=0.1)
    with torch.no_grad():
        model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def standin_model(path: Path) -> Path:
    """The built-in model trained with its default recipe (config.yaml) into `path` when
    results/models/fi-toy does not exist yet (about 3 minutes on one core)."""
    import yaml

    from fi.build.training import train_model
    from fi.plan.config import validate_config

    if (path / "config.json").exists():
        return path
    cfg = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    print(f"(no built-in model at {DEFAULT_MODEL}: training it with config.yaml's recipe into {path})", flush=True)
    train_model(cfg["models"]["fi-toy"]["train"], path, threads=1, progress=False)
    return path


def run_parity(model_dir: Path, paper_python: Path, reference: Path = DEFAULT_REFERENCE, *, eval_cells=EVAL_CELLS,
               eval_examples: int | None = None, patching_cell=PATCHING_CELL, n_examples: int = 20,
               circuit: dict | None = None, greedy_seeds=GREEDY_SEEDS, greedy_model: Path | None = None,
               tol: float = 1e-4, workdir: Path | None = None, threads: int = 1, verbose: bool = True) -> Report:
    """Every comparison on one model; `greedy_model` (default: the model itself if its circuit has 9
    heads or more, else `wide_checkpoint`) runs the greedy search."""
    import random

    import torch

    from fi.engine.models import load_model
    from fi.engine.patching import path_patching
    from fi.methods.circuit import circuit_members, greedy_completeness_search

    torch.set_num_threads(threads)
    code = reference_code(reference)
    if code is None:
        raise FileNotFoundError(f"the paper's code is not under {reference}/code")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fi-paper-parity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report()

    def say(msg):
        if verbose:
            print(msg, flush=True)

    t0 = time.perf_counter()
    loaded = load_model("fi-toy", path=str(model_dir), device="cpu")
    L, H = loaded.n_layers, loaded.n_heads
    check_data(report, reference, [(s, k, n) for s, k, n in eval_cells] + [patching_cell])

    say("fi: evaluation, path patching, circuits ...")
    mine_eval = fi_eval(loaded, reference, eval_cells, eval_examples)
    cache = fi_patching_side(loaded, reference, patching_cell, n_examples)
    direct = path_patching(loaded, cache, "output")
    circuit = circuit or default_circuit(direct, L)
    receivers = sorted({tuple(h) for g in ("function_induction", "consolidation") for h in circuit.get(g, []) if h[0] > 0})
    values = {f"{a}.{b}": path_patching(loaded, cache, f"{a}.{b}.v") for a, b in receivers}
    fi_v, paper_v = circuit_variants(circuit, L, H)
    k_sets = k_sets_for(circuit, L, H)
    faith, comp = fi_circuit_side(loaded, cache, circuit, fi_v, k_sets)
    report.seconds["fi"] = time.perf_counter() - t0

    setting, offset, shots = patching_cell
    probe = cache.data.contrast[:2]
    with torch.inference_mode():
        fi_logprobs = loaded.bridge(probe).float().log_softmax(-1)
    request = {
        "code_dir": str(code), "model_dir": str(model_dir), "model_name": "fi-toy", "threads": threads,
        "probe_tokens": probe.tolist(),
        "eval": [{"data_file": str(data_file(reference, s, k)), "shots": n, "offset": k, "nmax": 9,
                  "max_examples": eval_examples} for s, k, n in eval_cells],
        "patching": {"data_file": str(data_file(reference, setting, offset)), "shots": shots, "offset": offset,
                     "max_examples": n_examples, "batch_size": 4, "value_receivers": [list(r) for r in receivers],
                     "circuits": paper_v,
                     "completeness": {"C": paper_circuit(circuit), "M": paper_circuit(everything(L, H)),
                                      "k_sets": k_sets, "greedy_seeds": []}},
    }
    greedy_on_main = len(set(circuit_members(circuit))) >= 9
    if greedy_on_main:
        request["patching"]["completeness"]["greedy_seeds"] = list(greedy_seeds)
    say(f"paper side ({paper_python}) ...")
    t1 = time.perf_counter()
    paper = run_paper_side(paper_python, request, workdir, "main")
    report.seconds["paper"] = time.perf_counter() - t1
    report.paper_versions = paper["versions"]

    # the model
    report.close("model", "TL 2.x log-probs vs transformers (paper env), 2 prompts", paper["probe"]["tl2_vs_hf_max_abs"], 0.0,
                 tol)
    report.close("model", "TL 2.x log-probs vs fi's TransformerBridge, 2 prompts", paper["probe"]["tl2_logprobs"],
                 fi_logprobs.tolist(), tol)
    # (a)
    compare_eval(report, eval_cells, mine_eval, paper["eval"], tol)
    # positions
    compare_positions(report, cache, paper["positions"], paper["paper_formula_positions"])
    # (b)
    cell = f"{setting} k{offset:+d} {shots}-shot, {n_examples} prompts"
    po = paper["path_output"]
    report.close("(b) paths", f"LD normal / contrast baselines; {cell}", [cache.mean_ld_normal, cache.mean_ld_contrast],
                 [po["ld_normal"], po["ld_contrast"]], tol)
    report.close("(b) paths", f"path patching -> output, {L}x{H} normalised scores", direct.tolist(), po["scores"], tol)
    for name, scores in values.items():
        report.close("(b) paths", f"path patching -> {name}.v, normalised scores", scores.tolist(),
                     paper["path_value"][name], tol)
    # (c)
    for name, got in faith.items():
        want = paper["circuits"][name]
        report.close("(c) circuit", f"eval_circuit_batched LD: {name}", got["ld"], want["ld"], tol,
                     f"F {got['f']:.4f} vs {want['f']:.4f}")
        report.close("(c) circuit", f"faithfulness F: {name}", got["f"], want["f"], tol)
    # (d)
    for k, (a, b), want in zip(k_sets, comp, paper["completeness"]):
        label = "K = {}" if not k else "K = " + " ".join(f"{x}.{y}" for x, y in k)
        report.close("(d) K", f"get_completeness_score (C\\K, M\\K): {label}", [a, b], [want["a"], want["b"]], tol)

    # the greedy search
    if greedy_on_main:
        g_loaded, g_cache, g_circuit, g_paper = loaded, cache, circuit, paper["greedy"]
        where = "main model"
    else:
        g_dir = greedy_model or wide_checkpoint(workdir / "wide")
        g_loaded = load_model("wide", path=str(g_dir), device="cpu")
        g_cache = fi_patching_side(g_loaded, reference, patching_cell, n_examples)
        gl, gh = g_loaded.n_layers, g_loaded.n_heads
        names = ["previous_token", "function_induction", "consolidation"]
        g_circuit = {names[min(layer, 2)]: [[layer, h] for h in range(gh)] for layer in range(min(gl, 3))}
        for layer in range(3, gl):  # deeper layers join consolidation
            g_circuit["consolidation"] += [[layer, h] for h in range(gh)]
        where = f"random {gl}x{gh} model, all heads in C"
        req = {"code_dir": str(code), "model_dir": str(g_dir), "threads": threads,
               "patching": {"data_file": str(data_file(reference, setting, offset)), "shots": shots, "offset": offset,
                            "max_examples": n_examples, "batch_size": 4, "path_output": False,
                            "completeness": {"C": paper_circuit(g_circuit), "M": paper_circuit(everything(gl, gh)),
                                             "k_sets": [], "greedy_seeds": list(greedy_seeds)}}}
        say("paper side, greedy search ...")
        t2 = time.perf_counter()
        g_paper = run_paper_side(paper_python, req, workdir, "greedy")["greedy"]
        report.seconds["paper_greedy"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    for seed, want in zip(greedy_seeds, g_paper):
        k, gap, _ = greedy_completeness_search(g_loaded, g_cache, g_circuit, random.Random(seed))
        got = [list(h) for h in k]
        if want["error"]:
            report.add("(d) greedy", f"seed {seed}: paper raised", None, False, want["error"])
            continue
        shown = " ".join(f"{a}.{b}" for a, b in got)
        report.add("(d) greedy", f"seed {seed}: same K [{shown}] ({where})", None, got == want["k"],
                   "" if got == want["k"] else f"paper {want['k']}")
        report.close("(d) greedy", f"seed {seed}: |LD(C\\K) - LD(M\\K)| {gap:.4f}", gap, want["diff"], tol)
    report.seconds["fi_greedy"] = time.perf_counter() - t3
    report.seconds["total"] = time.perf_counter() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paper-python", help="python of the paper's environment (default: $FI_PAPER_PYTHON, then "
                    f"{DEFAULT_PAPER_PYTHON})")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="a local Llama-style checkpoint (default: the "
                    "built-in model; trained into bench/out/ when it has not been built)")
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="the paper's release (code/, data/)")
    ap.add_argument("--circuit", help="a circuit JSON ({group: heads} or a find_circuit output with 'groups'); "
                    "default: one built from the direct effects")
    ap.add_argument("--examples", type=int, default=20, help="prompts of the patching cell (default 20)")
    ap.add_argument("--eval-examples", type=int, default=None, help="prompts per eval cell (default: all 100)")
    ap.add_argument("--seeds", type=int, nargs="*", default=list(GREEDY_SEEDS), help="greedy-search seeds")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs diff allowed on logit-difference scales, "
                    "times max(1, the largest magnitude compared)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on each side (default 1)")
    ap.add_argument("--workdir", help="keep the requests, results and the paper side's log here")
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args(argv)

    python = find_paper_python(args.paper_python)
    if python is None:
        print("no paper environment: pass --paper-python or set FI_PAPER_PYTHON (docs/paper-parity.md)", file=sys.stderr)
        return 2
    reference = Path(args.reference)
    if reference_code(reference) is None:
        print(f"the paper's code is not under {reference}/code", file=sys.stderr)
        return 2
    model = Path(args.model)
    if not (model / "config.json").exists():
        if model != DEFAULT_MODEL:
            print(f"no checkpoint at {model}", file=sys.stderr)
            return 2
        model = standin_model(STANDIN)
    circuit = None
    if args.circuit:
        found = json.loads(Path(args.circuit).read_text())
        circuit = found.get("groups", found)
    report = run_parity(model, python, reference, eval_examples=args.eval_examples, n_examples=args.examples,
                        circuit=circuit, greedy_seeds=tuple(args.seeds), tol=args.tol,
                        workdir=Path(args.workdir) if args.workdir else None, threads=args.threads)
    print(f"\nmodel {model}; paper side: {report.paper_versions}")
    print(report.table())
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    n_fail = sum(not r.ok for r in report.rows)
    print(f"{len(report.rows) - n_fail} passed, {n_fail} failed")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in report.rows], indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
