import json
from types import SimpleNamespace

import pytest
import torch

from conftest import vocabulary
from robustit.bench.activations import run_activations
from robustit.bench.defenses import PRESETS, run_defense_benchmark
from robustit.bench.grid import expand, load_grid, variant_config
from robustit.bench.overhead import run_overhead_benchmark
from robustit.bench.tables import run_columns
from robustit.cli import demo_configs, main
from robustit.config import packaged_config
from robustit.eval.activations import channel_activations, figure, peak_statistics
from robustit.models import build_model
from robustit.rundir import RunDirectory
from robustit.store import ResultStore
from test_experiment import tiny_overrides
from test_defenses_base import shape_samples


def table(path):
    lines = path.read_text().splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_packaged_config_layers_named_configs_and_names_the_known_ones():
    config = packaged_config(["attacks/sig", "defenses/robustit"], ["defense.params.alpha=3"])
    assert config.attack.name == "sig" and config.defense.name == "robustit" and config.defense.params["alpha"] == 3
    with pytest.raises(ValueError, match=r"no packaged config 'defenses/nope'; known in defenses/: \['aar', 'byorn', .*'idr'"):
        packaged_config(["defenses/nope"])


def test_the_demo_is_the_benchmark_shortened_on_the_same_training_images():
    from robustit.config import PACKAGED_CONFIGS

    demo = demo_configs()
    for (label, config), defense in zip(demo, ["defenses/vanilla", "defenses/byorn"]):
        benchmark = packaged_config([defense]).to_dict()
        shortened = config.to_dict()
        assert shortened["data"]["test_size"] < benchmark["data"]["test_size"]
        assert shortened["train"]["epochs"] < benchmark["train"]["epochs"]
        assert shortened["attack"]["poison_rate"] > benchmark["attack"]["poison_rate"]
        for d in (benchmark, shortened):
            del d["name"], d["evaluate_base"], d["data"]["test_size"], d["train"]["epochs"], d["attack"]["poison_rate"]
        assert shortened == benchmark, label
    seeds = expand(load_grid(PACKAGED_CONFIGS / "grids" / "demo-seeds.yaml"))
    seed_zero = {c.config_hash() for c in seeds if c.train.seed == 0}
    assert seed_zero == {config.config_hash() for _, config in demo}


def test_defense_variants_parse_into_separate_runs():
    plain, tuned = variant_config("robustit", "badnets", []), variant_config("robustit:alpha=3:gamma=0.3", "badnets", ["name=x"])
    assert tuned.defense.params["alpha"] == 3 and tuned.defense.params["gamma"] == 0.3
    assert plain.run_dir() != tuned.run_dir() and tuned.name == "x/robustit-alpha3-gamma0.3"
    assert plain.name == "bench-defenses/robustit" and str(plain.run_dir()) == "runs/bench-defenses/robustit/badnets-p0.1-seed0"
    assert variant_config("vanilla", "sig", []).defense is None
    with pytest.raises(ValueError, match="key=value"):
        variant_config("robustit:alpha", "badnets", [])
    with pytest.raises(ValueError, match="no parameters"):
        variant_config("vanilla:alpha=1", "badnets", [])
    assert set(PRESETS["components"]) < set(PRESETS["paper"]) and len(PRESETS["paper"]) == 14


def test_defense_benchmark_tabulates_each_variant_against_vanilla(karpathy, tmp_path):
    overrides = tiny_overrides(karpathy, tmp_path)
    store = ResultStore(tmp_path / "store")
    out = run_defense_benchmark(["aar", "vanilla", "robustit:alpha=3"], "badnets", overrides, tmp_path / "t.md", store)
    rows = table(out)
    assert [r["defense"] for r in rows] == ["aar", "vanilla", "robustit:alpha=3"]
    vanilla = rows[1]
    assert vanilla["overhead"] == "1.00" and vanilla["extra passes/step"] == "0.00"
    assert rows[2]["extra passes/step"] == "1.00"
    seconds = {slug: json.loads((tmp_path / "runs" / "tiny" / slug / "badnets" / "metrics.json").read_text())["train"]["seconds"]
               for slug in ("aar", "vanilla", "robustit-alpha3")}
    for row, slug in zip(rows, seconds):
        assert float(row["overhead"]) == pytest.approx(seconds[slug] / seconds["vanilla"], abs=0.006)
    metrics = json.loads((tmp_path / "runs" / "tiny" / "robustit-alpha3" / "badnets" / "metrics.json").read_text())
    assert metrics["defense"]["params"]["alpha"] == 3
    assert len(store) == 3
    again = run_defense_benchmark(["aar", "vanilla", "robustit:alpha=3"], "badnets", overrides, tmp_path / "t2.md", store)
    assert again.read_text() == out.read_text() and len(store) == 3


