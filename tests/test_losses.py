"""MaskedDiceCELoss: unannotated voxels change nothing; matches MONAI's DiceCELoss when all are annotated."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from pconv3d.losses import MaskedDiceCELoss


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
