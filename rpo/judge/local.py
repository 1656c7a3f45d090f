"""Run one command against a local oracle judge: an OpenAI-compatible server on 127.0.0.1 whose
verdicts come from the generated world's known reward.

    python -m rpo.judge.local --world results/data/world.json -- python -m rpo.judge --samples ...

The wrapped command sees OPENAI_BASE_URL / OPENAI_API_BASE pointing at the server and a throwaway
OPENAI_API_KEY, so the pairwise judge and alpaca_eval run exactly the code they run against GPT-4:
only the endpoint differs between the embedded default and the paper profile. The server answers
the pairwise templates of rpo/judge/templates and alpaca_eval's ranking annotator
(alpaca_eval_gpt4_turbo_fn), and lives exactly as long as the command.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

from rpo.data.records import format_turns
from rpo.judge.base import TASKS, answer_line, split_rendered
from rpo.judge.server import ChatServer
from rpo.world.oracle import verdict

# alpaca_eval_gpt4_turbo_fn's prompt: the instruction, then outputs of models "m" and "M".
_ALPACA_INSTRUCTION = re.compile(r'"instruction": """(.*?)""",\s*\}', re.DOTALL)
_ALPACA_OUTPUT = re.compile(r'"model": "(m|M)",\s*"output": """(.*?)"""', re.DOTALL)


def oracle_reply(world):
    """messages -> judge text, ruled by world.reward_by_prompt and rpo.world.oracle.verdict."""

    def reply(messages: list[dict]) -> str:
        text = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        for task in TASKS:
            parts = split_rendered(task, text)
            if parts is not None:
                reward_a = world.reward_by_prompt(parts["prompt"], parts["response_a"])
                reward_b = world.reward_by_prompt(parts["prompt"], parts["response_b"])
                return (f"Oracle reward of A is {reward_a:.4f}, of B {reward_b:.4f}.\n"
                        f"{answer_line(task, verdict(reward_a, reward_b))}")
        instruction = _ALPACA_INSTRUCTION.search(text)
        outputs = dict(_ALPACA_OUTPUT.findall(text))
        if instruction and set(outputs) == {"m", "M"}:
            prompt = format_turns([("user", instruction.group(1))])
            scores = {name: world.reward_by_prompt(prompt, output) for name, output in outputs.items()}
            # ranked by the same rule; a tie ranks "M" first, as sorting by name always did
            first, second = ("m", "M") if verdict(scores["m"], scores["M"]) == "A" else ("M", "m")
            return json.dumps({"ordered_models": [{"model": first, "rank": 1}, {"model": second, "rank": 2}]})
        raise ValueError("the local oracle judge does not recognise this request's template")

    return reply


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="world.json written by rpo.data.prepare")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    from rpo.world import load_world

    world = load_world(args.world)
    with ChatServer(oracle_reply(world)) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_BASE": server.base_url,
               "OPENAI_API_KEY": "local-oracle-no-secret"}
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
