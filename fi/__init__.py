"""fi: the function-induction experiment grid (Ye et al., "Function Induction and Task
Generalization"), as a library that every Snakemake rule calls into.

Modules, one concern each:
  tasks       task families: dataset generators and prompt rendering (no torch)
  grid        config -> cells (model x task x variant x shots); names and paths (no torch)
  models      loading any checkpoint through TransformerLens' TransformerBridge
  answers     answer tokens derived from a tokenizer
  evaluation  batched teacher-forced scoring of normal / contrast prompts
  training    the built-in model: a small HF checkpoint trained on synthetic data
  tables      aggregation, Wilson intervals, the paper's CSV format
  plots       seaborn figures
  stages      one function per Snakemake rule
  parity      our bridge's logits against plain transformers (`fi parity`)
  cli         the `fi` command
"""

__version__ = "0.1.0"
