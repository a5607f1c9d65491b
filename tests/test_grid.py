import logging
import shutil

import pytest
import yaml

from robustit.bench.grid import estimate_seconds, expand, grid_runs, load_grid, parse_shard, plan, run_grid, shard
from robustit.bench.tables import attack_columns, grid_table, render_grid_table
from robustit.cli import main
from robustit.defenses import IDR, RobustIT
from robustit.store import ResultStore, make_record

TUNING = {None: 10.0, "robustit": 30.0, "aar": 20.0, "byorn": 15.0}
ATTACK_COST = {"badnets": 0.0, "sig": 100.0}


def fake_metrics(config) -> dict:
    """Metrics made up from the config: ASR falls with a defense and rises with the seed; the
    stage timings depend on defense, attack and seed."""
    seed, defense = config.train.seed, config.defense.name if config.defense else None
    rate = 90.0 - (40.0 if defense else 0.0) + seed
    return {
        "name": config.name,
        "defense": {"name": defense} if defense else None,
        "asr": {
            "target": config.attack.target,
            "full": {"rate": rate, "n": 20, "keyword_rate": rate + 2},
            "image_only": {"rate": rate / 2, "n": 20, "keyword_rate": 0.0},
            "text_only": {"rate": rate / 4, "n": 20, "keyword_rate": 0.0},
            "false_trigger": {"rate": 0.0, "n": 20, "keyword_rate": 1.0},
        },
        "caption": {"BLEU_4": 20.0 + seed, "METEOR": 18.0, "CIDEr": 60.0},
        "train": {"seconds": 100.0 + 10 * seed},
        "timings": {"tuning": TUNING[defense] + ATTACK_COST[config.attack.name] + seed, "evaluation": 5.0},
        "objects": {"rate": 30.0 + seed},
        **({"detection": {"n_flagged": 82 + seed, "precision": 91.5, "recall": 93.75, "auroc": 0.9963}}
           if defense == "byorn" else {}),
    }


def fake_runner(calls: list):
    def run(config, store):
        calls.append(config)
        store.put(make_record(config, fake_metrics(config), {"train_data": "fake"}))

    return run


