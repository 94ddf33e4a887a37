"""The paper's circuit (sections 2-4): three head groups found by iterated path patching, and the
circuit's evaluation (faithfulness, completeness, minimality), through the intervention engine.

Discovery (`discover_circuit`), the paper's `2_circuit_discovery` procedure:
  level 0   path patching to the output ranks every head by its direct effect; heads with
            |score| >= threshold are the first receivers;
  level n   path patching to each receiver's value input (and q / k when configured) finds the heads
            that feed it (|score| >= threshold); they are the next level's receivers, to `depth`.
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
F(empty) = 0. Knocking out K (M \\ K, C \\ K) removes K's heads at their circuit positions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fi.interventions import Intervention, pattern_hook, z_hook
from fi.io import progress
from fi.patching import Receiver, RunCache, path_patching, path_patching_to_heads, run_with_interventions
from fi.readout import run_to_final_resid

GROUPS = ("previous_token", "function_induction", "consolidation")
# where each group acts (fi.patching position groups, plus the read position)
GROUP_POSITIONS = {"previous_token": "demo_answers", "function_induction": "separators+read",
                   "consolidation": "separators+read", "everywhere": "all"}
Head = tuple[int, int]


# ---- attention statistics ---------------------------------------------------------------------------

def attention_patterns(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every layer's attention pattern [B, H, T, T] (float32, on the CPU) of one run on `tokens`,
    which stops before the unembedding."""
    store = {}

    def keep(layer):
        def hook(p, hook):
            store[layer] = p.float().cpu()
            return p
        return hook
    with torch.inference_mode():
        run_to_final_resid(model, tokens.to(model.device), [(pattern_hook(layer), keep(layer))
                                                            for layer in range(model.n_layers)])
    return store


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


