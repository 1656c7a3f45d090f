"""A judge that knows the truth: it compares a ground-truth reward of the two presented responses.

Used with a generated preference world whose reward function is known, so win rates can be checked
against the real answer instead of an API model's opinion. Same interface as the API judge.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from rpo.judge.base import Judge, JudgeItem, Judgment

RewardFn = Callable[[str, str, str, dict], float]  # (task, prompt, response, metadata) -> reward


class OracleJudge(Judge):
    backend = "oracle"

    def __init__(self, reward: RewardFn, *, name: str = "oracle", tolerance: float = 1e-9):
        self.reward = reward
        self.model = name
        self.tolerance = tolerance

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        return [self._judge_one(item) for item in items]

    def _judge_one(self, item: JudgeItem) -> Judgment:
        reward_a = float(self.reward(item.task, item.prompt, item.response_a, item.metadata))
        reward_b = float(self.reward(item.task, item.prompt, item.response_b, item.metadata))
        if not (math.isfinite(reward_a) and math.isfinite(reward_b)):
            raise ValueError(f"item {item.id}: the oracle reward is not finite (A: {reward_a}, B: {reward_b})")
        if abs(reward_a - reward_b) <= self.tolerance:
            verdict = "tie"
        else:
            verdict = "A" if reward_a > reward_b else "B"
        return Judgment(verdict=verdict, raw=f"reward A = {reward_a!r}, reward B = {reward_b!r}")
