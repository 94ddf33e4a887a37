# The paper's circuit (fi/methods/circuit.py): three head groups by iterated path patching on every
# attribution cell, the circuit's evaluation on the discovery cell, and the cross-task overlap.


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
