"""The paper's published numbers (GPT-4 win rate %, see /shared/paper.md "Published numbers"), as data.

Tables look values up here by (setting, paper model, method); any cell not listed is unknown and is
shown as "n/a", never guessed. `reported=True` marks numbers that come only from a secondary summary
of the paper; they are printed with the suffix "(reported)".
"""
from __future__ import annotations

from dataclasses import dataclass

NOT_AVAILABLE = "n/a"

# Our tasks stand in for the paper's data sets; tables say so in a footnote.
TASK_TO_SETTING = {"dialogue": "hh", "summarization": "tldr"}
SETTING_LABEL = {"hh": "Anthropic HH", "tldr": "TL;DR", "alpacaeval": "AlpacaEval 2.0"}

# The paper's default RPO setting (tau, embedder): the setting of its RPO numbers.
RPO_DEFAULTS = (0.5, "all-MiniLM-L6-v2")

# The only HH model with absolute published numbers; used as the reference column when our model is
# not one of the paper's models.
DEFAULT_PAPER_MODEL = {"hh": "Mistral-7B", "tldr": None, "alpacaeval": None}


@dataclass(frozen=True)
class PaperNumber:
    value: float  # percent
    reported: bool = False  # only known from a secondary summary of the paper
    kind: str = "win_rate"  # "win_rate" or "delta_vs_dpo" (RPO-Paired minus DPO, percentage points)

    def format(self) -> str:
        text = f"{self.value:+.2f} vs DPO" if self.kind == "delta_vs_dpo" else f"{self.value:.2f}"
        return f"{text} (reported)" if self.reported else text


# key: (setting, paper model or None where the paper does not name it, method)
PAPER_NUMBERS: dict[tuple[str, str | None, str], PaperNumber] = {
    ("hh", "Mistral-7B", "dpo"): PaperNumber(72.26),
    ("hh", "Mistral-7B", "rpo-unpaired"): PaperNumber(75.00, reported=True),
    ("hh", "Mistral-7B", "rpo-paired"): PaperNumber(78.52),
    ("hh", "Mistral-7B", "rpo-uniform"): PaperNumber(68.36),
    ("hh", "Mistral-7B", "rpo-diagonal"): PaperNumber(69.92, reported=True),
    ("hh", "LLaMA2-7B", "rpo-paired"): PaperNumber(5.08, reported=True, kind="delta_vs_dpo"),
    ("hh", "LLaMA2-13B", "rpo-paired"): PaperNumber(9.38, reported=True, kind="delta_vs_dpo"),
    ("tldr", None, "rpo-unpaired"): PaperNumber(50.39, reported=True),
    ("tldr", None, "rpo-paired"): PaperNumber(50.00, reported=True),
    ("alpacaeval", None, "dpo"): PaperNumber(30.84),
    ("alpacaeval", None, "rpo-paired"): PaperNumber(38.88),
}

# Substrings of a base-model name that identify one of the paper's models (checked in order, so the
# 13B pattern wins over the 7B one).
_PAPER_MODEL_PATTERNS = (
    ("LLaMA2-13B", ("llama-2-13b", "llama2-13b", "llama-2-13", "llama2_13b")),
    ("LLaMA2-7B", ("llama-2-7b", "llama2-7b", "llama2_7b")),
    ("Mistral-7B", ("mistral-7b", "mistral_7b")),
)


def paper_model_for(setting: str, our_model: str | None) -> str | None:
    """The paper model whose numbers sit beside ours: the same model if we ran one of the paper's,
    else the setting's reference model (HH: Mistral-7B, the only one with absolute numbers)."""
    name = (our_model or "").lower()
    for paper_model, patterns in _PAPER_MODEL_PATTERNS:
        if any(p in name for p in patterns):
            return paper_model
    return DEFAULT_PAPER_MODEL.get(setting)


def lookup(setting: str, method: str, paper_model: str | None = None) -> PaperNumber | None:
    return PAPER_NUMBERS.get((setting, paper_model, method))


def paper_cell(setting: str, method: str, paper_model: str | None = None) -> str:
    """The formatted published value, or "n/a" where the paper's number is not known here."""
    number = lookup(setting, method, paper_model)
    return number.format() if number is not None else NOT_AVAILABLE


def paper_win_rate(setting: str, method: str, paper_model: str | None = None) -> float | None:
    """Absolute published win rate in [0, 1] for plotting; None for unknown cells and for deltas."""
    number = lookup(setting, method, paper_model)
    if number is None or number.kind != "win_rate":
        return None
    return number.value / 100.0
