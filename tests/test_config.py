"""The pipeline config schema: the profiles validate, the method list is the loss registry's,
defaults are filled in from their one home, and every schema key reaches the code that uses it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from read_tracker import ReadTracker
from rpo.config import load_schema, validate_config
from rpo.errors import ConfigError
from rpo.losses import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def profile(name):
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "workflow/paper.yaml", "workflow/one-gpu.yaml",
                                  "workflow/rehearsal.yaml"])
def test_profiles_validate(name):
    validate_config(profile(name))


def test_an_installed_rpo_validates_outside_the_checkout(tmp_path):
    """The schema is package data: a wheel built from the sources, installed elsewhere, validates a
    profile from a folder that holds no checkout."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "rpo", source / "rpo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "wheel"),
                          str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("rpo-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    shutil.rmtree(source)
    check = ("import sys, yaml, rpo.config; assert rpo.config.__file__.startswith(sys.argv[1]), rpo.config.__file__; "
             "rpo.config.validate_config(yaml.safe_load(open(sys.argv[2]))); print(rpo.config.SCHEMA)")
    run = subprocess.run([sys.executable, "-c", check, str(tmp_path / "site"), str(ROOT / "config.yaml")],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "site" / "rpo" / "config.schema.yaml")


def test_task_enum_is_the_records_tasks():
    config = profile("config.yaml")
    config["data"]["tasks"] = ["dialogue", "poetry"]
    with pytest.raises(ConfigError, match=r"config key 'data.tasks\[1\]': 'poetry' is not one of "
                                          r"\['dialogue', 'summarization'\]"):
        validate_config(config)


def test_method_enum_is_the_registry():
    assert load_schema()["definitions"]["method"]["enum"] == list(REGISTRY)
    config = profile("config.yaml")
    config["methods"] = ["dpo", "orpo"]
    with pytest.raises(ConfigError, match=r"config key 'methods\[1\]': 'orpo' is not one of \['sft', 'dpo'"):
        validate_config(config)


def test_a_per_model_temperature_names_a_configured_model():
    config = profile("workflow/paper.yaml")
    config["generation"]["temperature_by_model"] = {"mistral-7B": 1.0}  # a typo of mistral-7b
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert str(err.value) == ("config key 'generation.temperature_by_model.mistral-7B': 'mistral-7B' is not in models "
                              "(mistral-7b, llama2-7b, llama2-13b)")
    config["generation"].update(temperature_by_model={}, temperature=0, top_k=-1)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert "config key 'generation.temperature': 0 is less than or equal to the minimum of 0" in str(err.value)
    assert "config key 'generation.top_k': -1 is less than the minimum of 0" in str(err.value)


# -- defaults ------------------------------------------------------------------------------------------
def test_defaults_are_filled_in_from_their_one_home():
    from rpo.train_config import DEFAULTS

    config = profile("config.yaml")
    del config["judge"]["max_tokens"], config["training"]["max_length"], config["alpacaeval"]
    validate_config(config)
    assert config["judge"]["max_tokens"] == load_schema()["properties"]["judge"]["properties"]["max_tokens"]["default"]
    assert config["training"]["max_length"] == DEFAULTS["max_length"]  # the trainer's own default
    assert config["alpacaeval"] == {"runs": [], "annotators_config": "alpaca_eval_gpt4_turbo_fn", "n_prompts": 805}
    assert "max_steps" not in config["preference"]  # stage keys: rpo.train's defaults, never filled in here


def test_read_tracker_records_lookups_and_whole_mappings_handed_on():
    tracked = ReadTracker({"judge": {"model": "m", "max_tokens": 64}, "data": {"world": {"seed": 1}}, "x": 1})
    assert tracked["judge"]["model"] == "m" and tracked.get("nope") is None
    json.dumps(tracked["data"])
    assert tracked.reads == {("judge",), ("judge", "model"), ("data",), ("data", "world"), ("data", "world", "seed")}


def test_sft_takes_no_loss_hyperparameters_and_scope_is_a_runs():
    config = profile("config.yaml")
    config["sft"]["beta"] = 0.1
    config["preference"]["contrast_scope"] = "global"
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert "config key 'sft.beta': unknown key" in str(err.value)
    assert "config key 'preference.contrast_scope': unknown key" in str(err.value)


# -- every schema key reaches the code that uses it -----------------------------------------------------
STAGES = (("sft",), ("preference",))
HUB = ("data", "hub")


def schema_leaves(node=None, path=(), schema=None):
    """Key paths of the schema down to its leaves (a mapping without declared properties is a leaf)."""
    schema = schema or load_schema()
    node = schema if node is None else node
    properties = dict(node.get("properties", {}))
    if "$ref" in node:
        properties = {**schema["definitions"][node["$ref"].rsplit("/", 1)[-1]].get("properties", {}), **properties}
    if not properties:
        return [path]
    return [leaf for key, sub in properties.items() for leaf in schema_leaves(sub, (*path, key), schema)]


def present(config, path):
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return False
        config = config[key]
    return True


def forwarded(path):
    """Stage keys go to rpo.train whole and hub specs to rpo.data.prepare: checked by their consumer."""
    return path[:1] in STAGES or path[:2] == HUB


def test_every_schema_key_is_exercised_by_a_profile():
    """Each key outside the forwarded sections is set (or defaulted) in a profile, so the workflow
    check below sees whether it is read."""
    configs = [profile_validated(name) for name in PROFILES]
    missing = [".".join(p) for p in schema_leaves() if not forwarded(p) and not any(present(c, p) for c in configs)]
    assert not missing, f"schema keys no profile sets and without a default: {missing}"


def test_forwarded_keys_are_taken_by_their_consumer():
    from rpo.losses import hyperparameter_names
    from rpo.pipeline import REFCACHE_ONLY
    from rpo.train_config import DEFAULTS

    trainer = set(DEFAULTS) | set(hyperparameter_names())
    for path in schema_leaves():
        if path[:1] in STAGES or (path[0] == "training" and path[1] not in REFCACHE_ONLY):
            assert path[-1] in trainer, f"{'.'.join(path)}: rpo.train does not take {path[-1]!r}"
    prepare = (ROOT / "rpo" / "data" / "prepare.py").read_text()
    for path in schema_leaves():
        if path[:2] == HUB and len(path) > 3:
            assert f'"{path[-1]}"' in prepare, f"{'.'.join(path)}: rpo.data.prepare never reads {path[-1]!r}"


PROFILES = ("config.yaml", "workflow/paper.yaml", "workflow/one-gpu.yaml", "workflow/rehearsal.yaml")
# The workflow, on a config that records each key its own code reads: the Snakefile and rule files and
# rpo/ (Snakemake itself dumps the whole config to JSON for a checksum: that is no use of a key).
TRACING_SNAKEFILE = """
import atexit, json, os, sys
import rpo.config

sys.path.insert(0, {tests!r})
import read_tracker

OURS = ({root!r} + "/rpo/", {root!r} + "/workflow/", {root!r} + "/Snakefile")
PASS_THROUGH = (os.path.dirname(json.__file__), rpo.config.__file__, read_tracker.__file__)


class WorkflowReads(read_tracker.ReadTracker):
    def _record(self, path):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(PASS_THROUGH):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(OURS):
            self.reads.add(path)


_validate, _reads = rpo.config.validate_config, set()
rpo.config.validate_config = lambda config: WorkflowReads(_validate(config), _reads)
atexit.register(lambda: open({out!r}, "w").write(json.dumps(sorted(map(list, _reads)))))

include: {root!r} + "/Snakefile"
"""


def profile_validated(name):
    return validate_config(profile(name))


@pytest.mark.parametrize("name", PROFILES)
def test_every_schema_key_reaches_the_rules(tmp_path, name):
    """Plan the whole DAG (every rule's input functions and params, every shell command) on a config
    that records each key read; a key the schema declares and the profile sets but nothing reads
    would be silently ignored (judge.max_tokens once was)."""
    out = tmp_path / "reads.json"
    wrapper = tmp_path / "Snakefile"
    wrapper.write_text(TRACING_SNAKEFILE.format(out=str(out), root=str(ROOT), tests=str(ROOT / "tests")))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(wrapper), "-n", "-p", "--cores", "1",
                             "--configfile", str(ROOT / name), "--directory", str(tmp_path), "all"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "python -m rpo.judge " in result.stdout and "-m rpo.train " in result.stdout  # the whole DAG was planned
    reads = {tuple(path) for path in json.loads(out.read_text())}
    config = profile_validated(name)
    unread = [".".join(p) for p in schema_leaves() if present(config, p) and p not in reads]
    assert not unread, f"{name}: schema keys set but never read by the workflow: {unread}"


def test_hand_run_cli_defaults_agree_with_the_pipeline_defaults():
    """The CLIs keep defaults for use by hand; they must be the pipeline's, not a second opinion."""
    from rpo.generate import build_parser as generate_parser
    from rpo.judge.__main__ import build_parser as judge_parser
    from rpo.refcache import build_parser as refcache_parser
    from rpo.train_config import DEFAULTS

    properties = load_schema()["properties"]

    def schema_default(section, key):
        return properties[section]["properties"][key]["default"]

    generate = generate_parser().parse_args(["--model", "m", "--records", "r", "--out", "o"])
    for key in ("n_prompts", "max_new_tokens", "top_p", "top_k", "temperature", "batch_size"):
        assert getattr(generate, "n" if key == "n_prompts" else key) == schema_default("generation", key), key
    judge = judge_parser().parse_args(["--samples", "s", "--task", "dialogue", "--out", "o", "--summary", "j"])
    for key in ("model", "concurrency", "max_tokens", "timeout"):
        assert getattr(judge, key) == schema_default("judge", key), key
    refcache = refcache_parser().parse_args(["--model", "m", "--records", "r", "--out", "o"])
    assert (refcache.max_length, refcache.max_prompt_length, refcache.dtype) == (
        DEFAULTS["max_length"], DEFAULTS["max_prompt_length"], DEFAULTS["dtype"])
    assert refcache.batch_size == schema_default("training", "reference_batch_size")
    assert refcache.chunk_records == schema_default("training", "reference_chunk_records")
    assert (generate.max_prompt_length, generate.dtype) == (DEFAULTS["max_prompt_length"], DEFAULTS["dtype"])
