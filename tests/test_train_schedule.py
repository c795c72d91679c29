"""Training budgets and schedules: a fixed number of steps whatever the labelled set's size,
and a cosine decay that reaches zero at the last step."""

import pytest
import torch

from xgal.train.fit import TrainConfig, train_classifier
from xgal.train.nets import build_model


def _data(n):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 32, 32, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("n", [10, 70])
def test_a_step_budget_is_spent_exactly_whatever_the_set_size(n):
    x, y = _data(n)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    history = train_classifier(model, x, y, TrainConfig(steps=9, batch_size=8, alpha=0))
    assert history[-1]["steps"] == 9
    assert sum(1 for _ in history) == -(-9 // -(-n // 8))  # passes needed for 9 steps


def test_cosine_decays_to_zero_and_plateau_keeps_the_rate():
    x, y = _data(24)
    cfg = TrainConfig(steps=12, batch_size=8, alpha=0, lr=1e-3, schedule="cosine")
    cosine = train_classifier(build_model("small_cnn", "linear", 3, in_channels=1), x, y, cfg)
    assert [h["lr"] for h in cosine][-1] == pytest.approx(0.0, abs=1e-12)
    assert cosine[0]["lr"] < 1e-3  # decayed within the first pass already
    plateau = train_classifier(
        build_model("small_cnn", "linear", 3, in_channels=1), x, y, TrainConfig(epochs=2, alpha=0, lr=1e-3)
    )
    assert all(h["lr"] == 1e-3 for h in plateau)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"steps": -1}, "steps must be"), ({"schedule": "step"}, "schedule must be")]
)
def test_bad_budgets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
