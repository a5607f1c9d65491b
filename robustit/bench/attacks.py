"""The attack benchmark: VanillaIT on every registered attack with the demo's model, data,
tuning and poison rate, one run each, collected into one Markdown table."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Sequence

from robustit.attacks import ATTACKS
from robustit.config import ExperimentConfig, load_config
from robustit.pipeline import run_experiment
from robustit.report import markdown_table

CONFIGS = resources.files("robustit") / "configs"


def attack_row(name: str, metrics: dict) -> dict[str, str]:
    asr, caption = metrics["asr"], metrics["caption"]
    return {
        "attack": name,
        "ASR": f"{asr['full']['rate']:.1f}",
        "ASR img": f"{asr['image_only']['rate']:.1f}",
        "ASR txt": f"{asr['text_only']['rate']:.1f}",
        "false trig.": f"{asr['false_trigger']['rate']:.1f}",
        "n": str(asr["full"]["n"]),
        "BLEU_4": f"{caption['BLEU_4']:.1f}",
        "CIDEr": f"{caption['CIDEr']:.1f}",
        "tuning s": f"{metrics['train']['seconds']:.0f}",
    }


def completed(run_dir: Path, config: ExperimentConfig) -> bool:
    """Whether `run_dir` holds a finished run whose saved config, read over today's defaults,
    is `config` (so a killed benchmark resumes)."""
    saved = run_dir / "config.yaml"
    return (run_dir / "metrics.json").exists() and saved.exists() and load_config(saved).to_dict() == config.to_dict()


def run_attack_benchmark(attacks: Sequence[str] | None, overrides: Sequence[str], out: Path) -> Path:
    """Run each attack (all registered ones by default), reusing finished runs of the same
    config; write the table to `out` after each."""
    names = list(attacks or ATTACKS.names())
    rows = []
    for name in names:
        with resources.as_file(CONFIGS / "demo.yaml") as demo, resources.as_file(CONFIGS / "attacks" / f"{name}.yaml") as attack:
            config = load_config([demo, attack], ["name=bench-attacks", "evaluate_base=false", *overrides])
        run_dir = config.run_dir()
        if completed(run_dir, config):
            print(f"[robustit] attack benchmark: {name}: reusing the finished run in {run_dir}", flush=True)
        else:
            print(f"[robustit] attack benchmark: {name}", flush=True)
            run_experiment(config)
        rows.append(attack_row(name, json.loads((run_dir / "metrics.json").read_text())))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown_table(rows) + "\n")
    return out
