"""Function vectors of the FI heads (the paper's section 3): what a head writes at the query `=` of
an off-by-k prompt, added to prompts that show no function at all, moves the answer by k.

Definitions (the table's columns are named after them):
  * **heads**: the `function_induction` group of the model's circuit (`fi.methods.circuit`, found on the
    discovery cell); where the circuit stage is off or that group is empty, the discovery heads
    (`results/heads/<model>.json`). `head_source` says which ("circuit" or "discovery").
  * **function vector** of head h for offset k: the mean of h's output `hook_z` (its per-head
    attention output before W_O, [d_head]) at the final position of the contrast prompts of offset k
    (addition, `setting`/`nmax` from the config, `shots` demos; `fi.engine.pairs.build_patching_data`,
    read at `data.last`, which for addition is the query's `=`: the two answers differ at their first
    token). Means are over the prompts kept by `build_patching_data` (`n_prompts`).
  * **vector sets** (`group`, `prompts`): the FI heads' vectors from the contrast prompts (the
    function vectors proper); the same heads' mean output at the same position of the NORMAL prompts
    of the same examples (plain a+b demos: a control that should not carry +k); and, as in the paper's
    appendix, the circuit's `previous_token` and `consolidation` groups' vectors from the contrast
    prompts. `heads` = "all" is a whole group's set.
  * **naive prompts** (the paper's): `f"{j}={j}\n{i}="` with j = (i-1) % 10 for i = 0..9 (i = 0 gives
    "9=9\n0="): one demo of the identity, then the input i. The ten digit tokens "0".."9" are read
    after each prompt (their ids from the tokenizer: `fi.engine.answers.answer_token_ids`, first token).
  * **patched run**: the naive prompt with `scale * vector_h` added to head h's `hook_z` at the
    prompt's last position, for every h of the head set (one head, or all heads of the set together:
    `heads` = "L<layer>H<head>", e.g. "L0H2", or "all"), through `fi.engine.interventions.Intervention.add`.
  * **shift**[k, heads, scale, input i, output d] = digit d's logit in the patched run minus in the
    unpatched run (logits of the final norm and unembedding, soft-capping included, `fi.engine.readout`).
  * **+j effect** of one (k, heads, scale): for every input i with 0 <= i + j <= 9,
        e_i = shift[i, i + j] - mean_{d != i + j} shift[i, d]
    (how much the vector raises digit i + j above the other digits; a uniform shift of all ten
    logits, which changes no probability, counts 0), averaged over those inputs. The **+k effect** is
    the +j effect at j = k: does the +k vector move the answer by k. `effects` gives it for every j
    in -max|k|-1..max|k|+1, so one sees whether the +1 vector moves answers by +1 rather than +2 or 0.
  * **share** of head h: its own +k effect divided by the +k effect of all heads of its set together,
    at the same k and scale ("each FI head emits a fraction of the function"). Effects need not add
    up (the model is not linear in the vector), so `share_sum` (the heads' shares added) is reported too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from fi.engine.answers import answer_token_ids
from fi.engine.interventions import Intervention, by_layer, hooks_for, z_hook
from fi.engine.readout import capture, compared_logits, readout_holds, run_to_final_resid

Head = tuple[int, int]
ALL = "all"
DIGITS = tuple(str(d) for d in range(10))
# the vector sets: head groups (fi.methods.circuit.GROUPS) and the prompts their vectors are read on
FI = "function_induction"
CONTRAST, NORMAL = "contrast", "normal"
# the per-model table (results/function_vectors/<model>.parquet), one row per shift
SHIFT_COLUMNS = ["model", "group", "prompts", "head_source", "offset", "heads", "layer", "head", "scale", "input",
                 "output", "target", "shift", "clean_logit", "patched_logit", "vector_norm", "n_prompts", "setting",
                 "nmax", "shots"]
# a vector set's identity: which heads' vectors, read on which prompts, chosen how
SET_KEYS = ["group", "prompts", "head_source"]
EFFECT_COLUMNS = ["model", *SET_KEYS, "offset", "heads", "layer", "head", "scale", "measured_offset", "effect",
                  "n_inputs"]


def head_label(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def naive_prompts() -> list[str]:
    """The paper's: one identity demo of the previous digit (wrapping: 9 before 0), then input i."""
    return [f"{(i - 1) % 10}={(i - 1) % 10}\n{i}=" for i in range(10)]


