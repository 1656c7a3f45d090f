"""Write the pipeline's data folder from either source: the generated world or the paper's datasets.

    python -m rpo.data.prepare --data-config '<JSON of config.yaml's data: section>' --out results/data

Both sources produce the same layout, so every later rule is the same at both scales:
    {out}/{task}/train.jsonl, {out}/{task}/test.jsonl   preference records (task: dialogue, summarization)
    {out}/instructions/eval.jsonl                      eval-only prompts with reference outputs
    {out}/load_report.json                             rows read, loaded and skipped (with reasons)
    {out}/world.json                                   (world only) what the oracle judge regenerates

The generated world comes from rpo.world. The folder is built beside --out and renamed onto it only
when complete, replacing any folder already there, so a failure leaves no partial folder behind.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rpo.data.records import write_eval_prompts, write_records
from rpo.errors import USER_ERRORS, ConfigError
from rpo.io import atomic_path, write_json

log = logging.getLogger(__name__)


def _prepare_world(data_config: dict, out: Path) -> dict:
    from rpo.world import generate_world

    world = generate_world(data_config.get("world") or {})
    world.write(out)
    log.info("world statistics: %s", json.dumps(world.stats()))
    return {"source": "world"}


def _prepare_hub(data_config: dict, out: Path) -> dict:
    from rpo.data.loaders import load_eval_prompts, load_preference_data

    hub, report = data_config.get("hub") or {}, {"source": "hub", "tasks": {}}
    for task in data_config["tasks"]:
        if task not in hub:
            raise ConfigError(f"config key 'data.hub.{task}': missing (data.source is hub)")
        spec = hub[task]
        for split_key, name in (("train_split", "train"), ("test_split", "test")):
            records, load_report = load_preference_data(spec["source"], spec.get("path"), spec[split_key],
                                                        on_error=spec.get("on_error", "raise"))
            if name == "train" and spec.get("max_train"):
                records = records[: spec["max_train"]]
            write_records(out / task / f"{name}.jsonl", records)
            report["tasks"][f"{task}/{name}"] = load_report.to_dict()
            log.info("%s/%s: %d records (%d rows skipped)", task, name, len(records), load_report.n_skipped)
    instructions = hub.get("instructions") or {"source": "alpaca_eval", "path": None, "split": "eval"}
    config = {"config": instructions["config"]} if "config" in instructions else {}  # else the loader's default
    prompts = load_eval_prompts(instructions.get("source", "alpaca_eval"), instructions.get("path"),
                                instructions.get("split", "eval"), **config)
    write_eval_prompts(out / "instructions" / "eval.jsonl", prompts)
    return report


def prepare(data_config: dict, out_dir) -> Path:
    """Build the whole data folder in a temporary folder and move it into place at the end."""
    if not isinstance(data_config, dict):
        raise ConfigError(f"config key 'data': expected a mapping, got {type(data_config).__name__}")
    source = data_config.get("source")
    builders = {"world": _prepare_world, "hub": _prepare_hub}
    if source not in builders:
        raise ConfigError(f"config key 'data.source': must be one of {', '.join(builders)}, got {source!r}")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        report = builders[source](data_config, tmp)
        write_json(tmp / "load_report.json", report)
    return Path(out_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpo.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-config", required=True, help="JSON of the config's data: section")
    parser.add_argument("--out", required=True, help="the data folder (replaced as a whole on success)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        data_config = json.loads(args.data_config)
    except json.JSONDecodeError as exc:
        parser.error(f"--data-config: invalid JSON: {exc.msg}")
    try:
        prepare(data_config, args.out)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
