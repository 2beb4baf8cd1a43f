"""Loss weighting and counts on hand-made logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnist_addition.core.metrics import batch_counts, loss_fn, summarize


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 10, generator=g), torch.randn(6, 19, generator=g), torch.arange(6), torch.arange(6) + 3


def test_sum_weight_zero_is_the_digit_loss(batch):
    dl, sl, d, s = batch
    assert torch.allclose(loss_fn(dl, sl, d, s, 0.0), F.cross_entropy(dl, d))


def test_sum_weight_one_is_the_sum_loss(batch):
    dl, sl, d, s = batch
    assert torch.allclose(loss_fn(dl, sl, d, s, 1.0), F.cross_entropy(sl, s))


def test_sum_weight_half_is_the_seed_average(batch):
    dl, sl, d, s = batch
    assert torch.allclose(loss_fn(dl, sl, d, s, 0.5), (F.cross_entropy(dl, d) + F.cross_entropy(sl, s)) / 2)


def test_counts_on_hand_made_logits():
    digits, sums = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    digit_logits = F.one_hot(torch.tensor([1, 2, 0, 0]), 10).float()  # right, right, wrong, wrong
    sum_logits = F.one_hot(torch.tensor([5, 0, 7, 0]), 19).float()  # right, wrong, right, wrong
    m = summarize(batch_counts(digit_logits, sum_logits, digits, sums))
    assert m["n"] == 4
    assert m["digit_acc"] == 0.5 and m["sum_acc"] == 0.5 and m["both_acc"] == 0.25
    assert m["sum_right_digit_wrong"] == 1


def test_counts_add_exactly_across_shards():
    g = torch.Generator().manual_seed(1)
    dl, sl = torch.randn(9, 10, generator=g), torch.randn(9, 19, generator=g)
    d, s = torch.randint(0, 10, (9,), generator=g), torch.randint(0, 19, (9,), generator=g)
    whole = summarize(batch_counts(dl, sl, d, s))
    parts = summarize(batch_counts(dl[:4], sl[:4], d[:4], s[:4]) + batch_counts(dl[4:], sl[4:], d[4:], s[4:]))
    assert parts["digit_acc"] == whole["digit_acc"] and parts["n"] == 9
    assert parts["loss"] == pytest.approx(whole["loss"])
