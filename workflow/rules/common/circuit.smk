# What only the circuit stage's rules need (workflow/rules/circuit.smk): kept apart from its rules, as
# Snakemake's linter asks, and from common.smk, which holds what the stages share.
# Circuits are found on every attribution cell (the discovery cell, and attribution.cells: one per
# family gives the cross-task overlap); evaluated on the discovery cell.
CIRCUIT = config["circuit"]
CIRCUIT_CELLS = ATTRIBUTION_CELLS if CIRCUIT["enabled"] else []


def circuit_outputs():
    if not CIRCUIT_CELLS:
        return []
    out = [
        PATHS["circuit_heads_table"],
        PATHS["circuit_evaluation_table"],
        PATHS["circuit_overlap_table"],
        PATHS["circuit_evaluation_plot"].format(ext=PLOT_FORMAT),
        PATHS["circuit_overlap_plot"].format(ext=PLOT_FORMAT),
    ]
    for c in CIRCUIT_CELLS:
        out += [
            PATHS["circuit_diagram"].format(**vars(c), ext=PLOT_FORMAT),
            PATHS["circuit_attention_plot"].format(**vars(c), ext=PLOT_FORMAT),
        ]
    return out


def circuit_cell_of(wildcards):
    """The model's discovery cell (its circuit is evaluated there)."""
    return discovery_cell(config, wildcards.model)


def circuit_evaluation_inputs(wildcards):
    c = circuit_cell_of(wildcards)
    return {
        **model_inputs(wildcards),
        "circuit": PATHS["circuit"].format(**vars(c)),
        "dataset": dataset_path(c.task, c.variant),
    }


def function_vector_inputs(wildcards):
    """The model, its discovery heads and, with the circuit stage on, its discovery cell's circuit
    (whose function_induction group gives the FI heads; the discovery heads where it is empty)."""
    inputs = {**model_inputs(wildcards), "heads": heads_path(wildcards.model)}
    if CIRCUIT["enabled"]:
        inputs["circuit"] = PATHS["circuit"].format(**vars(circuit_cell_of(wildcards)))
    return inputs


def circuit_overlap_inputs(wildcards):
    cells = [c for c in CIRCUIT_CELLS if c.model == wildcards.model]
    return {
        **model_inputs(wildcards),
        "circuits": [PATHS["circuit"].format(**vars(c)) for c in cells],
        "datasets": [dataset_path(c.task, c.variant) for c in cells],
    }


def explicit_groups(wildcards):
    return CIRCUIT["groups"].get(MODELS[wildcards.model].name)


def circuit_generation_params(wildcards):
    """The recipe of the evaluation cell's dataset (the held-out prompts are drawn with it)."""
    c = circuit_cell_of(wildcards)
    return get_family(c.task).generation_params(config["tasks"][c.task])


def circuit_params(wildcards):
    return {k: v for k, v in CIRCUIT.items() if k not in ("groups", "enabled")}
