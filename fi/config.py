"""Config validation: JSON-schema errors named by their key path, then snakemake's defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from fi.grid import ConfigError, check_config

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def schema_errors(config: dict, schema_path: str | Path = SCHEMA) -> list[str]:
    """Every schema violation as `key.path: message` (jsonschema's own words)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top level>'}: {e.message}" for e in errors]


def validate_config(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Validate `config` in place: fill the schema's defaults (snakemake's `validate`), then run the
    semantic checks. Raises ConfigError listing every problem by key."""
    errors = schema_errors(config, schema_path)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    from snakemake.utils import validate

    validate(config, str(schema_path), set_default=True)
    check_config(config)
    return config
