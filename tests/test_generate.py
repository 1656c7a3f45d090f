"""Generation on a tiny random GPT-2 built in-test: prompt selection, left padding, seeding, output rows."""
import json
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rpo.data.records import ASSISTANT, EvalPrompt, PreferenceRecord
from rpo.data.tokenize import cut_prompt, tokenize_element, tokenize_prompt
from rpo.errors import ConfigError
from rpo.generate import generate, main, select_prompts
from rpo.io import read_jsonl, write_jsonl

torch.set_num_threads(1)
CORPUS = [
    "the cat sat on the mat and looked at the dog",
    "a summary should keep the important points of the post",
    "how do I bake bread at home with flour water and salt",
    "the assistant answers questions helpfully and briefly",
] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<pad>")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompt_rows(texts):
    return [{"id": f"p{i}", "prompt": f"\n<|user|>\n{t}\n<|assistant|>\n", "chosen": f"ref {i}", "metadata": {}}
            for i, t in enumerate(texts)]


def run(model_dir, tmp_path, prompts, name="s.jsonl", **kwargs):
    # the tiny model's generation config sets no temperature: tests state one unless they test that
    options = dict(max_new_tokens=8, batch_size=2, seed=1, progress=False, device="cpu", temperature=1.0)
    options.update(kwargs)
    return generate(model_dir, prompts, tmp_path / name, **options)


def test_select_prompts_is_seeded_unique_and_capped():
    records = [PreferenceRecord(f"r{i}", f"post {i // 2}", f"good {i}", f"bad {i}", {}) for i in range(20)]
    first = select_prompts(records, n=5, seed=1)
    assert first == select_prompts(records, n=5, seed=1)
    assert [r["id"] for r in first] != [r["id"] for r in select_prompts(records, n=5, seed=2)]
    assert len({r["prompt"] for r in first}) == 5
    by_prompt = {r["prompt"]: r for r in select_prompts(records, n=100, seed=3)}
    assert len(by_prompt) == 10  # capped at the number of unique prompts
    assert by_prompt["post 4"]["id"] == "r8" and by_prompt["post 4"]["chosen"] == "good 8"  # first pair kept
    assert by_prompt["post 4"]["rejected"] == "bad 8"
    evals = select_prompts([EvalPrompt("e0", "say hi", "hi!", {"instruction": "say hi"})], n=1, seed=0)
    assert evals == [{"id": "e0", "prompt": "say hi", "chosen": "hi!", "rejected": None,
                      "metadata": {"instruction": "say hi"}}]
    with pytest.raises(ConfigError, match="n: must be a positive"):
        select_prompts(records, n=0, seed=1)


