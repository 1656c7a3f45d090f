"""Configuration of the generated preference world: sizes, cluster counts, noise and lengths."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rpo.errors import ConfigError
from rpo.world.lexicon import DIALOGUE_THEMES
from rpo.world.lexicon_posts import POST_THEMES

FACTS_PER_THEME = 6
FILLERS_PER_THEME = 4


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    label_noise: float = 0.1  # probability that chosen and rejected are swapped against the true reward
    candidates_per_prompt: int = 4  # responses written per prompt; the pair is drawn from them
    dialogue_clusters: int = 24
    dialogue_train_pairs: int = 2000  # one pair per prompt, so also the number of train prompts
    dialogue_test_pairs: int = 256
    dialogue_max_turns: int = 3  # user turns in a history: 1..max
    dialogue_word_budget: int = 28  # the reward charges every response word beyond this
    summarization_clusters: int = 24
    summarization_train_pairs: int = 2000
    summarization_test_pairs: int = 256
    post_facts: int = 3  # key facts stated by each post
    post_fillers: int = 2  # filler sentences in each post
    summary_word_budget: int = 16
    instruction_prompts: int = 96  # eval-only prompts over the dialogue clusters

    @classmethod
    def from_dict(cls, raw) -> "WorldConfig":
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"world config: expected a mapping of keys to values, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(f"world config key {key!r}: unknown key (known keys: {', '.join(sorted(known))})")
        config = cls(**raw)
        config.validate()
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        limits = {
            "seed": (0, None),
            "candidates_per_prompt": (2, 64),
            "dialogue_clusters": (1, len(DIALOGUE_THEMES)),
            "dialogue_train_pairs": (1, None),
            "dialogue_test_pairs": (1, None),
            "dialogue_max_turns": (1, 3),
            "dialogue_word_budget": (8, None),
            "summarization_clusters": (1, len(POST_THEMES)),
            "summarization_train_pairs": (1, None),
            "summarization_test_pairs": (1, None),
            "post_facts": (2, FACTS_PER_THEME - 1),  # at least one fact stays out, to be hallucinated
            "post_fillers": (0, FILLERS_PER_THEME),
            "summary_word_budget": (4, None),
            "instruction_prompts": (1, None),
        }
        for key, (low, high) in limits.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"world config key {key!r}: must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"at least {low}" if high is None else f"between {low} and {high}"
                raise ConfigError(f"world config key {key!r}: must be {bound}, got {value}")
        noise = self.label_noise
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise < 0.5:
            raise ConfigError(f"world config key 'label_noise': must be a number in [0, 0.5), got {noise!r}")
