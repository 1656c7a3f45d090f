"""Write a world data folder in the hub's raw formats, so the paper profile (`data.source: hub`) can
be rehearsed offline on generated data through the real loaders of rpo/data/loaders.py.

    python -m rpo.world.export --data results/data --out DIR      (a data folder written by rpo.data.prepare)
    python -m rpo.world.export --world results/data/world.json --out DIR

writes, laid out like the hub repositories (tests/fixtures/hub/ has the same layouts):
    DIR/hh-rlhf/helpful-base/{train,test}.jsonl.gz          dialogue: {"chosen", "rejected"} transcripts
    DIR/summarize_from_feedback/comparisons/{train,validation}.jsonl   summarization: TL;DR comparisons
    DIR/alpaca_eval/alpaca_eval_gpt4_baseline.json           instructions: [{dataset, instruction, output, generator}]
and prints the `data.hub` section that reads them back. DIR is replaced as a whole on success.

It is the world's: what it writes is the world's data (a World, its world.json, or a data folder of
`data.source: world`), framed by the world's POST_FRAME. It imports no loader (the world does not
depend on the loaders, docs/design.md): of rpo/data only the records and the HH transcript writer
(rpo.data.hub_rows.hh_transcript), whose inverse the HH loader applies; tests/test_export.py reads
every export back through the real loaders.

Round trip: loaded records keep the world's order, prompt (see below), chosen and rejected; ids
become the loaders' f"{source}-{split}-{index}" (index = position in the world's split file, so
"dialogue-train-00007" -> "hh-train-7"); the world's metadata (rewards, clusters) is not carried.
Summarization prompts round-trip exactly too: the TL;DR loader's prompt is info.post alone (the public
code's), so info.post holds the world's whole post text (its SUBREDDIT/TITLE/POST/TL;DR: frame, POST_FRAME of
rpo/world/lexicon_posts.py); the title and subreddit fields are filled from that frame as well.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import string
import sys
from pathlib import Path

from rpo.data.hub_rows import hh_transcript
from rpo.data.records import ASSISTANT, PREFERENCE_TASKS, USER, read_eval_prompts, read_records
from rpo.errors import ConfigError, DataError
from rpo.io import atomic_path, write_jsonl
from rpo.world.generator import World, load_world
from rpo.world.lexicon_posts import POST_FRAME

HH_SUBSET = "helpful-base"
# world split -> the hub's split name of each source (TL;DR's held-out comparisons are "validation").
HH_SPLITS = {"train": "train", "test": "test"}
TLDR_SPLITS = {"train": "train", "test": "validation"}
ALPACA_SPLIT = "eval"
ALPACA_CONFIG = "alpaca_eval_gpt4_baseline"  # the paper's reference outputs (AlpacaEval 2.0's GPT-4 Turbo)
ALPACA_COLUMNS = ("dataset", "instruction", "output", "generator")  # in the hub file's order
GENERATOR = "world"  # generator / policy / worker fields of the raw rows: these texts are the world's

# The hub repositories declare their configs in README.md; `datasets` reads a local folder the same way.
_HH_README = "---\nlicense: mit\n---\n# Exported from the generated world (dialogue) in Anthropic/hh-rlhf's layout\n"
_TLDR_README = """---
dataset_info:
- config_name: comparisons
  features:
  - name: info
    struct:
    - {name: id, dtype: string}
    - {name: post, dtype: string}
    - {name: title, dtype: string}
    - {name: subreddit, dtype: string}
    - {name: site, dtype: string}
    - {name: article, dtype: string}
  - name: summaries
    list:
    - {name: text, dtype: string}
    - {name: policy, dtype: string}
    - {name: note, dtype: string}
  - {name: choice, dtype: int32}
  - {name: worker, dtype: string}
  - {name: batch, dtype: string}
  - {name: split, dtype: string}
  - name: extra
    struct:
    - {name: confidence, dtype: int32}
configs:
- config_name: comparisons
  data_files:
  - split: train
    path: comparisons/train.jsonl
  - split: validation
    path: comparisons/validation.jsonl
