"""Pipeline config validation: the JSON schema, plus the checks a schema cannot express.

Every message names the config key (as a dotted path), so `snakemake` stops at start-up with
"config key 'rpo.taus[1]': ..." rather than deep inside a job.

Defaults have one home each: a pipeline key's is its `default:` in the schema, a training: key's is
rpo.train_config.DEFAULTS (the trainer's), and validate_config writes both into the config, so the
rules read config[...] without fallbacks. Stage keys (sft:/preference:) go to rpo.train as given;
their defaults are the trainer's and the loss registry's, never filled in here.
"""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from rpo.errors import ConfigError

SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"  # package data: an installed rpo has it too


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def load_schema(schema_path=SCHEMA) -> dict:
    """The config schema, with the method enum taken from the loss registry, the scheduler enum from
    rpo.optim and the task enum from rpo.data.records (their one homes)."""
    from rpo.data.records import PREFERENCE_TASKS
    from rpo.losses import REGISTRY
    from rpo.optim import SCHEDULERS

    schema = yaml.safe_load(Path(schema_path).read_text())
    schema["definitions"]["method"]["enum"] = list(REGISTRY)
    schema["properties"]["data"]["properties"]["tasks"]["items"]["enum"] = list(PREFERENCE_TASKS)
    schema["definitions"]["stage"]["properties"]["scheduler"]["enum"] = list(SCHEDULERS)
    return schema


def _filling_defaults(validator_class):
    """`validator_class`, also writing each absent property's `default:` into the instance."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, subschema in props.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


def _declared_keys(node: dict, schema: dict) -> set:
    keys = set(node.get("properties", {}))
    if "$ref" in node:
        keys |= _declared_keys(schema["definitions"][node["$ref"].rsplit("/", 1)[-1]], schema)
    return keys


def validate_config(config: dict, schema_path=SCHEMA) -> dict:
    """Check `config` and fill in its defaults (in place); return it."""
    from rpo.train_config import DEFAULTS

    schema = load_schema(schema_path)
    validator = _filling_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for error in errors:
            if error.validator in ("additionalProperties", "unevaluatedProperties"):
                for key in sorted(set(error.instance) - _declared_keys(error.schema, schema)):
                    where = f"{_key_path(error)}.{key}" if error.absolute_path else key
                    lines.append(f"config key '{where}': unknown key")
            else:
                lines.append(f"config key '{_key_path(error)}': {error.message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    for key in schema["properties"]["training"]["properties"]:
        if key in DEFAULTS:
            config["training"].setdefault(key, DEFAULTS[key])
    _check_cross_keys(config)
    return config


def _check_cross_keys(config: dict) -> None:
    from rpo.models import check_spec

    rpo = config["rpo"]
    if rpo["default_embedder"] not in rpo["embedders"]:
        raise ConfigError(f"config key 'rpo.default_embedder': {rpo['default_embedder']!r} is not in rpo.embedders")
    if rpo["default_tau"] not in rpo["taus"]:
        raise ConfigError(f"config key 'rpo.default_tau': {rpo['default_tau']} is not in rpo.taus")
    for i, method in enumerate(config.get("seeded_methods") or []):
        if method not in config["methods"]:
            raise ConfigError(f"config key 'seeded_methods[{i}]': {method!r} is not in methods "
                              f"({', '.join(config['methods'])}): add it there or drop it here")
    from rpo.losses import MATCHED_BETA_SOURCES

    check_loss_settings(config.get("losses"))

    if rpo.get("matched_beta_control") and not set(MATCHED_BETA_SOURCES) & set(config["methods"]):
        raise ConfigError(f"config key 'rpo.matched_beta_control': its source ({', '.join(MATCHED_BETA_SOURCES)}) "
                          "is not in methods")
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
    for name in config["generation"]["temperature_by_model"]:
        if name not in config["models"]:
            raise ConfigError(f"config key 'generation.temperature_by_model.{name}': {name!r} is not in models "
                              f"({', '.join(config['models'])})")
    training = config["training"]
    if training["max_prompt_length"] >= training["max_length"]:
        raise ConfigError("config key 'training.max_prompt_length': must be below training.max_length")


RUN_HYPERPARAMETERS = ("tau",)  # a run's own setting (rpo.taus, rpo.default_tau), never a losses: entry's


def check_loss_settings(losses: dict) -> None:
    """The `losses:` mapping: known methods, each with hyperparameters its loss takes (categorical ones
    among their choices); numeric values are checked by rpo.train."""
    from rpo.losses import REGISTRY

    for method, values in (losses or {}).items():
        if method not in REGISTRY:
            raise ConfigError(f"config key 'losses.{method}': unknown loss; known: {', '.join(REGISTRY)}")
        spec = REGISTRY[method]
        for key in values or {}:
            if key in RUN_HYPERPARAMETERS:
                raise ConfigError(f"config key 'losses.{method}.{key}': {key} is each run's own (rpo.taus, "
                                  "rpo.default_tau), not a loss setting")
            if key not in spec.hyperparameters:
                takes = ", ".join(k for k in spec.hyperparameters if k not in RUN_HYPERPARAMETERS) or "nothing"
                raise ConfigError(f"config key 'losses.{method}.{key}': not a hyperparameter of loss {method!r} "
                                  f"(it takes {takes})")
        try:
            spec.resolve_hyperparameters(values or {})
        except ConfigError as exc:
            raise ConfigError(f"config key 'losses.{method}': {exc}") from None
