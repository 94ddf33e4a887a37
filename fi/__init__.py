"""fi: the function-induction experiment grid (Ye et al., "Function Induction and Task
Generalization"), as a library that every Snakemake rule calls into.

Subpackages, one layer each (a layer imports only those above it in this list, and io):
  plan      what to run, torch-free: config (schema, checks, seeds), grid (cells, PATHS), tasks,
            resources, hub and models_check (model names), gguf_source (where a GGUF model comes
            from), dynamics_runs; the Snakefile imports only this layer
  engine    running models: models (TransformerBridge loading, model cache), interventions, patching
            (run cache, route, activation / path / attribution patching), readout, answers, clamping;
            reference: the plain loops the engine is tested against
  build     making the models: training (the built-in model), gguf (GGUF files -> checkpoints)
  methods   the analyses: evaluation, ablation, heads (head types, FI-head choice), circuit,
            function_vectors, dynamics, parity (bridge vs transformers), paper_scores
  report    tables, plots and figures, summary (results/summary.md), provenance
Modules:
  io        atomic writes of every output, JSON / JSONL / parquet, progress bars
  stages    one function per Snakemake rule (fi_workflow.jobs maps a job to its arguments)
  cli       the `fi-grid` command (also `python -m fi`)
"""

__version__ = "0.1.0"
