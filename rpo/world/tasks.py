"""Prompt and candidate-response writers of the generated world, one theme (cluster) at a time.

Candidates vary in quality by cluster-specific features (how much of the required advice / how
many key facts they keep; harmful, evasive, rambling or filler phrases; repetition), flaws more
often on incomplete answers, so the chosen response of a pair is often flawed too: SFT on chosen
responses copies those flaws, and preference training has something to remove. Wording is fixed per prompt and every flaw is a
cut or an extension of the good answer, so the two responses of a pair share their text up to the
point where their quality differs: a pair contrasts that point, not incidental wording.
"""
from __future__ import annotations

import random

from rpo.data.records import format_turns
from rpo.world.lexicon import (
    DETAIL_REPLIES, DETAILS, GOOD_FRAMES, GREETING_REPLIES, GREETINGS, HARMFUL_FRAMES, INSTRUCTIONS,
    OPENERS, RAMBLE_FRAMES, REQUESTS, DialogueTheme,
)
from rpo.world.lexicon_posts import POST_FRAME, SUMMARY_JOINERS, PostTheme
from rpo.world.ground_truth import content_words

# Dialogue candidates: how much advice they give, then flaws. "confused" answers give the
# advice of a sibling problem of the same cluster, the mistake a weak model makes most (it confuses
# related prompts), so preference data holds that contrast, as model-written rejected responses do.
ADVICE_LEVELS = (("full", 0.40), ("partial", 0.25), ("confused", 0.20), ("evasive", 0.15))
P_OPENER, P_REPEAT, P_HARMFUL, P_RAMBLE = 0.5, 0.12, 0.2, 0.3
# Care is one trait of a response, not independent coin flips: a careless answer (incomplete,
# confused) is also the one that rambles or repeats. Flaw probabilities are scaled by the level. With
# independent flaws, many pairs set a short clean answer against a complete flawed one, and DPO,
# crediting the first token where they differ, learns to stop early (measured: shorter samples,
# lower coverage of the required advice / facts).
FLAW_SCALE = {"full": 0.4, "partial": 1.5, "confused": 1.5, "evasive": 1.5}
# Summary candidates: how many key facts they keep, then flaws. "confused" summaries
# swap the post's facts for the cluster's facts the post does not state (the weak-model mistake).
# Flaw rates are high: the extras are what a preference stage can teach a small summariser to drop,
# while its own content errors (missed or absent facts) come from capacity it lacks.
SUMMARY_LEVELS = (("full", 0.30), ("partial", 0.40), ("confused", 0.20), ("copy", 0.10))
P_FILLER, P_HALLUCINATE, P_SUMMARY_REPEAT = 0.56, 0.32, 0.16
# Milder than FLAW_SCALE: summary extras follow the final period (see summary_candidate), so a flawed
# full summary does not teach stopping early, and complete summaries with extras are the SFT habit
# that preference data is there to correct (measured, 1,024 prompts: DPO minus SFT 11.9 points at
# 0.8 for full summaries, 8.1 at 1.0 for all levels, 5.6 and 7.5 at FLAW_SCALE's 0.4).
SUMMARY_FLAW_SCALE = {"full": 0.8, "partial": 1.5, "confused": 1.5}


def _weighted(rng: random.Random, options) -> str:
    names, weights = zip(*options)
    return rng.choices(names, weights=weights)[0]


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def second_person(phrase: str) -> str:
    """The user's problem as the assistant restates it: "hurts my fingertips" -> "hurts your fingertips"."""
    return " ".join({"my": "your", "me": "you"}.get(word, word) for word in phrase.split(" "))


def join_clauses(clauses) -> str:
    return ", ".join(clauses)  # no "and" before the last: fewer clauses give a prefix of the full advice


# ---- dialogue (HH stand-in) and instructions (AlpacaEval stand-in) ----

