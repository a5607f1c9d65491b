import pytest
import yaml

from robustit.bench.grid import GridRun, grid_runs, load_grid
from robustit.bench.report import render_report
from robustit.bench import report_figures
from robustit.bench.report_figures import palette, pareto_front
from robustit.cli import main
from robustit.store import ResultStore, make_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMAND = "robustit bench report --store results --out docs/benchmark.md"
SECONDS = {"vanilla": 100.0, "byorn": 150.0, "robustit:gamma=0.8": 300.0, "aar": 110.0, "strip": 170.0}
EVALUATION_SECONDS = {"vanilla": 10.0, "byorn": 25.0, "robustit:gamma=0.8": 10.0, "aar": 10.0, "strip": 40.0}
# (attack, poison rate, defense variant, seed) -> (ASR, CIDEr); the grid below lists these runs and one more,
# sig with vanilla at seed 1, which the store lacks
RESULTS = {
    ("badnets", 0.1, "vanilla", 0): (90.0, 60.0),
    ("badnets", 0.1, "vanilla", 1): (92.0, 62.0),
    ("badnets", 0.1, "byorn", 0): (0.0, 70.0),
    ("badnets", 0.1, "byorn", 1): (0.0, 72.0),
    ("badnets", 0.1, "robustit:gamma=0.8", 0): (10.0, 50.0),
    ("sig", 0.1, "vanilla", 0): (95.0, 65.0),
    ("sig", 0.1, "byorn", 0): (5.0, 66.0),
    ("sig", 0.1, "robustit:gamma=0.8", 0): (3.0, 55.0),
    ("badnets", 0.2, "vanilla", 0): (99.0, 40.0),
    ("badnets", 0.0, "vanilla", 0): (0.0, 80.0),
}
GRID = {
    "name": "report",
    "blocks": [
        {"attacks": ["badnets", "sig"], "defenses": ["vanilla", "byorn", "robustit:gamma=0.8"], "poison_rates": [0.1], "seeds": [0]},
        {"attacks": ["badnets", "sig"], "defenses": ["vanilla"], "poison_rates": [0.1], "seeds": [1]},
        {"attacks": ["badnets"], "defenses": ["byorn"], "poison_rates": [0.1], "seeds": [1]},
        {"attacks": ["badnets"], "defenses": ["vanilla"], "poison_rates": [0.0, 0.2], "seeds": [0]},
    ],
}


def write_grid(tmp_path, grid: dict = GRID):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return load_grid(path)


def record(run: GridRun, asr: float, cider: float) -> dict:
    """A record of made-up metrics for the grid's run: tuning seconds are the variant's times
    1 + seed / 10, so a variant's time over VanillaIT's on the same seed is the ratio of their `SECONDS`."""
    seed = run.seed
    metrics = {
        "asr": {"full": {"rate": asr, "n": 20, "keyword_rate": asr + 1}, "text_only": {"rate": asr / 2, "n": 20},
                "image_only": {"rate": asr / 4, "n": 20}, "false_trigger": {"rate": 0.0, "n": 20, "keyword_rate": 2.0}},
        "caption": {"BLEU_4": 20.0 + seed, "METEOR": 18.0, "CIDEr": cider},
        "objects": {"rate": 30.0},
        "train": {"seconds": SECONDS[run.defense] * (1 + seed / 10), "steps": 100,
                  "extra_forward_passes": 0 if run.defense == "vanilla" else 50 * (1 + seed),
                  **({"curves": {"step": [50.0, 100.0], "lm": [2.0, 1.0], **({"idr_text": [0.5, 0.2]} if run.defense != "vanilla" else {})}}
                     if run.defense != "byorn" else {})},
        "timings": {"evaluation": EVALUATION_SECONDS[run.defense]},
        **({"detection": {"n_flagged": 82 + seed, "precision": 91.5, "recall": 93.75, "auroc": 0.9963}}
           if run.defense == "byorn" else {}),
        **({"refusal": {"full": {"rate": 100.0 - asr, "n": 20}, "clean": {"rate": 5.0, "n": 20}}}
           if run.defense == "strip" else {}),
    }
    return make_record(run.config, metrics, {"train_data": "fake"})


