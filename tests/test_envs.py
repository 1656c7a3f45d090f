"""The conda environment file pins exactly what envs/requirements.txt pins."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_conda_env_has_the_same_pins_as_requirements():
    requirements = {line.strip() for line in (ROOT / "envs/requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")}
    env = yaml.safe_load((ROOT / "envs/rpo.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert requirements == {p for p in pip if not p.startswith("-e")}