def write_grid(tmp_path, grid: dict, name: str = "grid.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid))
    return path


def two_by_two(**block) -> dict:
    """badnets and sig against VanillaIT and a RobustIT variant, seeds 0 and 1 (8 runs), and a
    block repeating one of them."""
    return {
        "name": "grid",
        "overrides": ["train.max_steps=2"],
        "blocks": [
            {"attacks": ["badnets", "sig"], "defenses": ["vanilla", "robustit:gamma=0.8"], "poison_rates": [0.1],
             "seeds": [0, 1], **block},
            {"attacks": ["badnets"], "defenses": ["vanilla"], "poison_rates": [0.1], "seeds": [0]},
        ],
    }


def test_blocks_expand_into_products_deduplicated_and_sorted_by_hash(tmp_path):
    spec = load_grid(write_grid(tmp_path, two_by_two()))
    configs = expand(spec)
    hashes = [c.config_hash() for c in configs]
    assert len(configs) == 8 and hashes == sorted(set(hashes))
    assert {(c.attack.name, c.defense.name if c.defense else None, c.train.seed, c.attack.seed) for c in configs} == {
        (a, d, s, s) for a in ("badnets", "sig") for d in (None, "robustit") for s in (0, 1)}
    assert all(c.train.max_steps == 2 and c.attack.poison_rate == 0.1 and not c.evaluate_base for c in configs)
    assert all(c.defense.params["gamma"] == 0.8 for c in configs if c.defense)
    assert len({c.run_dir() for c in configs}) == 8
    assert {c.name for c in configs} == {"grid/vanilla", "grid/robustit-gamma0.8"}
    runs = grid_runs(spec)
    assert [(r.attack, r.defense, r.seed) for r in runs[:3]] == [
        ("badnets", "vanilla", 0), ("badnets", "vanilla", 1), ("badnets", "robustit:gamma=0.8", 0)]
    # a variant that spells out a default is the same run
    same = load_grid(write_grid(tmp_path, {"name": "g", "blocks": [
        {"attacks": ["sig"], "defenses": ["robustit", "robustit:gamma=0.5"]}]}, "same.yaml"))
    assert len(expand(same)) == 1 and grid_runs(same)[0].defense == "robustit"


def test_the_store_resumes_a_grid_and_a_changed_config_runs_again(tmp_path, monkeypatch, caplog):
    store, calls = ResultStore(tmp_path / "results"), []
    spec = load_grid(write_grid(tmp_path, two_by_two()))
    with caplog.at_level(logging.INFO, logger="robustit.bench.grid"):
        runs = run_grid(spec, store, runner=fake_runner(calls), progress=False)
    assert len(calls) == 8 and not any(r.stored for r in runs) and len(store) == 8
    assert "grid: run 1/8: " in caplog.text and "grid: run 8/8: " in caplog.text
    calls.clear()
    assert all(r.stored for r in run_grid(spec, store, runner=fake_runner(calls))) and calls == []
    # another number of steps is another config
    longer = load_grid(write_grid(tmp_path, {**two_by_two(), "overrides": ["train.max_steps=3"]}, "longer.yaml"))
    run_grid(longer, store, runner=fake_runner(calls))
    assert len(calls) == 8 and len(store) == 16
    # so is a changed default of a defense parameter the grid never sets
    calls.clear()
    for cls in (IDR, RobustIT):
        monkeypatch.setitem(cls.defaults, "crop", 0.2)
    run_grid(spec, store, runner=fake_runner(calls))
    assert len(calls) == 4 and all(c.defense.name == "robustit" for c in calls) and len(store) == 20


def test_a_runner_that_stores_nothing_is_an_error(tmp_path):
    spec = load_grid(write_grid(tmp_path, two_by_two()))
    with pytest.raises(RuntimeError, match="without storing its record"):
        run_grid(spec, ResultStore(tmp_path / "results"), runner=lambda config, store: None)


def test_shards_partition_the_grid_and_their_merged_stores_equal_the_unsharded_one(tmp_path):
    spec = load_grid(write_grid(tmp_path, two_by_two()))
    whole = ResultStore(tmp_path / "whole")
    run_grid(spec, whole, runner=fake_runner([]))
    merged = ResultStore(tmp_path / "merged")
    seen = []
    for i in range(3):
        part = ResultStore(tmp_path / f"shard{i}")
        runs = run_grid(spec, part, shard_of=(i, 3), runner=fake_runner([]))
        seen += [r.config_hash for r in runs]
        assert {r["config_hash"] for r in part.records()} == {r.config_hash for r in runs}
        added, same, conflicting = merged.merge(part.root)
        assert len(added) == len(runs) and same == conflicting == []
    assert sorted(seen) == [c.config_hash() for c in expand(spec)]  # disjoint, and they cover the grid
    assert [(r["config_hash"], r["config"], r["metrics"]) for r in merged.records()] == [
        (r["config_hash"], r["config"], r["metrics"]) for r in whole.records()]
    # a shard's runs do not depend on what is stored already
    assert [r.config_hash for r in plan(spec, whole, (1, 3))] == [r.config_hash for r in plan(spec, ResultStore(tmp_path / "x"), (1, 3))]
    assert shard(list(range(7)), 1, 3) == [1, 4]
    assert parse_shard("2/4") == (2, 4)


def test_a_dry_run_lists_the_shard_and_estimates_from_stored_timings(tmp_path, capsys):
    store = ResultStore(tmp_path / "results")
    grid = {**two_by_two(), "blocks": [{"attacks": ["badnets", "sig"], "defenses": ["vanilla", "robustit:gamma=0.8", "aar"],
                                        "seeds": [0, 1]}]}
    spec = load_grid(write_grid(tmp_path, grid))
    runs = run_grid(spec, store, dry_run=True, runner=fake_runner([]))
    out = capsys.readouterr().out
    assert len(runs) == 12 and out.count("  to run\n") == 12 and len(store) == 0
    assert "12 runs, 0 stored, 12 to run; estimated time of the runs to do: unknown" in out
    # stored: badnets with vanilla (15, 16 s) and robustit (35, 36 s), sig with vanilla seed 5 (120 s)
    run_grid(load_grid(write_grid(tmp_path, {**grid, "blocks": [{"attacks": ["badnets"], "defenses": ["vanilla", "robustit:gamma=0.8"],
                                                                  "seeds": [0, 1]}]}, "part.yaml")), store, runner=fake_runner([]))
    run_grid(load_grid(write_grid(tmp_path, {**grid, "blocks": [{"attacks": ["sig"], "defenses": ["vanilla"], "seeds": [5]}]}, "s5.yaml")),
             store, runner=fake_runner([]))
    runs = run_grid(spec, store, dry_run=True, runner=fake_runner([]))
    out = capsys.readouterr().out
    # sig/vanilla: same attack and defense (120 s) x 2; sig/robustit: same defense (35.5 s) x 2;
    # aar: nothing like it stored, the mean of all records (44.4 s) x 4
    expected = 2 * 120 + 2 * 35.5 + 4 * (15 + 16 + 35 + 36 + 120) / 5
    assert estimate_seconds(runs, store) == pytest.approx(expected)
    assert f"about {expected:.0f} s" in out and "12 runs, 4 stored, 8 to run" in out
    lines = out.splitlines()[:-1]
    assert len(lines) == 12 and sum(line.endswith("stored") for line in lines) == 4
    stored = next(r for r in runs if r.stored)
    assert any(line.split() == [stored.attack, stored.defense, "rate", "0.1", "seed", str(stored.seed), stored.config_hash[:16], "stored"]
               for line in lines)
    half = run_grid(spec, store, shard_of=(1, 2), dry_run=True)
    assert len(half) == 6 and "shard 1/2: 6 runs" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("name: [", "not valid YAML"),
    ("- a\n- b", "must hold a mapping"),
    ("blocks: [{attacks: [sig], defenses: [vanilla]}]", "name: expected a non-empty name"),
    ("name: g\nnope: 1\nblocks: [{attacks: [sig], defenses: [vanilla]}]", r"unknown key\(s\) \['nope'\]"),
    ("name: g\nblocks: []", "blocks: expected a non-empty list"),
    ("name: g\nblocks: [{attacks: sig, defenses: [vanilla]}]", r"blocks\[0\]\.attacks: expected a non-empty list of strings"),
    ("name: g\nblocks: [{attacks: [sig]}]", r"blocks\[0\]\.defenses: missing"),
    ("name: g\nblocks: [{attacks: [sig], defenses: [vanilla], rates: [0.1]}]", r"blocks\[0\]: unknown key\(s\) \['rates'\]"),
    ("name: g\nblocks: [{attacks: [sig, nope], defenses: [vanilla]}]", r"blocks\[0\]\.attacks\[1\]: no attack 'nope'"),
    ("name: g\nblocks: [{attacks: [sig], defenses: ['robustt:alpha=1']}]", r"blocks\[0\]\.defenses\[0\]: no defense 'robustt'"),
    ("name: g\nblocks: [{attacks: [sig], defenses: [vanilla], poison_rates: [1.5]}]", r"blocks\[0\]\.poison_rates: expected"),
    ("name: g\nblocks: [{attacks: [sig], defenses: [vanilla], seeds: [true]}]", r"blocks\[0\]\.seeds: expected"),
    ("name: g\noverrides: [train.max_steps]\nblocks: [{attacks: [sig], defenses: [vanilla]}]", r"overrides\[0\]: 'train.max_steps' must look like"),
    ("name: g\nblocks: [{attacks: [sig], defenses: [vanilla], overrides: [1]}]", r"blocks\[0\]\.overrides: expected a list of strings"),
    ("name: g\nlayers: [nope]\nblocks: [{attacks: [sig], defenses: [vanilla]}]",
     r"layers\[0\]: no packaged config 'nope'; known in configs/: \['benchmark', 'demo'\]"),
    ("name: g\nlayers: [tasks/nope]\nblocks: [{attacks: [sig], defenses: [vanilla]}]",
     r"layers\[0\]: no packaged config 'tasks/nope'; known in tasks/: \['vqa'\]"),
])
def test_a_bad_grid_file_is_an_error_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}: .*{message}"):
        load_grid(path)


