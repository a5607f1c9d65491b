"""The `robustit` command.

    robustit [--import MODULE] COMMAND ...                    MODULE: your own attacks, defenses, model families
    robustit run [--config FILE] [--set key.sub=value ...] [--skip-bad] [--resume]
                                                             one experiment, prints its table
    robustit demo [--set ...]                                the demo: VanillaIT and BYORn side by side
    robustit report RUN_DIR                                  re-render a run's report.md
    robustit drift RUN_DIR ...                               how far tuning moved the adapter's reading of the
                                                             test images (token cosine, visual words kept)
    robustit scan --out DIR [--config FILE] [--set ...] [--score S] [--threshold T]
                                                             audit a training set with BYORn's detector
    robustit evaluate RUN_DIR --set defense.params.at_inference=false [--out DIR]
                                                             evaluate a tuned run again, test-time settings changed
    robustit bench attacks [--attacks a,b]                   VanillaIT on every attack, one table
    robustit bench defenses [--defenses v1,v2|components|paper] [--attack NAME]
                                                             defense variants on one attack, one table
    robustit bench detection [--config GRID.yaml]            BYORn's detector on attacks, targets and clean data
    robustit bench overhead [--defense NAME] [--steps N]     tuning time of a defense / VanillaIT's
    robustit bench throughput [--steps N] [--out TABLE.md]  VanillaIT's tuning step by phase (seconds, FLOPs)
                                                             against a matmul's FLOP/s; batched generation's speed-up
    robustit bench loading [--records N] [--out TABLE.md]    seconds and peak memory of loading a Karpathy JSON of
                                                             N records, images decoded on access
    robustit bench grid --config GRID.yaml [--shard i/n] [--dry-run]
                                                             attacks x defenses x rates x seeds into the store
    robustit bench table --config GRID.yaml --out TABLE.md   a grid's table, from the result store alone
    robustit bench report [--config GRID.yaml] [--out docs/benchmark.md]
                                                             a grid's report (default the benchmark's) and its
                                                             figures (figures/<report name>/ beside it), from the
                                                             result store alone
    robustit bench merge OTHER_STORE ...                     records of other shards / machines into --store
    robustit base-adapter [--rebuild] [--ship]               the demo's base adapter: where it is, rebuild, ship
    robustit activations --run LABEL=RUN_DIR ... --trigger-from RUN_DIR --out PNG
                                                             per-channel adapter activation figure

Every tuning run (run, demo, bench attacks, defenses, grid) is recorded in the result store
(--store, default results/), every scan of `bench detection` in its scans/ folder;
`evaluate`, `scan`, `bench overhead`, `bench throughput` and `bench loading` write no record.
`--resume` (run, demo, bench grid) goes on with a killed run from its last checkpoint;
`--skip-bad` leaves bad data records out, counted in metrics.json, instead of stopping.

`run` alone runs data-parallel under `accelerate launch` (docs/scale.md); its main process
prints the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

import torch

from robustit.atomic import write_atomic
from robustit.bench.loading import DEFAULT_RECORDS
from robustit.config import ExperimentConfig, load_config, packaged_config
from robustit.defenses.byorn import THRESHOLDS
from robustit.defenses.plausibility import SCORES
from robustit.report import detection_line, markdown_table, summary_row
from robustit.rundir import RunDirectory
from robustit.store import DEFAULT_STORE, ResultStore
from robustit.train.parallel import is_main_process, launched_processes


DEMO_DEFENSES = (("VanillaIT", "vanilla"), ("BYORn", "byorn"))
DEFAULT_REPORT = "docs/benchmark.md"
DEFAULT_STEPS = {"overhead": 100, "throughput": 10}


def _print_runs(labelled: list[tuple[str, RunDirectory]]) -> None:
    """The table of the runs (the base model first where the first run evaluated it), then
    each run's stage timings and report path."""
    runs = [(label, run_dir.load_metrics(), run_dir) for label, run_dir in labelled]
    first = runs[0][1]
    rows = [summary_row("base (before tuning)", first["base"])] if "base" in first else []
    rows += [summary_row(label, metrics) for label, metrics, _ in runs]
    print()
    print(markdown_table(rows))
    timed = [(label, metrics["train"]) for label, metrics, _ in runs[1:] if "train" in metrics]
    if timed and "train" in first:
        print()
        print(f"tuning time over {runs[0][0]}'s: " + ", ".join(
            f"{label} {train['seconds'] / first['train']['seconds']:.2f} "
            f"({train['extra_forward_passes'] / train['steps']:.2f} extra passes/step)" for label, train in timed))
    for label, metrics, run_dir in runs:
        print()
        if "detection" in metrics:
            print(f"{label} detection: {detection_line(metrics['detection'])}")
        if "timings" in metrics:
            print(f"{label} stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items()))
        print(f"{label} report: {run_dir / 'report.md'}")


def _store(args: argparse.Namespace) -> ResultStore:
    return ResultStore(args.store)


def _run(args: argparse.Namespace) -> int:
    from robustit.experiment import Experiment

    config = load_config(args.config, args.overrides)
    run_dir = Experiment(config).run(_store(args), args.resume)
    if is_main_process():
        _print_runs([(config.name, run_dir)])
    return 0


def demo_configs(overrides: Sequence[str] = ()) -> list[tuple[str, ExperimentConfig]]:
    """The demo's runs, labelled: each of `DEMO_DEFENSES` over the packaged demo config
    (configs/demo.yaml over configs/benchmark.yaml), then `overrides`; the first evaluates the
    base model too."""
    return [(label, packaged_config(["demo", f"defenses/{name}"], [*overrides, *(["evaluate_base=false"] if i else [])]))
            for i, (label, name) in enumerate(DEMO_DEFENSES)]


def _demo(args: argparse.Namespace) -> int:
    """VanillaIT and BYORn on the same poisoned data (the base model evaluated once). The
    demo's folders are its own: a demo of an earlier config there is replaced (its results
    stay in the store)."""
    from robustit.experiment import Experiment

    configs = demo_configs(args.overrides)
    directories = {config.run_dir() for _, config in configs}
    if len(directories) < len(configs):
        raise ValueError(f"the demo's runs share the run directory {directories.pop()}: put {{defense}} in output_dir")
    runs = []
    for label, config in configs:
        logging.getLogger("robustit").info("demo: %s", label)
        runs.append((label, Experiment(config).run(_store(args), args.resume, replace=True)))
    _print_runs(runs)
    return 0


def _steps(args: argparse.Namespace) -> int:
    """--steps, or the suite's default (`DEFAULT_STEPS`)."""
    return args.steps if args.steps is not None else DEFAULT_STEPS[args.suite]


def _bench(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.sources and args.suite != "merge":
        raise ValueError(f"bench {args.suite} takes no positional arguments, got {[str(s) for s in args.sources]}")
    if args.suite == "loading" and args.overrides:
        raise ValueError(f"bench loading reads a fixture of its own and takes no --set or --skip-bad, "
                         f"got {args.overrides}")
    if args.dry_run and args.suite not in ("grid", "detection"):
        raise ValueError(f"--dry-run lists the runs of bench grid and bench detection; bench {args.suite} has no plan to list")
    if args.suite in ("grid", "table", "report"):
        from robustit.bench.grid import load_grid, parse_shard, run_grid
        from robustit.bench.report import BENCHMARK_GRID, figures_folder, render_report
        from robustit.bench.tables import render_grid_table

        if args.config is None and args.suite != "report":
            raise ValueError(f"bench {args.suite} needs --config GRID.yaml")
        spec = load_grid(args.config or BENCHMARK_GRID)
        spec = dataclasses.replace(spec, overrides=(*spec.overrides, *args.overrides))
        if args.suite == "grid":
            run_grid(spec, store, parse_shard(args.shard) if args.shard else (0, 1), args.dry_run, resume=args.resume)
            return 0
        out = args.out or Path(DEFAULT_REPORT if args.suite == "report" else f"runs/bench-{spec.name}/table.md")
        command = " ".join([f"robustit bench {args.suite}", *([f"--config {args.config}"] if args.config else []),
                            *(f"--set {o}" for o in args.overrides), "--store", str(store.root), "--out", str(out)])
        if args.suite == "report":
            render_report(spec, store, out, command)
            print(f"report: {out}\nfigures: {figures_folder(out)}")
            return 0
        render_grid_table(spec, store, out, command)
    elif args.suite == "merge":
        if not args.sources:
            raise ValueError("bench merge needs the stores to merge in: robustit bench merge OTHER_STORE ...")
        for source in args.sources:
            added, same, conflicting = store.merge(source)
            print(f"{source}: {len(added)} added, {len(same)} already there, {len(conflicting)} conflicting (kept ours)")
        return 0
    else:
        out = args.out or Path(f"runs/bench-{args.suite}/table.md")
        if args.suite == "attacks":
            from robustit.bench.attacks import run_attack_benchmark

            run_attack_benchmark(args.attacks.split(",") if args.attacks else None, args.overrides, out, store)
        elif args.suite == "detection":
            from robustit.bench.detection import run_detection_benchmark

            if run_detection_benchmark(args.config, args.overrides, out, store, dry_run=args.dry_run) is None:
                return 0
        elif args.suite == "defenses":
            from robustit.bench.defenses import PRESETS, run_defense_benchmark

            variants = PRESETS.get(args.defenses) or tuple(args.defenses.split(","))
            run_defense_benchmark(variants, args.attack, args.overrides, out, store)
        elif args.suite == "throughput":
            from robustit.bench.throughput import run_throughput_benchmark

            run_throughput_benchmark(_steps(args), args.overrides, out)
        elif args.suite == "loading":
            from robustit.bench.loading import run_loading_benchmark

            run_loading_benchmark(args.records, out)
        else:
            from robustit.bench.overhead import run_overhead_benchmark

            run_overhead_benchmark(args.defense, args.attack, _steps(args), args.overrides, out)
    print(out.read_text())
    print(f"table: {out}")
    return 0


def _scan(args: argparse.Namespace) -> int:
    """BYORn's detector on the config's training set (poisoned by its attack, if any)."""
    from robustit.scan import scan

    chosen = [f"defense.params.{key}={value}" for key, value in (("score", args.score), ("threshold", args.threshold))
              if value is not None]
    config = load_config(args.config, ["defense.name=byorn", *args.overrides, *chosen])
    out = RunDirectory(args.out)
    metrics = scan(config, out)
    print(f"scan of {config.data.source} ({config.data.train_split}): byorn {detection_line(metrics['detection'])}")
    print(f"ranking: {out.ranking_file}")
    print(f"histogram: {out.score_histogram_file}")
    return 0


def _reevaluate(args: argparse.Namespace) -> int:
    from robustit.experiment import Experiment

    source = RunDirectory(args.run_dir)
    slug = re.sub(r"[^A-Za-z0-9.=-]+", "-", "_".join(args.overrides)).replace("=", "-") or "same"
    out = RunDirectory(args.out) if args.out else source.reevaluation(slug)
    Experiment.from_run(source, args.overrides).reevaluate(out)
    _print_runs([("as tuned", source), ("re-evaluated", out)])
    return 0


def _drift(args: argparse.Namespace) -> int:
    from robustit.eval.drift import adapter_drift
    from robustit.experiment import Experiment
    from robustit.report import drift_line

    for path in args.run_dir:
        source = RunDirectory(path)
        starting = Experiment(source.load_config(), progress=False)
        features = starting.drift_features()
        tuned = Experiment.from_run(source, progress=False).adapter_readout(features)
        print(f"{path}: {drift_line(adapter_drift(starting.adapter_readout(features), tuned))}")
    return 0


def _base_adapter(args: argparse.Namespace) -> int:
    from robustit.models.registry import build_model
    from robustit.train.base_adapter import ensure_base_adapter, ship_base_adapter

    config = load_config(args.config, args.overrides) if args.config else packaged_config([], args.overrides)
    data = config.data
    model = build_model(config.model.family, **config.model.spec)
    directory = ensure_base_adapter(model, *data.pretraining(), config.pretrain, rebuild=args.rebuild)
    if args.ship:
        directory = ship_base_adapter(directory)
    print(f"base adapter: {directory}")
    print((directory / "pretrain.json").read_text())
    return 0


def _activations(args: argparse.Namespace) -> int:
    from robustit.bench.activations import run_activations
    from robustit.eval.activations import figure, peak_statistics

    labelled = [spec.split("=", 1) for spec in args.run]
    if any(len(pair) != 2 for pair in labelled):
        raise ValueError(f"--run takes LABEL=RUN_DIR, got {args.run}")
    activations = run_activations([RunDirectory(d) for _, d in labelled], RunDirectory(args.trigger_from), args.size)
    labels = [label for label, _ in labelled]
    stats = {label: peak_statistics(a) for label, a in zip(labels, activations)}
    png = figure(labels, activations, args.out)
    write_atomic(args.out.with_suffix(".json"), json.dumps(stats, indent=2) + "\n")
    for label, s in stats.items():
        print(f"{label}: peak/median {s['peak_ratio']:.2f}, top-1% share {100 * s['top1pct_share']:.2f}%, mean {s['mean']:.4f}")
    print(f"figure: {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robustit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module of your own first, so the attacks, defenses and model families it "
                             "registers are known (repeatable; the current folder is on the path)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment from a config")
    run.add_argument("--config", type=Path, action="append", default=[],
                     help="YAML file layered over the defaults (repeatable; later files win)")
    demo = sub.add_parser("demo", help="run the packaged demo experiment")
    bench = sub.add_parser("bench", help="benchmarks: attacks, defenses, detection, overhead, throughput, loading, grid, "
                                         "table, report, merge")
    bench.add_argument("suite", choices=["attacks", "defenses", "detection", "overhead", "throughput", "loading", "grid",
                                         "table", "report", "merge"])
    bench.add_argument("sources", nargs="*", type=Path, help="merge: result stores (folders) to merge into --store")
    bench.add_argument("--config", type=Path, help="grid, table: the grid file (e.g. robustit/configs/grids/attacks.yaml); detection: its grid (default robustit/configs/grids/detection.yaml); report: its grid (default robustit/configs/grids/benchmark.yaml)")
    bench.add_argument("--shard", help="grid: run shard i of n, as i/n (0 <= i < n)")
    bench.add_argument("--dry-run", action="store_true", help="grid, detection: list the runs and estimate their time; run nothing")
    bench.add_argument("--attacks", help="attacks: comma-separated attack names (default: all)")
    bench.add_argument("--defenses", default="components",
                       help="defenses: comma-separated variants name[:key=value...], or a preset: "
                            "components (vanilla, aar, idr, robustit) or paper (components + the paper's ablations)")
    bench.add_argument("--attack", default="badnets", help="defenses, overhead: the attack (default badnets)")
    bench.add_argument("--defense", default="robustit", help="overhead: the defense timed against VanillaIT")
    bench.add_argument("--steps", type=int, help=f"overhead: tuning steps of each (default {DEFAULT_STEPS['overhead']}); "
                                                  "throughput: tuning steps measured after the warm-up (default "
                                                  f"{DEFAULT_STEPS['throughput']})")
    bench.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                       help=f"loading: records in the fixture JSON (default {DEFAULT_RECORDS}; the cases that decode "
                            "read a tenth)")
    bench.add_argument("--out", type=Path, help="the table (default runs/bench-<suite or grid name>/table.md); report: the "
                                                 f"report (default {DEFAULT_REPORT}), its figures in figures/<report name>/ beside it")
    base = sub.add_parser("base-adapter", help="the base adapter of a config (default: the demo's): find, build or ship it")
    base.add_argument("--config", type=Path, action="append", default=[], help="YAML file layered over the defaults (repeatable)")
    base.add_argument("--rebuild", action="store_true", help="pretrain it again even if shipped or cached")
    base.add_argument("--ship", action="store_true", help="copy it into robustit/assets/base_adapters/ (commit that to ship it)")
    activations = sub.add_parser("activations", help="per-channel adapter activation of tuned runs, as a PNG")
    activations.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR",
                             help="a finished run (repeatable; one panel each, in order)")
    activations.add_argument("--trigger-from", type=Path, required=True,
                             help="a poisoned run: its test data and image trigger are the inputs")
    activations.add_argument("--size", type=int, default=100, help="test images (default 100)")
    activations.add_argument("--out", type=Path, required=True, help="the PNG (statistics go beside it as .json)")
    activations.add_argument("--threads", type=int, help="torch CPU threads")
    scan = sub.add_parser("scan", help="audit a training set with BYORn's detector before tuning")
    scan.add_argument("--config", type=Path, action="append", default=[],
                      help="YAML file layered over the defaults (repeatable); its data, model and attack are scanned")
    scan.add_argument("--score", help=f"defense.params.score: {', '.join(SCORES)} (default: byorn's)")
    scan.add_argument("--threshold", help=f"defense.params.threshold: {', '.join(THRESHOLDS)} (default: byorn's)")
    scan.add_argument("--out", type=Path, required=True, help="the output folder (new, or an earlier scan's)")
    for p in (run, demo, bench, base, scan):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. train.max_steps=50 (repeatable)")
        p.add_argument("--skip-bad", dest="overrides", action="append_const", const="data.skip_bad=true",
                       help="leave bad data records out, each counted in metrics.json, instead of stopping at the "
                            "first (the same as --set data.skip_bad=true)")
        p.add_argument("--threads", type=int, help="torch CPU threads")
    for p in (run, demo, bench):
        p.add_argument("--store", type=Path, default=Path(DEFAULT_STORE),
                       help=f"the result store every finished run is recorded in (default {DEFAULT_STORE}/)")
        p.add_argument("--resume", action="store_true",
                       help="run, demo, bench grid: go on with a killed run of the same config from its run "
                            "directory's last checkpoint (train.checkpoint_every), or record it if it finished")
    again = sub.add_parser("evaluate", help="evaluate a finished run again with changed test-time settings")
    again.add_argument("run_dir", type=Path)
    again.add_argument("--out", type=Path, help="where to write (default RUN_DIR/reevaluated/<settings>)")
    again.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="a test-time setting: eval.*, attack.*, defense.params.*, data.test_size (repeatable)")
    again.add_argument("--threads", type=int, help="torch CPU threads")
    drift = sub.add_parser("drift", help="how far tuning moved the adapter's reading of the test images, for finished runs")
    drift.add_argument("run_dir", type=Path, nargs="+")
    drift.add_argument("--threads", type=int, help="torch CPU threads")
    report = sub.add_parser("report", help="re-render report.md of a run directory")
    report.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[robustit] %(message)s")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if launched_processes() > 1 and args.command != "run":
            raise ValueError(f"only `robustit run` runs data-parallel; run `robustit {args.command}` in one process "
                             f"(without accelerate launch)")
        if args.imports:
            sys.path.insert(0, str(Path.cwd()))
            for module in args.imports:
                importlib.import_module(module)
        if args.command == "run":
            return _run(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "base-adapter":
            return _base_adapter(args)
        if args.command == "activations":
            return _activations(args)
        if args.command == "evaluate":
            return _reevaluate(args)
        if args.command == "scan":
            return _scan(args)
        if args.command == "drift":
            return _drift(args)
        print(RunDirectory(args.run_dir).write_report())
        return 0
    except (ValueError, KeyError, OSError, ModuleNotFoundError) as error:
        print(f"robustit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
