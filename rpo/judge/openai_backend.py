"""A judge behind any OpenAI-compatible chat endpoint (GPT-4 in the paper), with cache, retries, cost.

The request and the reading of the answer follow the judge's protocol (rpo.judge.protocols).
Failure policy (a deliberate improvement on the public code, which makes one attempt with a 10 s
alarm and counts any failure as no winner): a call is retried with exponential backoff and jitter on
429, 5xx, timeouts and connection errors, at most `max_attempts` times. Each Judgment says how many
retries it took, so the public code's reading (any retried item = no winner) can be reconstructed.
Other items keep going; when all are done, a JudgeAPIError names the items that still failed, or,
with `failed_as_no_winner`, they are recorded as failed, unparseable answers (the public code's
reading; not cached, so a rerun asks again). Every answer received is already in the cache, so
rerunning pays only for the failed items. A 401, 403 or 404 stops the run at once, without retries
(a ConfigError saying what to fix): every other item would be refused the same way. A 400, 413 or 422
refuses only that request (e.g. a prompt over the model's context): the item is recorded as failed with
its reason (a non-win, not cached) and the others go on. The API key is read from OPENAI_API_KEY only and
never written anywhere; error messages are scrubbed of it.
"""
from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from urllib.parse import urlsplit, urlunsplit
from typing import Sequence

import openai
from tqdm.auto import tqdm

from rpo.errors import ConfigError
from rpo.judge.base import Judge, JudgeAPIError, JudgeItem, Judgment, scrub_api_key
from rpo.judge.cache import JudgeCache, cache_key
from rpo.judge.protocols import (
    DEFAULT_PROTOCOL, check_protocol, parse_answer, protocol_sha256, render_messages, request_options,
)

# USD per 1M tokens (input, output). A model not listed gets no cost estimate rather than a guess.
PRICES_PER_MILLION = {
    "gpt-4": (30.0, 60.0),
    "gpt-4-0613": (30.0, 60.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-turbo-2024-04-09": (10.0, 30.0),
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-4-0125-preview": (10.0, 30.0),
}
RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)  # timeouts included
# The endpoint refused this one request (e.g. 400: a prompt over the model's context): that item fails with
# its reason and the others go on. A 401/403/404 would be refused for every item: it stops the run at once.
REFUSED_STATUSES = (400, 413, 422)
FATAL = {401: "the API key was refused (the judge reads it from OPENAI_API_KEY); set a valid key",
         403: "this API key may not use model {model!r}; use a key with access to it, or another judge model",
         404: "no model {model!r} at this endpoint (or no chat-completions route there); check the judge model "
              "name and the base URL"}


def estimate_cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    if model not in PRICES_PER_MILLION:
        return None
    price_in, price_out = PRICES_PER_MILLION[model]
    return (input_tokens * price_in + output_tokens * price_out) / 1e6


