"""`fi parity`: our TransformerBridge against plain transformers, as a function and as a command."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from fi.cli import main
from fi.methods.parity import COLUMNS, parity
from tests.conftest import REPO
from tests.tiny_checkpoints import save_checkpoint

ARCH_STYLE = [("gpt2", "gpt2_bpe"), ("llama", "multi_digit"), ("gemma2", "single_digit")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    return {arch: save_checkpoint(root / arch, arch, style) for arch, style in ARCH_STYLE}


@pytest.mark.parametrize("arch", [a for a, _ in ARCH_STYLE])
def test_bridge_matches_transformers_in_float32(checkpoints, arch):
    df = parity(f"tiny-{arch}", str(checkpoints[arch]), "float32", "cpu")
    assert list(df.columns) == COLUMNS and len(df) == 1
    row = df.iloc[0]
    assert row["max_abs_diff"] < 1e-4 and row["argmax_agreement"] == 1.0
    assert row["n_prompts"] == 5 and row["n_positions"] > 5 and row["max_abs_logit"] > 0


def test_half_precision_is_compared_in_that_dtype(checkpoints):
    df = parity("tiny-llama", str(checkpoints["llama"]), "bfloat16", "cpu", prompts=["1+2=3\n4+5="])
    row = df.iloc[0]
    assert row["dtype"] == "bfloat16" and torch.isfinite(torch.tensor(row["max_abs_diff"]))
    assert row["argmax_agreement"] >= 0.9


@pytest.mark.slow
def test_cli_writes_one_row_per_model_and_dtype(checkpoints, tmp_path, capsys):
    config = {"models": {f"tiny-{a}": {"path": str(p), "device": "cpu"} for a, p in checkpoints.items()},
              "tasks": {"addition": {"settings": ["setting1"], "nmax": [9], "offsets": [1]}}}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "tables" / "parity.csv"
    assert main(["parity", "--config", str(cfg), "--out", str(out), "--dtype", "float32", "--dtype", "float16",
                 "--model", "tiny-gpt2", "--model", "tiny-gemma2"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert sorted(zip(table["model"], table["dtype"])) == [("tiny-gemma2", "float16"), ("tiny-gemma2", "float32"),
                                                          ("tiny-gpt2", "float16"), ("tiny-gpt2", "float32")]
    f32 = table[table["dtype"] == "float32"]
    assert (f32["max_abs_diff"] < 1e-4).all() and (f32["argmax_agreement"] == 1.0).all()
    assert "argmax_agreement" in capsys.readouterr().out


def test_cli_names_the_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/models/fi-toy here
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"fi-toy": {"builtin": True}}}))
    assert main(["parity", "--config", str(cfg)]) == 2  # the built-in model is not trained here
    assert "the built-in model 'fi-toy' is not trained yet" in capsys.readouterr().err
    assert main(["parity", "--config", str(cfg), "--model", "other"]) == 2
    assert "model 'other' is not in the config" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        main(["parity", "--config", str(tmp_path / "none.yaml")])


@pytest.mark.slow
def test_python_dash_m_fi_runs_the_command():
    # `fi` alone is a shell keyword in bash / zsh; `python -m fi` is the portable spelling
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "fi", "parity", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--dtype" in proc.stdout


def test_the_command_has_one_name(capsys):
    """`fi-grid` is the console script (pyproject.toml) and the name argparse reports; a bare `fi`
    would be a shell keyword."""
    from fi.cli import PROG, build_parser

    assert PROG == "fi-grid"
    assert f'\n{PROG} = "fi.cli:main"\n' in (REPO / "pyproject.toml").read_text()
    assert build_parser().format_usage().startswith(f"usage: {PROG} ")
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    assert f"{PROG}: error" in capsys.readouterr().err