def dialogue_metadata(theme: DialogueTheme, obj: str, problem: int, budget: int) -> dict:
    phrase, clauses = theme.problems[problem]
    required = _unique(content_words(obj) + [word for clause in clauses for word in content_words(clause)])
    return {
        "theme": theme.name, "object": obj, "problem": phrase, "required": required,
        "harmful": list(theme.harmful), "evasive": list(theme.evasive), "ramble": list(theme.ramble),
        "budget": budget,
    }


def dialogue_prompt(theme: DialogueTheme, rng: random.Random, max_turns: int) -> tuple[str, str, int]:
    """A 1..max_turns user-turn history ending in a request; returns (prompt, object, problem index)."""
    obj = rng.choice(theme.objects)
    problem = rng.randrange(len(theme.problems))
    n_turns = rng.randint(1, max_turns)
    turns = []
    if n_turns >= 2:
        turns += [("user", rng.choice(GREETINGS).format(topic=theme.topic)), ("assistant", rng.choice(GREETING_REPLIES))]
    if n_turns >= 3:
        turns += [("user", rng.choice(DETAILS).format(obj=obj)), ("assistant", rng.choice(DETAIL_REPLIES))]
    request = rng.choice(REQUESTS).format(obj=obj, problem=theme.problems[problem][0])
    return format_turns(turns + [("user", request)]), obj, problem


def instruction_prompt(theme: DialogueTheme, rng: random.Random) -> tuple[str, str, int]:
    obj = rng.choice(theme.objects)
    problem = rng.randrange(len(theme.problems))
    text = rng.choice(INSTRUCTIONS).format(obj=obj, problem=theme.problems[problem][0])
    return format_turns([("user", text)]), obj, problem


def dialogue_style(theme: DialogueTheme, problem: int, rng: random.Random) -> dict:
    """Wording choices shared by all candidates of one prompt.

    Candidates of a prompt then differ only where their true reward differs (advice kept, flaws), so
    a pair's shared text is token-identical and a preference loss sees exactly what made one worse.
    """
    return {
        "opener": rng.choice(OPENERS) if rng.random() < P_OPENER else "",
        "frame": rng.choice(GOOD_FRAMES),
        "evasive": rng.choice(theme.evasive),
        "harmful": rng.choice(HARMFUL_FRAMES).format(phrase=rng.choice(theme.harmful)),
        "ramble": rng.choice(RAMBLE_FRAMES).format(phrase=rng.choice(theme.ramble)),
        "sibling": rng.choice([i for i in range(len(theme.problems)) if i != problem]),
    }


def dialogue_candidate(theme: DialogueTheme, obj: str, problem: int, style: dict, rng: random.Random) -> str:
    phrase, clauses = theme.problems[problem]  # clauses in lexicon order: one sequence to learn per problem
    phrase = second_person(phrase)
    level = _weighted(rng, ADVICE_LEVELS)
    if level == "evasive":
        body = style["evasive"]
    else:  # a partial answer stops early: the first clauses only
        if level == "confused":
            clauses = theme.problems[style["sibling"]][1]
        kept = clauses[:rng.randint(1, len(clauses) - 1)] if level == "partial" else clauses
        body, last = style["frame"].format(obj=obj, problem=phrase, advice=join_clauses(kept)), kept[-1]
    parts, scale = [style["opener"] + body], FLAW_SCALE[level]
    if level != "evasive":
        if rng.random() < P_REPEAT * scale:  # a degenerate loop on the last piece of advice
            parts.append(f"{last}. {last}.")
        if rng.random() < P_HARMFUL * scale:
            parts.append(style["harmful"])
    if rng.random() < P_RAMBLE * scale:
        parts.append(style["ramble"])
    return " ".join(parts)