def test_greedy_batched_left_padding_matches_unpadded_generation(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = prompt_rows(["the cat", "how do I bake bread at home with flour water and salt please"])
    rows = run(model_dir, tmp_path, prompts, do_sample=False, max_new_tokens=6)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for prompt, row in zip(prompts, rows):
        ids = torch.tensor([tokenizer(prompt["prompt"], add_special_tokens=False)["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                             pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert row["response"] == expected
        assert prompt["prompt"].strip() not in row["response"]


def test_sampling_is_deterministic_and_seeded_per_batch(model_dir, tmp_path):
    texts = ["the cat sat", "a summary", "how do I bake", "the assistant answers", "the dog", "bread"]
    first = run(model_dir, tmp_path, prompt_rows(texts), name="a.jsonl", max_new_tokens=12)
    again = run(model_dir, tmp_path, prompt_rows(texts), name="b.jsonl", max_new_tokens=12)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert first == again
    other_seed = run(model_dir, tmp_path, prompt_rows(texts), name="c.jsonl", max_new_tokens=12, seed=2)
    assert [r["response"] for r in other_seed] != [r["response"] for r in first]
    # Change only the first batch: the later batches must not notice.
    changed = run(model_dir, tmp_path, prompt_rows(["salt and flour", "water"] + texts[2:]), name="d.jsonl",
                  max_new_tokens=12)
    assert [r["response"] for r in changed[2:]] == [r["response"] for r in first[2:]]


def test_output_rows(model_dir, tmp_path):
    prompts = prompt_rows(["the cat", "a summary of the post", "bread"])
    prompts[1]["metadata"] = {"truncation": "keep_start", "instruction": "x"}
    rows = run(model_dir, tmp_path, prompts, max_new_tokens=5, top_p=0.9, temperature=0.7)
    assert read_jsonl(tmp_path / "s.jsonl") == rows
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert [r["chosen"] for r in rows] == ["ref 0", "ref 1", "ref 2"]
    assert rows[1]["metadata"] == {"truncation": "keep_start", "instruction": "x"}
    assert rows[0]["model"] == str(model_dir)
    assert rows[0]["sampling"] == {"do_sample": True, "max_new_tokens": 5, "max_length": None, "max_prompt_length": 256,
                                   "train_max_length": None,
                                   "seed": 1, "batch_size": 2, "top_p": 0.9, "top_k": 50, "temperature": 0.7,
                                   "new_token_budget": 5}
    assert all(row["response"] == row["response"].strip() for row in rows)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    single_tokens = {tokenizer.decode([t], skip_special_tokens=True).strip() for t in range(len(tokenizer))}
    one_token = run(model_dir, tmp_path, prompts, name="one.jsonl", max_new_tokens=1)
    assert all(row["response"] in single_tokens for row in one_token)  # only the new token, nothing of the prompt


def test_max_length_budgets_prompt_plus_response_over_the_padded_batch(model_dir, tmp_path, monkeypatch):
    """The public code's HF generate(max_length=L) on a left-padded batch: every row of a batch gets
    L minus the batch's padded width, so no sequence (pads included) exceeds L."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["the cat sat on the mat and looked at the dog", "bread", "a summary of the post", "the dog"]
    prompts = prompt_rows(texts)
    widths = [len(tokenize_prompt(tokenizer, p["prompt"], max_prompt_length=None, truncation="keep_end").prompt_ids)
              for p in prompts]
    seen = []
    original = GPT2LMHeadModel.generate

    def spy(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        seen.append((kwargs["input_ids"].shape[1], kwargs["max_new_tokens"], kwargs["eos_token_id"], output.shape[1]))
        assert "stop_strings" not in kwargs
        return output

    monkeypatch.setattr(GPT2LMHeadModel, "generate", spy)
    max_length = max(widths) + 7
    rows = run(model_dir, tmp_path, prompts, max_length=max_length, max_new_tokens=999, max_prompt_length=max(widths))
    batch_widths = [max(widths[0:2]), max(widths[2:4])]
    assert [(w, b) for w, b, _, _ in seen] == [(w, max_length - w) for w in batch_widths]
    assert all(eos == tokenizer.eos_token_id and total <= max_length for _, _, eos, total in seen)
    budgets = [row["sampling"]["new_token_budget"] for row in rows]
    assert budgets == [max_length - batch_widths[0]] * 2 + [max_length - batch_widths[1]] * 2
    assert budgets[1] < max_length - widths[1]  # the short prompt pays for its batch's padding
    assert all(row["sampling"]["max_length"] == max_length and row["sampling"]["max_new_tokens"] is None
               for row in rows)
    with pytest.raises(ConfigError, match="generation.max_length: 8 leaves no room .* max_prompt_length 8"):
        run(model_dir, tmp_path, prompts, max_length=8, max_prompt_length=8)


def test_prompt_truncation_sides(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert cut_prompt(list(range(10)), 3, "keep_end") == [7, 8, 9]
    assert cut_prompt(list(range(10)), 3, "keep_start") == [0, 1, 2]
    with pytest.raises(ConfigError, match="truncation"):
        tokenize_prompt(tokenizer, "x", max_prompt_length=3, truncation="middle")
    with pytest.raises(ConfigError, match="max_prompt_length"):
        tokenize_prompt(tokenizer, "x", max_prompt_length=0, truncation="keep_end")


def test_a_cut_keep_start_prompt_is_sampled_as_the_test_loader_cuts_it(model_dir, tmp_path, monkeypatch):
    """A post longer than max_prompt_length reaches model.generate as the public code's SFT test loader
    feeds it: tokenizer(prompt_text) of the prompt cut with its chosen response, the assistant marker
    cut away with the rest of the post's end; the sample records that prompt_text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = prompt_rows([" ".join(CORPUS[:2])])  # longer than max_prompt_length, within n_positions
    prompts[0]["metadata"] = {"truncation": "keep_start"}
    max_prompt_length = 12
    seen = []
    original = GPT2LMHeadModel.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GPT2LMHeadModel, "generate", spy)
    n_prompt = len(tokenizer(prompts[0]["prompt"])["input_ids"])
    assert n_prompt > max_prompt_length

    def test_loader(max_length):
        return tokenize_element(tokenizer, prompts[0]["prompt"], prompts[0]["chosen"], max_length=max_length,
                                max_prompt_length=max_prompt_length, truncation="keep_start")

    [row] = run(model_dir, tmp_path, prompts, max_new_tokens=2, max_prompt_length=max_prompt_length,
                train_max_length=n_prompt)  # prompt + chosen do not fit: the prompt is cut
    assert seen == [test_loader(n_prompt).prompt_ids]  # one prompt, batch of one: no left padding
    assert len(seen[0]) <= max_prompt_length and not tokenizer.decode(seen[0]).endswith(ASSISTANT)
    assert row["cut_prompt"] == test_loader(n_prompt).prompt_text and row["prompt"].startswith(row["cut_prompt"])
    # the judge's inputs, as compare.py gets them: the prompt as fed, the chosen as tokenised up to its EOS text
    assert row["prompt_text"] == row["cut_prompt"]
    assert row["chosen_text"] == test_loader(n_prompt).response_without_eos(tokenizer.eos_token)
    assert row["chosen_text"] != row["chosen"] and row["chosen_text"].rstrip() == row["chosen"].rstrip()
    # The pair fits training's max_length: the whole prompt, as the test loader keeps it.
    [row] = run(model_dir, tmp_path, prompts, max_new_tokens=2, max_prompt_length=max_prompt_length,
                train_max_length=512)
    assert seen[1] == test_loader(512).prompt_ids and len(seen[1]) == n_prompt and "cut_prompt" not in row


def test_cli_with_preference_and_eval_records(model_dir, tmp_path):
    records = [{"id": f"r{i}", "prompt": f"\n<|user|>\nquestion {i}\n<|assistant|>\n", "chosen": f"yes {i}",
                "rejected": f"no {i}", "metadata": {"task": "dialogue", "truncation": "keep_end"}}
               for i in range(6)]
    write_jsonl(tmp_path / "test.jsonl", records)
    common = ["--model", str(model_dir), "--n", "4", "--seed", "1", "--max-new-tokens", "4", "--device", "cpu",
              "--temperature", "1.0"]
    assert main(common + ["--records", str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "s.jsonl")]) == 0
    rows = read_jsonl(tmp_path / "s.jsonl")
    assert len(rows) == 4 and all(r["chosen"] == "yes " + r["id"][1:] for r in rows)
    assert [r["id"] for r in rows] == [r["id"] for r in select_prompts(records, 4, seed=1)]

    evals = [{"id": f"e{i}", "prompt": f"\n<|user|>\ntask {i}\n<|assistant|>\n", "reference": f"ref {i}",
              "metadata": {"instruction": f"task {i}"}} for i in range(3)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    assert main(common + ["--records", str(tmp_path / "eval.jsonl"), "--out", str(tmp_path / "e.jsonl")]) == 0
    rows = read_jsonl(tmp_path / "e.jsonl")
    assert sorted(r["chosen"] for r in rows) == ["ref 0", "ref 1", "ref 2"]
    assert all(r["metadata"]["instruction"] == "task " + r["id"][1:] for r in rows)


def test_score_chosen_records_the_models_log_prob_of_the_chosen_response(model_dir, tmp_path):
    """chosen_logp is the definition: full-logits log-softmax over the chosen response as training
    tokenizes it (with its own prompt cut), one unpadded sequence at a time; the samples themselves do not change."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["how do I bake bread", "the cat sat on the mat and looked at the dog for a long while", "a summary"]
    rows = [{**row, "rejected": f"no {i}", "metadata": {"truncation": "keep_end"}}
            for i, row in enumerate(prompt_rows(texts))]
    scored = run(model_dir, tmp_path, rows, "scored.jsonl", score_chosen=True, max_prompt_length=8,
                 train_max_length=16)
    plain = run(model_dir, tmp_path, rows, "plain.jsonl", max_prompt_length=8, train_max_length=16)
    assert [r["response"] for r in scored] == [r["response"] for r in plain] and "chosen_logp" not in plain[0]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    for row, out in zip(rows, scored):
        example = tokenize_element(tokenizer, row["prompt"], row["chosen"], max_length=16, max_prompt_length=8,
                                   truncation="keep_end").example
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"])
        with torch.no_grad():
            logps = model(ids).logits[0, :-1].double().log_softmax(-1)
        target = labels[1:]
        expected = logps[(target != -100).nonzero()[:, 0], target[target != -100]].sum().item()
        assert out["chosen_logp"] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ConfigError, match="has no chosen/rejected pair"):
        run(model_dir, tmp_path, prompt_rows(texts), "x.jsonl", score_chosen=True, max_prompt_length=8,
            train_max_length=16)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.0, 50), (0.7, 50)])
def test_fast_nucleus_masks_as_hfs_warpers_and_gives_hfs_samples(model_dir, tmp_path, temperature, top_k):
    """HF's order: temperature, then top-k, then top-p; the same mask and so the same samples as HF's."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    import rpo.generate as gen

    def hf(scores):
        scores = TemperatureLogitsWarper(temperature)(None, scores) if temperature != 1.0 else scores
        return TopPLogitsWarper(0.95)(None, TopKLogitsWarper(top_k)(None, scores) if top_k else scores)

    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 4.0, 12.0):  # flat (the full-sort fallback) to peaked (the partial sort)
        scores = torch.randn(64, 300, generator=g) * scale
        expected = hf(scores.clone())
        for candidates in (32, 256):  # top_k 50 past 32 candidates: the fallback on top-k's survivors
            got = gen.FastNucleus(0.95, temperature, candidates=candidates, top_k=top_k)(None, scores.clone())
            assert torch.equal(torch.isinf(got), torch.isinf(expected)) and torch.equal(got, expected)
        if top_k and scale == 1.0:  # flat rows: top-k, not top-p, decides how many survive
            assert (~torch.isinf(expected)).sum(dim=-1).max() <= top_k
    # end to end: the same samples as HF's own warpers
    prompts = prompt_rows(["how do I bake bread", "the cat sat", "a summary should keep", "the assistant"])
    ours = run(model_dir, tmp_path, prompts, "ours.jsonl", temperature=temperature, top_k=top_k, max_new_tokens=12)
    theirs = run(model_dir, tmp_path, prompts, "theirs.jsonl", temperature=temperature, top_k=top_k,
                 max_new_tokens=12, fast_nucleus=False)
    assert [r["response"] for r in ours] == [r["response"] for r in theirs]
    assert len({r["response"] for r in ours}) > 1
    assert ours[0]["sampling"]["top_k"] == top_k


@pytest.mark.parametrize("fast_nucleus", [True, False])
def test_top_k_reaches_the_sampler(model_dir, tmp_path, fast_nucleus):
    """top_k 1 leaves one token per step: sampling is then greedy decoding, on either sampler."""
    prompts = prompt_rows(["how do I bake bread", "the cat sat", "a summary should keep", "the assistant"])
    greedy = run(model_dir, tmp_path, prompts, "greedy.jsonl", do_sample=False, max_new_tokens=12)
    top1 = run(model_dir, tmp_path, prompts, "top1.jsonl", top_k=1, temperature=1.3, max_new_tokens=12,
               fast_nucleus=fast_nucleus)
    sampled = run(model_dir, tmp_path, prompts, "sampled.jsonl", temperature=1.3, max_new_tokens=12,
                  fast_nucleus=fast_nucleus)
    assert [r["response"] for r in top1] == [r["response"] for r in greedy]
    assert [r["response"] for r in sampled] != [r["response"] for r in greedy]
    with pytest.raises(ConfigError, match="generation.top_k: must be >= 0"):
        run(model_dir, tmp_path, prompts, "bad.jsonl", top_k=-1)


def test_temperature_comes_from_the_models_generation_config_unless_set(model_dir, tmp_path, capsys):
    """The public code passes no temperature: the model's generation config decides. One that sets none
    is refused in one line naming the model and the key, not sampled at a silent default."""
    import shutil

    from transformers import GenerationConfig

    from rpo.errors import run_cli
    from rpo.models import load_model, save_model

    hot = tmp_path / "hot"
    shutil.copytree(model_dir, hot)
    GenerationConfig(do_sample=True, temperature=0.25).save_pretrained(hot)  # as Llama-2's sets 0.6
    # the pipeline's folders are save_model copies (the pretrained rule, the trainer): the setting survives
    model, tokenizer = load_model(hot, device="cpu")
    save_model(model, tokenizer, tmp_path / "copied")
    prompts = prompt_rows(["how do I bake bread", "the cat sat", "a summary should keep", "the assistant"])
    own = run(tmp_path / "copied", tmp_path, prompts, "own.jsonl", temperature=None, max_new_tokens=12)
    stated = run(model_dir, tmp_path, prompts, "stated.jsonl", temperature=0.25, max_new_tokens=12)
    default = run(model_dir, tmp_path, prompts, "default.jsonl", temperature=1.0, max_new_tokens=12)
    assert own[0]["sampling"]["temperature"] == 0.25
    assert [r["response"] for r in own] == [r["response"] for r in stated] != [r["response"] for r in default]
    overridden = run(hot, tmp_path, prompts, "overridden.jsonl", temperature=1.0, max_new_tokens=12)
    assert [r["response"] for r in overridden] == [r["response"] for r in default]
    assert run(model_dir, tmp_path, prompts, "greedy.jsonl", temperature=None, do_sample=False)  # greedy needs none

    records = [{"id": f"r{i}", "prompt": p["prompt"], "chosen": "yes", "rejected": "no", "metadata": {}}
               for i, p in enumerate(prompts)]
    write_jsonl(tmp_path / "test.jsonl", records)
    out = tmp_path / "none.jsonl"
    assert run_cli(main, ["--model", str(model_dir), "--records", str(tmp_path / "test.jsonl"), "--out", str(out),
                          "--n", "2", "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading progress bars
    assert error == (f"error: generation.temperature: the generation config of {model_dir} sets no temperature; "
                     "set generation.temperature_by_model.<model> (or generation.temperature), e.g. 1.0, "
                     "transformers' default (--temperature by hand)")
    assert not out.exists()


def test_test_prompts_are_the_public_sft_loaders_order():
    """Re-derived from the public code's steps (dataloader.py, SFTDataLoader): the global `random` seeded
    once, the unique prompts (first-occurrence order) shuffled, their examples shuffled again; the first n."""
    records = [PreferenceRecord(f"r{i}", f"post {(i * 7) % 23}", f"good {i}", f"bad {i}", {}) for i in range(60)]
    state = random.getstate()
    try:
        random.seed(1)
        examples = {}
        for record in records:
            examples.setdefault(record.prompt, record)
        keys = list(examples)
        random.shuffle(keys)
        flat = [examples[k] for k in keys]
        random.shuffle(flat)
    finally:
        random.setstate(state)
    selected = select_prompts(records, n=16, seed=1)
    assert [r["id"] for r in selected] == [r.id for r in flat[:16]]
    assert [r["chosen"] for r in selected] == [r.chosen for r in flat[:16]]  # each prompt's first pair
    once = list({r.prompt: r for r in reversed(records)}.values())[::-1]  # not one shuffle of the unique list
    random.Random(1).shuffle(once)
    assert [r["id"] for r in selected] != [r.id for r in once[:16]]