def test_defense_benchmark_adds_detection_columns_where_a_variant_flags(karpathy, tmp_path, monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))
    store = ResultStore(tmp_path / "store")
    variants = ["vanilla", "byorn:threshold=quantile:max_new_tokens=2"]
    vanilla, byorn = table(run_defense_benchmark(variants, "badnets", tiny_overrides(karpathy, tmp_path), tmp_path / "t.md", store))
    detection = next(r["metrics"]["detection"] for r in store.records() if r["config"]["defense"])
    assert [vanilla[k] for k in ("flagged", "flag precision", "flag recall", "flag AUROC")] == ["-"] * 4
    assert byorn["flagged"] == str(detection["n_flagged"]) == "5"
    assert byorn["flag recall"] == f"{detection['recall']:.1f}" and byorn["flag AUROC"] == f"{detection['auroc']:.3f}"
    plain = table(run_defense_benchmark(["vanilla"], "badnets", tiny_overrides(karpathy, tmp_path), tmp_path / "v.md", store))
    assert "flagged" not in plain[0]


def test_overhead_benchmark_times_both_in_one_process(karpathy, tmp_path):
    out = run_overhead_benchmark("robustit", "badnets", 3, tiny_overrides(karpathy, tmp_path), tmp_path / "o.md")
    vanilla, defended = table(out)
    assert not (tmp_path / "runs").exists()
    assert (vanilla["defense"], defended["defense"]) == ("vanilla", "robustit")
    assert vanilla["steps"] == defended["steps"] == "3"
    assert vanilla["overhead"] == "1.000" and float(defended["overhead"]) > 0
    assert vanilla["extra passes/step"] == "0.00" and defended["extra passes/step"] == "1.00"
    assert int(defended["encoder batches"]) > int(vanilla["encoder batches"])
    with pytest.raises(ValueError, match="steps"):
        run_overhead_benchmark("robustit", "badnets", 0, [], tmp_path / "x.md")


def test_channel_activations_are_mean_absolute_values_at_the_hook_site(tiny_model):
    images = [s.image for s in shape_samples()[:6]]
    seen = []
    remove = tiny_model.add_adapter_hook(lambda x: seen.append(x.detach()) or x)
    tiny_model.adapter(tiny_model.encode_images(tiny_model.pixels(images)))
    remove()
    expected = seen[0].abs().flatten(0, -2).mean(0)
    got = channel_activations(tiny_model, images, batch_size=4)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    assert tiny_model._adapter_hooks == []


def test_peak_statistics_by_hand():
    a = torch.ones(200)
    a[0] = 11.0
    stats = peak_statistics(a)
    assert stats["peak_ratio"] == pytest.approx(11.0)
    assert stats["top1pct_share"] == pytest.approx(12.0 / 210.0)
    assert stats["mean"] == pytest.approx(210.0 / 200)


def test_activation_figure_from_runs(karpathy, tmp_path, capsys):
    overrides = tiny_overrides(karpathy, tmp_path)
    out = run_defense_benchmark(["vanilla"], "badnets", overrides, tmp_path / "t.md", ResultStore(tmp_path / "store"))
    assert out.exists()
    run_dir = RunDirectory(tmp_path / "runs" / "tiny" / "vanilla" / "badnets")
    a, = run_activations([run_dir], run_dir, size=3)
    model = build_model("llava", tiny=True, vocabulary=vocabulary())
    assert a.shape == (model.decoder.get_input_embeddings().embedding_dim,) and (a >= 0).all() and a.sum() > 0
    png = figure(["poisoned", "again"], [a, a], tmp_path / "fig" / "act.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["activations", "--run", f"p={run_dir}", "--trigger-from", str(run_dir), "--size", "3",
                 "--out", str(tmp_path / "cli.png")]) == 0
    stats = json.loads((tmp_path / "cli.json").read_text())
    assert set(stats["p"]) == {"peak_ratio", "top1pct_share", "mean"} and "figure:" in capsys.readouterr().out


def test_demo_prints_vanilla_and_byorn_side_by_side(karpathy, tmp_path, capsys):
    overrides = tiny_overrides(karpathy, tmp_path)
    store = ["--store", str(tmp_path / "store")]
    assert main(["demo", *store, *[arg for o in overrides for arg in ("--set", o)]]) == 2
    assert "share the run directory" in capsys.readouterr().err
    overrides.append(f"output_dir={tmp_path}/runs/{{name}}/{{defense}}")
    assert main(["demo", *store, *[arg for o in overrides for arg in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert "| base (before tuning) |" in out and "| VanillaIT |" in out and "| BYORn |" in out
    assert "tuning time over VanillaIT's: BYORn" in out and "BYORn detection:" in out


def test_run_columns_add_refusal_rates_where_a_run_refused():
    refusing = {"asr": {"full": {"rate": 2.0}}, "refusal": {"full": {"rate": 97.5}, "clean": {"rate": 4.0}}}
    columns = run_columns([refusing], with_tuning=False, with_detection=True)
    assert (columns["refused trig."], columns["refused clean"], columns["ASR"]) == ("97.5", "4.0", "2.0")
    assert "refused trig." not in run_columns([{"asr": {"full": {"rate": 2.0}}}], with_tuning=False, with_detection=True)
