"""The generated preference world: an offline stand-in for Anthropic HH (`dialogue`), TL;DR
(`summarization`) and the AlpacaEval instructions (`instructions`) with a known ground-truth reward.

    generator.py      World, generate_world, load_world (prompts, candidates, labelled pairs, files)
    config.py         WorldConfig (sizes, cluster counts, noise, lengths) and its validation
    lexicon.py        dialogue / instruction themes; lexicon_posts.py: summarisation themes
    tasks.py          prompt and candidate writers of one theme
    ground_truth.py   reward(task, prompt, response, metadata), the ground truth
    oracle.py         verdict(reward_a, reward_b), the one rule both oracle judges decide by

The data folder is written by `python -m rpo.data.prepare`.
"""
from rpo.data.records import PREFERENCE_TASKS, TASKS
from rpo.world.config import WorldConfig
from rpo.world.generator import World, generate_world, load_world
from rpo.world.ground_truth import reward
from rpo.world.oracle import verdict

__all__ = ["World", "WorldConfig", "generate_world", "load_world", "reward", "verdict", "TASKS",
           "PREFERENCE_TASKS"]
