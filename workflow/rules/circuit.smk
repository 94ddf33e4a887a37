# The paper's circuit (fi/methods/circuit.py): three head groups by iterated path patching on every
# attribution cell, the circuit's evaluation on the discovery cell, and the cross-task overlap.


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


rule find_circuit:
    input:
        unpack(model_inputs),
        dataset=PATHS["dataset"],
    output:
        PATHS["circuit"],
    log:
        "logs/find_circuit/{model}/{task}/{variant}/shots{shots}.log",
    priority: CIRCUIT_CHAIN_PRIORITY
    threads: 1
    resources:
        **model_resources("find_circuit"),
    params:
        code=code_hash("find_circuit"),
        model=model_params,
        circuit=circuit_params,
        explicit=explicit_groups,
        min_ld_gap=config["min_ld_gap"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


# Drawing apart from finding: a plot edit reruns no path patching.
rule draw_circuit:
    input:
        unpack(model_inputs),
        circuit=rules.find_circuit.output[0],
        dataset=PATHS["dataset"],
    output:
        diagram=report(
            PATHS["circuit_diagram"].replace("{ext}", PLOT_FORMAT),
            caption="../report/circuit.rst",
            category="Circuit",
        ),
        attention_plot=PATHS["circuit_attention_plot"].replace("{ext}", PLOT_FORMAT),
        attention_html=PATHS["circuit_attention_html"],
    log:
        "logs/draw_circuit/{model}/{task}/{variant}/shots{shots}.log",
    threads: 1
    resources:
        **model_resources("draw_circuit"),
    params:
        code=code_hash("draw_circuit"),
        model=model_params,
        circuit=circuit_params,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule evaluate_circuit:
    input:
        unpack(circuit_evaluation_inputs),
    output:
        evaluation=PATHS["circuit_evaluation"],
        completeness=PATHS["circuit_completeness"],
    log:
        "logs/evaluate_circuit/{model}.log",
    priority: CIRCUIT_CHAIN_PRIORITY
    threads: 1
    resources:
        **model_resources("evaluate_circuit"),
    params:
        code=code_hash("evaluate_circuit"),
        model=model_params,
        circuit=circuit_params,
        generation=circuit_generation_params,
        min_ld_gap=config["min_ld_gap"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule circuit_overlap:
    input:
        unpack(circuit_overlap_inputs),
    output:
        PATHS["circuit_overlap"],
    log:
        "logs/circuit_overlap/{model}.log",
    threads: 1
    resources:
        **model_resources("circuit_overlap", batched=True),
    params:
        code=code_hash("circuit_overlap"),
        model=model_params,
        ablation=config_slice("ablation"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule aggregate_circuits:
    input:
        circuits=[PATHS["circuit"].format(**vars(c)) for c in CIRCUIT_CELLS],
        evaluations=[PATHS["circuit_evaluation"].format(model=m) for m in MODELS],
        overlaps=[PATHS["circuit_overlap"].format(model=m) for m in MODELS],
    output:
        heads=PATHS["circuit_heads_table"],
        evaluation=PATHS["circuit_evaluation_table"],
        overlap=PATHS["circuit_overlap_table"],
    log:
        "logs/aggregate_circuits.log",
    params:
        code=code_hash("aggregate_circuits"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule plot_circuits:
    input:
        evaluation=PATHS["circuit_evaluation_table"],
        overlap=PATHS["circuit_overlap_table"],
    output:
        evaluation=report(
            PATHS["circuit_evaluation_plot"].replace("{ext}", PLOT_FORMAT),
            caption="../report/circuit.rst",
            category="Circuit",
        ),
        overlap=report(
            PATHS["circuit_overlap_plot"].replace("{ext}", PLOT_FORMAT),
            caption="../report/circuit.rst",
            category="Circuit",
        ),
    log:
        "logs/plot_circuits.log",
    params:
        code=code_hash("plot_circuits"),
        plots=PLOT_DPI,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
