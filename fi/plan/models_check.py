"""Checks on checkpoint folders that need no torch (the Snakefile runs them before any job)."""

from __future__ import annotations

from pathlib import Path

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def check_local_checkpoint_files(path, name: str) -> list[str]:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return [f"model {name!r}: checkpoint folder {str(folder)!r} does not exist"]
    if not (folder / "config.json").is_file():
        return [f"model {name!r}: {str(folder)!r} has no config.json (not a HF checkpoint)"]
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        return [f"model {name!r}: {str(folder)!r} has no weights (looked for {', '.join(WEIGHT_PATTERNS)})"]
    return []