@dataclass
class NaivePrompts:
    """The ten naive prompts, right-padded: tokens [10, T], the last position of each [10] and the ten
    digit tokens read after each [10, 10] (derived per prompt from the tokenizer)."""

    tokens: torch.Tensor
    last: torch.Tensor
    digits: torch.Tensor

    @classmethod
    def build(cls, model) -> NaivePrompts:
        ids, digits = [], []
        for prompt in naive_prompts():
            p = model.encode(prompt)
            ids.append(p)
            digits.append([answer_token_ids(model, prompt, d, p)[0] for d in DIGITS])
        tokens, _ = model.right_pad(ids)
        return cls(tokens, torch.tensor([len(p) - 1 for p in ids]), torch.tensor(digits))

    @property
    def last_mask(self) -> torch.Tensor:
        """[10, T] bool: each prompt's last position."""
        mask = torch.zeros(self.tokens.shape, dtype=torch.bool)
        mask[torch.arange(self.tokens.shape[0]), self.last] = True
        return mask


# ---- the vectors --------------------------------------------------------------------------------

def mean_head_outputs(model, tokens: torch.Tensor, last: torch.Tensor, heads: Sequence[Head],
                      batch_size: int = 16) -> torch.Tensor:
    """[len(heads), d_head]: each head's `hook_z` at position `last[b]` of row b, averaged over rows.
    (A capture only: it reads activations and changes none.)"""
    heads = [tuple(map(int, h)) for h in heads]
    if not heads:
        return torch.zeros(0, 0)
    layers = by_layer(heads)
    sums: dict[Head, torch.Tensor] = {}
    for start in range(0, tokens.shape[0], batch_size):
        chunk, pos = tokens[start:start + batch_size], last[start:start + batch_size]
        rows = torch.arange(chunk.shape[0])
        store: dict = {}
        with torch.inference_mode():
            run_to_final_resid(model, chunk.to(model.device),
                               capture(store, [z_hook(layer) for layer in layers],
                                       lambda name, z: z[rows, pos.to(z.device)].float()))  # [b, n_heads, d_head]
        for layer, hs in layers.items():
            for h in hs:
                sums[(layer, h)] = sums.get((layer, h), 0) + store[z_hook(layer)][:, h].sum(0).cpu()
    return torch.stack([sums[h] / tokens.shape[0] for h in heads])


def function_vectors(model, data, heads: Sequence[Head], batch_size: int = 16,
                     prompts: str = CONTRAST) -> torch.Tensor:
    """Each head's function vector from patching data (`fi.engine.pairs.PatchingData`) of one offset:
    the mean `hook_z` at `data.last` of the contrast prompts (`prompts` = "normal": of the normal
    prompts, the same examples without the offset, read at the same position); [len(heads), d_head]."""
    tokens = {CONTRAST: data.contrast, NORMAL: data.normal}[prompts]
    return mean_head_outputs(model, tokens, data.last, heads, batch_size)


def vector_interventions(heads: Sequence[Head], vectors: torch.Tensor, positions: torch.Tensor,
                         scale: float, rows: slice | None = None) -> list[Intervention]:
    """`scale * vectors[j]` added to head heads[j]'s `hook_z` at `positions` ([rows, T] bool)."""
    return [Intervention.add(z_hook(layer), vectors[j], heads=[head], positions=positions, rows=rows, scale=scale)
            for j, (layer, head) in enumerate(heads)]


# ---- reading the digits -------------------------------------------------------------------------

