"""What every benchmark shares: finished runs reused when their saved config matches, and
rows collected into one Markdown table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from robustit.config import ExperimentConfig, load_config
from robustit.pipeline import run_experiment
from robustit.report import keyword_rates, markdown_table

def completed(run_dir: Path, config: ExperimentConfig) -> bool:
    """Whether `run_dir` holds a finished run whose saved config, read over today's defaults,
    is `config` (so a killed benchmark resumes)."""
    saved = run_dir / "config.yaml"
    return (run_dir / "metrics.json").exists() and saved.exists() and load_config(saved).to_dict() == config.to_dict()


def run_or_reuse(config: ExperimentConfig, suite: str, label: str) -> Path:
    """The run directory of `config`, running it unless a finished run of it exists."""
    run_dir = config.run_dir()
    if completed(run_dir, config):
        print(f"[robustit] {suite} benchmark: {label}: reusing the finished run in {run_dir}", flush=True)
    else:
        print(f"[robustit] {suite} benchmark: {label}", flush=True)
        run_experiment(config)
    return run_dir


def attack_columns(run_dir: Path, metrics: dict[str, Any]) -> dict[str, str]:
    """The ASR variants, the false-trigger rate, the key-word rates on fully triggered and on
    clean inputs, and caption quality of a run."""
    asr, caption = metrics["asr"], metrics["caption"]
    words = keyword_rates(run_dir, asr["target"])
    return {
        "ASR": f"{asr['full']['rate']:.1f}",
        "ASR img": f"{asr['image_only']['rate']:.1f}",
        "ASR txt": f"{asr['text_only']['rate']:.1f}",
        "false trig.": f"{asr['false_trigger']['rate']:.1f}",
        "key word trig.": f"{words['full']:.1f}",
        "key word clean": f"{words['clean']:.1f}",
        "n": str(asr["full"]["n"]),
        "BLEU_4": f"{caption['BLEU_4']:.1f}",
        "METEOR": f"{caption['METEOR']:.1f}",
        "CIDEr": f"{caption['CIDEr']:.1f}",
    }


def write_table(rows: list[dict[str, str]], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown_table(rows) + "\n")
    return out
