"""Pipeline config validation: the JSON schema, plus the checks a schema cannot express.

Every message names the config key (as a dotted path), so `snakemake` stops at start-up with
"config key 'rpo.taus[1]': ..." rather than deep inside a job.
"""
from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from rpo.errors import ConfigError

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def load_schema(schema_path=SCHEMA) -> dict:
    """The config schema, with the method enum taken from the loss registry (its one home)."""
    from rpo.losses import REGISTRY

    schema = yaml.safe_load(Path(schema_path).read_text())
    schema["definitions"]["method"]["enum"] = list(REGISTRY)
    return schema


def validate_config(config: dict, schema_path=SCHEMA) -> dict:
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for error in errors:
            if error.validator == "additionalProperties":
                unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
                for key in unknown:
                    where = f"{_key_path(error)}.{key}" if error.absolute_path else key
                    lines.append(f"config key '{where}': unknown key")
            else:
                lines.append(f"config key '{_key_path(error)}': {error.message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    _check_cross_keys(config)
    return config


def _check_cross_keys(config: dict) -> None:
    from rpo.models import check_spec

    rpo = config["rpo"]
    if rpo["default_embedder"] not in rpo["embedders"]:
        raise ConfigError(f"config key 'rpo.default_embedder': {rpo['default_embedder']!r} is not in rpo.embedders")
    if rpo["default_tau"] not in rpo["taus"]:
        raise ConfigError(f"config key 'rpo.default_tau': {rpo['default_tau']} is not in rpo.taus")
    for i, task in enumerate(config.get("ablation_tasks") or []):
        if task not in config["data"]["tasks"]:
            raise ConfigError(f"config key 'ablation_tasks[{i}]': {task!r} is not in data.tasks "
                              f"({', '.join(config['data']['tasks'])})")
    if config["data"]["source"] == "world":
        from rpo.world import WorldConfig

        try:
            WorldConfig.from_dict(config["data"].get("world") or {})
        except ConfigError as exc:
            raise ConfigError(f"config key 'data.world': {exc}") from None
    else:
        for task in config["data"]["tasks"]:
            if task not in (config["data"].get("hub") or {}):
                raise ConfigError(f"config key 'data.hub.{task}': missing (data.source is hub)")
    for name, spec in config["models"].items():
        try:
            check_spec(spec)
        except ConfigError as exc:
            raise ConfigError(f"config key 'models.{name}': {exc}") from None
    training = config["training"]
    if training.get("max_prompt_length", 0) >= training.get("max_length", 1 << 30):
        raise ConfigError("config key 'training.max_prompt_length': must be below training.max_length")