---
# Exported from the generated world (summarization) in openai/summarize_from_feedback's layout
"""
# The hub repository declares no configs in its card: its loading script maps config c to the file c.json.
_ALPACA_README = "# Exported from the generated world (instructions) in tatsu-lab/alpaca_eval's layout\n"


# ---- reading the world's records back into their parts -----------------------------------------

_TURN = re.compile("(" + re.escape(USER) + "|" + re.escape(ASSISTANT) + ")")
_ROLE_OF = {USER: "user", ASSISTANT: "assistant"}


def prompt_turns(prompt: str, where: str) -> list[tuple[str, str]]:
    """The inverse of records.format_turns: a marked prompt -> [(role, text)], ending with the user."""
    if not prompt.endswith(ASSISTANT):
        raise DataError(f"{where}: prompt does not end with the assistant marker {ASSISTANT!r}")
    parts = _TURN.split(prompt[: -len(ASSISTANT)])
    if parts[0] or len(parts) < 3:
        raise DataError(f"{where}: prompt does not start with the user marker {USER!r}")
    turns = [(_ROLE_OF[marker], text) for marker, text in zip(parts[1::2], parts[2::2])]
    if any(role == ("assistant" if n % 2 == 0 else "user") for n, (role, _) in enumerate(turns)):
        raise DataError(f"{where}: prompt turns do not alternate user/assistant starting with the user")
    return turns


def _post_pattern() -> re.Pattern:
    """A regex of the world's POST_FRAME with one group per field, so the frame has one home."""
    pieces = []
    for literal, name, _, _ in string.Formatter().parse(POST_FRAME):
        pieces.append(re.escape(literal))
        if name:
            pieces.append(f"(?P<{name}>.*?)")
    return re.compile("".join(pieces), re.DOTALL)


def post_fields(prompt: str, where: str) -> dict:
    """{subreddit, title, body} of a world post prompt (rpo.world.tasks.post_prompt)."""
    turns = prompt_turns(prompt, where)
    match = _post_pattern().fullmatch(turns[0][1]) if len(turns) == 1 else None
    if match is None:
        raise DataError(f"{where}: prompt is not a single-turn world post (POST_FRAME of rpo/world/lexicon_posts.py)")
    return match.groupdict()


def _check_response(text: str, where: str) -> None:
    # The loaders strip turn texts; a world text with outer whitespace would not come back equal.
    if text != text.strip():
        raise DataError(f"{where}: response has leading or trailing whitespace; it would not round-trip")


# ---- one raw row per record ---------------------------------------------------------------------

def hh_row(record, where: str) -> dict:
    history = prompt_turns(record.prompt, where)
    for text in (record.chosen, record.rejected):
        _check_response(text, where)
    return {"chosen": hh_transcript(history + [("assistant", record.chosen)]),
            "rejected": hh_transcript(history + [("assistant", record.rejected)])}


def tldr_row(record, index: int, hub_split: str, where: str) -> dict:
    fields = post_fields(record.prompt, where)
    for text in (record.chosen, record.rejected):
        _check_response(text, where)
    # Alternate the chosen summary's position so both values of `choice` are exercised.
    choice = index % 2
    texts = [record.rejected, record.chosen] if choice else [record.chosen, record.rejected]
    return {
        "info": {"id": record.id, "post": prompt_turns(record.prompt, where)[0][1], "title": fields["title"],
                 "subreddit": fields["subreddit"], "site": None, "article": None},
        "summaries": [{"text": text, "policy": GENERATOR, "note": None} for text in texts],
        "choice": choice, "worker": GENERATOR, "batch": GENERATOR, "split": hub_split,
        "extra": {"confidence": None},
    }


def alpaca_row(item, where: str) -> dict:
    turns = prompt_turns(item.prompt, where)
    if len(turns) != 1:
        raise DataError(f"{where}: an instruction prompt must be a single user turn, got {len(turns)} turns")
    return {"dataset": GENERATOR, "instruction": turns[0][1], "output": item.reference, "generator": GENERATOR}


# ---- the folders ----------------------------------------------------------------------------------

def write_alpaca_eval_json(path: Path, rows) -> None:
    """The hub file's exact format: pandas' records JSON with indent 2 (as tatsu-lab/alpaca_eval writes its
    outputs: no space after a colon, "/" escaped, non-ASCII as \\uXXXX, no final newline)."""
    import pandas as pd

    path.write_text(pd.DataFrame(rows, columns=list(ALPACA_COLUMNS)).to_json(orient="records", indent=2),
                    encoding="utf-8")


