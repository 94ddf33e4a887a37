"""The runs of the dynamics config (fi.methods.dynamics): which trainings and checkpoints the DAG fans over.
Imported by the Snakefile when it plans, so no torch here."""

from __future__ import annotations

from dataclasses import dataclass

from fi.plan.grid import PATHS

REF_KINDS = ("pattern_ref", "value_ref", "output_ref")
# The clamp kinds (fi.engine.clamping says what each does); here so that the DAG's planning checks them
# without torch.
KINDS = ("zero", "mean", "pattern_uniform", "pattern_previous_token", "pattern_answers") + REF_KINDS


def checkpoint_steps(cfg: dict) -> list[int]:
    """The steps whose weights `train_model` saves under checkpoints/step<k>/: `checkpoints` plus
    every multiple of `checkpoint_every` (0: none), within 0..steps, and then the final step too.
    Step k is the weights after k optimizer updates (step 0: the initialisation)."""
    steps = cfg["steps"]
    chosen = {int(k) for k in cfg.get("checkpoints", []) if 0 <= int(k) <= steps}
    every = cfg.get("checkpoint_every", 0)
    if every:
        chosen |= set(range(0, steps + 1, every))
    if chosen:
        chosen.add(steps)
    return sorted(chosen)



@dataclass(frozen=True)
class Run:
    """One training run of a built-in model: the model's own training (`baseline` with the model's
    seed, which is the grid's model folder) or a configured variation, at one seed."""

    model: str  # model id
    name: str
    seed: int
    train: dict
    clamps: tuple = ()
    is_grid_model: bool = False

    @property
    def folder(self) -> str:
        if self.is_grid_model:
            return PATHS["model"].format(model=self.model)
        return run_folder(self.model, self.name, self.seed)

    @property
    def steps(self) -> list[int]:
        return checkpoint_steps(self.train)

    def measures_path(self, step: int) -> str:
        return measures_path(self.model, self.name, self.seed, step)

    def baseline(self, runs: list[Run]) -> Run:
        return next(r for r in runs if r.model == self.model and r.name == "baseline" and r.seed == self.seed)


def run_folder(model: str, run: str, seed: int) -> str:
    return PATHS["dynamics_run"].format(model=model, run=run, seed=seed)


def measures_path(model: str, run: str, seed: int, step: int) -> str:
    return PATHS["dynamics_measures"].format(model=model, run=run, seed=seed, step=step)




def runs(config: dict) -> list[Run]:
    """Every run the `dynamics` config asks for, per built-in model: `baseline` and each of
    `dynamics.runs`, at the model's own seed and each of `dynamics.seeds`."""
    from fi.plan.grid import ConfigError, models

    dyn = config["dynamics"]
    out = []
    for m in models(config):
        if not m.builtin:
            continue
        train = m.cfg["train"]
        seeds = [int(train["seed"])] + [int(s) for s in dyn["seeds"] if int(s) != int(train["seed"])]
        specs = [{"name": "baseline", "train": {}, "clamps": []}] + [
            r for r in dyn["runs"] if r.get("model") in (None, m.name)]
        for spec in specs:
            unknown = set(spec.get("train", {})) - set(train) - {"checkpoints", "checkpoint_every"}
            if unknown:
                raise ConfigError(f"dynamics.runs.{spec['name']}.train: unknown train keys {sorted(unknown)}")
            if "seed" in spec.get("train", {}):
                raise ConfigError(f"dynamics.runs.{spec['name']}.train: set seeds with dynamics.seeds")
            for seed in seeds:
                cfg = {**train, **spec.get("train", {}), "seed": seed}
                grid_model = spec["name"] == "baseline" and seed == int(train["seed"])
                out.append(Run(m.id, spec["name"], seed, cfg, tuple(_freeze(c) for c in spec.get("clamps", [])),
                               grid_model))
    measured = [c for c in [config.get("discovery", {}).get("cell"), *dyn.get("cells", [])] if c]
    for spec in dyn["runs"]:
        for clamp in spec.get("clamps", []):
            cell = clamp.get("cell")
            if cell and clamp.get("heads") != "fi":
                raise ConfigError(f"dynamics.runs.{spec['name']}.clamps: 'cell' {cell} needs heads: fi")
            if cell and not any(_same_cell(cell, c) for c in measured):
                raise ConfigError(f"dynamics.runs.{spec['name']}.clamps: cell {cell} is not measured on the "
                                  f"checkpoints; add it to dynamics.cells (measured: {measured})")
        for clamp in spec.get("clamps", []):
            for m in models(config):
                if m.builtin and spec.get("model") in (None, m.name):
                    check_clamp_entry(clamp, {**m.cfg["train"], **spec.get("train", {})},
                                      f"dynamics.runs.{spec['name']}.clamps")
    names = [r["name"] for r in dyn["runs"]]
    if len(set(names)) != len(names) or "baseline" in names:
        raise ConfigError(f"dynamics.runs: names must be unique and not 'baseline': {names}")
    return out


