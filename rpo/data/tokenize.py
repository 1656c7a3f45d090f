"""Turn (prompt, response) text into training ids with the prompt masked out, and pad batches.

`prompt_ids` is the one prompt cut and `pair_prompt_ids` the one rule for when it applies (the public
code's: only when prompt + longest response exceed max_length); training, the reference cache, the
prompt embeddings and generation all use them.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rpo.data.records import ASSISTANT, PreferenceRecord
from rpo.errors import ConfigError

IGNORE_INDEX = -100
TRUNCATION_SIDES = ("keep_end", "keep_start")


def _check_positive(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be a positive integer, got {value!r}")


def _check_truncation(truncation) -> None:
    if truncation not in TRUNCATION_SIDES:
        raise ConfigError(f"truncation: must be one of {', '.join(TRUNCATION_SIDES)}, got {truncation!r}")


def _check_lengths(max_length, max_prompt_length) -> None:
    _check_positive("max_length", max_length)
    _check_positive("max_prompt_length", max_prompt_length)
    if max_prompt_length >= max_length:
        raise ConfigError(
            f"max_prompt_length: {max_prompt_length} leaves no room for the response "
            f"within max_length {max_length}"
        )


def prompt_ids(tokenizer, prompt: str, max_prompt_length: int | None, truncation: str) -> list[int]:
    """The prompt's ids (no special tokens) cut to `max_prompt_length` (None: no cut), as the model trains on them.

    "keep_end" keeps the end (dialogue history); "keep_start" keeps the start (a post to summarise) and,
    when the prompt ends with the assistant marker, still ends with it: without it the model never sees
    where its answer begins. Training, the reference cache and generation all cut prompts here.
    """
    _check_truncation(truncation)
    if max_prompt_length is not None:
        _check_positive("max_prompt_length", max_prompt_length)
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids
    if truncation == "keep_end":
        return ids[-max_prompt_length:]
    if not prompt.endswith(ASSISTANT):
        return ids[:max_prompt_length]
    tail = list(tokenizer(ASSISTANT, add_special_tokens=False)["input_ids"])
    body = list(tokenizer(prompt[: -len(ASSISTANT)], add_special_tokens=False)["input_ids"])
    return (body[: max(max_prompt_length - len(tail), 0)] + tail)[-max_prompt_length:]


def pair_prompt_ids(tokenizer, prompt: str, responses: Sequence[str], max_length: int, max_prompt_length: int,
                    truncation: str) -> list[int]:
    """The prompt as training cuts it for these responses (the public code's DPO tokenisation): whole,
    unless the prompt plus the longest response with its EOS exceeds `max_length`; then cut to
    `max_prompt_length` by `prompt_ids`. Training, the reference cache, the prompt embeddings and
    generation all decide the cut here, so each sees the prompt the policy trains on."""
    _check_lengths(max_length, max_prompt_length)
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses) + 1
    ids = prompt_ids(tokenizer, prompt, None, truncation)
    if len(ids) + longest > max_length:
        ids = prompt_ids(tokenizer, prompt, max_prompt_length, truncation)
    return ids


def tokenize_pair(tokenizer, prompt: str, responses: Sequence[str], max_length: int, max_prompt_length: int,
                  truncation: str) -> list[dict]:
    """One {"input_ids", "labels"} per response: prompt ids (label -100), then the response ids ending
    with EOS.

    Prompt and responses are tokenised separately, without special tokens, and concatenated, so the
    boundary is exact. As in the public code (DPO's tokenize_batch_element): the prompt is cut
    (`pair_prompt_ids`) only when it and the longest response exceed `max_length`; if they still do,
    every response is cut to `max_length - max_prompt_length` tokens (a cut response loses its EOS).
    """
    _check_truncation(truncation)
    _check_lengths(max_length, max_prompt_length)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("tokenizer: has no eos_token_id; set eos_token before tokenising")
    response_ids = [list(tokenizer(r, add_special_tokens=False)["input_ids"]) + [eos] for r in responses]
    prompt_part = pair_prompt_ids(tokenizer, prompt, responses, max_length, max_prompt_length, truncation)
    if len(prompt_part) + max(map(len, response_ids)) > max_length:
        response_ids = [ids[: max_length - max_prompt_length] for ids in response_ids]
    return [{"input_ids": prompt_part + ids, "labels": [IGNORE_INDEX] * len(prompt_part) + ids}
            for ids in response_ids]


def tokenize_example(tokenizer, prompt: str, response: str, max_length: int, max_prompt_length: int,
                     truncation: str) -> dict:
    """`tokenize_pair` of a prompt with one response (an SFT example, a KL pair)."""
    return tokenize_pair(tokenizer, prompt, [response], max_length, max_prompt_length, truncation)[0]


def default_truncation(records: Sequence[PreferenceRecord]) -> str:
    """The truncation side the records' metadata names (prepare.py sets it per task); keep_end if none."""
    return records[0].metadata.get("truncation", "keep_end") if records else "keep_end"


def tokenize_records(records, tokenizer, max_length, max_prompt_length, truncation) -> dict[str, list[dict]]:
    """Tokenise every record's chosen and rejected sequence once (KTO's KL sequences: rpo.kto)."""
    def tok(prompt, responses):
        return tokenize_pair(tokenizer, prompt, responses, max_length, max_prompt_length, truncation)

    pairs = [tok(r.prompt, [r.chosen, r.rejected]) for r in records]  # the pair decides the prompt cut
    return {
        "chosen": [chosen for chosen, _ in pairs],
        "rejected": [rejected for _, rejected in pairs],
    }


def collate(examples: Sequence[dict], pad_token_id: int) -> dict:
    """Right-pad examples into LongTensors input_ids, attention_mask and labels (-100 on padding).

    Keys other than input_ids and labels are ignored: the trainer keeps its own record indices.
    """
    if not examples:
        raise ValueError("collate: no examples")
    if pad_token_id is None:
        raise ValueError("collate: pad_token_id is None; set the tokenizer's pad token")
    for position, example in enumerate(examples):
        if len(example["input_ids"]) != len(example["labels"]):
            raise ValueError(
                f"collate: example {position} has {len(example['input_ids'])} input_ids "
                f"but {len(example['labels'])} labels"
            )
    width = max(len(example["input_ids"]) for example in examples)
    shape = (len(examples), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        input_ids[row, :length] = torch.tensor(example["input_ids"], dtype=torch.long)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