def _write_jsonl_gz(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same records give the same bytes, so exports can be compared by hash.
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def _read_source(source):
    """(splits {task: {split: records}}, instructions, where {task/split: file}) of a World, a
    world.json or a data folder."""
    if isinstance(source, World):
        world = source
    elif Path(source).is_file():
        world = load_world(source)
    elif Path(source).is_dir():
        folder = Path(source)
        splits, where = {}, {}
        for task in PREFERENCE_TASKS:
            for split in HH_SPLITS:
                path = folder / task / f"{split}.jsonl"
                if path.is_file():
                    splits.setdefault(task, {})[split] = read_records(path)
                    where[f"{task}/{split}"] = str(path)
        eval_path = folder / "instructions" / "eval.jsonl"
        if not eval_path.is_file():
            raise DataError(f"{eval_path}: no such file (not a data folder written by rpo.data.prepare?)")
        where["instructions"] = str(eval_path)
        return splits, read_eval_prompts(eval_path), where
    else:
        raise DataError(f"{source}: no such world.json or data folder")
    where = {f"{task}/{split}": f"world {task}/{split}" for task in world.splits for split in world.splits[task]}
    return world.splits, world.instructions, {**where, "instructions": "world instructions"}


def export_hub_layout(world_or_data_dir, out_dir) -> dict:
    """Write the hub layouts under out_dir (replaced as a whole); returns the `data.hub` section
    (plus "counts") that loads them back through rpo.data.prepare."""
    splits, instructions, where = _read_source(world_or_data_dir)
    out_dir = Path(out_dir)
    hub: dict = {}
    counts: dict = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if "dialogue" in splits:
            (tmp / "hh-rlhf").mkdir()
            (tmp / "hh-rlhf" / "README.md").write_text(_HH_README, encoding="utf-8")
            for split, records in splits["dialogue"].items():
                origin = where[f"dialogue/{split}"]
                rows = [hh_row(r, f"{origin}, row {n}") for n, r in enumerate(records, start=1)]
                _write_jsonl_gz(tmp / "hh-rlhf" / HH_SUBSET / f"{HH_SPLITS[split]}.jsonl.gz", rows)
                counts[f"dialogue/{split}"] = len(rows)
            hub["dialogue"] = {"source": "hh", "path": str(out_dir / "hh-rlhf"), "train_split": "train",
                               "test_split": HH_SPLITS["test"], "on_error": "raise"}
        if "summarization" in splits:
            folder = tmp / "summarize_from_feedback"
            (folder / "comparisons").mkdir(parents=True)
            (folder / "README.md").write_text(_TLDR_README, encoding="utf-8")
            for split, records in splits["summarization"].items():
                origin, hub_split = where[f"summarization/{split}"], TLDR_SPLITS[split]
                rows = [tldr_row(r, n - 1, hub_split, f"{origin}, row {n}") for n, r in enumerate(records, start=1)]
                write_jsonl(folder / "comparisons" / f"{hub_split}.jsonl", rows)
                counts[f"summarization/{split}"] = len(rows)
            hub["summarization"] = {"source": "tldr", "path": str(out_dir / "summarize_from_feedback"),
                                    "train_split": "train", "test_split": TLDR_SPLITS["test"], "on_error": "raise"}
        rows = [alpaca_row(item, f"{where['instructions']}, row {n}") for n, item in enumerate(instructions, start=1)]
        (tmp / "alpaca_eval").mkdir()
        (tmp / "alpaca_eval" / "README.md").write_text(_ALPACA_README, encoding="utf-8")
        write_alpaca_eval_json(tmp / "alpaca_eval" / f"{ALPACA_CONFIG}.json", rows)
        counts["instructions"] = len(rows)
        hub["instructions"] = {"source": "alpaca_eval", "path": str(out_dir / "alpaca_eval"), "config": ALPACA_CONFIG,
                               "split": ALPACA_SPLIT}
    return {**hub, "counts": counts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpo.world.export", description=__doc__.split("\n\n")[0])
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--data", help="a data folder written by rpo.data.prepare (world source)")
    given.add_argument("--world", help="a world.json (the world is regenerated from it)")
    parser.add_argument("--out", required=True, help="the export folder (replaced as a whole on success)")
    args = parser.parse_args(argv)
    try:
        hub = export_hub_layout(args.data or args.world, args.out)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(hub, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