@pytest.mark.parametrize("block, message", [
    ({"overrides": ["train.nope=1"]}, r"unknown config key\(s\) \['train.nope'\]"),
    ({"defenses": ["robustit:alpha"]}, "must look like key=value"),
    ({"defenses": ["vanilla:alpha=1"]}, "vanilla has no parameters"),
    ({"defenses": ["robustit:nope=1"]}, r"unknown parameter\(s\) \['nope'\]"),
])
def test_settings_no_config_has_are_errors_naming_the_file_and_the_block(tmp_path, block, message):
    path = write_grid(tmp_path, {"name": "g", "blocks": [{"attacks": ["sig"], "defenses": ["vanilla"], **block}]})
    with pytest.raises(ValueError, match=rf"{path}: blocks\[0\] \(attack 'sig', defense .*\): .*{message}"):
        expand(load_grid(path))


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_a_bad_shard_is_an_error(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_attack_columns_from_metrics_alone():
    metrics = {"asr": {"full": {"rate": 91.25, "n": 20, "keyword_rate": 95.0}, "false_trigger": {"rate": 0.0, "keyword_rate": 2.5}},
               "caption": {"BLEU_4": 20.04, "METEOR": 18.0}}
    assert attack_columns(metrics) == {
        "ASR": "91.2", "ASR img": "-", "ASR txt": "-", "false trig.": "0.0", "key word trig.": "95.0",
        "key word clean": "2.5", "n": "20", "BLEU_4": "20.0", "METEOR": "18.0", "CIDEr": "-",
        "object named": "-"}
    assert set(attack_columns({}).values()) == {"-"}
    drifted = attack_columns({**metrics, "adapter_drift": {"token_cosine": 0.3741, "words_kept": 8.44, "distinct_words": 23}})
    assert drifted["adapter cos"] == "0.374" and drifted["words kept"] == "8.4"
    assert "adapter cos" not in attack_columns(metrics)


def test_grid_tables_render_from_store_records_alone_with_mean_and_std_over_seeds(tmp_path):
    spec = load_grid(write_grid(tmp_path, two_by_two()))
    assert "No run of grid 'grid'" in grid_table(spec, ResultStore(tmp_path / "empty"))
    run_grid(spec, ResultStore(tmp_path / "results"), runner=fake_runner([]))
    shutil.copytree(tmp_path / "results", tmp_path / "copy")
    shutil.rmtree(tmp_path / "results")
    store = ResultStore(tmp_path / "copy")
    out = render_grid_table(spec, store, tmp_path / "tables" / "grid.md", "robustit bench table --config grid.yaml")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("<!-- ") and "`robustit bench table --config grid.yaml`" in lines[0] and lines[0].endswith("-->")
    header = [h.strip() for h in lines[2].strip("|").split("|")]
    assert header == ["attack", "defense", "rate", "seed", "ASR", "ASR img", "ASR txt", "false trig.", "key word trig.",
                      "key word clean", "n", "BLEU_4", "METEOR", "CIDEr", "object named", "tuning s"]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[4:8]]
    assert [(r["attack"], r["defense"], r["rate"], r["seed"]) for r in rows] == [
        ("badnets", "vanilla", "0.1", "0, 1"), ("badnets", "robustit:gamma=0.8", "0.1", "0, 1"),
        ("sig", "vanilla", "0.1", "0, 1"), ("sig", "robustit:gamma=0.8", "0.1", "0, 1")]
    assert rows[0]["ASR"] == "90.5 ± 0.7" and rows[1]["ASR"] == "50.5 ± 0.7" and rows[0]["n"] == "20"
    assert rows[0]["tuning s"] == "105 ± 7" and rows[0]["METEOR"] == "18.0 ± 0.0" and rows[0]["key word clean"] == "1.0 ± 0.0"
    assert "mean ± sample standard deviation" in lines[-1]
    one_seed = load_grid(write_grid(tmp_path, {**two_by_two(), "blocks": [
        {"attacks": ["sig"], "defenses": ["vanilla", "aar"], "poison_rates": [0.1], "seeds": [1]}]}, "one.yaml"))
    table = grid_table(one_seed, store, row_label=("defense", "seed"))  # aar was never run: no row
    assert table.splitlines()[2].startswith("| vanilla | 1 | 91.0 | 45.5 | 22.8 |") and len(table.splitlines()) == 3
    with pytest.raises(ValueError, match="row_label"):
        grid_table(one_seed, store, row_label=("nope",))


