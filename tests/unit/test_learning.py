"""Every encoder, with the classifier head, learns real digits (MNIST-10k protocol).

Trains on 3,000 of the protocol's 8,000 training digits for a small step budget and checks the
accuracy on 1,000 of the 2,000 held-out test digits. A model that did not learn scores ~10%.
"""

from __future__ import annotations

import pytest
import torch
from helpers import classify_config

import lstmdet

ENCODERS = {
    "identity": {"name": "identity"},
    "lstm": {"name": "lstm", "hidden": 32},
    "bilstm": {"name": "bilstm", "hidden": 16},
    "convlstm": {"name": "convlstm", "hidden": 32},
}


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0)[:, None].expand(-1, 3, -1, -1)


def train_and_score(model, mnist, *, train_count: int, steps: int, lr: float, batch: int = 64) -> float:
    """Train with AdamW on the first ``train_count`` training digits; accuracy on 1,000 test digits."""
    images, labels = mnist["train"]
    images, labels = _to_rgb(images[:train_count]), labels[:train_count]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        if step % (train_count // batch) == 0:
            order = torch.randperm(train_count, generator=generator)
        idx = order[(step % (train_count // batch)) * batch :][:batch]
        losses = model(images[idx], [{"labels": y} for y in labels[idx]])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
    test_images, test_labels = mnist["test"]
    preds = model.predict(_to_rgb(test_images[:1000]))
    predicted = torch.stack([p["labels"] for p in preds])
    return (predicted == test_labels[:1000]).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_encoder_with_classifier_learns_digits(encoder, mnist):
    torch.manual_seed(0)
    model = lstmdet.create_model(classify_config(ENCODERS[encoder]))
    accuracy = train_and_score(model, mnist, train_count=3000, steps=400, lr=3e-3)
    assert accuracy >= 0.90, f"{encoder}: {accuracy:.3f}"


@pytest.mark.slow
def test_row_by_row_lstm_learns_digits(mnist):
    """The classic row-by-row LSTM: no convolution, each image row is one LSTM step."""
    torch.manual_seed(0)
    config = classify_config(
        {"name": "lstm", "hidden": 64, "scan": "cols"}, backbone={"name": "rows", "width": 28}, pool="last"
    )
    model = lstmdet.create_model(config)
    accuracy = train_and_score(model, mnist, train_count=6000, steps=400, lr=5e-3)
    assert accuracy >= 0.90, f"rows + lstm: {accuracy:.3f}"
