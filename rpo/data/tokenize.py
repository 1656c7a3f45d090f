"""Turn (prompt, response) text into training ids with the prompt masked out, and pad batches.

`tokenize_element` is the public code's `tokenize_batch_element` (dataloader.py:515-590): each response
is tokenised on its own with its prompt (so a pair's two prompts may be cut differently), both texts
are cut as ids, decoded back to text, the EOS appended as text after a space, and the joint text
re-tokenised. Training (SFT, every preference loss, KTO's KL sequences, PPO), the reference cache,
`chosen_logp`, the RPO prompt embeddings and the generation prompts all go through it; `cut_prompt`
is the one prompt cut.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rpo.data.records import ASSISTANT, USER, PreferenceRecord
from rpo.errors import ConfigError

IGNORE_INDEX = -100
TRUNCATION_SIDES = ("keep_end", "keep_start")
# Stored with the reference cache and the prompt embeddings: files from an earlier tokenisation
# (prompt and response ids concatenated, one prompt cut per pair) are refused, not silently reused.
TOKENIZATION = "halos-joint"


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


def check_tokenizer(tokenizer) -> None:
    """A tokenizer must have an EOS (appended to every response) and a pad token (batches are padded)."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    for attribute in ("eos_token", "pad_token"):
        if getattr(tokenizer, attribute) is None or getattr(tokenizer, f"{attribute}_id") is None:
            raise ConfigError(f"tokenizer of {name!r}: has no {attribute}; set {attribute} in the model folder's "
                              f"tokenizer_config.json (or tokenizer.{attribute} before tokenising)")


def _kept_special_ids(tokenizer) -> frozenset[int]:
    """Prompt-format markers that this tokenizer holds as special tokens (our small BPE's role tokens).

    The public code's tokenizers (LLaMA, Mistral) hold "<|user|>" and "<|assistant|>" as plain text, so
    its decode(skip_special_tokens=True) keeps them; ours must keep them too, or a decoded prompt would
    lose its turn markers. Empty for tokenizers where the markers are text: the public code's decode.
    """
    special = set(tokenizer.all_special_ids)
    ids = (tokenizer.convert_tokens_to_ids(marker.strip()) for marker in (USER, ASSISTANT))
    return frozenset(i for i in ids if i in special)


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """`tokenizer.decode(ids, skip_special_tokens=True)`, keeping the prompt markers (`_kept_special_ids`)."""
    kept = _kept_special_ids(tokenizer)
    if not kept:
        return tokenizer.decode(list(ids), skip_special_tokens=True)
    dropped = set(tokenizer.all_special_ids) - kept
    return tokenizer.decode([i for i in ids if i not in dropped], skip_special_tokens=False)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids WITH special tokens (a BOS where the tokenizer adds one), a final EOS popped."""
    ids = list(tokenizer.encode(prompt))
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    return ids


def encode_response(tokenizer, response: str) -> list[int]:
    """The response's ids with a leading BOS and a final EOS popped (the EOS comes back as text)."""
    ids = list(tokenizer.encode(response))
    if ids and ids[0] == tokenizer.bos_token_id:
        ids.pop(0)
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    return ids


def cut_prompt(ids: list[int], max_prompt_length: int, truncation: str) -> list[int]:
    """The one prompt cut: the first (keep_start) or last (keep_end) `max_prompt_length` ids.

    keep_start drops whatever lies past the limit, the closing assistant marker included, as the
    public code does (dataloader.py, tokenize_batch_element: "first truncate prompt").
    """
    _check_truncation(truncation)
    if truncation == "keep_start":
        return ids[:max_prompt_length]
    return ids[-max_prompt_length:]


@dataclass(frozen=True)
class Element:
    """One tokenised (prompt, response): the public code's batch element for one prefix."""

    prompt_text: str        # the prompt as cut and decoded (what RPO embeds, what generation is fed)
    response_text: str      # the response as cut and decoded, + " " + the EOS text
    prompt_ids: list[int]   # tokenizer(prompt_text): the generation input; its length is the label mask's
    input_ids: list[int]    # tokenizer(prompt_text + response_text), jointly
    labels: list[int]       # input_ids with the first len(prompt_ids) positions IGNORE_INDEX
    prompt_cut: bool
    response_cut: bool

    @property
    def example(self) -> dict:
        """{"input_ids", "labels"}: what collate and rpo.scoring take."""
        return {"input_ids": self.input_ids, "labels": self.labels}

    def response_without_eos(self, eos_token: str) -> str:
        """The response text up to its (last) EOS text: the public code's sampled `chosen` (trainers.py,
        `sample`), with the space before the EOS kept."""
        at = self.response_text.rfind(eos_token)
        return self.response_text[:at] if at >= 0 else self.response_text


