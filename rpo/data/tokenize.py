"""Turn (prompt, response) text into training ids with the prompt masked out, and pad batches."""
from __future__ import annotations

from typing import Sequence

import torch

from rpo.data.records import ASSISTANT
from rpo.errors import ConfigError

IGNORE_INDEX = -100
TRUNCATION_SIDES = ("keep_end", "keep_start")


def _check_lengths(max_length, max_prompt_length) -> None:
    for key, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
    if max_prompt_length >= max_length:
        raise ConfigError(
            f"max_prompt_length: {max_prompt_length} leaves no room for the response "
            f"within max_length {max_length}"
        )


def tokenize_example(tokenizer, prompt: str, response: str, max_length: int, max_prompt_length: int,
                     truncation: str) -> dict:
    """Return {"input_ids", "labels"}: prompt ids (label -100) then response ids ending with EOS.

    Prompt and response are tokenised separately, without special tokens, and concatenated, so the
    boundary between them is exact. The prompt is cut to `max_prompt_length` first, keeping its end
    (dialogue history, "keep_end") or its start (a post to summarise, "keep_start", which still ends
    with the assistant marker); then the
    response is cut so the whole fits `max_length` (a cut response loses its EOS, as in DPO's code).
    """
    if truncation not in TRUNCATION_SIDES:
        raise ConfigError(f"truncation: must be one of {', '.join(TRUNCATION_SIDES)}, got {truncation!r}")
    _check_lengths(max_length, max_prompt_length)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("tokenizer: has no eos_token_id; set eos_token before tokenising")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [eos]
    if len(prompt_ids) > max_prompt_length:
        if truncation == "keep_end":
            prompt_ids = prompt_ids[-max_prompt_length:]
        elif prompt.endswith(ASSISTANT):
            # Keep the post's start but also the closing assistant marker: without it the model
            # never sees where its answer begins.
            tail = list(tokenizer(ASSISTANT, add_special_tokens=False)["input_ids"])
            body = list(tokenizer(prompt[: -len(ASSISTANT)], add_special_tokens=False)["input_ids"])
            prompt_ids = body[: max(max_prompt_length - len(tail), 0)] + tail
            prompt_ids = prompt_ids[-max_prompt_length:]
        else:
            prompt_ids = prompt_ids[:max_prompt_length]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
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
