"""The pipeline config schema: both profiles validate, and the method list is the loss registry's."""
from pathlib import Path

import pytest
import yaml

from rpo.config import load_schema, validate_config
from rpo.errors import ConfigError
from rpo.losses import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def profile(name):
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "workflow/paper.yaml"])
def test_profiles_validate(name):
    validate_config(profile(name))


def test_method_enum_is_the_registry():
    assert load_schema()["definitions"]["method"]["enum"] == list(REGISTRY)
    config = profile("config.yaml")
    config["methods"] = ["dpo", "orpo"]
    with pytest.raises(ConfigError, match=r"config key 'methods\[1\]': 'orpo' is not one of \['sft', 'dpo'"):
        validate_config(config)
