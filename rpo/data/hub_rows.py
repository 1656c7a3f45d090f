"""Per-source row parsers of the paper's hub datasets: one raw row -> (prompt, chosen, rejected, metadata).

HH and TL;DR follow the public code's dataloader.py (get_hh, get_tldr) exactly, so every row it keeps is
kept here, with the same texts: responses are not stripped, and runs of 2+ spaces or tabs are collapsed to
one space in the prompt and in both responses (Example.remove_extra_spaces). A pair it keeps although it
carries no preference (identical or empty responses) is kept too; rpo.data.loaders counts such pairs in the
LoadReport. What the public code would crash on (a field of the wrong type) is a RowProblem.
"""
from __future__ import annotations

import re

from rpo.data.records import ASSISTANT, USER, format_turns

DIALOGUE = {"task": "dialogue", "truncation": "keep_end"}
SUMMARIZATION = {"task": "summarization", "truncation": "keep_start"}


class RowProblem(Exception):
    """One raw row cannot become a record; `kind` is a short label the skip report counts by."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


_EXTRA_SPACES = re.compile(r"[ \t]{2,}")


def collapse_spaces(text: str) -> str:
    """The public code's remove_extra_spaces, applied to HH's and TL;DR's prompts and responses."""
    return _EXTRA_SPACES.sub(" ", text)


def _string(row: dict, name: str) -> str:
    if not isinstance(row[name], str):
        raise RowProblem("not a string", f"{name} is {type(row[name]).__name__}")
    return row[name]


# ---- Anthropic HH ------------------------------------------------------------------------------

_HH_RESPONSE_START = "\n\nAssistant: "  # the response is what follows its LAST occurrence in `chosen`
_HH_TURN = re.compile(r"\s*(Human:|Assistant:)\s+")  # a marker anywhere, not only after "\n\n"
_HH_MARKERS = (("Human", re.compile(r"\s*Human:\s*"), USER), ("Assistant", re.compile(r"\s*Assistant:\s*"), ASSISTANT))
_HH_NAMES = {"user": "Human", "assistant": "Assistant"}


def hh_prompt(raw_prompt: str) -> str:
    """The raw transcript up to the response -> the marked prompt: split at every marker, each chunk that
    starts with a marker name has its markers replaced, empty chunks dropped, spaces collapsed."""
    chunks = []
    for chunk in _HH_TURN.split(raw_prompt):
        for name, pattern, marker in _HH_MARKERS:
            if chunk.startswith(name):
                chunk = pattern.sub(lambda _: marker, chunk)
                break
        if chunk:
            chunks.append(chunk)
    return collapse_spaces("".join(chunks))


def hh_row(row: dict):
    chosen, rejected = _string(row, "chosen"), _string(row, "rejected")
    # As the public code: the prompt is `chosen` up to its last "\n\nAssistant: " (without one, its first
    # 12 characters), and both responses start at that prompt's length; the histories are not compared.
    raw_prompt = chosen[: chosen.rfind(_HH_RESPONSE_START) + len(_HH_RESPONSE_START)]
    prompt = hh_prompt(raw_prompt)
    n_turns = max(len(_HH_TURN.findall(raw_prompt)) - 1, 0)  # turns before the response (the last marker opens it)
    return (prompt, collapse_spaces(chosen[len(raw_prompt):]), collapse_spaces(rejected[len(raw_prompt):]),
            {**DIALOGUE, "n_turns": n_turns})


def hh_transcript(turns) -> str:
    """[(role, text)] -> "\\n\\nHuman: ...\\n\\nAssistant: ...", the hub's HH transcript format."""
    return "".join(f"\n\n{_HH_NAMES[role]}: {text}" for role, text in turns)


# ---- OpenAI TL;DR (summarize_from_feedback, comparisons) ------------------------------------------

def tldr_prompt(info) -> str:
    """The post only, as the public code: no subreddit, title or "TL;DR:". A row without a post (the
    CNN/DM articles) gets the empty post, so all of them share one prompt."""
    if not isinstance(info, dict):
        raise RowProblem("bad info", f"info is {type(info).__name__}, expected an object")
    post = info.get("post")
    if post is not None and not isinstance(post, str):
        raise RowProblem("bad info", f"info.post is {type(post).__name__}, expected a string")
    return collapse_spaces(USER + (post or "") + ASSISTANT)


def tldr_row(row: dict):
    prompt = tldr_prompt(row["info"])
    summaries, choice = row["summaries"], row["choice"]
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise RowProblem("bad summaries", "expected a list of exactly two summaries")
    for position, summary in enumerate(summaries):
        if not isinstance(summary, dict) or not isinstance(summary.get("text"), str):
            raise RowProblem("bad summaries", f"summaries[{position}] has no text string")
    if isinstance(choice, bool) or not isinstance(choice, int) or choice not in (0, 1):
        raise RowProblem("bad choice", f"choice must be 0 or 1, got {choice!r}")
    info, extra = row["info"], row.get("extra") or {}
    metadata = {
        **SUMMARIZATION,
        "post_id": info.get("id"),
        "subreddit": info.get("subreddit"),
        "site": info.get("site"),
        "chosen_policy": summaries[choice].get("policy"),
        "rejected_policy": summaries[1 - choice].get("policy"),
        "comparison_split": row.get("split"),
        "confidence": extra.get("confidence") if isinstance(extra, dict) else None,
    }
    return (prompt, collapse_spaces(summaries[choice]["text"]), collapse_spaces(summaries[1 - choice]["text"]),
            metadata)


# ---- UltraFeedback (binarized) -------------------------------------------------------------------

def _messages(value, which: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem("bad messages", f"{which} must be a non-empty list of messages")
    turns = []
    for position, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowProblem("bad messages", f"{which} message {position} has no content string")
        if message.get("role") not in ("user", "assistant"):
            raise RowProblem("bad messages", f"{which} message {position} has role {message.get('role')!r}")
        turns.append((message["role"], message["content"].strip()))
    if turns[-1][0] != "assistant" or len(turns) < 2 or turns[-2][0] != "user":
        raise RowProblem("bad messages", f"{which} must end with a user message then the assistant reply")
    return turns


def _shared_history(chosen_turns, rejected_turns):
    history = chosen_turns[:-1]
    if history != rejected_turns[:-1]:
        differ = next((i for i, (a, b) in enumerate(zip(history, rejected_turns[:-1]), 1) if a != b),
                      min(len(history), len(rejected_turns) - 1) + 1)
        raise RowProblem("histories differ", f"chosen and rejected differ before the final reply (turn {differ})")
    return history


def ultrafeedback_row(row: dict):
    chosen_turns = _messages(row["chosen"], "chosen")
    rejected_turns = _messages(row["rejected"], "rejected")
    history = _shared_history(chosen_turns, rejected_turns)
    metadata = {**DIALOGUE, "prompt_id": row.get("prompt_id"), "score_chosen": row.get("score_chosen"),
                "score_rejected": row.get("score_rejected")}
    return format_turns(history), chosen_turns[-1][1], rejected_turns[-1][1], metadata


# source -> (row parser, the columns every row must have)
RAW_SOURCES = {
    "hh": (hh_row, ("chosen", "rejected")),
    "tldr": (tldr_row, ("info", "summaries", "choice")),
    "ultrafeedback": (ultrafeedback_row, ("chosen", "rejected")),
}