def check_clamp_entry(entry: dict, train: dict, where: str) -> None:
    """A clamp entry that cannot apply to the model `train` describes: an unknown kind, a head outside
    the model, steps that are not [start, stop) with 0 <= start <= stop. Raises ConfigError naming it."""
    from fi.plan.grid import ConfigError

    kind = entry.get("kind", "zero")
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown clamp kind {kind!r}; expected one of {KINDS}")
    heads = entry.get("heads")
    if heads != "fi":
        n_layers, n_heads = int(train["n_layers"]), int(train["n_heads"])
        for head in heads or []:
            if (len(head) != 2 or not all(isinstance(x, int) for x in head)
                    or not (0 <= head[0] < n_layers and 0 <= head[1] < n_heads)):
                raise ConfigError(f"{where}: head {head} is not a [layer, head] of this model "
                                  f"({n_layers} layers x {n_heads} heads)")
    steps = entry.get("steps") or [0, None]
    if len(steps) != 2 or steps[0] is None or int(steps[0]) < 0 or (steps[1] is not None and int(steps[1]) < int(steps[0])):
        raise ConfigError(f"{where}: steps {steps} are not [start, stop) with 0 <= start <= stop (stop null: "
                          "to the end)")


def _same_cell(a: dict, b: dict) -> bool:
    return (a["task"], a["variant"], int(a["shots"])) == (b["task"], b["variant"], int(b["shots"]))


def _freeze(entry: dict) -> tuple:
    return tuple(sorted((k, _freeze_value(v)) for k, v in entry.items()))


def _freeze_value(v):
    if isinstance(v, dict):
        return ("__dict__", _freeze(v))
    return tuple(_freeze_value(x) for x in v) if isinstance(v, (list, tuple)) else v


def _thaw_value(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return {k: _thaw_value(x) for k, x in v[1]}
    return list(v) if isinstance(v, tuple) else v  # one level, as the params of earlier runs recorded


def clamp_entries(run: Run) -> list[dict]:
    return [{k: _thaw_value(v) for k, v in c} for c in run.clamps]


def needs_fi_heads(run: Run) -> bool:
    """A clamp on `heads: fi` without a `cell`: the FI heads of the discovery cell."""
    return any(e.get("heads") == "fi" and not e.get("cell") for e in clamp_entries(run))


def needs_cell_heads(run: Run) -> bool:
    """A clamp on `heads: fi` with a `cell`: that cell's FI heads in the seed's own baseline."""
    return any(e.get("heads") == "fi" and e.get("cell") for e in clamp_entries(run))


def fi_heads_source(run: Run, all_runs: list[Run]) -> tuple[str, str]:
    """Where a run's `heads: fi` come from: at the model's own seed the grid's discovered FI heads
    ("heads", results/heads/<model>.json); at another seed that seed's own baseline, whose FI head
    may sit elsewhere ("measures": the baseline's final-checkpoint measures, heads picked from its
    path scores on the discovery cell by the discovery criterion)."""
    if run.baseline(all_runs).is_grid_model:
        return "heads", PATHS["heads"].format(model=run.model)
    return "measures", baseline_final_measures(run, all_runs)


def baseline_final_measures(run: Run, all_runs: list[Run]) -> str:
    """The measures of the final checkpoint of the run's baseline (same model and seed): where a
    `heads: fi` clamp with a `cell` takes that cell's FI heads from, at every seed (the grid's own
    heads file covers the discovery cell only)."""
    base = run.baseline(all_runs)
    return base.measures_path(base.steps[-1])


def reference_steps(run: Run) -> list:
    return [e.get("reference") for e in clamp_entries(run) if e.get("kind", "zero") in REF_KINDS]