def test_a_data_side_defense_row_carries_its_detection_and_vanillas_row_dashes(tmp_path):
    spec = load_grid(write_grid(tmp_path, {"name": "g", "blocks": [
        {"attacks": ["badnets"], "defenses": ["vanilla", "byorn"], "poison_rates": [0.1], "seeds": [0, 1]}]}))
    store = ResultStore(tmp_path / "results")
    run_grid(spec, store, runner=fake_runner([]))
    lines = grid_table(spec, store).splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    assert header[-5:] == ["tuning s", "flagged", "flag precision", "flag recall", "flag AUROC"]
    rows = {row[1]: row for row in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:4])}
    assert rows["byorn"][-4:] == ["82 ± 1", "91.5 ± 0.0", "93.8 ± 0.0", "0.996 ± 0.000"]
    assert rows["vanilla"][-4:] == ["-", "-", "-", "-"]
    assert rows["vanilla"][header.index("object named")] == "30.5 ± 0.7"


def test_packaged_grids_expand():
    from robustit.config import PACKAGED_CONFIGS

    attacks = expand(load_grid(PACKAGED_CONFIGS / "grids" / "attacks.yaml"))
    names = ["badnets", "blended", "ftrojan", "sig", "ssba", "trojvqa", "vltrojan"]
    for defense in (None, "byorn"):
        assert sorted(c.attack.name for c in attacks if (c.defense.name if c.defense else None) == defense) == names
    assert all(c.attack.poison_rate == 0.1 and c.train.seed == 0 and not c.evaluate_base for c in attacks)
    faithful = expand(load_grid(PACKAGED_CONFIGS / "grids" / "robustit-faithful.yaml"))
    assert sorted(c.defense.name if c.defense else "vanilla" for c in faithful) == ["robustit", "vanilla"]
    robustit = next(c for c in faithful if c.defense)
    assert {k: robustit.resolved()["defense"]["params"][k] for k in ("alpha", "gamma", "beta", "consistency")} == {
        "alpha": 2.0, "gamma": 0.5, "beta": 0.9, "consistency": "absolute"}
    detection = expand(load_grid(PACKAGED_CONFIGS / "grids" / "detection.yaml"))
    assert {c.defense.name for c in detection} == {"byorn"} and len({c.run_dir() for c in detection}) == len(detection) == 13
    assert {c.attack.target for c in detection} >= {"Banana.", "A picture of a dog against light blue."}
    for grid in sorted(PACKAGED_CONFIGS.joinpath("grids").iterdir()):
        assert expand(load_grid(grid)), grid


