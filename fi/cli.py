"""The `fi-grid` command; `python -m fi` runs the same (a bare `fi` would be a shell keyword, hence
the name). Subcommands (argparse):

  fi-grid parity --config config.yaml [--out results/tables/parity.csv] [--model NAME ...] [--dtype D ...]
      our TransformerBridge logits against plain transformers, per model and dtype (see fi.methods.parity)

Add a subcommand: write `_add_<name>(subparsers)` that registers its parser with `func=_run_<name>`,
and call it from `build_parser`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

PROG = "fi-grid"  # the console script (pyproject.toml); `python -m fi` is the same command


def _load_config(path: str) -> dict:
    from fi.plan.config import validate_config

    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"{PROG}: config file {path!r} does not exist")
    config = yaml.safe_load(file.read_text()) or {}
    return validate_config(config)


def _add_parity(sub) -> None:
    p = sub.add_parser("parity", help="compare our bridge's logits with plain transformers, per model and dtype",
                       description="Run every configured model (or --model) through our TransformerBridge and "
                                   "through transformers' AutoModelForCausalLM (eager attention) on a few prompts; "
                                   "report the largest absolute logit difference and the argmax agreement.")
    p.add_argument("--config", default="config.yaml", help="the workflow config (default: config.yaml)")
    p.add_argument("--out", default=None, help="write the table here as CSV (e.g. results/tables/parity.csv)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="only this model (repeatable); default: every configured model")
    p.add_argument("--dtype", action="append", dest="dtypes", choices=["float32", "bfloat16", "float16"],
                   help="compare in this dtype (repeatable); default: each model's configured dtype")
    p.add_argument("--device", default=None, help="override every model's device (cpu, cuda, mps, auto)")
    p.set_defaults(func=_run_parity)


def _run_parity(args) -> int:
    import pandas as pd

    from fi.methods.parity import config_models, parity_table

    models = config_models(_load_config(args.config), args.models)
    if args.device:
        models = [{**m, "device": args.device} for m in models]
    table = parity_table(models, args.out, args.dtypes)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.drop(columns=["path"]).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The function-induction experiment grid.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_parity(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fi.engine.models import ModelLoadError
    from fi.plan.grid import ConfigError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, ModelLoadError) as err:
        print(f"{PROG} {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
