"""Typed parameters of the analyses, built once from the validated config (fi.plan.config fills
every default) at a job's boundary, so that no stage unpacks a config slice by string keys. Torch-free:
the planning layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

Head = tuple[int, int]


def _from(cls, section: Mapping):
    """An instance of dataclass `cls` from a config section (keys the class does not have are the
    config's, e.g. `enabled`, and are left out)."""
    return cls(**{f.name: section[f.name] for f in fields(cls) if f.name in section})


@dataclass(frozen=True)
class Selection:
    """Which senders path patching puts in the graph (the paper's choices as rules; defaults recover
    every output-level head the paper chose for its four models from its released scores, and all
    eight of Gemma-2-9B's previous-token heads: docs/circuit.md, tests/test_circuit_selection.py).

    output_threshold    |score to the output| for a direct-effect head (the paper's 0.02 tier)
    strong_threshold    the tier boundary: heads at or above it are 'strong', the others 'weak'
    receiver_top_k      per receiver input, at most this many senders, strongest first
    receiver_threshold  ... each with |score| >= this
    max_receivers       at most this many heads of a level are the next level's receivers,
                        strongest first (None: all); a cost cap for large models"""

    output_threshold: float = 0.02
    strong_threshold: float = 0.05
    receiver_top_k: int = 4
    receiver_threshold: float = 0.003
    max_receivers: int | None = None

    @classmethod
    def from_config(cls, selection: Mapping) -> Selection:
        return _from(cls, selection)

    def tier(self, score: float) -> str:
        return "strong" if abs(score) >= self.strong_threshold else "weak"

    def direct(self, scores) -> list[tuple[Head, float]]:
        """(head, score) of the direct-effect heads, strongest first."""
        picked = [((layer, head), float(scores[layer, head])) for layer in range(scores.shape[0])
                  for head in range(scores.shape[1]) if abs(float(scores[layer, head])) >= self.output_threshold]
        return sorted(picked, key=lambda x: (-abs(x[1]), x[0]))

    def senders(self, scores, below_layer: int) -> list[tuple[Head, float]]:
        """(head, score) of one receiver input's selected senders (layers below the receiver's),
        strongest first."""
        picked = [((layer, head), float(scores[layer, head])) for layer in range(below_layer)
                  for head in range(scores.shape[1]) if abs(float(scores[layer, head])) >= self.receiver_threshold]
        return sorted(picked, key=lambda x: (-abs(x[1]), x[0]))[:self.receiver_top_k]


@dataclass(frozen=True)
class HeldOut:
    """The held-out evaluation of a circuit: the discovery cell's task and variant at `shots`, on
    `max_examples` prompts drawn with the dataset's recipe and `seed` (None: the dataset's seed + 1)."""

    shots: int = 16
    max_examples: int = 100
    seed: int | None = None


@dataclass(frozen=True)
class Completeness:
    """The paper's completeness search: `rollouts` greedy searches of `steps` steps, `candidates`
    heads drawn a step from one random.Random(seed); `n_random` random K of `random_size` heads."""

    rollouts: int = 10
    steps: int = 5
    candidates: int = 5
    seed: int = 202505
    n_random: int = 20
    random_size: int = 5


@dataclass(frozen=True)
class CircuitParams:
    """The circuit stage (config `circuit`): discovery on `max_examples` prompts of the cell in
    chunks of `batch_size`, iterated path patching `depth` levels deep into the receivers' `inputs`
    with `selection`'s rules, groups by `attention_threshold`; the evaluation's held-out prompts and
    completeness search."""

    max_examples: int = 40
    batch_size: int = 16
    depth: int = 3
    inputs: tuple[str, ...] = ("v",)
    attention_threshold: float = 0.2
    selection: Selection = Selection()
    heldout: HeldOut = HeldOut()
    completeness: Completeness = Completeness()

    @classmethod
    def from_config(cls, circuit: Mapping) -> CircuitParams:
        """From the config's `circuit` section (or a rule's params holding it)."""
        nested = {"selection": Selection, "heldout": HeldOut, "completeness": Completeness}
        values = {f.name: circuit[f.name] for f in fields(cls) if f.name in circuit}
        for key, kind in nested.items():
            if key in values:
                values[key] = _from(kind, values[key])
        if "inputs" in values:
            values["inputs"] = tuple(values["inputs"])
        return cls(**values)


@dataclass(frozen=True)
class ModelSpec:
    """What a job loads (a rule's `model` params, fi.plan.grid.ModelEntry.load_params): the model's
    name, its folder or hub id, and the dtype."""

    name: str
    path: str
    dtype: str = "float32"

    @classmethod
    def from_config(cls, model: Mapping) -> ModelSpec:
        return _from(cls, model)


@dataclass(frozen=True)
class AttributionParams:
    """The `attribute` stage (config `attribution`): the `methods` by name (fi.methods.attribution.
    METHODS), path patching to each of `receivers`, activation patching also by position group when
    `position_groups`, on `max_examples` prompts in chunks of `batch_size`."""

    methods: tuple[str, ...] = ("path", "activation", "attribution")
    receivers: tuple[str, ...] = ("output",)
    position_groups: bool = True
    max_examples: int = 100
    batch_size: int = 16

    @classmethod
    def from_config(cls, attribution: Mapping) -> AttributionParams:
        values = _from(cls, attribution)
        return replace(values, methods=tuple(values.methods), receivers=tuple(values.receivers))


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a task, one of its variants, a shot count."""

    task: str
    variant: str
    shots: int

    @classmethod
    def from_config(cls, cell: Mapping) -> Cell:
        return cls(str(cell["task"]), str(cell["variant"]), int(cell["shots"]))


@dataclass(frozen=True)
class DiscoveryParams:
    """How the FI heads are chosen (config `discovery`): from the `cell`'s `method` scores to the
    output, by `criterion` ("top_k": the `top_k` most negative; "threshold": every head scoring at
    or below -`threshold`; fi.methods.heads.select_heads)."""

    cell: Cell = Cell("addition", "setting1_nmax9_offset1", 4)
    method: str = "path"
    criterion: str = "top_k"
    top_k: int = 1
    threshold: float = 0.2

    @classmethod
    def from_config(cls, discovery: Mapping) -> DiscoveryParams:
        values = _from(cls, discovery)
        return replace(values, cell=Cell.from_config(discovery["cell"])) if "cell" in discovery else values


@dataclass(frozen=True)
class AblationParams:
    """The ablations (config `ablation`): each of `modes`, on the FI heads and on `n_random` random
    head sets of their size (drawn with `seed`; from the FI heads' layers when `layer_matched`)."""

    modes: tuple[str, ...] = ("patch",)
    n_random: int = 5
    layer_matched: bool = False
    seed: int = 0

    @classmethod
    def from_config(cls, ablation: Mapping) -> AblationParams:
        values = _from(cls, ablation)
        return replace(values, modes=tuple(values.modes))


@dataclass(frozen=True)
class FunctionVectorParams:
    """Function vectors (config `function_vectors`): from addition `setting` at `nmax` and `shots`, one
    vector set per offset of `offsets`, added at each of `scales` to the naive prompts; `max_examples`
    prompts an offset, in chunks of `batch_size`."""

    offsets: tuple[int, ...] = (-2, -1, 1, 2)
    setting: str = "setting1"
    nmax: int = 9
    shots: int = 4
    scales: tuple[float, ...] = (0, 0.5, 1, 2, 4)
    max_examples: int = 100
    batch_size: int = 16

    @classmethod
    def from_config(cls, function_vectors: Mapping) -> FunctionVectorParams:
        values = _from(cls, function_vectors)
        return replace(values, offsets=tuple(int(k) for k in values.offsets), scales=tuple(values.scales),
                       nmax=int(values.nmax), shots=int(values.shots))


@dataclass(frozen=True)
class HeadTypeParams:
    """Head-type scores (config `head_types`): `n_seqs` random sequences of `seq_len` tokens, repeated
    (drawn with `seed`); a head is of a type when its score is at least `threshold`."""

    seq_len: int = 20
    n_seqs: int = 32
    seed: int = 0
    threshold: float = 0.3

    @classmethod
    def from_config(cls, head_types: Mapping) -> HeadTypeParams:
        return _from(cls, head_types)


@dataclass(frozen=True)
class PlotParams:
    """Figures (config `plots`): resolution, and the paper's accuracy table to draw beside ours."""

    dpi: int = 120
    format: str = "png"
    reference: str | None = None

    @classmethod
    def from_config(cls, plots: Mapping) -> PlotParams:
        return _from(cls, plots)
