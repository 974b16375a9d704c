"""Inferers: running one of two networks per volume, by the structure of its holes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from pconv3d.transforms import InputRecipe, hole_reach

__all__ = ["RoutedInferer"]

logger = logging.getLogger(__name__)


class RoutedInferer(Inferer):
    """Segment each volume with one of two networks, chosen by how far its holes reach: ``plain_network`` (given
    the image alone) where every missing voxel lies within ``max_reach`` voxels of an acquired one, and the
    network the inferer is called with otherwise. Interpolation fills complete volumes and thin missing slices
    well, and a network trained on complete volumes segments them best; slabs and large regions need a network
    trained with holes.

    A voxel counts as acquired where the recipe's mask is 1 (a soft recipe's confidence is below 1 on every
    filled voxel; an acquired voxel of weight below 1 counts as a hole here). Which network segmented a volume,
    and how far its holes reach, is logged at INFO.

    Args:
        inferer: runs a network over a whole volume, e.g. MONAI's ``SlidingWindowInferer``.
        plain_network: the network for complete volumes and thin holes, trained on ``recipe.image_only()``.
        recipe: what the network that the inferer is called with is given; the mask is the input's last channel
            (``mask_as_channel``) or the ``condition`` keyword (``mask_input``).
        max_reach: the largest hole reach (:func:`~pconv3d.transforms.hole_reach`, voxels) that goes to
            ``plain_network``; 0 sends it complete volumes only. Every missing voxel is at least 1 from an
            acquired one, so below 1 no distance is computed.

    Example:
        >>> import torch
        >>> from monai.inferers import SimpleInferer
        >>> from pconv3d.transforms import RECIPES
        >>> inferer = RoutedInferer(SimpleInferer(), lambda x: torch.zeros_like(x), RECIPES["gated"])
        >>> gated = lambda x: torch.ones_like(x[:, :1])
        >>> x = torch.ones(1, 2, 4, 4, 4)  # image and mask: nothing missing
        >>> inferer(x, gated).max().item(), inferer(x.index_fill(4, torch.tensor([1]), 0.5), gated).max().item()
        (0.0, 1.0)
    """

    def __init__(self, inferer: Inferer, plain_network: Callable[..., torch.Tensor], recipe: InputRecipe | str,
                 max_reach: float = 0.0) -> None:
        self.inferer = inferer
        self.plain_network = plain_network
        self.recipe = InputRecipe.of(recipe)
        if not (self.recipe.mask_as_channel or self.recipe.mask_input):
            raise ValueError(f"RoutedInferer: the recipe {self.recipe.label} gives the "
                             "network no mask, so holes cannot be told from data; expected a recipe with "
                             "mask_as_channel or mask_input")
        if not max_reach >= 0:
            raise ValueError(f"RoutedInferer: max_reach is {max_reach!r}; expected a distance >= 0 (voxels)")
        self.max_reach = float(max_reach)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        masks = inputs[:, -1] if self.recipe.mask_as_channel else kwargs["condition"][:, 0]
        images = inputs[:, :-1] if self.recipe.mask_as_channel else inputs
        outputs = []
        for i in range(inputs.shape[0]):  # each volume on its own: the choice is per volume
            one = slice(i, i + 1)
            if self.goes_to_plain(masks[i] == 1):
                outputs.append(self.inferer(images[one], self.plain_network))
            else:
                batch_kwargs = {k: v[one] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                outputs.append(self.inferer(inputs[one], network, *args, **batch_kwargs))
        return torch.cat(outputs)

    def goes_to_plain(self, acquired: torch.Tensor) -> bool:
        """Whether a volume whose acquired voxels are ``acquired`` (spatial, boolean) goes to the plain network."""
        if acquired.all():
            plain, seen = True, "nothing missing"
        elif self.max_reach < 1:  # every hole reaches at least 1: no distance transform needed
            plain, seen = False, "holes reach at least 1 voxel"
        else:
            reach = hole_reach(acquired)
            plain, seen = reach <= self.max_reach, f"holes reach {reach:.1f} voxels"
        logger.info("%s (plain network up to %g): %s network", seen, self.max_reach, "plain" if plain else "the main")
        return plain
