"""Persistent judge-answer cache: every paid answer is committed to SQLite the moment it arrives.

A crash mid-run therefore loses no answer, and a rerun pays for no call twice. The key covers
everything that determines the answer: judging protocol (rpo-paper / rationale), judge model, the
protocol's template and call settings (by hash), prompt, and the two responses in the order they were
presented, so an answer given under one protocol is never reused for another. Each answer also keeps
how many attempts it took, so a rerun from the cache reports the same retry counts. Nothing secret
is stored: no API key, no endpoint URL.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from rpo.io import sha256_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    template_sha256 TEXT NOT NULL,
    raw TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
)
"""


def cache_key(protocol: str, model: str, template_sha256: str, prompt: str, response_a: str,
              response_b: str) -> str:
    return sha256_json([protocol, model, template_sha256, prompt, response_a, response_b])


class JudgeCache:
    """Thread-safe: one connection guarded by a lock; each put is its own committed transaction."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, so each INSERT is durable when execute() returns.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        with self._lock:
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(answers)")}
            if "attempts" not in columns:  # a cache written before attempts were kept
                self._conn.execute("ALTER TABLE answers ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")

    def get(self, key: str) -> str | None:
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def get_entry(self, key: str) -> tuple[str, int] | None:
        """(raw answer, attempts it took) or None."""
        with self._lock:
            row = self._conn.execute("SELECT raw, attempts FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def put(self, key: str, raw: str, *, model: str, template_sha256: str,
            input_tokens: int = 0, output_tokens: int = 0, attempts: int = 1) -> None:
        with self._lock:
            # First answer wins: a duplicate put (two identical pairs in flight) keeps the stored one.
            self._conn.execute(
                "INSERT OR IGNORE INTO answers (key, model, template_sha256, raw, input_tokens, output_tokens,"
                " created, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, template_sha256, raw, int(input_tokens), int(output_tokens), time.time(),
                 int(attempts)),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "JudgeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
