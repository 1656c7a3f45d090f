"""A judge that knows the truth: it compares a ground-truth reward of the two presented responses.

Used with a generated preference world whose reward function is known, so win rates can be checked
against the real answer instead of an API model's opinion. Same interface as the API judge. The
verdict is rpo.world.oracle.verdict, the rule the local oracle server (rpo.judge.local) decides by.
"""
from __future__ import annotations

from typing import Callable, Sequence

from rpo.judge.base import Judge, JudgeItem, Judgment
from rpo.world.oracle import verdict

RewardFn = Callable[[str, str, str, dict], float]  # (task, prompt, response, metadata) -> reward


class OracleJudge(Judge):
    backend = "oracle"

    def __init__(self, reward: RewardFn, *, name: str = "oracle"):
        self.reward = reward
        self.model = name

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        return [self._judge_one(item) for item in items]

    def _judge_one(self, item: JudgeItem) -> Judgment:
        reward_a = float(self.reward(item.task, item.prompt, item.response_a, item.metadata))
        reward_b = float(self.reward(item.task, item.prompt, item.response_b, item.metadata))
        try:
            decided = verdict(reward_a, reward_b)
        except ValueError as exc:
            raise ValueError(f"item {item.id}: {exc}") from None
        return Judgment(verdict=decided, raw=f"reward A = {reward_a!r}, reward B = {reward_b!r}")