def reference_response(theme: DialogueTheme, obj: str, problem: int, rng: random.Random) -> str:
    """A mid-quality answer: most of the advice, or all of it plus a ramble; never harmful."""
    phrase, clauses = theme.problems[problem]
    phrase, frame = second_person(phrase), rng.choice(GOOD_FRAMES)
    if rng.random() < 0.5:
        return frame.format(obj=obj, problem=phrase, advice=join_clauses(clauses[:-1]))
    body = frame.format(obj=obj, problem=phrase, advice=join_clauses(clauses))
    return body + " " + rng.choice(RAMBLE_FRAMES).format(phrase=rng.choice(theme.ramble))


# ---- summarization (TL;DR stand-in) ----

def post_prompt(theme: PostTheme, rng: random.Random, n_facts: int, n_fillers: int) -> tuple[str, dict]:
    """A post stating `n_facts` of the theme's facts among `n_fillers` filler sentences.

    Returns (prompt, layout) where layout holds the fact and filler indices in post order.
    """
    facts = rng.sample(range(len(theme.facts)), n_facts)
    fillers = rng.sample(range(len(theme.fillers)), n_fillers)
    sentences = [("fact", i) for i in facts] + [("filler", i) for i in fillers]
    rng.shuffle(sentences)
    body = " ".join((theme.facts if kind == "fact" else theme.fillers)[i][0] for kind, i in sentences)
    text = POST_FRAME.format(subreddit=theme.subreddit, title=rng.choice(theme.titles), body=body)
    layout = {
        "facts": [i for kind, i in sentences if kind == "fact"],
        "fillers": [i for kind, i in sentences if kind == "filler"],
        "sentences": [(theme.facts if kind == "fact" else theme.fillers)[i][0] for kind, i in sentences],
    }
    return format_turns([("user", text)]), layout


def post_metadata(theme: PostTheme, layout: dict, budget: int) -> dict:
    return {
        "theme": theme.name,
        "facts": [theme.facts[i][1] for i in layout["facts"]],
        "absent": [phrase for i, (_, phrase) in enumerate(theme.facts) if i not in layout["facts"]],
        "filler": [phrase for _, phrase in theme.fillers],
        "budget": budget,
    }


def summary_style(theme: PostTheme, layout: dict, rng: random.Random) -> dict:
    """Choices shared by all candidates of one post (see dialogue_style)."""
    fillers = layout["fillers"] or range(len(theme.fillers))
    absent = [i for i in range(len(theme.facts)) if i not in layout["facts"]]
    return {"joiner": rng.choice(SUMMARY_JOINERS), "filler": theme.fillers[rng.choice(list(fillers))][1],
            "hallucination": theme.facts[rng.choice(absent)][1],
            "confused": [theme.facts[i][1] for i in rng.sample(absent, min(len(absent), len(layout["facts"])))]}


def summary_candidate(theme: PostTheme, layout: dict, style: dict, rng: random.Random) -> str:
    level = _weighted(rng, SUMMARY_LEVELS)
    if level == "copy":  # the lazy summary: the post's first sentences, filler and all
        return " ".join(layout["sentences"][:rng.randint(2, len(layout["sentences"]))])
    items = [theme.facts[i][1] for i in layout["facts"]]  # in post order
    if level == "confused":  # facts of the cluster that this post does not state
        items = list(style["confused"])
    if level == "partial":  # stops early: the first facts only
        items = items[:rng.randint(1, len(items) - 1)]
    # Flaws follow the summary as sentences of their own: the choice "stop or add a sentence" after
    # the final period is then a different token from "stop or add a fact" after a fact, so DPO
    # can learn to drop the extras without learning to drop facts.
    scale, extras = SUMMARY_FLAW_SCALE[level], []
    if rng.random() < P_SUMMARY_REPEAT * scale:
        extras.append(items[-1])
    if rng.random() < P_FILLER * scale:
        extras.append(style["filler"])
    if rng.random() < P_HALLUCINATE * scale:
        extras.append(style["hallucination"])
    return " ".join([style["joiner"].join(items) + "."] + [extra + "." for extra in extras])
