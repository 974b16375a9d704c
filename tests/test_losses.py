"""MaskedDiceCELoss: unannotated voxels change nothing; matches MONAI's DiceCELoss when all are annotated.
ConsistencyLoss: the supervised loss on both halves plus a stop-gradient KL, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from monai.losses import DiceCELoss

from pconv3d.losses import ConsistencyLoss, MaskedDiceCELoss


def test_equals_monai_dice_ce_when_everything_is_annotated():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6))
    ours = MaskedDiceCELoss(ignore_index=255)(logits, labels)
    ref = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_ignored_voxels_have_no_influence_and_get_no_gradient():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, 6, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6))
    labels[:, :, :3] = 255
    loss_fn = MaskedDiceCELoss(ignore_index=255)
    a = loss_fn(logits, labels)
    other = logits.detach().clone()
    other[:, :, :3] = torch.randn_like(other[:, :, :3]) * 50
    b = loss_fn(other, labels)
    torch.testing.assert_close(a, b)
    (g,) = torch.autograd.grad(a, logits)
    assert g[:, :, :3].abs().max() == 0 and g[:, :, 3:].abs().max() > 0
    # a loss mask does the same job as the ignore label
    plain = torch.where(labels == 255, 0, labels)
    c = MaskedDiceCELoss()(logits, plain, loss_mask=(labels != 255))
    torch.testing.assert_close(a, c)


def test_nothing_annotated_gives_a_finite_loss():
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    labels = torch.full((1, 1, 4, 4, 4), 255)
    loss = MaskedDiceCELoss(ignore_index=255)(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


class _Zero(nn.Module):
    """A supervised loss of 0 with a gradient path: what is left is the consistency term alone."""

    def forward(self, input, target):
        return 0.0 * input.sum()


def _views():
    """Two voxels, two classes, float64: holed logits (0, 0) and (log 3, 0); complete (log 3, 0) and (0, log 3)."""
    log3 = math.log(3.0)
    holed = torch.tensor([[0.0, 0.0], [log3, 0.0]], dtype=torch.float64).T.reshape(1, 2, 2, 1, 1)
    complete = torch.tensor([[log3, 0.0], [0.0, log3]], dtype=torch.float64).T.reshape(1, 2, 2, 1, 1)
    labels = torch.tensor([0, 1]).reshape(1, 1, 2, 1, 1).repeat(2, 1, 1, 1, 1)
    return torch.cat([holed, complete]).requires_grad_(), labels


def test_consistency_is_the_kl_of_holed_from_complete_by_hand():
    logits, labels = _views()
    # voxel 1: p_complete (3/4, 1/4), p_holed (1/2, 1/2); voxel 2: p_complete (1/4, 3/4), p_holed (3/4, 1/4)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl2 = 0.25 * math.log(0.25 / 0.75) + 0.75 * math.log(0.75 / 0.25)
    loss = ConsistencyLoss(_Zero(), weight=2.0)(logits, labels)
    assert loss.item() == pytest.approx(2.0 * (kl1 + kl2) / 2, rel=1e-12)
    loss.backward()
    # stop-gradient: the complete half gets none; the holed logits get weight * (p_holed - p_complete) / voxels
    assert torch.equal(logits.grad[1], torch.zeros_like(logits.grad[1]))
    expected = 2.0 * torch.tensor([[0.5 - 0.75, 0.5 - 0.25], [0.75 - 0.25, 0.25 - 0.75]], dtype=torch.float64) / 2
    torch.testing.assert_close(logits.grad[0].reshape(2, 2).T, expected, rtol=1e-12, atol=1e-12)


def test_consistency_adds_the_supervised_loss_of_each_half():
    logits, labels = _views()
    supervised = MaskedDiceCELoss()
    kl = ConsistencyLoss(_Zero(), weight=0.5)(logits, labels)
    total = ConsistencyLoss(supervised, weight=0.5)(logits, labels)
    expected = supervised(logits[:1], labels[:1]) + supervised(logits[1:], labels[1:]) + kl
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)


def test_consistency_refuses_a_batch_that_is_not_two_views():
    with pytest.raises(ValueError, match="holed then complete"):
        ConsistencyLoss(MaskedDiceCELoss())(torch.zeros(3, 2, 2, 1, 1), torch.zeros(3, 1, 2, 1, 1))
