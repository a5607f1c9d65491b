"""The `robustit` command.

    robustit run [--config FILE] [--set key.sub=value ...]   one experiment, prints its table
    robustit demo [--set ...]                                the packaged demo experiment
    robustit report RUN_DIR                                  re-render a run's report.md
    robustit bench attacks [--attacks a,b] [--set ...]       VanillaIT on every attack, one table
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path

import torch

from robustit.config import load_config
from robustit.report import markdown_table, summary_row, write_report

DEMO_CONFIG = resources.files("robustit") / "configs" / "demo.yaml"


def _print_run(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [summary_row("base (before tuning)", metrics["base"])] if "base" in metrics else []
    rows.append(summary_row(metrics["name"], metrics))
    print()
    print(markdown_table(rows))
    print()
    print("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items()))
    print(f"report: {run_dir / 'report.md'}")


def _run(config_paths: list[Path], overrides: list[str], threads: int | None) -> int:
    from robustit.pipeline import run_experiment

    if threads:
        torch.set_num_threads(threads)
    config = load_config(config_paths, overrides)
    run_dir = run_experiment(config)
    _print_run(run_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robustit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment from a config")
    run.add_argument("--config", type=Path, action="append", default=[],
                     help="YAML file layered over the defaults (repeatable; later files win)")
    demo = sub.add_parser("demo", help="run the packaged demo experiment")
    bench = sub.add_parser("bench", help="benchmarks: `attacks` tunes VanillaIT on every attack")
    bench.add_argument("suite", choices=["attacks"])
    bench.add_argument("--attacks", help="comma-separated attack names (default: all)")
    bench.add_argument("--out", type=Path, default=Path("runs/bench-attacks/table.md"))
    for p in (run, demo, bench):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. train.max_steps=50 (repeatable)")
        p.add_argument("--threads", type=int, help="torch CPU threads")
    report = sub.add_parser("report", help="re-render report.md of a run directory")
    report.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[robustit] %(message)s")
    try:
        if args.command == "run":
            return _run(args.config, args.overrides, args.threads)
        if args.command == "demo":
            with resources.as_file(DEMO_CONFIG) as path:
                return _run([path], args.overrides, args.threads)
        if args.command == "bench":
            from robustit.bench.attacks import run_attack_benchmark

            if args.threads:
                torch.set_num_threads(args.threads)
            names = args.attacks.split(",") if args.attacks else None
            out = run_attack_benchmark(names, args.overrides, args.out)
            print(out.read_text())
            print(f"table: {out}")
            return 0
        print(write_report(args.run_dir))
        return 0
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"robustit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
