import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import write_karpathy
from robustit.bench.throughput import CPU_ATTENTION_FLOPS, PHASES, PhaseClock, run_throughput_benchmark
from robustit.cli import main
from test_experiment import tiny_overrides

PHASE_COLUMNS = ["phase", "s/step", "share of step", "GFLOP/step", "GFLOP/s", "of matmul"]
LIMIT_COLUMNS = ["reference", "GFLOP/s", "of matmul"]
GENERATION_COLUMNS = ["mode", "batch size", "samples", "s", "samples/s", "speed-up"]


def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def tables(path):
    """Each Markdown table of the file: its header and its rows as dicts."""
    found = []
    for block in path.read_text().split("\n\n"):
        lines = block.strip().splitlines()
        if lines and all(line.startswith("|") for line in lines):
            header = cells(lines[0])
            found.append((header, [dict(zip(header, cells(line))) for line in lines[2:]]))
    return found


@pytest.fixture
def shapes(tmp_path):
    """The shapes set with 20 training images: 2 warm-up and 3 measured batches of 4 stay in the first epoch."""
    root = tmp_path / "shapes"
    root.mkdir()
    return {"json_path": str(write_karpathy(root, copies=4)), "image_root": str(root)}


def test_phase_clock_counts_each_phase_without_the_phases_inside_it():
    a = torch.ones(8, 8)
    clock = PhaseClock(FlopCounterMode(display=False))
    with clock.counting(), clock.phase("LM forward"):
        torch.mm(a, a)
        clock.timed("adapter forward", torch.mm)(a, a[:, :4])
    assert clock.flops["LM forward"] == 2 * 8 * 8 * 8 and clock.flops["adapter forward"] == 2 * 8 * 8 * 4
    assert clock.seconds["LM forward"] > 0 and clock.seconds["adapter forward"] > 0
    assert set(clock.seconds) == set(PHASES) and clock.flops["backward"] == clock.seconds["backward"] == 0


def test_cpu_attention_is_counted_as_the_counter_counts_other_attention_kernels():
    b, h, s, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(s, s, dtype=torch.bool))
        forward = counter.get_total_flops()
        out.sum().backward()
    assert forward == 4 * b * h * s * s * d
    assert counter.get_total_flops() - forward == 10 * b * h * s * s * d


def run(shapes, tmp_path, batch_size):
    out = tmp_path / f"batch{batch_size}" / "table.md"
    run_throughput_benchmark(3, [*tiny_overrides(shapes, tmp_path), f"train.batch_size={batch_size}"], out)
    return out


def test_throughput_benchmark_splits_the_step_into_phases_and_compares_generation(shapes, tmp_path, one_thread, capsys):
    out = run(shapes, tmp_path, 2)
    assert "batched generation" in capsys.readouterr().out
    numbers = json.loads(out.with_suffix(".json").read_text())
    phases, step = numbers["phases"], numbers["step"]
    assert list(phases) == list(PHASES) and all(p["seconds_per_step"] > 0 for p in phases.values())
    phase_sum = sum(p["seconds_per_step"] for p in phases.values())
    assert 0.5 * step["seconds_per_step"] < phase_sum <= step["seconds_per_step"]
    assert phase_sum + numbers["other"]["seconds_per_step"] == pytest.approx(step["seconds_per_step"])
    assert len(step["seconds_each"]) == numbers["steps"] == 3 and numbers["threads"] == 1
    assert all(phases[name]["flops_per_step"] > 0 for name in ("frozen encoder", "adapter forward", "LM forward"))
    assert phases["backward"]["flops_per_step"] > phases["LM forward"]["flops_per_step"]
    assert step["flops_per_step"] == pytest.approx(sum(p["flops_per_step"] for p in phases.values()))
    assert numbers["matmul"]["flops_per_second"] > 0 and step["share_of_matmul"] > 0
    generation = numbers["generation"]
    batched, single = generation["modes"]["batched"], generation["modes"]["one at a time"]
    assert generation["samples"] == 6 and batched["batch_size"] == 6 and single["batch_size"] == 1
    assert batched["texts"] == single["texts"] and generation["same_texts"] == 6
    assert generation["speed_up"] == pytest.approx(batched["samples_per_second"] / single["samples_per_second"])
    (phase_header, phase_rows), (limit_header, _), (generation_header, generation_rows) = tables(out)
    assert (phase_header, limit_header, generation_header) == (PHASE_COLUMNS, LIMIT_COLUMNS, GENERATION_COLUMNS)
    assert [r["phase"] for r in phase_rows] == [*PHASES, "other", "whole step"]
    assert [r["mode"] for r in generation_rows] == ["batched", "one at a time"]
    assert generation_rows[1]["speed-up"] == "1.00" and "FlopCounterMode" in out.read_text()


def test_flops_per_step_double_with_the_batch_from_the_command_line(shapes, tmp_path, one_thread, capsys):
    narrow = json.loads(run(shapes, tmp_path, 2).with_suffix(".json").read_text())
    out = tmp_path / "cli" / "table.md"
    overrides = [*tiny_overrides(shapes, tmp_path), "train.batch_size=4", "eval.batch_size=3"]
    assert main(["bench", "throughput", "--steps", "3", "--threads", "1", "--out", str(out),
                 *[arg for o in overrides for arg in ("--set", o)]]) == 0
    assert f"table: {out}" in capsys.readouterr().out and len(tables(out)) == 3
    wide = json.loads(out.with_suffix(".json").read_text())
    assert wide["batch_size"] == 4 and wide["generation"]["modes"]["batched"]["batch_size"] == 3
    assert wide["step"]["flops_per_step"] / narrow["step"]["flops_per_step"] == pytest.approx(2, rel=0.25)
    encoder = [f["phases"]["frozen encoder"]["flops_per_step"] / f["images_encoded_per_step"] for f in (narrow, wide)]
    assert encoder[1] == pytest.approx(encoder[0])


def test_throughput_benchmark_names_bad_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        run_throughput_benchmark(0, [], tmp_path / "t.md")
    assert main(["bench", "throughput", "--dry-run"]) == 2
    assert "bench throughput has no plan to list" in capsys.readouterr().err
