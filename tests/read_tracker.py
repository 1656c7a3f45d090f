"""A config that records which keys are read from it (tests/test_config.py's check that every schema
key reaches the rules)."""
from __future__ import annotations


class ReadTracker(dict):
    """A config that records the key paths read from it into `reads` (a set of tuples): a key looked
    up, and every key of a mapping handed on whole (iterated, unpacked, dumped to JSON). Nested
    mappings come back tracked. test_config.py runs the workflow on one to prove that every schema key
    reaches the rules."""

    def __init__(self, data=(), reads: set | None = None, path: tuple = ()):
        super().__init__(data)
        self.reads = set() if reads is None else reads
        self.path = path

    def _record(self, path: tuple) -> None:
        self.reads.add(path)

    def _read(self, key, value):
        path = (*self.path, key)
        self._record(path)
        return type(self)(value, self.reads, path) if isinstance(value, dict) else value

    def __getitem__(self, key):
        return self._read(key, super().__getitem__(key))

    def get(self, key, default=None):
        return self[key] if key in self else default

    def items(self):
        return [(key, self._read(key, value)) for key, value in super().items()]

    def values(self):
        return [value for _, value in self.items()]

    def keys(self):
        return [key for key, _ in self.items()]

    def __iter__(self):
        return iter(self.keys())