def iterated_path_patching(model, cache: RunCache, threshold: float = 0.05, depth: int = 3,
                           inputs: Sequence[str] = ("v",), max_receivers: int = 8,
                           rows_per_pass: int = 256) -> tuple[list[Edge], torch.Tensor]:
    """Edges of the path graph, level by level from the output down, and the direct-effect scores
    [L, H]. Each level's receivers are the senders found at the level above, strongest first, at
    most `max_receivers` (a real model's graph is wide; the strongest paths carry the circuit)."""
    direct = path_patching(model, cache, "output", rows_per_pass)
    edges = [Edge((layer, head), "output", float(direct[layer, head]))
             for layer in range(cache.n_layers) for head in range(cache.n_heads)
             if abs(float(direct[layer, head])) >= threshold]
    frontier = _strongest([(e.sender, e.score) for e in edges], max_receivers)
    done: set[Head] = set()
    n_kv = int(getattr(model.bridge.cfg, "n_key_value_heads", None) or cache.n_heads)
    group = cache.n_heads // n_kv
    computed: dict[tuple, torch.Tensor] = {}
    for _ in range(1, depth):
        found: list[tuple[Head, float]] = []
        done.update(frontier)
        # nothing below layer 0 feeds a layer-0 head; with grouped-query attention a head's key
        # input is its key-value group's, shared by the group's heads (fi.patching.
        # path_patching_to_heads): computed once, for the first; q and v inputs are each head's own
        receivers = [Receiver(head[0], head[1], which) for head in frontier if head[0] > 0 for which in inputs]

        def key(r: Receiver) -> tuple:
            return (r.layer, r.which, r.head // group if r.which == "k" else r.head)
        todo = list({key(r): r for r in reversed(receivers) if key(r) not in computed}.values())
        if todo:  # the level's receivers in one set: one run 1 per sender for all of them
            for r, scores in path_patching_to_heads(model, cache, todo, rows_per_pass).items():
                computed[key(r)] = scores
        for receiver in receivers:
            scores = computed[key(receiver)]
            for layer in range(receiver.layer):
                for h in range(cache.n_heads):
                    s = float(scores[layer, h])
                    if abs(s) >= threshold:
                        edges.append(Edge((layer, h), str(receiver), s))
                        found.append(((layer, h), s))
        frontier = [h for h in _strongest(found, max_receivers) if h not in done]
        if not frontier:
            break
    return edges, direct


def _strongest(scored: list[tuple[Head, float]], limit: int) -> list[Head]:
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


def faithfulness_many(model, cache: RunCache, variants: Sequence[tuple[Sequence | None, Sequence]],
                      rows_per_pass: int = 256) -> list[float]:
    """F of each (kept, knocked) variant (see _interventions), variants stacked along the batch."""
    totals = torch.zeros(len(variants))
    for i, chunk in enumerate(cache.chunks):
        per_pass = max(1, rows_per_pass // chunk.size)
        for start in range(0, len(variants), per_pass):
            block = variants[start:start + per_pass]
            ivs = [_interventions(cache, i, kept, knocked) for kept, knocked in block]
            totals[start:start + len(block)] += run_with_interventions(model, cache, i, ivs).sum(1)
    ld = totals / cache.data.size
    return [float(x) for x in (ld - cache.mean_ld_normal) / (cache.mean_ld_contrast - cache.mean_ld_normal)]


def faithfulness(model, cache: RunCache, circuit: Circuit) -> float:
    """F(C)."""
    return faithfulness_many(model, cache, [(circuit_heads(circuit), ())])[0]


def completeness_search(model, cache: RunCache, circuit: Circuit, rollouts: int = 10, steps: int = 5,
                        candidates: int = 5, seed: int = 0) -> list[dict]:
    """The paper's greedy search for a set K that maximises |F(C \\ K) - F(M \\ K)|: per rollout,
    `steps` times, draw `candidates` circuit heads not yet in K and add the one that maximises the
    gap. Returns per rollout the final K, F(M \\ K), F(C \\ K), their difference, and the trace."""
    rng = random.Random(seed)
    members = circuit_heads(circuit)
    out = []
    for r in progress(range(rollouts), "completeness rollouts"):
        knocked: list[tuple[Head, str]] = []
        trace = []
        for _ in range(min(steps, len(members))):
            pool = [m for m in members if m not in knocked]
            cands = rng.sample(pool, min(candidates, len(pool)))
            variants = []
            for c in cands:
                k = knocked + [c]
                variants += [(None, k), ([m for m in members if m not in k], ())]
            f = faithfulness_many(model, cache, variants)
            gaps = [abs(f[2 * j] - f[2 * j + 1]) for j in range(len(cands))]
            j = max(range(len(cands)), key=lambda x: gaps[x])
            knocked = knocked + [cands[j]]
            trace.append({"added": list(cands[j][0]), "group": cands[j][1], "f_model_minus_k": f[2 * j],
                          "f_circuit_minus_k": f[2 * j + 1], "gap": gaps[j]})
        if not trace:  # an empty circuit: K is empty
            trace_end = {"f_model_minus_k": 1.0, "f_circuit_minus_k": faithfulness(model, cache, circuit)}
        last = trace[-1] if trace else trace_end
        out.append({"rollout": r, "k": [list(h) for h, _ in knocked], "k_groups": [g for _, g in knocked],
                    "f_model_minus_k": last["f_model_minus_k"],
                    "f_circuit_minus_k": last["f_circuit_minus_k"],
                    "difference": last["f_model_minus_k"] - last["f_circuit_minus_k"], "trace": trace})
    return out


def minimality(model, cache: RunCache, circuit: Circuit, k_sets: Sequence[Sequence[tuple[Head, str]]]) -> list[dict]:
    """IOI's minimality: for each circuit head v, |F(C \\ (K u {v})) - F(C \\ K)| for its best K among
    the empty set and `k_sets` (the sets the completeness search visited), K never holding v."""
    members = circuit_heads(circuit)
    out = []
    for v in members:
        ks = [[]] + [[m for m in k if m != v] for k in k_sets]
        variants = []
        for k in ks:
            variants += [([m for m in members if m not in k and m != v], ()), ([m for m in members if m not in k], ())]
        f = faithfulness_many(model, cache, variants)
        changes = [abs(f[2 * j] - f[2 * j + 1]) for j in range(len(ks))]
        j = max(range(len(ks)), key=lambda x: changes[x])
        out.append({"layer": v[0][0], "head": v[0][1], "group": v[1], "k": [list(h) for h, _ in ks[j]],
                    "f_without_v": f[2 * j], "f_with_v": f[2 * j + 1], "change": changes[j]})
    return out


def paper_completeness_json(rollouts: list[dict]) -> dict:
    """The shape of the paper's completeness_greedy_search_*.json: {rollout: [K, a, b, a - b]} with
    a = F(M \\ K) and b = F(C \\ K) (our reading of its columns; its values are on its own scale)."""
    return {str(r["rollout"]): [r["k"], r["f_model_minus_k"], r["f_circuit_minus_k"], r["difference"]] for r in rollouts}


def knocked_sets(rollouts: list[dict]) -> list[list[tuple[Head, str]]]:
    """The (head, group) sets K of completeness_search's rollouts, for `minimality`."""
    return [[((int(a), int(b)), g) for (a, b), g in zip(r["k"], r["k_groups"])] for r in rollouts]


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
