import json

import pytest

from robustit.cli import main
from robustit.rundir import RunDirectory
from test_experiment import tiny_overrides


pytestmark = pytest.mark.usefixtures("one_thread")


def scan_args(karpathy, tmp_path, *extra: str) -> list[str]:
    return ["scan", *[arg for o in tiny_overrides(karpathy, tmp_path) for arg in ("--set", o)], *extra]


def test_scan_writes_a_ranking_a_histogram_and_detection_metrics(karpathy, tmp_path, capsys):
    out = RunDirectory(tmp_path / "scan")
    chosen = ["--score", "nll", "--threshold", "quantile", "--set", "eval.batch_size=4"]
    assert main(scan_args(karpathy, tmp_path, *chosen, "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "flagged 5 of 12 samples" in printed and "precision" in printed and "AUROC" in printed
    rows = out.load_ranking()
    scores = [float(row["score"]) for row in rows]
    assert len(rows) == 12 and scores == sorted(scores, reverse=True)
    assert [row["rank"] for row in rows] == [str(i) for i in range(1, 13)]
    assert [row["flagged"] for row in rows] == ["True"] * 5 + ["False"] * 7
    manifest = out.load_manifest()
    assert {row["id"] for row in rows if row["poisoned"] == "True"} == set(manifest["poisoned_ids"])
    assert all(row["reason"].startswith("nll ") and row["instruction"] and row["response"] for row in rows)
    assert out.score_histogram_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = out.load_metrics()
    assert metrics["detector"]["params"]["score"] == "nll" and metrics["detector"]["params"]["threshold"] == "quantile"
    assert set(metrics["detection"]) >= {"precision", "recall", "auroc", "n_flagged", "n_poisoned"}
    assert metrics["detection"]["n_flagged"] == 5 and metrics["forward_passes"] == 3
    assert len(out.load_flags()) == 12 and out.load_config().defense.name == "byorn"


def test_scan_of_unpoisoned_data_reports_no_precision(karpathy, tmp_path, capsys):
    out = RunDirectory(tmp_path / "scan")
    tokens = ["--set", "defense.params.max_new_tokens=4"]
    assert main(scan_args(karpathy, tmp_path, "--set", "attack=null", *tokens, "--score", "agreement", "--out", str(out))) == 0
    assert "no manifest" in capsys.readouterr().out
    assert out.load_manifest() is None and "poisoned" not in out.load_ranking()[0]
    assert out.load_metrics()["detection"] == {"n_samples": 12, "n_flagged": sum(f.flagged for f in out.load_flags())}
    assert main(scan_args(karpathy, tmp_path, "--set", "attack=null", "--out", str(out))) == 0
    assert out.load_metrics()["detector"]["params"]["score"] == "image_support"


def test_scan_refuses_other_folders_and_other_defenses(karpathy, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(scan_args(karpathy, tmp_path, "--out", str(tmp_path / "busy"))) == 2
    assert "other than a scan" in capsys.readouterr().err and (tmp_path / "busy" / "notes.txt").exists()
    assert main(scan_args(karpathy, tmp_path, "--set", "defense.name=robustit", "--out", str(tmp_path / "x"))) == 2
    assert "byorn's detector" in capsys.readouterr().err
    assert main(scan_args(karpathy, tmp_path, "--score", "loss", "--out", str(tmp_path / "x"))) == 2
    assert "defense.params.score: must be one of" in capsys.readouterr().err


def test_a_scan_killed_before_its_ranking_reruns_into_its_folder_but_a_tuning_run_stays_refused(karpathy, tmp_path, capsys):
    out = RunDirectory(tmp_path / "scan")
    assert main(scan_args(karpathy, tmp_path, "--out", str(out))) == 0
    for name in ("ranking.csv", "scores.png", "flags.jsonl", "metrics.json"):
        (out.path / name).unlink()
    assert main(scan_args(karpathy, tmp_path, "--out", str(out))) == 0
    assert len(out.load_ranking()) == 12 and out.is_complete()
    (out.path / "ranking.csv").unlink()
    assert main(scan_args(karpathy, tmp_path, "--out", str(out))) == 2
    assert "other than a scan" in capsys.readouterr().err and (out.path / "metrics.json").is_file()
