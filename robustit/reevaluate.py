"""Evaluate a finished run's tuned model again under changed test-time settings, without
tuning again: e.g. AAR's mask off at inference (`defense.params.at_inference=false`), another
text trigger (`attack.text_trigger=...`), more test samples (`data.test_size=...`).

Only test-time sections may change: `eval`, `attack` (its test-time trigger; the model was
still tuned on the run's poison), `defense.params` and `data.test_size`. The run's fitted
trigger files and defense state (checkpoint/defense.safetensors) are loaded back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import yaml
from safetensors.torch import load_file

from robustit.attacks.base import build_attack
from robustit.config import load_config
from robustit.defenses.base import build_defense
from robustit.eval.evaluate import evaluate
from robustit.pipeline import load_tuned_model, split_samples, write_predictions
from robustit.report import write_report

TEST_TIME = ("eval", "attack", "defense.params", "data.test_size")


def _changed(before: Any, after: Any, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [k for key in sorted(set(before) | set(after))
                for k in _changed(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix[:-1]]


def reevaluate(run_dir: Path, overrides: Sequence[str], out_dir: Path, progress: bool = True) -> Path:
    """Evaluate `run_dir`'s tuned model with `overrides` applied to its saved config; write
    config.yaml, metrics.json, predictions/ and report.md to `out_dir`."""
    saved = run_dir / "config.yaml"
    config = load_config(saved, overrides)
    changed = _changed(load_config(saved).to_dict(), config.to_dict())
    outside = [key for key in changed if not key.startswith(TEST_TIME)]
    if outside:
        raise ValueError(f"re-evaluation changes only test-time settings {list(TEST_TIME)}; got {outside}")
    model = load_tuned_model(run_dir, config)
    attack = build_attack(config.attack) if config.attack is not None else None
    if attack is not None:
        attack.load_trigger_files(run_dir)
    defense = build_defense(config.defense) if config.defense is not None else None
    state = run_dir / "checkpoint" / "defense.safetensors"
    if defense is not None and state.exists():
        defense.load_state_dict(load_file(str(state)))
    test = split_samples(config.data, config.data.test_split, config.data.test_size)
    metrics, records = evaluate(model, test, attack, config.eval, progress=progress, defense=defense)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    summary = {"name": config.name, "reevaluated": str(run_dir), "changed": changed,
               "defense": defense.describe() if defense is not None else None, "n_test": len(test), **metrics}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_predictions(out_dir, records)
    write_report(out_dir)
    return out_dir
