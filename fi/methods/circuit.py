"""The paper's circuit (sections 2-4): three head groups found by iterated path patching, and the
circuit's evaluation (faithfulness, completeness, minimality), through the intervention engine.

Discovery (`iterated_path_patching`), the paper's `2_circuit_discovery` procedure, with its head
selection as rules (`Selection`; the paper chose by rank and by hand, see docs/circuit.md):
  level 0   path patching to the output ranks every head by its direct effect; heads with
            |score| >= output_threshold (0.02: the paper's weaker tier; >= strong_threshold, 0.05,
            is its strong tier) are the first receivers;
  level n   path patching to each receiver's value input (and q / k when configured): per receiver
            input, its `receiver_top_k` strongest senders with |score| >= receiver_threshold (the
            paper's previous-token heads score 0.003-0.1 on the FI heads' value inputs, far below the
            output level's 0.02, and it took them by rank); they are the next level's receivers.
Groups (`classify`), from the path graph and from attention statistics on the contrast prompts:
  function_induction  heads that attend from the read position (the query's '=') to the demos'
                      answers (>= attention_threshold) and act on the output directly or through a
                      head with a direct effect
  consolidation       the other heads with a direct effect on the output
  previous_token      heads that feed an FI head and attend from each demo answer to the token
                      before it (>= attention_threshold)
Every head of the graph keeps its numbers (direct effect, edges, attention statistics) in the result.

Evaluation (paper 4.1, IOI's criteria): a circuit C is heads x the positions they act at (FI and
consolidation heads at the '=' positions and the read position, previous-token heads at the demos'
answers). LD_X is the contrast prompt's LD with every head output outside X replaced by its
normal-run value; F(X) = (LD_X - LD_normal) / (LD_contrast - LD_normal), so F(model) = 1 and
F(empty) = 0.

Completeness (paper 4.1, its `circuit_eval_offline.py`): for a head set K, C \\ K and M \\ K (M: every
head at every position) with K's heads removed at every position; the paper compares their logit
differences LD(C \\ K) and LD(M \\ K) (the scale of its released JSON). Its greedy search
(`greedy_completeness_search`) draws `candidates` heads per step, keeps the best K over the whole
search, and stops at the first step where no candidate beats it. Minimality (IOI): per head v,
max over the visited K of |F(C \\ (K u {v})) - F(C \\ K)|.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fi.engine.interventions import Intervention, pattern_hook, z_hook
from fi.engine.patching import (
    Receiver,
    RunCache,
    default_rows_per_pass,
    path_patching,
    path_patching_to_heads,
    run_with_interventions,
)
from fi.engine.readout import capture, run_to_final_resid
from fi.io import progress
from fi.plan.params import Selection

GROUPS = ("previous_token", "function_induction", "consolidation")
# where each group acts (fi.engine.patching position groups, plus the read position)
GROUP_POSITIONS = {"previous_token": "demo_answers", "function_induction": "separators+read",
                   "consolidation": "separators+read", "everywhere": "all"}
Head = tuple[int, int]


# ---- attention statistics ---------------------------------------------------------------------------

def attention_patterns(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every layer's attention pattern [B, H, T, T] (float32, on the CPU) of one run on `tokens`,
    which stops before the unembedding."""
    store: dict = {}
    with torch.inference_mode():
        run_to_final_resid(model, tokens.to(model.device),
                           capture(store, [pattern_hook(layer) for layer in range(model.n_layers)],
                                   lambda name, p: p.float().cpu()))
    return {layer: store[pattern_hook(layer)] for layer in range(model.n_layers)}