def _element(tokenizer, prompt_text: str, response_text: str, prompt_cut: bool, response_cut: bool) -> Element:
    prompt_ids = list(tokenizer(prompt_text)["input_ids"])
    input_ids = list(tokenizer(prompt_text + response_text)["input_ids"])
    n_masked = min(len(prompt_ids), len(input_ids))
    labels = [IGNORE_INDEX] * n_masked + input_ids[n_masked:]
    return Element(prompt_text, response_text, prompt_ids, input_ids, labels, prompt_cut, response_cut)


def tokenize_element(tokenizer, prompt: str, response: str, *, max_length: int, max_prompt_length: int,
                     truncation: str) -> Element:
    """Tokenise one response with its prompt exactly as the public code's tokenize_batch_element:

    1. p = encode(prompt), g = encode(response), with special tokens; a final EOS popped from p, a
       leading BOS and a final EOS from g;
    2. if len(p) + len(g) > max_length and len(p) > max_prompt_length: p = `cut_prompt(p)`;
    3. if still too long: g = g[:max_length - len(p)];
    4. prompt_text = decode(p), response_text = decode(g) + " " + eos_token (skipping special tokens);
    5. input_ids = tokenizer(prompt_text + response_text) (BOS first where the tokenizer adds one;
       tokens merge across the boundary as the tokenizer merges them), labels = input_ids with the
       first len(tokenizer(prompt_text)) positions IGNORE_INDEX.
    The sequence can end up a few tokens longer than max_length (the BOS, the " " + EOS), as there.
    """
    _check_truncation(truncation)
    _check_lengths(max_length, max_prompt_length)
    check_tokenizer(tokenizer)
    p, g = encode_prompt(tokenizer, prompt), encode_response(tokenizer, response)
    prompt_cut = len(p) + len(g) > max_length and len(p) > max_prompt_length
    if prompt_cut:
        p = cut_prompt(p, max_prompt_length, truncation)
    response_cut = len(p) + len(g) > max_length
    if response_cut:
        g = g[:max_length - len(p)]
    return _element(tokenizer, decode_text(tokenizer, p), decode_text(tokenizer, g) + " " + tokenizer.eos_token,
                    prompt_cut, response_cut)


def tokenize_prompt(tokenizer, prompt: str, *, max_prompt_length: int | None, truncation: str) -> Element:
    """A prompt with no response to fit (generation without training's max_length): cut whenever it is
    longer than `max_prompt_length` (None: never), decoded and re-tokenised as `tokenize_element` does.
    Its `input_ids` are the prompt's; it has no response to label."""
    _check_truncation(truncation)
    if max_prompt_length is not None:
        _check_positive("max_prompt_length", max_prompt_length)
    check_tokenizer(tokenizer)
    p = encode_prompt(tokenizer, prompt)
    prompt_cut = max_prompt_length is not None and len(p) > max_prompt_length
    if prompt_cut:
        p = cut_prompt(p, max_prompt_length, truncation)
    return _element(tokenizer, decode_text(tokenizer, p), "", prompt_cut, False)


def default_truncation(records: Sequence[PreferenceRecord]) -> str:
    """The truncation side the records' metadata names (prepare.py sets it per task); keep_end if none."""
    return records[0].metadata.get("truncation", "keep_end") if records else "keep_end"


def tokenize_records(records, tokenizer, max_length, max_prompt_length, truncation) -> dict[str, list[dict]]:
    """Every record's chosen and rejected sequence, each response tokenised with its prompt on its own
    (`tokenize_element`); KTO's KL sequences: rpo.kto."""
    def tok(prompt, response):
        return tokenize_element(tokenizer, prompt, response, max_length=max_length,
                                max_prompt_length=max_prompt_length, truncation=truncation).example

    return {
        "chosen": [tok(r.prompt, r.chosen) for r in records],
        "rejected": [tok(r.prompt, r.rejected) for r in records],
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
