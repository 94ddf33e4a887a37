"""The paper's released path-patching scores (`circuit_discovery/` beside its code: four 7-9B models'
scores to the output and to each chosen head's value input, with the head groups it chose by hand),
and how `fi.methods.circuit.Selection` recovers those groups from them.

`python -m fi.methods.paper_scores [REFERENCE_DIR]` prints the recall / precision table of docs/circuit.md.
Nothing of the paper's is copied: the files are read where they lie.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fi.plan.params import Selection

MODELS = ("gemma_2_9b", "llama_2_7b", "llama_3_8b", "mistral_7b")


def read_scores(reference_dir: str | Path, model: str) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """The model's scores to the output [L, H] and, per receiver head, to its value input [L, H]."""
    df = pd.read_csv(Path(reference_dir) / "circuit_discovery" / f"{model}_path_patching.csv")
    shape = (int(df["layer"].max()) + 1, int(df["head"].max()) + 1)

    def grid(rows: pd.DataFrame) -> np.ndarray:
        out = np.zeros(shape)
        out[rows["layer"].to_numpy(), rows["head"].to_numpy()] = rows["score"].to_numpy()
        return out
    output = grid(df[df["receiver_group"] == "output"])
    receivers = {}
    for name, rows in df[df["receiver_group"] != "output"].groupby("receiver"):
        layer, head = name.split(".")[0][1:].split("H")  # "L39H7.v"
        receivers[(int(layer), int(head))] = grid(rows)
    return output, receivers


def paper_groups(reference_dir: str | Path) -> dict[str, dict[str, set[tuple[int, int]]]]:
    raw = json.loads((Path(reference_dir) / "circuit_discovery" / "paper_head_groups.json").read_text())
    return {m: {g: {tuple(h) for h in hs} for g, hs in groups.items()} for m, groups in raw.items()}


def _score(chosen: set, truth: set) -> dict:
    hit = len(chosen & truth)
    return {"truth": len(truth), "selected": len(chosen), "recovered": hit,
            "recall": hit / len(truth) if truth else float("nan"),
            "precision": hit / len(chosen) if chosen else float("nan")}


def selection_table(reference_dir: str | Path, selection: Selection | None = None) -> pd.DataFrame:
    """Per model and rule, how the selection recovers the paper's groups from its own scores:
      output level  heads selected on the scores to the output, against the paper's consolidation
                    and FI heads, at the strong tier alone (|score| >= strong_threshold) and with
                    the weak one (>= output_threshold);
      previous_token  (Gemma-2-9B, the one model whose previous-token heads the paper names) the
                    senders selected on its FI heads' value inputs, less the FI heads themselves."""
    selection = selection or Selection()
    groups = paper_groups(reference_dir)
    rows = []
    for model in MODELS:
        output, receivers = read_scores(reference_dir, model)
        truth = groups[model]["consolidation"] | groups[model]["function_induction"]
        strong = replace(selection, output_threshold=selection.strong_threshold)
        for tier, rule in (("strong", strong), ("strong+weak", selection)):
            chosen = {h for h, _ in rule.direct(output)}
            rows.append({"model": model, "level": "output", "rule": f"{tier} (|s| >= {rule.output_threshold})",
                         **_score(chosen, truth)})
        if "previous_token" in groups[model]:
            fi_heads = groups[model]["function_induction"]
            chosen = {h for r in fi_heads if r in receivers for h, _ in selection.senders(receivers[r], r[0])}
            rows.append({"model": model, "level": "previous_token (FI heads' v)",
                         "rule": f"top {selection.receiver_top_k}, |s| >= {selection.receiver_threshold}",
                         **_score(chosen - fi_heads, groups[model]["previous_token"])})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[2]
    where = sys.argv[1] if len(sys.argv) > 1 else here.parent / "shared" / "reference" / "function-induction"
    table = selection_table(where)
    print("| " + " | ".join(table.columns) + " |\n|" + " --- |" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
