"""The oracle's one verdict rule: which of two responses the world's known reward prefers.

Both oracle judges use it: the local OpenAI-compatible server (rpo.judge.local, what the embedded
pipeline judges through) and the in-process OracleJudge (rpo.judge.oracle_backend). The comparison
is exact: equal rewards tie, any difference wins. The world's reward is rounded to 6 decimals
(rpo.world.ground_truth), so two rewards are either equal or at least 1e-6 apart, and no float noise
can decide a pair. A reward that is not a finite number is refused rather than read as a tie.
"""
from __future__ import annotations

import math


def verdict(reward_a: float, reward_b: float) -> str:
    """"A" if response A's reward is higher, "B" if B's is, "tie" if they are equal."""
    reward_a, reward_b = float(reward_a), float(reward_b)
    if not (math.isfinite(reward_a) and math.isfinite(reward_b)):
        raise ValueError(f"the oracle reward is not finite (A: {reward_a}, B: {reward_b})")
    return "A" if reward_a > reward_b else "B" if reward_b > reward_a else "tie"
