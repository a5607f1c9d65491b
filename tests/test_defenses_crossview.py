import math

import pytest
import torch

from conftest import draw
from robustit.defenses import DefenseBatch, DefenseConfig, View
from robustit.defenses.crossview import (
    CrossView, band_penalty, cell_bounds, js_divergence, patch_view, per_sample_mean, token_entropy, tv_distance,
)
from robustit.models.base import LMOutput
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from test_train import shape_samples

pytestmark = pytest.mark.usefixtures("one_thread")


def crossview(**params) -> CrossView:
    return CrossView(DefenseConfig("crossview", params))


def pixels() -> torch.Tensor:
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))


def cell_mask(chosen: list[tuple[int, int]], size: int, grid: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    bounds = cell_bounds(size, grid)
    for row, col in chosen:
        (top, bottom), (left, right) = bounds[row], bounds[col]
        mask[top:bottom, left:right] = True
    return mask


@pytest.mark.parametrize("operation", ["shuffle", "erase", "noise"])
def test_a_patch_view_changes_only_the_chosen_cells(operation):
    x = pixels()
    view, chosen = patch_view(x, torch.Generator().manual_seed(1), 4, 0.25, operation, 0.3)
    assert len(chosen) == 4 == len(set(chosen))
    mask = cell_mask(chosen, 32, 4)
    assert torch.equal(view[:, ~mask], x[:, ~mask])
    for row, col in chosen:
        cell = (slice(None), slice(8 * row, 8 * row + 8), slice(8 * col, 8 * col + 8))
        assert not torch.allclose(view[cell], x[cell])
    assert view.min() >= 0 and view.max() <= 1


def test_erase_greys_and_shuffle_moves_the_next_chosen_cells_content():
    x = pixels()
    erased, chosen = patch_view(x, torch.Generator().manual_seed(2), 4, 0.25, "erase", 0.0)
    assert torch.all(erased[:, cell_mask(chosen, 32, 4)] == 0.5)
    shuffled, chosen = patch_view(x, torch.Generator().manual_seed(2), 4, 0.25, "shuffle", 0.0)
    for j, (row, col) in enumerate(chosen):
        next_row, next_col = chosen[(j + 1) % len(chosen)]
        assert torch.equal(shuffled[:, 8 * row:8 * row + 8, 8 * col:8 * col + 8],
                           x[:, 8 * next_row:8 * next_row + 8, 8 * next_col:8 * next_col + 8])


def test_each_image_has_a_fixed_pool_of_patch_views_per_seed(tiny_model):
    image = draw("blue", "square")

    def draws(seed: int) -> list[bytes]:
        defense = crossview(views_per_image=2, seed=seed)
        defense.prepare(tiny_model, ())
        assert defense.view(image).size == (tiny_model.image_size,) * 2
        return [defense.view(image).tobytes() for _ in range(12)]

    drawn = draws(1)
    assert len(set(drawn)) == 2 and draws(1) == drawn and draws(2) != drawn


def test_divergences_are_zero_for_equal_distributions_and_bounded():
    logits = torch.randn(5, 7)
    log_p = torch.log_softmax(logits, -1)
    assert torch.allclose(js_divergence(log_p, log_p), torch.zeros(5), atol=1e-6)
    assert torch.allclose(tv_distance(log_p, log_p), torch.zeros(5), atol=1e-6)
    one_hot = torch.log_softmax(torch.tensor([[50.0, 0.0], [0.0, 50.0]]), -1)
    assert js_divergence(one_hot[:1], one_hot[1:]).item() == pytest.approx(math.log(2), abs=1e-4)
    assert tv_distance(one_hot[:1], one_hot[1:]).item() == pytest.approx(1.0, abs=1e-4)
    other = torch.log_softmax(torch.randn(5, 7), -1)
    assert torch.all(js_divergence(log_p, other) <= math.log(2)) and torch.all(js_divergence(log_p, other) > 0)


def test_the_entropy_term_is_zero_inside_the_band_and_the_excess_outside():
    entropy = torch.tensor([0.5, 1.0, 2.0, 3.0, 3.5])
    assert torch.allclose(band_penalty(entropy, 1.0, 3.0), torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5]))
    uniform = torch.log_softmax(torch.zeros(1, 8), -1)
    assert token_entropy(uniform).item() == pytest.approx(math.log(8))


