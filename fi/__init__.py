"""fi: the function-induction experiment grid (Ye et al., "Function Induction and Task
Generalization"), as a library that every Snakemake rule calls into.

Modules, one concern each:
  tasks       task families: dataset generators and prompt rendering (no torch)
  grid        config -> cells (model x task x variant x shots); names and paths (PATHS) (no torch)
  config      is a config runnable: schema, defaults, semantic checks (no torch)
  hub         hub model names checked before any job (no torch)
  resources   what a model job asks the scheduler for, per model and rule (no torch)
  models      loading any checkpoint through TransformerLens' TransformerBridge
  gguf        GGUF files (real pretrained LMs shipped as packages) converted to checkpoint folders
  answers     answer tokens derived from a tokenizer
  interventions  the one intervention value (hook, heads, positions, rows; replace or add) -> hooks
  readout     metrics read from the final residual through only the compared tokens' unembedding
  patching    the intervention engine: run cache, route, activation / path / attribution patching
  evaluation  batched teacher-forced scoring of normal / contrast prompts
  ablation    head ablation during evaluation (patch from normal, mean, zero); random head sets
  heads       head types on repeated random tokens; choosing FI heads from scores
  circuit     the paper's three head groups by iterated path patching; faithfulness, completeness,
              minimality; cross-task overlap
  function_vectors  FI heads' mean outputs added to naive prompts
  training    the built-in model: a small HF checkpoint trained on synthetic data
  clamping    heads clamped during training (zero, mean, frozen pattern / values / output)
  dynamics    checkpoints' progress measures, formation steps; dynamics_runs: the runs (no torch)
  tables      aggregation, Wilson intervals, the paper's CSV format
  plots       seaborn figures; figures: matplotlib's process-wide state, for jobs sharing a process
  stages      one function per Snakemake rule (fi_workflow.jobs maps a job to its arguments)
  parity      our bridge's logits against plain transformers (`fi-grid parity`)
  cli         the `fi-grid` command (also `python -m fi`)
"""

__version__ = "0.1.0"
