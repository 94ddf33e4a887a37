"""The planning layer stays torch-free: what the workflow imports to parse the config and plan the
DAG (the Snakefile and workflow/rules/*.smk) loads no torch, transformers or TransformerLens, so `snakemake -n`,
config errors and the paper grid's 9,000-job plan cost no model-library imports (several seconds)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "transformer_lens")


def planning_modules() -> list[str]:
    """The fi and fi_workflow modules the workflow imports (parsed from the Snakefile and every .smk
    file, so a new import is checked too)."""
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").rglob("*.smk"))])
    found = set(re.findall(r"^import (fi(?:_workflow)?\.[\w.]+)", text, re.M))
    found |= set(re.findall(r"^from (fi(?:_workflow)?\.[\w.]+) import", text, re.M))
    return sorted(found)


def test_the_workflow_plans_without_model_libraries():
    modules = planning_modules()
    assert {"fi.plan.config", "fi.plan.grid", "fi.plan.tasks", "fi.plan.dynamics_runs", "fi.plan.gguf_source",
            "fi_workflow.codehash", "fi_workflow.run"} <= set(modules), modules
    # the workflow plans with the planning layer only
    assert all(m.startswith(("fi.plan.", "fi_workflow.")) for m in modules), modules
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"planning imports {out.stdout.strip()}"


LAYERS = ("plan", "engine", "build", "methods", "report")  # fi/__init__.py: each imports only those before it


def test_each_layer_imports_only_the_layers_before_it():
    """fi's subpackages are layers: plan (torch-free) < engine < build < methods < report, with io
    beside them all; none imports a later layer, the stage functions or the CLI (which sit on top)."""
    import ast

    wrong = []
    for path in sorted((REPO / "fi").glob("*/*.py")):
        layer = path.parent.name
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] != "fi" or len(parts) < 2:
                    continue
                later = parts[1] in LAYERS and LAYERS.index(parts[1]) > LAYERS.index(layer)
                if later or parts[1] in ("stages", "cli"):
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert {p.parent.name for p in (REPO / "fi").glob("*/__init__.py")} == set(LAYERS)
    assert wrong == []


def test_the_oracle_imports_nothing_of_the_engine():
    """fi.engine.reference is the yardstick the engine's tests compare with: it writes its hooks,
    receivers and metric itself, so a bug in the engine cannot pass into both."""
    import ast

    tree = ast.parse((REPO / "fi" / "engine" / "reference.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m.startswith("fi")}, imported
