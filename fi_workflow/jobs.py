"""One adapter per rule, named as the rule: the job (what a rule's `run:` block or `script:` sees:
input, output, params, wildcards, threads, resources, log; fi_workflow.run.Job) -> the keyword
arguments of the one fi function the rule runs, which it calls.

Each adapter imports its fi function in its body, and the module holds nothing but adapters: so
fi_workflow.codehash hashes each rule as its adapter with exactly the fi code that adapter reaches
(a rule's `params.code`; tests/test_code_hash.py checks the module's shape)."""

from __future__ import annotations


def dataset(job):
    from fi.stages import make_dataset

    return make_dataset(
        task=job.wildcards.task, variant=job.wildcards.variant, generation=job.params.generation, output=job.output[0]
    )


def train_model(job):
    from fi.stages import train_model

    return train_model(train=job.params.train, output=job.output[0], threads=job.threads)


def convert_gguf(job):
    from fi.build.gguf import convert_gguf

    src = job.params.source
    return convert_gguf(
        model=job.params.name,
        source=job.input.get("gguf", src.get("file")),
        output=job.output[0],
        expected_sha256=src.get("sha256"),
        package=src.get("package"),
        version=src.get("version"),
    )


def assemble_gguf(job):
    from fi.build.gguf import assemble_gguf

    return assemble_gguf(model=job.params.name, package=job.params.source["package"], output=job.output[0])


def evaluate(job):
    from fi.plan.params import ModelSpec
    from fi.stages import evaluate

    return evaluate(
        model=ModelSpec.from_config(job.params.model),
        task=job.wildcards.task,
        variant=job.wildcards.variant,
        shots=int(job.wildcards.shots),
        dataset=job.input.dataset,
        output=job.output[0],
        batch_size=job.resources.batch_size,
        device=job.resources.device,
    )


def evaluate_task(job):
    from fi.plan.params import ModelSpec
    from fi.stages import evaluate_task

    return evaluate_task(
        model=ModelSpec.from_config(job.params.model),
        task=job.wildcards.task,
        cells=[(variant, int(shots)) for variant, shots, _ in job.params.cells],
        datasets={variant: dataset for variant, _, dataset in job.params.cells},
        output=job.output[0],
        batch_size=job.resources.batch_size,
        device=job.resources.device,
    )


def aggregate(job):
    from fi.stages import aggregate

    return aggregate(cells=list(job.input), table=job.output.table, paper=job.output.paper, predictions=job.output.predictions)


def plot_accuracy(job):
    from fi.plan.params import PlotParams
    from fi.stages import plot_accuracy

    return plot_accuracy(
        table=job.input[0], task=job.wildcards.task, output=job.output[0], plots=PlotParams.from_config(job.params.plots)
    )


def attribute(job):
    from fi.plan.params import AttributionParams, ModelSpec
    from fi.stages import attribute

    return attribute(
        model=ModelSpec.from_config(job.params.model),
        task=job.wildcards.task,
        variant=job.wildcards.variant,
        shots=int(job.wildcards.shots),
        dataset=job.input.dataset,
        output=job.output[0],
        attribution=AttributionParams.from_config(job.params.attribution),
        device=job.resources.device,
    )


def head_types(job):
    from fi.plan.params import HeadTypeParams, ModelSpec
    from fi.stages import head_types

    return head_types(
        model=ModelSpec.from_config(job.params.model),
        output=job.output[0],
        params=HeadTypeParams.from_config(job.params.head_types),
        device=job.resources.device,
    )


def discover_heads(job):
    from fi.plan.params import DiscoveryParams, ModelSpec
    from fi.stages import discover_heads

    return discover_heads(
        model=ModelSpec.from_config(job.params.model),
        output=job.output[0],
        discovery=DiscoveryParams.from_config(job.params.discovery),
        explicit=job.params.explicit,
        attribution=job.input.get("attribution"),
        dataset=job.input.dataset,
        min_ld_gap=job.params.min_ld_gap,
        device=job.resources.device,
    )


def aggregate_attribution(job):
    from fi.stages import aggregate_attribution

    return aggregate_attribution(
        cells=list(job.input.cells),
        head_types_files=list(job.input.head_types),
        heads_files=list(job.input.heads),
        output=job.output[0],
        min_ld_gap=job.params.min_ld_gap,
    )


def plot_heads(job):
    from fi.plan.params import PlotParams
    from fi.stages import plot_heads

    return plot_heads(
        table=job.input[0], model_name=job.params.model_name, output=job.output[0], plots=PlotParams.from_config(job.params.plots)
    )


def ablate(job):
    from fi.plan.params import AblationParams, ModelSpec
    from fi.stages import ablate

    return ablate(
        model=ModelSpec.from_config(job.params.model),
        task=job.wildcards.task,
        variant=job.wildcards.variant,
        shots=int(job.wildcards.shots),
        dataset=job.input.dataset,
        heads_file=job.input.heads,
        output=job.output[0],
        ablation=AblationParams.from_config(job.params.ablation),
        batch_size=job.resources.batch_size,
        device=job.resources.device,
    )


def aggregate_ablation(job):
    from fi.stages import aggregate_ablation

    return aggregate_ablation(cells=list(job.input), output=job.output[0])


def plot_ablation(job):
    from fi.plan.params import PlotParams
    from fi.stages import plot_ablation

    return plot_ablation(table=job.input[0], output=job.output[0], plots=PlotParams.from_config(job.params.plots))