def attention_statistics(model, cache: RunCache) -> dict[Head, dict[str, float]]:
    """Per head, on the contrast prompts (mean over examples):
      read_to_demo_answers   attention mass from the read position to the demos' answer tokens
      read_to_separators     ... to the '=' tokens (the query's included)
      answer_to_previous     mean attention from each demo answer token to the token before it"""
    sums: dict[Head, dict[str, float]] = {}
    for chunk in cache.chunks:
        store = attention_patterns(model, chunk.contrast)
        rows = torch.arange(chunk.size)
        answers = chunk.groups["demo_answers"].float()  # [B, T]
        seps = chunk.groups["separators"].float()
        n_answers = answers.sum(1).clamp(min=1)
        for layer in range(model.n_layers):
            p = store[layer]  # [B, H, T, T]
            read = p[rows, :, chunk.last]  # [B, H, T]
            to_answers = (read * answers[:, None]).sum(-1)  # [B, H]
            to_seps = (read * seps[:, None]).sum(-1)
            prev = p.diagonal(offset=-1, dim1=-2, dim2=-1)  # [B, H, T-1]: attention from t to t-1
            from_answers = (prev * answers[:, None, 1:]).sum(-1) / n_answers[:, None]
            for head in range(model.n_heads):
                s = sums.setdefault((layer, head), {"read_to_demo_answers": 0.0, "read_to_separators": 0.0,
                                                    "answer_to_previous": 0.0})
                s["read_to_demo_answers"] += float(to_answers[:, head].sum())
                s["read_to_separators"] += float(to_seps[:, head].sum())
                s["answer_to_previous"] += float(from_answers[:, head].sum())
    n = cache.data.size
    return {h: {k: v / n for k, v in s.items()} for h, s in sums.items()}


# ---- discovery ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    sender: Head
    receiver: str  # "output" or "L.H.q|k|v"
    score: float   # normalised path-patching effect (-1: restores the normal answer)

    def as_dict(self) -> dict:
        return {"sender": list(self.sender), "receiver": self.receiver, "score": self.score}


