import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rpo.data.records import format_turns
from rpo.data.tokenize import collate, tokenize_example, tokenize_pair
from rpo.errors import ConfigError

PAD, EOS, BOS = 0, 1, 2
PROMPT = "w0 w1 w2 w3 w4 w5"      # ids 10..15
RESPONSE = "w6 w7 w8"             # ids 16..18


@pytest.fixture(scope="module")
def word_tokenizer():
    """Whitespace word-level tokenizer with known ids; it adds BOS when asked for special tokens."""
    vocab = {"[PAD]": PAD, "[EOS]": EOS, "[BOS]": BOS, "[UNK]": 3, "<|user|>": 4, "<|assistant|>": 5}
    vocab.update({f"w{i}": 10 + i for i in range(10)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="[EOS]", pad_token="[PAD]",
                                   bos_token="[BOS]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def bpe_tokenizer():
    sentences = ["the cat sat on the mat", "a dog ran in the park", "summaries should be short and precise",
                 "<|user|> hello <|assistant|> hi there"] * 5
    core = Tokenizer(models.BPE(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[PAD]", "[EOS]", "[UNK]"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]")


def test_no_truncation_masks_prompt_and_appends_eos(word_tokenizer):
    out = tokenize_example(word_tokenizer, PROMPT, RESPONSE, 32, 16, "keep_end")
    assert out["input_ids"] == [10, 11, 12, 13, 14, 15, 16, 17, 18, EOS]   # no BOS although the tokenizer adds one
    assert out["labels"] == [-100] * 6 + [16, 17, 18, EOS]


def test_keep_end_keeps_the_last_prompt_tokens(word_tokenizer):
    out = tokenize_example(word_tokenizer, PROMPT, RESPONSE, 8, 4, "keep_end")  # 6 + 4 > 8: the prompt is cut
    assert out["input_ids"] == [12, 13, 14, 15, 16, 17, 18, EOS]
    assert out["labels"] == [-100] * 4 + [16, 17, 18, EOS]


def test_keep_start_keeps_the_first_prompt_tokens(word_tokenizer):
    out = tokenize_example(word_tokenizer, PROMPT, RESPONSE, 8, 4, "keep_start")
    assert out["input_ids"] == [10, 11, 12, 13, 16, 17, 18, EOS]
    assert out["labels"] == [-100] * 4 + [16, 17, 18, EOS]


def test_keep_start_keeps_the_closing_assistant_marker(word_tokenizer):
    prompt = format_turns([("user", PROMPT)])  # ids 4, 10..15, 5
    out = tokenize_example(word_tokenizer, prompt, RESPONSE, 10, 4, "keep_start")
    assert out["input_ids"] == [4, 10, 11, 5, 16, 17, 18, EOS]
    assert out["labels"] == [-100] * 4 + [16, 17, 18, EOS]


def test_response_cut_after_prompt_so_total_fits(word_tokenizer):
    out = tokenize_example(word_tokenizer, PROMPT, RESPONSE, 6, 4, "keep_end")
    assert out["input_ids"] == [12, 13, 14, 15, 16, 17]
    assert out["labels"] == [-100, -100, -100, -100, 16, 17]
    exact = tokenize_example(word_tokenizer, PROMPT, RESPONSE, 8, 4, "keep_start")
    assert exact["input_ids"] == [10, 11, 12, 13, 16, 17, 18, EOS]


def test_the_prompt_is_cut_only_when_the_pair_does_not_fit(word_tokenizer):
    """The public code's rule: max_prompt_length applies only when prompt + longest response > max_length."""
    whole = tokenize_example(word_tokenizer, PROMPT, RESPONSE, 32, 4, "keep_end")
    assert whole["input_ids"] == [10, 11, 12, 13, 14, 15, 16, 17, 18, EOS]
    # A long rejected response decides the cut for the chosen one too: one prompt per pair.
    chosen, rejected = tokenize_pair(word_tokenizer, PROMPT, [RESPONSE, "w6 w7 w8 w9 w9 w9"], 12, 4, "keep_end")
    assert chosen["input_ids"] == [12, 13, 14, 15, 16, 17, 18, EOS]
    assert rejected["input_ids"] == [12, 13, 14, 15, 16, 17, 18, 19, 19, 19, EOS]
    # Still too long after the prompt cut: every response is cut to max_length - max_prompt_length,
    # also where the prompt was already shorter than max_prompt_length (DPO's tokenize_batch_element).
    short = tokenize_pair(word_tokenizer, "w0 w1", ["w6 w7 w8 w9 w9 w9 w9", RESPONSE], 8, 4, "keep_end")
    assert [s["input_ids"] for s in short] == [[10, 11, 16, 17, 18, 19], [10, 11, 16, 17, 18, EOS]]


def test_role_markers_are_single_tokens_in_formatted_prompt(word_tokenizer):
    prompt = format_turns([("user", "w1 w2")])
    out = tokenize_example(word_tokenizer, prompt, "w3", 16, 8, "keep_end")
    assert out["input_ids"] == [4, 11, 12, 5, 13, EOS]


def test_bpe_boundary_is_exact(bpe_tokenizer):
    prompt = format_turns([("user", "the cat sat on the mat")])
    response = " a dog ran in the park"
    out = tokenize_example(bpe_tokenizer, prompt, response, 512, 256, "keep_end")
    prompt_ids = bpe_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = bpe_tokenizer(response, add_special_tokens=False)["input_ids"]
    assert out["input_ids"] == prompt_ids + response_ids + [bpe_tokenizer.eos_token_id]
    n_prompt = out["labels"].count(-100)
    assert n_prompt == len(prompt_ids)
    assert bpe_tokenizer.decode(out["input_ids"][:n_prompt]) == prompt
    assert bpe_tokenizer.decode(out["labels"][n_prompt:], skip_special_tokens=True) == response


@pytest.mark.parametrize("kwargs, key", [
    ({"truncation": "keep_middle"}, "truncation"),
    ({"truncation": None}, "truncation"),
    ({"max_length": 0}, "max_length"),
    ({"max_prompt_length": 2.5}, "max_prompt_length"),
    ({"max_length": 8, "max_prompt_length": 8}, "max_prompt_length"),
])
def test_bad_settings_raise_config_error_naming_the_key(word_tokenizer, kwargs, key):
    settings = {"max_length": 16, "max_prompt_length": 8, "truncation": "keep_end", **kwargs}
    with pytest.raises(ConfigError, match=f"^{key}:"):
        tokenize_example(word_tokenizer, PROMPT, RESPONSE, **settings)


def test_tokenizer_without_eos_is_refused(word_tokenizer):
    no_eos = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer.backend_tokenizer, pad_token="[PAD]")
    with pytest.raises(ConfigError, match="eos_token_id"):
        tokenize_example(no_eos, PROMPT, RESPONSE, 16, 8, "keep_end")


def test_collate_right_pads_with_masks():
    examples = [
        {"input_ids": [10, 11, 12, 1], "labels": [-100, -100, 12, 1], "record_index": 4},
        {"input_ids": [13, 1], "labels": [-100, 1]},
    ]
    batch = collate(examples, pad_token_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    assert batch["input_ids"].tolist() == [[10, 11, 12, 1], [13, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 1], [-100, 1, -100, -100]]


def test_collate_rejects_bad_input():
    with pytest.raises(ValueError, match="no examples"):
        collate([], 0)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        collate([{"input_ids": [1], "labels": [1]}], None)
    with pytest.raises(ValueError, match="example 1 has 2 input_ids but 1 labels"):
        collate([{"input_ids": [1], "labels": [1]}, {"input_ids": [1, 2], "labels": [2]}], 0)
