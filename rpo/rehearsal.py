"""Rehearse the paper profile's code path on this machine, before anyone spends GPU hours.

    python -m rpo.rehearsal [--configfile workflow/rehearsal.yaml] [--cores 2] [-- snakemake args]

1. The generated world of the profile's `data.world` -> {results_dir}/world (rpo.data.prepare).
2. That world in the hub's raw formats -> the folders the profile's `data.hub` reads
   (rpo.world.export: Anthropic/hh-rlhf, openai/summarize_from_feedback, tatsu-lab/alpaca_eval).
3. `snakemake --configfile X` inside rpo.judge.local: an OpenAI-compatible server on 127.0.0.1 whose
   verdicts come from the world's reward. The DAG's `openai` judge backend and alpaca_eval find it
   through OPENAI_BASE_URL, exactly as they would find GPT-4's endpoint. Every request body it
   received is appended to {results_dir}/logs/judge_requests.jsonl (what the judge really sent).

Steps 1-2 run once: a rerun keeps the exported folders (so Snakemake sees nothing new and resumes),
and refuses them if they came from another world config.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rpo.data.records import TASKS
from rpo.errors import ConfigError, DataError

DEFAULT_PROFILE = "workflow/rehearsal.yaml"


def load_profile(path) -> dict:
    from rpo.config import validate_config

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the profile: {exc.strerror}") from exc
    config = validate_config(raw)
    if config["data"]["source"] != "hub" or not config["data"].get("world"):
        raise ConfigError(f"{path}: data.source must be 'hub' with a data.world section to export "
                          "(the rehearsal judges hub-format data with the world's oracle)")
    return config


def prepare_world(config: dict, profile) -> Path:
    """{results_dir}/world and the hub folders of data.hub, written once; returns world.json's path."""
    from rpo.data.prepare import prepare
    from rpo.world.config import WorldConfig
    from rpo.world.export import export_hub_layout

    data = config["data"]
    world_dir = Path(config["results_dir"]) / "world"
    hub_dir = Path(data["hub"]["dialogue"]["path"]).parent
    wanted = WorldConfig.from_dict(data["world"]).to_dict()
    if (world_dir / "world.json").exists():
        found = json.loads((world_dir / "world.json").read_text())
        if found != wanted:
            raise DataError(f"{world_dir}/world.json: written for another data.world than {profile}'s; "
                            f"delete {world_dir} and {hub_dir} (and the results made from them) to rebuild")
    else:
        prepare({"source": "world", "tasks": data["tasks"], "world": data["world"]}, world_dir)
    if not hub_dir.exists():
        section = export_hub_layout(world_dir, hub_dir)
        for key in TASKS:
            if key in data["hub"] and data["hub"][key]["path"] != section[key]["path"]:
                raise ConfigError(f"{profile}: data.hub.{key}.path is {data['hub'][key]['path']!r}; the "
                                  f"export beside data.hub.dialogue.path writes {section[key]['path']!r}")
    return world_dir / "world.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpo.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", default=DEFAULT_PROFILE)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then more snakemake arguments")
    args = parser.parse_args(argv)
    extra = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    try:
        config = load_profile(args.configfile)
        world = prepare_world(config, args.configfile)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.time()
    requests = Path(config["results_dir"]) / "logs" / "judge_requests.jsonl"
    command = [sys.executable, "-m", "rpo.judge.local", "--world", str(world), "--request-log", str(requests), "--",
               sys.executable, "-m", "snakemake", "--configfile", args.configfile, "--cores", str(args.cores),
               *extra]
    code = subprocess.call(command)
    print(f"rehearsal: snakemake exited {code} after {time.time() - start:.0f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