def iterated_path_patching(model, cache: RunCache, selection: Selection | None = None, depth: int = 3,
                           inputs: Sequence[str] = ("v",), rows_per_pass: int = 256) -> tuple[list[Edge], torch.Tensor]:
    """Edges of the path graph, level by level from the output down, and the direct-effect scores
    [L, H]. Each level's receivers are the senders selected at the level above (`Selection`)."""
    selection = selection or Selection()
    direct = path_patching(model, cache, "output", rows_per_pass)
    edges = [Edge(head, "output", s) for head, s in selection.direct(direct)]
    frontier = _strongest([(e.sender, e.score) for e in edges], selection.max_receivers)
    done: set[Head] = set()
    n_kv = int(getattr(model.bridge.cfg, "n_key_value_heads", None) or cache.n_heads)
    group = cache.n_heads // n_kv
    computed: dict[tuple, torch.Tensor] = {}
    for _ in range(1, depth):
        found: list[tuple[Head, float]] = []
        done.update(frontier)
        # nothing below layer 0 feeds a layer-0 head; with grouped-query attention a head's key
        # input is its key-value group's, shared by the group's heads (fi.engine.patching.
        # path_patching_to_heads): computed once, for the first; q and v inputs are each head's own
        receivers = [Receiver(head[0], head[1], which) for head in frontier if head[0] > 0 for which in inputs]

        def key(r: Receiver) -> tuple:
            return (r.layer, r.which, r.head // group if r.which == "k" else r.head)
        todo = list({key(r): r for r in reversed(receivers) if key(r) not in computed}.values())
        if todo:  # the level's receivers in one set: one run 1 per sender for all of them
            for r, scores in path_patching_to_heads(model, cache, todo, rows_per_pass).items():
                computed[key(r)] = scores
        for receiver in receivers:
            for sender, s in selection.senders(computed[key(receiver)], receiver.layer):
                edges.append(Edge(sender, str(receiver), s))
                found.append((sender, s))
        frontier = [h for h in _strongest(found, selection.max_receivers) if h not in done]
        if not frontier:
            break
    return edges, direct


def _strongest(scored: list[tuple[Head, float]], limit: int | None) -> list[Head]:
    best: dict[Head, float] = {}
    for head, s in scored:
        best[head] = max(best.get(head, 0.0), abs(s))
    return sorted(best, key=lambda h: (-best[h], h))[:limit]


def classify(edges: Sequence[Edge], stats: dict[Head, dict[str, float]], attention_threshold: float = 0.2) -> dict:
    """The three groups (see the module docstring) from the path graph and the attention statistics."""
    direct = {e.sender for e in edges if e.receiver == "output"}
    feeds: dict[Head, set[Head]] = {}
    for e in edges:
        if e.receiver != "output":
            layer, head, _ = e.receiver.split(".")
            feeds.setdefault(e.sender, set()).add((int(layer), int(head)))
    in_graph = direct | set(feeds)

    def attends(head, key):
        return stats[head][key] >= attention_threshold
    fi = {h for h in in_graph if attends(h, "read_to_demo_answers") and (h in direct or feeds.get(h, set()) & direct)}
    consolidation = direct - fi
    previous = {h for h in in_graph - fi - consolidation if attends(h, "answer_to_previous") and feeds.get(h, set()) & fi}
    groups = {"previous_token": sorted(previous), "function_induction": sorted(fi), "consolidation": sorted(consolidation)}
    other = sorted(in_graph - previous - fi - consolidation)
    return {"groups": {g: [list(h) for h in hs] for g, hs in groups.items()}, "other": [list(h) for h in other]}


# ---- evaluation ---------------------------------------------------------------------------------------

Circuit = dict  # group -> list of heads


def position_mask(chunk, group: str) -> torch.Tensor:
    """[B, T] positions a group acts at (GROUP_POSITIONS) in one chunk."""
    where = GROUP_POSITIONS[group]
    if where == "all":
        return torch.ones_like(chunk.groups["separators"])
    if where == "separators+read":
        mask = chunk.groups["separators"].clone()
        mask[torch.arange(chunk.size), chunk.last] = True
        return mask
    return chunk.groups[where].clone()


def circuit_heads(circuit: Circuit) -> list[tuple[Head, str]]:
    """(head, group) of every circuit head; a head in two groups acts at both groups' positions."""
    return [((int(a), int(b)), g) for g in GROUP_POSITIONS for a, b in circuit.get(g, [])]


def _keep_masks(cache: RunCache, i: int, kept: Sequence[tuple[Head, str]]) -> dict[Head, torch.Tensor]:
    chunk = cache.chunks[i]
    masks: dict[Head, torch.Tensor] = {}
    for head, group in kept:
        m = position_mask(chunk, group)
        masks[head] = masks[head] | m if head in masks else m
    return masks


def _interventions(cache: RunCache, i: int, kept: Sequence[tuple[Head, str]] | None,
                   knocked: Sequence[tuple[Head, str]] = ()) -> list[Intervention]:
    """The contrast run with every head patched from the normal run except at the positions `kept`
    (None: nothing patched, the full model), and the `knocked` (head, group) pairs patched at their
    group's positions in any case."""
    out = []
    keep = None if kept is None else _keep_masks(cache, i, kept)
    knock = _keep_masks(cache, i, knocked)
    for layer in range(cache.n_layers):
        source = cache.normal[i][z_hook(layer)]
        everywhere = []
        for head in range(cache.n_heads):
            h = (layer, head)
            if keep is None:
                patch = knock.get(h)
            elif h not in keep:
                everywhere.append(head)
                continue
            else:
                patch = ~keep[h]
                if h in knock:
                    patch = patch | knock[h]
            if patch is not None:
                out.append(Intervention.patch(z_hook(layer), source, heads=[head], positions=patch.to(source.device)))
        if everywhere:
            out.append(Intervention.patch(z_hook(layer), source, heads=everywhere))
    return out


def _variant_key(kept: Sequence | None, knocked: Sequence) -> tuple:
    """What a (kept, knocked) variant patches, independent of order and of lists vs tuples: two
    variants with one key are the same run (the masks of _interventions are unions of sets)."""
    def canonical(pairs):
        return frozenset((tuple(map(int, head)), group) for head, group in pairs)
    return None if kept is None else canonical(kept), canonical(knocked)


def circuit_lds(model, cache: RunCache, variants: Sequence[tuple[Sequence | None, Sequence]],
                rows_per_pass: int | None = None) -> list[float]:
    """Mean LD of the contrast run under each (kept, knocked) variant (see _interventions), variants
    stacked along the batch: the paper's `eval_circuit_batched` score, divided by the prompt count.
    A variant already run on this cache is not run again (`cache.variant_lds`): the completeness
    search and minimality revisit the same C \\ K many times (rollouts drawing the same heads, the
    rollouts' K scored again, C \\ K for every v not in K)."""
    rows_per_pass = rows_per_pass or default_rows_per_pass(model)
    keys = [_variant_key(kept, knocked) for kept, knocked in variants]
    first: dict[tuple, tuple] = {}  # each variant not run yet, once
    for key, variant in zip(keys, variants):
        if key not in cache.variant_lds:
            first.setdefault(key, variant)
    todo, todo_variants = list(first), list(first.values())
    totals = torch.zeros(len(todo))
    for i, chunk in enumerate(cache.chunks):
        per_pass = max(1, rows_per_pass // chunk.size)
        for start in range(0, len(todo), per_pass):
            block = todo_variants[start:start + per_pass]
            ivs = [_interventions(cache, i, kept, knocked) for kept, knocked in block]
            totals[start:start + len(block)] += run_with_interventions(model, cache, i, ivs).sum(1)
    for key, total in zip(todo, totals / cache.data.size):
        cache.variant_lds[key] = float(total)
    return [cache.variant_lds[k] for k in keys]


def to_f(cache: RunCache, ld: float) -> float:
    """F of a mean LD: (LD - LD_normal) / (LD_contrast - LD_normal)."""
    return (ld - cache.mean_ld_normal) / (cache.mean_ld_contrast - cache.mean_ld_normal)


def faithfulness_many(model, cache: RunCache, variants: Sequence[tuple[Sequence | None, Sequence]],
                      rows_per_pass: int | None = None) -> list[float]:
    """F of each (kept, knocked) variant (see _interventions)."""
    return [to_f(cache, ld) for ld in circuit_lds(model, cache, variants, rows_per_pass)]


def faithfulness(model, cache: RunCache, circuit: Circuit) -> float:
    """F(C)."""
    return faithfulness_many(model, cache, [(circuit_heads(circuit), ())])[0]


def circuit_members(circuit: Circuit) -> list[Head]:
    """The circuit's heads in group order (GROUPS), as the paper lists `all_heads` (a head in two
    groups twice: the paper's candidates are a set of them)."""
    return [(int(a), int(b)) for g in GROUPS for a, b in circuit.get(g, [])]


def without(circuit: Circuit, k: Sequence[Head]) -> list[tuple[Head, str]]:
    """C \\ K: the circuit's (head, group) pairs whose head is not in K."""
    gone = {tuple(h) for h in k}
    return [(h, g) for h, g in circuit_heads(circuit) if h not in gone]


def completeness_lds(model, cache: RunCache, circuit: Circuit, k_sets: Sequence[Sequence[Head]]) -> list[tuple[float, float]]:
    """Per K, the paper's (score_A, score_B) of `get_completeness_score`: the mean LD of C \\ K and of
    M \\ K, K's heads patched from the normal run at every position in both."""
    variants = []
    for k in k_sets:
        variants += [(without(circuit, k), ()), (None, [(tuple(h), "everywhere") for h in k])]
    lds = circuit_lds(model, cache, variants)
    return [(lds[2 * j], lds[2 * j + 1]) for j in range(len(k_sets))]


def greedy_completeness_search(model, cache: RunCache, circuit: Circuit, rng: random.Random, steps: int = 5,
                               candidates: int = 5) -> tuple[list[Head], float, list[dict]]:
    """The paper's `one_greedy_search`: per step, draw `candidates` circuit heads not in K (as the
    paper draws them: `rng.sample(list(set(all_heads) - set(K)), n)`, so the same seed draws the same
    heads) and score K + [v] for each; the best K over the whole search and its gap
    |LD(C \\ K) - LD(M \\ K)| are kept, and the search stops at the first step where no candidate
    beats that best. Returns (K, gap, trace of every candidate scored)."""
    all_heads = circuit_members(circuit)
    best_k: list[Head] = []
    best_gap = 0.0
    k: list[Head] = []
    trace = []
    for step in range(steps):
        pool = list(set(all_heads).difference(k))
        if not pool:
            break
        # the paper samples exactly `candidates` (and fails on a smaller pool); we take the pool
        drawn = rng.sample(pool, min(candidates, len(pool)))
        improved = False
        for v, (ld_c, ld_m) in zip(drawn, completeness_lds(model, cache, circuit, [k + [v] for v in drawn])):
            gap = abs(ld_c - ld_m)
            trace.append({"step": step, "k": [list(h) for h in k + [v]], "ld_circuit_minus_k": ld_c,
                          "ld_model_minus_k": ld_m, "gap": gap})
            if gap > best_gap:  # strictly better, in draw order: the paper's rule
                best_gap, best_k, improved = gap, k + [v], True
        if not improved:
            break
        k = best_k
    return best_k, best_gap, trace


def completeness_search(model, cache: RunCache, circuit: Circuit, rollouts: int = 10, steps: int = 5,
                        candidates: int = 5, seed: int = 202505, n_random: int = 20,
                        random_size: int = 5) -> dict:
    """The paper's completeness analysis: `rollouts` greedy searches from one `random.Random(seed)`
    (the paper: `random.seed(202505)`, 10 rollouts), each rollout's K scored again (as the paper
    writes its JSON), and the figure's other points: K empty, K = each group, and `n_random` random
    `random_size`-head K drawn from the circuit. Every point has the LDs and F of C \\ K and M \\ K."""
    rng = random.Random(seed)
    found = [greedy_completeness_search(model, cache, circuit, rng, steps, candidates)
             for _ in progress(range(rollouts), "completeness rollouts")]
    members = sorted(set(circuit_members(circuit)))
    points: list[tuple[str, list[Head]]] = [("empty", [])]
    points += [(f"group:{g}", [tuple(h) for h in circuit[g]]) for g in GROUPS if circuit.get(g)]
    size = min(random_size, len(members))
    points += [("random", rng.sample(members, size)) for _ in range(n_random if size else 0)]
    points += [("greedy", k) for k, _, _ in found]
    scored = []
    for (kind, k), (ld_c, ld_m) in zip(points, completeness_lds(model, cache, circuit, [k for _, k in points])):
        scored.append({"kind": kind, "k": [list(h) for h in k], "ld_circuit_minus_k": ld_c, "ld_model_minus_k": ld_m,
                       "f_circuit_minus_k": to_f(cache, ld_c), "f_model_minus_k": to_f(cache, ld_m),
                       "difference": abs(ld_c - ld_m), "f_difference": abs(to_f(cache, ld_c) - to_f(cache, ld_m))})
    greedy = [p for p in scored if p["kind"] == "greedy"]
    out = [{"rollout": r, **p, "search_gap": gap, "trace": trace}
           for r, (p, (_, gap, trace)) in enumerate(zip(greedy, found))]
    distinct = {tuple(map(tuple, r["k"])) for r in out}
    return {"rollouts": out, "points": scored, "n_distinct_k": len(distinct),
            "pool_smaller_than_candidates": len(members) <= candidates}


def minimality(model, cache: RunCache, circuit: Circuit, k_sets: Sequence[Sequence[Head]]) -> list[dict]:
    """IOI's minimality: for each circuit head v, |F(C \\ (K u {v})) - F(C \\ K)| for its best K among
    the empty set and `k_sets` (the sets the completeness search visited), K never holding v."""
    out = []
    for v in sorted(set(circuit_members(circuit))):
        ks = [[]] + [[h for h in map(tuple, k) if h != v] for k in k_sets]
        variants = []
        for k in ks:
            variants += [(without(circuit, k + [v]), ()), (without(circuit, k), ())]
        f = faithfulness_many(model, cache, variants)
        changes = [abs(f[2 * j] - f[2 * j + 1]) for j in range(len(ks))]
        j = max(range(len(ks)), key=lambda x: changes[x])
        groups = [g for g in GROUPS if [v[0], v[1]] in [list(h) for h in circuit.get(g, [])]]
        out.append({"layer": v[0], "head": v[1], "group": "+".join(groups), "k": [list(h) for h in ks[j]],
                    "f_without_v": f[2 * j], "f_with_v": f[2 * j + 1], "change": changes[j]})
    return out


def paper_completeness_json(rollouts: list[dict]) -> dict:
    """The paper's completeness_greedy_search_*.json: {rollout: [K, LD(C \\ K), LD(M \\ K), |difference|]}
    (its `[K, score_A, score_B, abs(score_A - score_B)]`, logit differences)."""
    return {str(r["rollout"]): [r["k"], r["ld_circuit_minus_k"], r["ld_model_minus_k"], r["difference"]]
            for r in rollouts}


def overlap(a: Circuit, b: Circuit) -> dict[str, float | None]:
    """Share of circuit a's heads that are also in circuit b, per group and over all groups
    (None where a has no head)."""
    out: dict[str, float | None] = {}
    for g in GROUPS:
        ha = {tuple(h) for h in a.get(g, [])}
        hb = {tuple(h) for h in b.get(g, [])}
        out[g] = len(ha & hb) / len(ha) if ha else None
    all_a = {tuple(h) for g in GROUPS for h in a.get(g, [])}
    all_b = {tuple(h) for g in GROUPS for h in b.get(g, [])}
    out["all"] = len(all_a & all_b) / len(all_a) if all_a else None
    return out
