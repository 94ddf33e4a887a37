"""The planning layer stays torch-free: what the workflow imports to parse the config and plan the
DAG (workflow/rules/common.smk) loads no torch, transformers or TransformerLens, so `snakemake -n`,
config errors and the paper grid's 9,000-job plan cost no model-library imports (several seconds)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "transformer_lens")


def planning_modules() -> list[str]:
    """The fi and fi_workflow modules common.smk imports (parsed from it, so a new import is checked too)."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    found = set(re.findall(r"^import (fi(?:_workflow)?\.[\w.]+)", text, re.M))
    found |= set(re.findall(r"^from (fi(?:_workflow)?\.[\w.]+) import", text, re.M))
    return sorted(found)


def test_the_workflow_plans_without_model_libraries():
    modules = planning_modules()
    assert {"fi.plan.config", "fi.plan.grid", "fi.plan.tasks", "fi_workflow.codehash", "fi_workflow.run"} <= set(modules), modules
    # the workflow plans with the planning layer only
    assert all(m.startswith(("fi.plan.", "fi_workflow.")) for m in modules), modules
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"planning imports {out.stdout.strip()}"