def test_grid_runs_the_real_experiment_on_the_tiny_model_into_the_store(karpathy, tmp_path):
    from test_experiment import tiny_overrides

    grid = write_grid(tmp_path, {"name": "tiny-grid", "overrides": tiny_overrides(karpathy, tmp_path), "blocks": [
        {"attacks": ["badnets"], "defenses": ["vanilla", "robustit"], "poison_rates": [0.25], "seeds": [0]}]})
    store = ResultStore(tmp_path / "results")
    runs = run_grid(load_grid(grid), store, progress=False)
    assert len(runs) == 2 and len({r.config.run_dir() for r in runs}) == 2
    for run in runs:
        record = store.get(run.config_hash)
        assert record["config"] == run.config.resolved() and record["name"] == run.config.name
        assert record["metrics"]["train"]["steps"] == 4 and record["inputs"] and record["metrics"]["timings"]
        assert (run.config.run_dir() / "metrics.json").exists()
    assert all(r.stored for r in run_grid(load_grid(grid), store, runner=lambda config, store: pytest.fail("reran")))
    table = grid_table(load_grid(grid), store)
    assert "| badnets | vanilla | 0.25 | 0 |" in table and "| badnets | robustit | 0.25 | 0 |" in table


def test_grid_runs_that_would_share_a_run_directory_are_refused(tmp_path):
    grid = {"name": "g", "blocks": [{"attacks": ["sig"], "defenses": ["vanilla"], "overrides": ["train.max_steps=2"]},
                                    {"attacks": ["sig"], "defenses": ["vanilla"], "overrides": ["train.max_steps=3"]}]}
    with pytest.raises(ValueError, match="share the run directory"):
        grid_runs(load_grid(write_grid(tmp_path, grid)))


@pytest.mark.parametrize("suite", ["attacks", "defenses", "overhead", "table"])
def test_a_dry_run_of_a_suite_with_no_plan_is_refused_before_anything_runs(suite, tmp_path, capsys):
    assert main(["bench", suite, "--dry-run", "--store", str(tmp_path / "results")]) == 2
    assert "--dry-run lists the runs of bench grid and bench detection" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
