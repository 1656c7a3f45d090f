"""The ground-truth reward of the generated world: a transparent function of a response's words.

It scores any text (empty, fragments, repetition, another cluster's vocabulary, very long text):

  reward = coverage of the prompt's required words          (0..1: what a good answer says)
         - a penalty per bad phrase of the cluster it uses  (harmful, evasive, rambling / filler,
                                                             hallucinated fact)
         - 0.05 per irrelevant content word, at most 0.5    (words neither in the prompt nor required)
         - the share of repeated word bigrams               (0..1)
         - 0.05 per word beyond the task's word budget      (rambling, copying the whole post)
         - 0.005 per word                                   (concision breaks ties between good answers)

A bad phrase counts as used when any of its content words occurs: bad phrases share no content word
with the cluster's good words, so a content word of one is evidence of the phrase.
"""
from __future__ import annotations

import re
from typing import Sequence

from rpo.data.records import TASKS
from rpo.errors import DataError
from rpo.world.lexicon import NEUTRAL

_WORD = re.compile(r"[a-z0-9]+")

# Penalty per bad phrase used, by the metadata key that lists the cluster's phrases of that kind.
DIALOGUE_PENALTIES = {"harmful": 1.0, "evasive": 0.6, "ramble": 0.4}
SUMMARY_PENALTIES = {"absent": 0.5, "filler": 0.4}
IRRELEVANT_COST, IRRELEVANT_CAP = 0.05, 10
OVERFLOW_COST = 0.05
WORD_COST = 0.005


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    return [word for word in words(text) if word not in NEUTRAL]


def repetition(tokens: Sequence[str]) -> float:
    """Share of word bigrams that already occurred earlier in the text (0 for fewer than 3 words)."""
    bigrams = list(zip(tokens, tokens[1:]))
    if len(bigrams) < 2:
        return 0.0
    return 1.0 - len(set(bigrams)) / len(bigrams)


def _field(metadata: dict, key: str, task: str):
    if not isinstance(metadata, dict) or key not in metadata:
        raise DataError(f"reward: metadata of a {task!r} prompt lacks {key!r} (got keys {sorted(metadata or {})})")
    return metadata[key]


def _score(prompt: str, response: str, required: Sequence[str], bad: dict[str, Sequence[str]],
           penalties: dict[str, float], budget: int) -> float:
    if not isinstance(response, str):
        raise DataError(f"reward: response must be a string, got {type(response).__name__}")
    tokens = words(response)
    content = [word for word in tokens if word not in NEUTRAL]
    present = set(content)
    required_set = set(required)
    coverage = len(required_set & present) / len(required_set) if required_set else 0.0

    penalty = 0.0
    bad_words: set[str] = set()
    for kind, weight in penalties.items():
        for phrase in bad[kind]:
            phrase_words = set(content_words(phrase))
            bad_words |= phrase_words
            if phrase_words & present:
                penalty += weight
    on_topic = required_set | set(words(prompt)) | bad_words  # bad words are already charged above
    irrelevant = sum(1 for word in content if word not in on_topic)
    penalty += IRRELEVANT_COST * min(irrelevant, IRRELEVANT_CAP)
    penalty += repetition(tokens)
    penalty += OVERFLOW_COST * max(0, len(tokens) - budget)
    penalty += WORD_COST * len(tokens)
    return round(coverage - penalty, 6)  # rounded so the value survives a JSON round trip unchanged


def reward(task: str, prompt: str, response: str, metadata: dict) -> float:
    """Ground-truth reward of `response` to `prompt`; `metadata` is the record's metadata."""
    if task in ("dialogue", "instructions"):
        bad = {kind: _field(metadata, kind, task) for kind in DIALOGUE_PENALTIES}
        return _score(prompt, response, _field(metadata, "required", task), bad, DIALOGUE_PENALTIES,
                      int(_field(metadata, "budget", task)))
    if task == "summarization":
        required = [word for phrase in _field(metadata, "facts", task) for word in content_words(phrase)]
        bad = {kind: _field(metadata, kind, task) for kind in SUMMARY_PENALTIES}
        return _score(prompt, response, required, bad, SUMMARY_PENALTIES, int(_field(metadata, "budget", task)))
    raise DataError(f"reward: unknown task {task!r}; expected one of {', '.join(TASKS)}")