def find_circuit(job):
    from fi.plan.params import CircuitParams, ModelSpec
    from fi.stages import find_circuit

    return find_circuit(
        model=ModelSpec.from_config(job.params.model),
        task=job.wildcards.task,
        variant=job.wildcards.variant,
        shots=int(job.wildcards.shots),
        dataset=job.input.dataset,
        output=job.output[0],
        circuit=CircuitParams.from_config(job.params.circuit),
        explicit=job.params.explicit,
        min_ld_gap=job.params.min_ld_gap,
        device=job.resources.device,
    )


def draw_circuit(job):
    from fi.plan.params import CircuitParams, ModelSpec
    from fi.stages import draw_circuit

    return draw_circuit(
        model=ModelSpec.from_config(job.params.model),
        circuit_file=job.input.circuit,
        dataset=job.input.dataset,
        diagram=job.output.diagram,
        attention_plot=job.output.attention_plot,
        attention_html=job.output.attention_html,
        circuit=CircuitParams.from_config(job.params.circuit),
        device=job.resources.device,
    )


def evaluate_circuit(job):
    from fi.plan.params import CircuitParams, ModelSpec
    from fi.stages import evaluate_circuit

    return evaluate_circuit(
        model=ModelSpec.from_config(job.params.model),
        circuit_file=job.input.circuit,
        dataset=job.input.dataset,
        output=job.output.evaluation,
        paper_json=job.output.completeness,
        circuit=CircuitParams.from_config(job.params.circuit),
        generation=job.params.generation,
        min_ld_gap=job.params.min_ld_gap,
        device=job.resources.device,
    )


def circuit_overlap(job):
    from fi.plan.params import AblationParams, ModelSpec
    from fi.stages import circuit_overlap

    return circuit_overlap(
        model=ModelSpec.from_config(job.params.model),
        circuit_files=list(job.input.circuits),
        datasets=list(job.input.datasets),
        output=job.output[0],
        ablation=AblationParams.from_config(job.params.ablation),
        batch_size=job.resources.batch_size,
        device=job.resources.device,
    )


def aggregate_circuits(job):
    from fi.stages import aggregate_circuits

    return aggregate_circuits(
        circuits=list(job.input.circuits),
        evaluations=list(job.input.evaluations),
        overlaps=list(job.input.overlaps),
        heads_table=job.output.heads,
        evaluation_table=job.output.evaluation,
        overlap_table=job.output.overlap,
    )


def plot_circuits(job):
    from fi.plan.params import PlotParams
    from fi.stages import plot_circuits

    return plot_circuits(
        evaluation_table=job.input.evaluation,
        overlap_table=job.input.overlap,
        evaluation_plot=job.output.evaluation,
        overlap_plot=job.output.overlap,
        plots=PlotParams.from_config(job.params.plots),
    )


def function_vectors(job):
    from fi.plan.params import FunctionVectorParams, ModelSpec
    from fi.stages import function_vectors

    return function_vectors(
        model=ModelSpec.from_config(job.params.model),
        heads_file=job.input.heads,
        datasets=list(job.input.datasets),
        output=job.output[0],
        params=FunctionVectorParams.from_config(job.params.function_vectors),
        circuit_file=job.input.get("circuit"),
        device=job.resources.device,
    )


def aggregate_function_vectors(job):
    from fi.stages import aggregate_function_vectors

    return aggregate_function_vectors(tables=list(job.input), output=job.output.table, effects_output=job.output.effects)


def plot_function_vectors(job):
    from fi.plan.params import PlotParams
    from fi.stages import plot_function_vectors

    return plot_function_vectors(table=job.input[0], output=job.output[0], plots=PlotParams.from_config(job.params.plots))


def train_dynamics_run(job):
    from fi.methods.dynamics import train_run

    return train_run(
        train=job.params.train,
        clamps=job.params.clamps,
        output=job.output[0],
        baseline=job.input.get("baseline"),
        fi_heads=job.input.get("fi_heads"),
        fi_measures=job.input.get("fi_measures"),
        discovery=job.params.discovery,
        threads=job.threads,
    )


def measure_checkpoint(job):
    from fi.methods.dynamics import measure_checkpoint

    return measure_checkpoint(
        run_dir=job.input.run,
        step=int(job.wildcards.step),
        train=job.params.train,
        cells=job.params.cells,
        datasets=list(job.input.datasets),
        head_types=job.params.head_types,
        params=job.params.dynamics,
        keys={"model": job.wildcards.model, "run": job.wildcards.run, "seed": int(job.wildcards.seed)},
        output=job.output[0],
    )


def aggregate_dynamics(job):
    from fi.methods.dynamics import aggregate_dynamics

    return aggregate_dynamics(
        measures=list(job.input),
        threshold=job.params.threshold,
        min_gap=job.params.min_gap,
        table=job.output.table,
        formation=job.output.formation,
        summary=job.output.summary,
    )


def plot_dynamics(job):
    from fi.report.plots import plot_model_dynamics

    return plot_model_dynamics(
        table=job.input.table, formation=job.input.formation, model=job.wildcards.model, output=job.output[0], dpi=job.params.dpi
    )


def summary(job):
    from fi.report.summary import write_summary

    return write_summary(
        output=job.output.summary,
        provenance_output=job.output.provenance,
        seeds=job.params.seeds,
        accuracy=job.input.accuracy,
        heads_files=list(job.input.heads),
        ablation=job.input.get("ablation"),
        circuit_heads=job.input.get("circuit_heads"),
        circuit_evaluation=job.input.get("circuit_evaluation"),
        circuit_overlap=job.input.get("circuit_overlap"),
        circuit_evaluations=list(job.input.get("circuit_evaluations", [])),
        function_vector_effects=job.input.get("function_vector_effects"),
        tables=list(job.input.get("tables", [])),
    )


def parity(job):
    from fi.methods.parity import parity_table

    return parity_table(models=job.params.models, output=job.output[0])
