"""The per-channel adapter activation figure of finished runs (paper appendix E), on test
images carrying a poisoned run's image trigger; the statistics are `robustit.eval.activations`."""
from __future__ import annotations

from typing import Sequence

import torch

from robustit.eval.activations import channel_activations
from robustit.experiment import Experiment
from robustit.rundir import RunDirectory


def run_activations(run_dirs: Sequence[RunDirectory], trigger_from: RunDirectory, size: int = 100) -> list[torch.Tensor]:
    """a of each run's tuned model on `size` test images of `trigger_from`'s data carrying
    its attack's image trigger (a fitted one, VLTrojan's, as the run saved it)."""
    source = Experiment.from_run(trigger_from, [f"data.test_size={size}"], progress=False)
    if source.attack is None:
        raise ValueError(f"{trigger_from.path} ran without an attack: name a poisoned run for the trigger")
    images = [source.attack.trigger(sample, image=True, text=False).image for sample in source.test_samples]
    return [channel_activations(Experiment.from_run(run_dir, progress=False).model, images) for run_dir in run_dirs]