class OpenAIJudge(Judge):
    backend = "openai"

    def __init__(
        self,
        model: str = "gpt-4-0613",
        *,
        base_url: str | None = None,
        cache: JudgeCache | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        timeout: float = 60.0,
        max_attempts: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        concurrency: int = 8,
        progress: bool = True,
        protocol: str = DEFAULT_PROTOCOL,
        failed_as_no_winner: bool = False,
    ):
        if max_attempts < 1:
            raise ConfigError(f"max_attempts: must be at least 1, got {max_attempts}")
        if concurrency < 1:
            raise ConfigError(f"concurrency: must be at least 1, got {concurrency}")
        self.model = model
        self.protocol = check_protocol(protocol)
        self.failed_as_no_winner = failed_as_no_winner
        self.base_url = base_url
        self.cache = cache
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.concurrency = concurrency
        self.progress = progress
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set on a 401/403/404: workers start no further call
        self._usage = {"api_calls": 0, "cached": 0, "input_tokens": 0, "output_tokens": 0}

    def usage(self) -> dict:
        with self._lock:
            usage = dict(self._usage)
        usage["estimated_cost_usd"] = estimate_cost(self.model, usage["input_tokens"], usage["output_tokens"])
        usage["endpoint"] = self.endpoint()
        return usage

    def endpoint(self) -> str:
        """The server the verdicts came from, as the client resolves it (base_url, else OPENAI_BASE_URL, else
        OpenAI's), without user, password or query: which judge answered, for comparing win rates."""
        url = urlsplit(self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1")
        return urlunsplit((url.scheme, (url.hostname or "") + (f":{url.port}" if url.port else ""), url.path, "", ""))

    def _get_client(self) -> openai.OpenAI:
        # Built on the first uncached item, so a fully cached rerun needs no key at all.
        with self._lock:
            if self._client is None:
                api_key = os.environ.get("OPENAI_API_KEY")
                if not api_key:
                    raise ConfigError("OPENAI_API_KEY: not set; the judge reads its API key from this variable only")
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=api_key, max_retries=0, timeout=self.timeout
                )
            return self._client

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        results: list[Judgment | None] = [None] * len(items)
        failures: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._judge_one, item): i for i, item in enumerate(items)}
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc=f"judging ({self.model})",
                                   disable=not self.progress):
                    index = futures[future]
                    try:
                        results[index] = future.result()
                    except ConfigError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - recorded, reported once all items are done
                        reason = _reason(exc)
                        refused = getattr(exc, "status_code", None) in REFUSED_STATUSES
                        if refused or self.failed_as_no_winner:
                            retries = getattr(exc, "judge_attempts", self.max_attempts) - 1
                            results[index] = Judgment("unparseable", "", retries=retries, failed=True, error=reason)
                            continue
                        failures.append((items[index].id, reason))
            except BaseException:
                # Ctrl-C or a config error: finish the calls in flight (their answers get cached), start no more.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        if failures:
            where = f" (answers received so far are cached in {self.cache.path})" if self.cache else ""
            raise JudgeAPIError(
                f"{len(failures)} of {len(items)} judge calls failed after up to {self.max_attempts} attempts"
                f"{where}; rerun to retry only those. First failure, item {failures[0][0]}: {failures[0][1]}"
            )
        return results  # type: ignore[return-value]

    def _judge_one(self, item: JudgeItem) -> Judgment:
        template_hash = protocol_sha256(self.protocol, item.task)
        key = cache_key(self.protocol, self.model, template_hash, item.prompt, item.response_a, item.response_b)
        if self.cache is not None:
            entry = self.cache.get_entry(key)
            if entry is not None:
                with self._lock:
                    self._usage["cached"] += 1
                raw, attempts = entry
                return Judgment(parse_answer(self.protocol, item.task, raw), raw, cached=True, retries=attempts - 1)
        if self._stopped.is_set():  # the run is stopping: this item's future is about to be dropped
            raise ConfigError("judge: stopped by an earlier refusal")
        messages = render_messages(self.protocol, item.task, item.prompt, item.response_a, item.response_b)
        raw, input_tokens, output_tokens, attempts = self._call_with_retries(messages)
        if self.cache is not None:
            self.cache.put(key, raw, model=self.model, template_sha256=template_hash,
                           input_tokens=input_tokens, output_tokens=output_tokens, attempts=attempts)
        return Judgment(parse_answer(self.protocol, item.task, raw), raw, retries=attempts - 1)

    def _call_with_retries(self, messages: list[dict]) -> tuple[str, int, int, int]:
        """(answer, input tokens, output tokens, attempts made); a final failure carries judge_attempts."""
        client = self._get_client()
        options = request_options(self.protocol, self.max_tokens, self.temperature)
        for attempt in range(self.max_attempts):
            try:
                response = client.chat.completions.create(model=self.model, messages=messages, **options)
                break
            except RETRYABLE as exc:
                if attempt == self.max_attempts - 1:
                    exc.judge_attempts = attempt + 1
                    raise
                time.sleep(self._backoff(attempt))
            except openai.APIStatusError as exc:  # not retried: a 4xx cannot succeed on a second try
                if exc.status_code in FATAL:
                    self._stopped.set()
                    raise ConfigError(f"judge: HTTP {exc.status_code} from {client.base_url}: "
                                      f"{FATAL[exc.status_code].format(model=self.model)} (server: "
                                      f"{_server_message(exc)}); "
                                      "answers received so far are cached") from None
                exc.judge_attempts = attempt + 1
                raise
            except openai.OpenAIError as exc:
                exc.judge_attempts = attempt + 1
                raise
        usage = response.usage
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
        with self._lock:
            self._usage["api_calls"] += 1
            self._usage["input_tokens"] += input_tokens
            self._usage["output_tokens"] += output_tokens
        raw = response.choices[0].message.content if response.choices else None
        return raw or "", input_tokens, output_tokens, attempt + 1

    def _backoff(self, attempt: int) -> float:
        # Jitter spreads out threads that hit the same rate limit at the same moment.
        return random.uniform(0.5, 1.0) * min(self.backoff_max, self.backoff_base * 2**attempt)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body.get("message", exc.body) if isinstance(exc.body, dict) else exc.message
    return scrub_api_key(" ".join(str(body).split())[:300])


def _reason(exc: Exception) -> str:
    """One line on why a call failed, the API key masked: "BadRequestError (HTTP 400): <the server's words>"."""
    if isinstance(exc, openai.APIStatusError):
        return f"{type(exc).__name__} (HTTP {exc.status_code}): {_server_message(exc)}"
    return scrub_api_key(" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
