"""Consistency training: each patch seen holed and complete in one step, the holed prediction pulled toward the
complete one, so that training with simulated holes need not cost accuracy on complete volumes.

The batch holds the holed views first and the complete views second
(:class:`~pconv3d.transforms.PrepareBatchViews`, from ``train_transforms(complete_view=True)``).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class ConsistencyLoss(nn.Module):
    """``loss(holed) + loss(complete) + weight * KL(p_complete || p_holed)``, ``p`` the softmax over classes.

    The first half of the batch is the holed views, the second half the same patches complete. The
    consistency term is the Kullback-Leibler divergence of the holed prediction from the complete one, summed
    over classes and averaged over voxels (all of them, annotated or not: it needs no label). The complete
    prediction is the target and gets no gradient from it (stop-gradient), so the term teaches the holed view
    and cannot pull the complete one toward a worse guess. KL rather than a squared difference of
    probabilities: it is the cross-entropy toward a soft target (less a constant), so its gradient on the
    holed logits, ``p_holed - p_complete``, has the scale of the supervised cross-entropy and does not vanish
    where the holed prediction is confidently wrong, where a squared difference through the softmax does.

    Args:
        loss: the supervised loss, ``loss(input, target)`` (e.g. :class:`~pconv3d.losses.MaskedDiceCELoss`).
        weight: weight of the consistency term.

    Example:
        >>> import torch
        >>> from pconv3d.losses import MaskedDiceCELoss
        >>> loss = ConsistencyLoss(MaskedDiceCELoss(), weight=1.0)
        >>> logits = torch.randn(4, 3, 8, 8, 8, requires_grad=True)  # 2 holed patches, then the 2 complete
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8, 8)).repeat(2, 1, 1, 1, 1)
        >>> loss(logits, labels).backward()
        >>> same = torch.randn(2, 3, 8, 8, 8).repeat(2, 1, 1, 1, 1)  # equal views: only the supervised terms
        >>> torch.allclose(loss(same, labels), 2 * MaskedDiceCELoss()(same[:2], labels[:2]))
        True
    """

    def __init__(self, loss: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"ConsistencyLoss: weight must be >= 0, got {weight}")
        self.loss = loss
        self.weight = weight

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape[0] % 2 or target.shape[0] != input.shape[0]:
            raise ValueError(f"ConsistencyLoss: expected a batch of holed then complete views (an even batch, as "
                             f"many labels as logits); got logits {list(input.shape)}, labels {list(target.shape)}")
        holed, complete = input.chunk(2)
        target_holed, target_complete = target.chunk(2)
        log_holed = F.log_softmax(holed, dim=1)
        log_complete = F.log_softmax(complete, dim=1).detach()
        kl = F.kl_div(log_holed, log_complete, reduction="none", log_target=True).sum(dim=1).mean()
        return self.loss(holed, target_holed) + self.loss(complete, target_complete) + self.weight * kl