def digit_logits(model, prompts: NaivePrompts, variants: Sequence[Sequence[tuple[Sequence[Head], torch.Tensor, float]]],
                 residual_readout: bool | None = None, rows_per_pass: int = 320) -> torch.Tensor:
    """The ten digit logits after each naive prompt, once per variant: [V, 10 prompts, 10 digits].

    A variant is a list of (heads, vectors [len(heads), d_head], scale): those heads get
    `scale * vector` added at each prompt's last position (an empty list: the unpatched run). Variants
    are stacked along the batch (10 rows each, `rows_per_pass` rows a pass), each with its own rows'
    interventions. Logits come from the final residual stream through `fi.engine.readout.unembed_tokens`
    when `residual_readout` (the model's route, `readout_holds`, when None), else from the
    model's full logits."""
    n = prompts.tokens.shape[0]
    if residual_readout is None:
        residual_readout = readout_holds(model, prompts.tokens.to(model.device), prompts.last, prompts.digits)
    per_pass = max(1, rows_per_pass // n)
    out = []
    mask = prompts.last_mask
    for start in range(0, len(variants), per_pass):
        block = variants[start:start + per_pass]
        ivs = []
        for v, parts in enumerate(block):
            rows = slice(v * n, (v + 1) * n)
            for heads, vectors, scale in parts:
                ivs += vector_interventions(heads, vectors, mask, scale, rows)
        tokens = prompts.tokens.repeat(len(block), 1).to(model.device)
        with torch.inference_mode():
            logits = compared_logits(model, tokens, torch.arange(tokens.shape[0]), prompts.last.repeat(len(block)),
                                     prompts.digits.repeat(len(block), 1), hooks_for(ivs), residual_readout)
        out.append(logits.float().cpu().reshape(len(block), n, 10))
    return torch.cat(out)


# ---- the experiment -----------------------------------------------------------------------------

# the circuit's other groups (fi.methods.circuit.GROUPS), whose vectors the paper's appendix compares; named
# here rather than imported so that editing fi.methods.circuit does not rerun this stage
OTHER_GROUPS = ("previous_token", "consolidation")


@dataclass(frozen=True)
class VectorSet:
    """One labelled set of the table: these heads' vectors, read on these prompts."""

    group: str  # a circuit group's name (FI, or one of OTHER_GROUPS)
    prompts: str  # CONTRAST or NORMAL
    head_source: str  # "circuit", or "discovery" (the FI group fell back to the discovery heads)
    heads: tuple[Head, ...]


def vector_sets(discovery_heads: Sequence[Head], circuit_groups: dict | None) -> list[VectorSet]:
    """The sets of the table: the FI heads' vectors on the contrast prompts (the function vectors)
    and on the normal prompts (the control), then each non-empty group of OTHER_GROUPS on the contrast
    prompts. The FI heads are the circuit's `function_induction` group (`circuit_groups`: a circuit
    file's "groups"; None when the circuit stage is off), or the discovery heads where that is empty."""
    groups = {g: tuple(tuple(map(int, h)) for h in hs) for g, hs in (circuit_groups or {}).items()}
    fi_heads, source = groups.get(FI, ()), "circuit"
    if not fi_heads:
        fi_heads, source = tuple(tuple(map(int, h)) for h in discovery_heads), "discovery"
    sets = [VectorSet(FI, CONTRAST, source, fi_heads), VectorSet(FI, NORMAL, source, fi_heads)]
    return sets + [VectorSet(g, CONTRAST, "circuit", groups[g]) for g in OTHER_GROUPS if groups.get(g)]


def set_vectors(model, data, sets: Sequence[VectorSet], batch_size: int = 16) -> list[torch.Tensor]:
    """Each set's vectors from one offset's patching data, [len(set.heads), d_head] each; one capture
    per kind of prompts (for every head of the sets read on them)."""
    out: list[torch.Tensor] = [torch.zeros(0, 0)] * len(sets)
    for prompts in dict.fromkeys(s.prompts for s in sets):
        union = sorted({h for s in sets if s.prompts == prompts for h in s.heads})
        vectors = function_vectors(model, data, union, batch_size, prompts)
        for i, s in enumerate(sets):
            if s.prompts == prompts and s.heads:
                out[i] = vectors[[union.index(h) for h in s.heads]]
    return out


def head_sets(heads: Sequence[Head]) -> list[tuple[str, list[Head]]]:
    """Each head alone ("L0H2"), then all of them together ("all")."""
    heads = [tuple(map(int, h)) for h in heads]
    return [(head_label(h), [h]) for h in heads] + [(ALL, heads)]


def function_vector_shifts(model, vectors: dict[int, torch.Tensor], heads: Sequence[Head],
                           scales: Sequence[float], rows_per_pass: int = 320) -> pd.DataFrame:
    """The shift table (columns offset, heads, layer, head, scale, input, output, target, shift,
    clean_logit, patched_logit, vector_norm) for `vectors` {k: [len(heads), d_head]} (rows in the
    order of `heads`), every head set of `head_sets` and every scale."""
    heads = [tuple(map(int, h)) for h in heads]
    prompts = NaivePrompts.build(model)
    conditions, variants = [], [[]]  # variant 0: the unpatched run
    for k, vecs in vectors.items():
        for label, hs in head_sets(heads):
            idx = [heads.index(h) for h in hs]
            sub = vecs[idx] if idx else vecs[:0]
            for scale in scales:
                conditions.append((k, label, hs, float(scale), float(sub.norm()) if idx else 0.0))
                variants.append([(hs, sub, float(scale))] if hs else [])
    logits = digit_logits(model, prompts, variants, rows_per_pass=rows_per_pass)
    clean = logits[0]
    rows = []
    for (k, label, hs, scale, norm), patched in zip(conditions, logits[1:]):
        layer, head = (hs[0] if label != ALL else (-1, -1))
        shift = patched - clean
        for i in range(10):
            for d in range(10):
                rows.append((int(k), label, layer, head, scale, i, d, d - i == k, float(shift[i, d]),
                             float(clean[i, d]), float(patched[i, d]), norm))
    return pd.DataFrame(rows, columns=["offset", "heads", "layer", "head", "scale", "input", "output", "target",
                                       "shift", "clean_logit", "patched_logit", "vector_norm"])


def shift_matrix(df: pd.DataFrame) -> torch.Tensor:
    """[10 inputs, 10 outputs] of one (offset, heads, scale)'s rows."""
    m = torch.full((10, 10), float("nan"))
    for r in df.itertuples():
        m[int(r.input), int(r.output)] = float(r.shift)
    return m


def plus_j_effect(shift: torch.Tensor, j: int) -> tuple[float, int]:
    """The +j effect of a [10, 10] shift matrix (see the module docstring) and the inputs it averages."""
    values = []
    for i in range(10):
        t = i + j
        if 0 <= t <= 9:
            others = torch.cat([shift[i, :t], shift[i, t + 1:]])
            values.append(float(shift[i, t] - others.mean()))
    return (sum(values) / len(values) if values else float("nan")), len(values)


def effects(shifts: pd.DataFrame) -> pd.DataFrame:
    """Per (model, vector set, offset, heads, scale) and measured offset j: the +j effect, with each
    head's share of its set's all-heads effect at j = k (`share`, NaN elsewhere and for "all") and, on
    the "all" rows at j = k, `share_sum` (the single heads' shares added)."""
    keys = [c for c in ("model", *SET_KEYS, "offset", "heads", "layer", "head", "scale") if c in shifts.columns]
    span = int(shifts["offset"].abs().max()) + 1
    rows = []
    for key, g in shifts.groupby(keys, sort=False):
        m = shift_matrix(g)
        for j in range(-span, span + 1):
            e, n = plus_j_effect(m, j)
            rows.append({**dict(zip(keys, key)), "measured_offset": j, "effect": e, "n_inputs": n})
    out = pd.DataFrame(rows)
    group = [c for c in ("model", *SET_KEYS, "offset", "scale") if c in out.columns]
    at_k = out["measured_offset"] == out["offset"]
    is_all = out["heads"] == ALL
    total = out[at_k & is_all][group + ["effect"]].rename(columns={"effect": "_total"})
    out = out.merge(total, on=group, how="left")
    single = (at_k & ~is_all).to_numpy()
    out["share"] = (out["effect"] / out["_total"]).where(single)
    sums = out[single].groupby(group, as_index=False)["share"].sum(min_count=1).rename(columns={"share": "_sum"})
    out = out.merge(sums, on=group, how="left")
    out["share_sum"] = out["_sum"].where((at_k & is_all).to_numpy())
    return out.drop(columns=["_total", "_sum"])
