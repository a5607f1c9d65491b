import pytest
import yaml

import robustit.scan
from robustit.cli import main
from robustit.store import ResultStore
from test_experiment import tiny_overrides


pytestmark = pytest.mark.usefixtures("one_thread")


def detection_grid(karpathy, tmp_path):
    overrides = [o for o in tiny_overrides(karpathy, tmp_path) if not o.startswith("output_dir")]
    grid = {
        "name": "detection",
        "overrides": [*overrides, f"output_dir={tmp_path}/runs/{{name}}/{{attack}}-p{{poison_rate}}",
                      "defense.params.max_new_tokens=4"],
        "blocks": [{"attacks": ["badnets"], "defenses": ["byorn"], "poison_rates": [0.0, 0.25]}],
    }
    path = tmp_path / "detection.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_detection_benchmark_scans_each_case_once_and_tabulates_every_threshold_rule(karpathy, tmp_path, monkeypatch, capsys):
    grid, store, out = detection_grid(karpathy, tmp_path), tmp_path / "store", tmp_path / "table.md"
    args = ["bench", "detection", "--config", str(grid), "--store", str(store), "--out", str(out)]
    assert main([*args, "--dry-run"]) == 0
    assert "2 runs, 0 stored, 2 to run" in capsys.readouterr().out and not out.exists() and not (store / "scans").exists()
    assert main(args) == 0
    scans = ResultStore(store / "scans")
    assert len(scans) == 2 and len(ResultStore(store)) == 0
    for record in scans:
        metrics = record["metrics"]
        assert set(metrics["thresholds"]) == {"robust_z", "quantile", "mixture"}
        chosen = metrics["detector"]["params"]["threshold"]
        assert metrics["thresholds"][chosen]["n_flagged"] == metrics["detection"]["n_flagged"]
        assert metrics["thresholds"]["quantile"]["n_flagged"] == 5
    lines = out.read_text().splitlines()
    assert lines[0].startswith("<!-- Rendered from the result store by `robustit bench detection")
    header, clean, poisoned = lines[2], lines[4], lines[5]
    assert "AUROC (image_support)" in header and "mixture: recall" in header and "quantile: precision" in header
    assert clean.startswith("| none (clean) | - | 0 | 0 | 12 | - |")
    assert poisoned.startswith("| badnets | The image depicts a photo of a banana. | 0.25 | 3 | 12 |")

    def no_scan(*args, **kwargs):
        raise AssertionError("a stored case was scanned again")

    monkeypatch.setattr(robustit.scan, "scan", no_scan)
    capsys.readouterr()
    assert main(args) == 0 and "none (clean)" in capsys.readouterr().out