def fill(store: ResultStore, spec, results: dict = RESULTS) -> None:
    for run in grid_runs(spec):
        key = (run.attack, run.config.attack.poison_rate, run.defense, run.seed)
        if key in results:
            store.put(record(run, *results[key]))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return write_grid(tmp_path_factory.mktemp("grid"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, grid) -> ResultStore:
    store = ResultStore(tmp_path_factory.mktemp("results"))
    fill(store, grid)
    return store


@pytest.fixture(scope="module")
def rendered(grid, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "benchmark.md"
    render_report(grid, store, out, COMMAND)
    return out


def table_after(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table after the line `heading`."""
    lines = text.splitlines()
    start = next(i for i in range(lines.index(heading), len(lines)) if lines[i].startswith("|"))
    header = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_the_first_line_names_the_command_that_redoes_the_report(rendered):
    first = rendered.read_text().splitlines()[0]
    assert first == f"<!-- Rendered from the result store by `{COMMAND}`; do not edit. -->"


def test_attack_tables_give_mean_and_std_over_the_seeds_of_a_defense_variant(rendered):
    rows = {row["defense"]: row for row in table_after(rendered.read_text(), "### badnets, poison rate 0.1")}
    assert list(rows) == ["VanillaIT", "byorn", "robustit:gamma=0.8"]
    assert rows["VanillaIT"]["ASR"] == "91.0 ± 1.4" and rows["VanillaIT"]["CIDEr"] == "61.0 ± 1.4"
    assert rows["VanillaIT"]["ASR txt"] == "45.5 ± 0.7" and rows["VanillaIT"]["key word trig."] == "92.0 ± 1.4"
    assert rows["VanillaIT"]["n seeds"] == "2" and rows["VanillaIT"]["n"] == "20"
    assert rows["byorn"]["ASR"] == "0.0 ± 0.0" and rows["byorn"]["tuning s"] == "158 ± 11"
    assert rows["robustit:gamma=0.8"]["ASR"] == "10.0" and rows["robustit:gamma=0.8"]["n seeds"] == "1"


def test_clean_data_records_are_a_group_of_their_own(rendered):
    text = rendered.read_text()
    rows = table_after(text, "### Clean data (nothing poisoned)")
    assert [(row["defense"], row["CIDEr"]) for row in rows] == [("VanillaIT", "80.0")]
    assert [line for line in text.splitlines() if line.startswith("### ")] == [
        "### Clean data (nothing poisoned)", "### badnets, poison rate 0.1", "### badnets, poison rate 0.2",
        "### sig, poison rate 0.1"]


def test_leaderboard_orders_by_worst_asr_and_divides_tuning_and_evaluation_time_by_vanillas_on_the_same_runs(rendered):
    rows = table_after(rendered.read_text(), "## Leaderboard, poison rate 0.1")
    assert [row["defense"] for row in rows] == ["byorn", "robustit:gamma=0.8", "VanillaIT"]
    byorn, robustit, vanilla = rows
    assert byorn["worst ASR"] == "5.0 (sig)" and robustit["worst ASR"] == "10.0 (badnets)"
    assert vanilla["worst ASR"] == "95.0 (sig)" and vanilla["mean ASR"] == "93.0"
    assert byorn["mean CIDEr"] == "68.5" and vanilla["clean-data CIDEr"] == "80.0" and byorn["clean-data CIDEr"] == "-"
    assert (byorn["overhead"], robustit["overhead"], vanilla["overhead"]) == ("1.50", "3.00", "1.00")
    assert (byorn["test-time overhead"], robustit["test-time overhead"], vanilla["test-time overhead"]) == ("2.50", "1.00", "1.00")
    assert robustit["attacks"] == "2" and robustit["runs"] == "2"
    assert (byorn["extra passes/step"], robustit["extra passes/step"], vanilla["extra passes/step"]) == ("0.67", "0.50", "0.00")


def test_detection_table_lists_precision_and_recall_of_the_flagging_defense(rendered):
    rows = table_after(rendered.read_text(), "## Detection")
    assert [(row["attack"], row["rate"], row["defense"]) for row in rows] == [
        ("badnets", "0.1", "byorn"), ("sig", "0.1", "byorn")]
    assert rows[0]["flagged"] == "82 ± 1" and rows[0]["flag precision"] == "91.5 ± 0.0" and rows[1]["flag recall"] == "93.8"
    assert rows[1]["flag AUROC"] == "0.996"


def test_figures_are_pngs_linked_relative_to_the_report(rendered):
    text = rendered.read_text()
    names = ["radar-badnets.png", "radar-sig.png", "asr-vs-cider.png", "asr-vs-poison-rate.png", "training-curves.png"]
    for name in names:
        assert f"](figures/benchmark/{name})" in text
        assert (rendered.parent / "figures" / "benchmark" / name).read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in (rendered.parent / "figures" / "benchmark").iterdir()) == sorted(names)


def test_figures_draw_each_defense_as_configured_and_leave_its_variants_to_the_tables(grid, store, tmp_path, monkeypatch):
    drawn: dict[str, set] = {}

    def record_drawn(name):
        def draw(*args):
            drawn[name] = drawn.get(name, set()) | {key if isinstance(key, str) else key[0] for key in args[-2]}
            return PNG_SIGNATURE
        return draw
    monkeypatch.setattr(report_figures, "radar_figure", record_drawn("radar"))
    monkeypatch.setattr(report_figures, "asr_cider_figure", record_drawn("asr-cider"))
    text = render_report(grid, store, tmp_path / "benchmark.md", COMMAND).read_text()
    assert drawn == {"radar": {"VanillaIT", "byorn"}, "asr-cider": {"VanillaIT", "byorn"}}
    assert "| robustit:gamma=0.8 |" in text


@pytest.mark.parametrize("count", [3, 10, 11, 20, 25])
def test_every_variant_gets_a_colour_of_its_own(count):
    variants = [f"defense-{k}" for k in range(count)]
    colours = palette(variants)
    assert list(colours) == variants and len(set(colours.values())) == count


def test_rendering_twice_gives_identical_bytes(grid, store, rendered, tmp_path):
    again = render_report(grid, store, tmp_path / "benchmark.md", COMMAND)
    assert again.read_bytes() == rendered.read_bytes()
    for png in (rendered.parent / "figures" / "benchmark").iterdir():
        assert (tmp_path / "figures" / "benchmark" / png.name).read_bytes() == png.read_bytes()


def test_figures_the_store_has_no_data_for_are_skipped_and_named(tmp_path):
    grid, store = write_grid(tmp_path), ResultStore(tmp_path / "results")
    fill(store, grid, {("badnets", 0.0, "vanilla", 0): (0.0, 80.0)})
    text = render_report(grid, store, tmp_path / "benchmark.md", COMMAND).read_text()
    assert "No radar figure" in text and "No ASR-against-CIDEr figure" in text and "No ASR-against-poison-rate figure" in text
    assert "No training-curve figure" in text
    assert "No run at poison rate 0.1 stored yet." in text and not (tmp_path / "figures").exists()
    assert "1 of the 11 runs" in text and "The runs not stored yet (10) are listed by `robustit bench grid --config" in text


def test_only_the_grids_runs_enter_the_report_whatever_else_the_store_holds(grid, store, rendered, tmp_path):
    crowded = ResultStore(tmp_path / "results")
    crowded.merge(store.root)
    probe = write_grid(tmp_path, {"name": "probe", "overrides": ["data.train_size=400"], "blocks": [
        {"attacks": ["badnets"], "defenses": ["vanilla", "byorn"], "poison_rates": [0.1], "seeds": [0]}]})
    fill(crowded, probe, {("badnets", 0.1, "vanilla", 0): (10.0, 5.0), ("badnets", 0.1, "byorn", 0): (80.0, 5.0)})
    assert len(crowded) == len(store) + 2
    again = render_report(grid, crowded, tmp_path / "benchmark.md", COMMAND)
    assert again.read_text().replace(str(crowded.root), "STORE") == rendered.read_text().replace(str(store.root), "STORE")
    assert "10 of the 11 runs" in again.read_text()


def test_an_empty_store_renders_a_report_that_says_so_from_the_command_line(tmp_path, capsys):
    write_grid(tmp_path)
    grid, store, out = tmp_path / "grid.yaml", tmp_path / "results", tmp_path / "docs" / "benchmark.md"
    assert main(["bench", "report", "--config", str(grid), "--store", str(store), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == (f"<!-- Rendered from the result store by `robustit bench report --config {grid} --store {store} "
                        f"--out {out}`; do not edit. -->")
    assert "holds none of the 11 runs" in out.read_text()
    assert f"report: {out}" in capsys.readouterr().out


def test_the_packaged_benchmark_grid_is_the_reports_default(tmp_path):
    assert main(["bench", "report", "--store", str(tmp_path / "results"), "--out", str(tmp_path / "b.md")]) == 0
    assert "grids/benchmark.yaml" in (tmp_path / "b.md").read_text()


def test_the_pareto_front_keeps_the_points_no_other_beats_on_both():
    points = [(0.0, 60.0), (5.0, 70.0), (10.0, 65.0), (0.0, 50.0), (50.0, 90.0), (50.0, 90.0)]
    assert pareto_front(points) == [(0.0, 60.0), (5.0, 70.0), (50.0, 90.0)]


def test_a_variant_run_on_fewer_attacks_ranks_below_those_run_on_all(tmp_path):
    grid = write_grid(tmp_path, {**GRID, "blocks": [*GRID["blocks"], {"attacks": ["badnets"], "defenses": ["aar"],
                                                                        "poison_rates": [0.1], "seeds": [0]}]})
    store = ResultStore(tmp_path / "results")
    fill(store, grid, {**RESULTS, ("badnets", 0.1, "aar", 0): (0.0, 90.0)})
    text = render_report(grid, store, tmp_path / "benchmark.md", COMMAND).read_text()
    rows = table_after(text, "## Leaderboard, poison rate 0.1")
    assert [(row["defense"], row["attacks"]) for row in rows] == [
        ("byorn", "2"), ("robustit:gamma=0.8", "2"), ("VanillaIT", "2"), ("aar", "1")]


def test_training_curves_show_one_run_per_variant_that_records_them_badnets_and_seed_0_first(tmp_path):
    from robustit.bench.report import grid_settings, training_curve_runs

    grid = write_grid(tmp_path)
    store = ResultStore(tmp_path / "store")
    for run in grid_runs(grid):
        key = (run.attack, run.poison_rate, run.defense, run.seed)
        if key in RESULTS:
            store.put(record(run, *RESULTS[key]))
    runs = training_curve_runs(grid_settings(grid, store)[0])
    assert list(runs) == ["VanillaIT", "robustit:gamma=0.8"]
    assert runs["VanillaIT"][0] == "badnets, rate 0.1, seed 0" and "idr_text" not in runs["VanillaIT"][1]
    assert runs["robustit:gamma=0.8"][1]["idr_text"] == [0.5, 0.2]


def report_of_vanilla_and_strip(tmp_path, strip_asr: float) -> str:
    """The report of VanillaIT (ASR 90) and STRIP (`strip_asr`) on BadNets 10%, seed 0."""
    spec = write_grid(tmp_path, {"name": "test-time", "blocks": [
        {"attacks": ["badnets"], "defenses": ["vanilla", "strip"], "poison_rates": [0.1], "seeds": [0]}]})
    store = ResultStore(tmp_path / "results")
    fill(store, spec, {("badnets", 0.1, "vanilla", 0): (90.0, 60.0), ("badnets", 0.1, "strip", 0): (strip_asr, 60.0)})
    out = tmp_path / "benchmark.md"
    render_report(spec, store, out, COMMAND)
    return out.read_text()


def test_a_test_time_defense_costs_no_tuning_overhead_whatever_its_copy_of_vanillas_tuning_took(tmp_path):
    rows = {row["defense"]: row for row in table_after(report_of_vanilla_and_strip(tmp_path, 80.0),
                                                          "## Leaderboard, poison rate 0.1")}
    assert rows["strip"]["overhead"] == "1.00" and rows["strip"]["test-time overhead"] == "4.00"


def test_refusal_table_gives_a_test_time_detectors_detection_and_false_alarm_rates_and_asr_after_refusal(tmp_path):
    text = report_of_vanilla_and_strip(tmp_path, 4.0)
    assert "No stored run has detection metrics" in text
    rows = table_after(text, "No stored run has detection metrics (no data-side defense was run).")
    assert rows == [{"attack": "badnets", "rate": "0.1", "defense": "strip", "n seeds": "1",
                     "refused trig.": "96.0", "refused clean": "5.0", "ASR": "4.0"}]


def test_a_report_without_a_test_time_detector_says_so(rendered):
    assert "No stored run has refusals (no test-time detector was run)." in rendered.read_text()


def test_wall_time_sums_the_stored_runs_timings_and_estimates_the_missing_ones_from_them(tmp_path):
    spec = write_grid(tmp_path, {"name": "timed", "blocks": [
        {"attacks": ["badnets"], "defenses": ["vanilla"], "poison_rates": [0.1], "seeds": [0, 1]}]})
    store = ResultStore(tmp_path / "results")
    stored = record(next(run for run in grid_runs(spec) if run.seed == 0), 90.0, 60.0)
    stored["metrics"]["timings"] = {"tuning": 3600.0, "evaluation": 1800.0}
    store.put(stored)
    out = tmp_path / "benchmark.md"
    render_report(spec, store, out, COMMAND)
    assert ("the stored runs took 1.5 h on the machines that made them" in out.read_text()
            and "would take about 1.5 h more" in out.read_text() and "the whole grid about 3.0 h" in out.read_text())
    last = record(next(run for run in grid_runs(spec) if run.seed == 1), 90.0, 60.0)
    last["metrics"]["timings"] = {"tuning": 1800.0}
    store.put(last)
    render_report(spec, store, out, COMMAND)
    assert "the stored runs took 2.0 h" in out.read_text() and "would take" not in out.read_text()


def test_the_report_is_titled_with_its_grids_name(rendered, grid):
    assert rendered.read_text().splitlines()[2] == f"# Benchmark report: grid {grid.name}"


def test_blocks_with_other_settings_keep_their_own_rows_and_their_own_vanillait_partner(tmp_path):
    short = ["attack.target=Banana.", "output_dir=runs/{name}/{attack}-short-target"]
    spec = write_grid(tmp_path, {"name": "targets", "blocks": [
        {"attacks": ["badnets"], "defenses": ["vanilla", "byorn"], "poison_rates": [0.1], "seeds": [0]},
        {"attacks": ["badnets"], "defenses": ["vanilla", "byorn"], "poison_rates": [0.1], "seeds": [0], "overrides": short}]})
    store = ResultStore(tmp_path / "results")
    for run in grid_runs(spec):
        rec = record(run, 80.0 if run.defense == "vanilla" else 0.0, 70.0 if run.setting else 50.0)
        if run.setting and run.defense == "vanilla":
            rec["metrics"]["train"]["seconds"] = 50.0
        store.put(rec)
    out = tmp_path / "report.md"
    render_report(spec, store, out, COMMAND)
    rows = table_after(out.read_text(), "### badnets, poison rate 0.1")
    assert [(row["defense"], row["n seeds"], row["CIDEr"]) for row in rows] == [
        ("VanillaIT", "1", "50.0"), ("byorn", "1", "50.0"),
        ("VanillaIT [attack.target=Banana.]", "1", "70.0"), ("byorn [attack.target=Banana.]", "1", "70.0")]
    overhead = {row["defense"]: row["overhead"] for row in table_after(out.read_text(), "## Leaderboard, poison rate 0.1")}
    assert overhead["byorn"] == "1.50" and overhead["byorn [attack.target=Banana.]"] == "3.00"