def output(logits: torch.Tensor, rows: list[int]) -> LMOutput:
    zero = torch.zeros(())
    return LMOutput(loss=zero, sample_loss=zero, token_loss=torch.zeros(len(rows)), logits=logits,
                    label_rows=torch.tensor(rows), visual_tokens=torch.zeros(1, 1, 1))


def test_the_repulsion_acts_only_on_samples_whose_views_agree_within_the_margin():
    rows = [0, 0, 1, 1]
    same = torch.tensor([[4.0, 0.0, 0.0]] * 4)
    apart = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, 0.0, 4.0]])
    defense = crossview(margin=0.3, repel=2.0, entropy=0.0)
    samples = shape_samples()[:2]
    batch = DefenseBatch(samples, {})
    terms = defense.loss(None, batch, {"original": output(same, rows), "patch": output(apart, rows)})
    log_p, log_q = torch.log_softmax(same, -1), torch.log_softmax(apart, -1)
    distance = per_sample_mean(js_divergence(log_p, log_q), torch.tensor(rows), 2)
    assert distance[0] == pytest.approx(0.0, abs=1e-6) and distance[1] > 0.3
    assert set(terms) == {"crossview_repel"}
    assert terms["crossview_repel"].item() == pytest.approx(2.0 * 0.3 / 2, abs=1e-5)
    entropy_only = crossview(repel=0.0, entropy=1.0, entropy_low=0.0, entropy_high=0.01)
    band = entropy_only.loss(None, batch, {"original": output(same, rows), "patch": output(apart, rows)})
    assert set(band) == {"crossview_entropy"}
    assert band["crossview_entropy"].item() == pytest.approx(float(token_entropy(log_p).mean()) - 0.01, abs=1e-5)


def test_crossview_trains_with_one_more_pass_per_step_and_both_terms(tiny_model):
    defense = crossview(grid=2, share=0.5)
    defense.prepare(tiny_model, ())
    samples = shape_samples()[:2]
    views = defense.augment(DefenseBatch(samples, {"original": View.of("original", samples)}))
    assert [(v.name, v.forward, v.lm_weight) for v in views] == [("original", True, 1.0), ("patch", True, 0.0)]
    assert views[1].instructions == views[0].instructions and views[1].responses == views[0].responses
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=2, batch_size=4), progress=False,
                   defense=crossview(grid=2, share=0.5))
    assert result.forward_passes == 4 and result.extra_forward_passes == 2
    assert set(result.loss_terms) == {"crossview_repel", "crossview_entropy"}


def test_a_resumed_defense_draws_the_same_views(tiny_model):
    image = draw("red", "circle")
    first = crossview(seed=3, views_per_image=3)
    first.prepare(tiny_model, ())
    first.view(image)
    state = first.training_state()
    expected = [first.view(image).tobytes() for _ in range(6)]
    resumed = crossview(seed=3, views_per_image=3)
    resumed.prepare(tiny_model, ())
    resumed.load_training_state(state, tiny_model)
    assert [resumed.view(image).tobytes() for _ in range(6)] == expected


@pytest.mark.parametrize("params, key", [
    ({"grid": 0}, "grid"), ({"share": 0.0}, "share"), ({"operation": "rotate"}, "operation"),
    ({"divergence": "kl"}, "divergence"), ({"margin": -1}, "margin"), ({"entropy_high": -1}, "entropy_high"),
    ({"entropy_low": 3.0, "entropy_high": 2.0}, "entropy_low"), ({"grid": 2, "share": 0.25}, "share"),
    ({"views_per_image": 0}, "views_per_image"), ({"seed": -1}, "seed"),
])
def test_bad_parameters_are_named(params, key):
    with pytest.raises(ValueError, match=key):
        crossview(**params)
