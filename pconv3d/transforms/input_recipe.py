"""What a segmentation network is given for a volume with missing voxels: one typed recipe, by name.

A recipe says three things: whether the network takes the validity mask as a second input
(``network(image, condition=mask)``, the partial networks), what the holes hold (0, or values interpolated
from the valid voxels, with the mask turned into a confidence for ``"soft"``), and whether the mask is the
image's last channel. From it come the last transforms (:meth:`InputRecipe.transforms`), the engines'
batch preparation (:meth:`InputRecipe.prepare_batch`), the network's ``in_channels`` and a check that a
network fits it (:meth:`InputRecipe.check_network`). The named recipes (:data:`RECIPES`) are the study's
three ways of working, each with the network it was made for.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from monai.engines import PrepareBatch, PrepareBatchDefault, PrepareBatchExtraInput
from monai.transforms import ConcatItemsd, MapTransform

from pconv3d.transforms.filling import InterpolateMissingd

__all__ = ["COMPLETE_KEYS", "FILL_MODES", "InputRecipe", "PrepareBatchViews", "RECIPES"]

FILL_MODES = ("interpolate", "soft")
_IMAGE, _MASK = "image", "mask"  # the keys of pconv3d.transforms.recipes
# image and mask of a patch's second view, without the simulated holes (train_transforms(complete_view=True))
COMPLETE_KEYS = (f"{_IMAGE}_complete", f"{_MASK}_complete")


@dataclass(frozen=True)
class InputRecipe:
    """What a network is given: the image with its holes at 0 or filled, the mask as an input, as a channel.

    Args:
        mask_input: the network takes the mask as a second input, ``network(image, condition=mask)``.
        fill: ``None`` leaves holes at 0 (partial convolutions skip them); ``"interpolate"`` fills them from
            the valid voxels (:class:`~pconv3d.transforms.InterpolateMissingd`) and keeps the mask;
            ``"soft"`` fills them and makes the mask the confidence of each voxel, in (0, 1].
        mask_as_channel: the mask (with ``"soft"``: the confidence) is the image's last channel.
        network: the network class the recipe was made for (a dotted path), built unless a config names
            another; not part of the recipe's identity.

    Example:
        >>> recipe = RECIPES["gated"]
        >>> recipe.in_channels(1), [type(t).__name__ for t in recipe.transforms()]
        (2, ['InterpolateMissingd', 'ConcatItemsd'])
        >>> InputRecipe.of({"mask_input": False, "fill": "soft", "mask_as_channel": True}).name
        'gated'
    """

    mask_input: bool = False
    fill: str | None = None
    mask_as_channel: bool = False
    network: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key, expected, ok in _FIELDS:
            if not ok(getattr(self, key)):
                raise ValueError(f"InputRecipe: {key} is {getattr(self, key)!r}; expected {expected}")

    @classmethod
    def of(cls, value: InputRecipe | str | Mapping[str, Any], source: str = "recipe") -> InputRecipe:
        """A recipe from its name, a recipe, or a record ``{"mask_input", "fill", "mask_as_channel"}`` (plain
        values only: records come from model files, and name no network); a record equal to a named recipe is
        that recipe (with its network).

        Records of earlier versions upgrade: ``fill_missing`` is ``fill``, and ``interpolate_slices`` (missing
        slices interpolated along one axis, holes otherwise at 0) becomes ``fill="interpolate"``, which fills
        missing slices the same way and every other hole too.

        Args:
            value: the name, recipe or record.
            source: where the record was read, for error messages (``"best.pt: input_recipe"``).

        Raises:
            ValueError: an unknown name, a key that is not a recipe's, or a value of the wrong type, named.
        """
        if isinstance(value, InputRecipe):
            return value
        if isinstance(value, str):
            if value not in RECIPES:
                raise ValueError(f"{source} is {value!r}; expected one of {', '.join(RECIPES)} or a mapping of "
                                 f"{', '.join(k for k, _, _ in _FIELDS[:3])}")
            return RECIPES[value]
        if not isinstance(value, Mapping):
            raise ValueError(f"{source} is a {type(value).__name__}; expected a recipe name or a mapping")
        record = dict(value)
        if "fill_missing" in record or "interpolate_slices" in record:  # the earlier record
            fill = record.pop("fill_missing", None)
            axis = record.pop("interpolate_slices", None)
            if axis is not None and not (type(axis) is int and 0 <= axis <= 2):
                raise ValueError(f"{source}#interpolate_slices is {axis!r}; expected null or an axis 0, 1 or 2")
            record.setdefault("fill", fill if fill is not None or axis is None else "interpolate")
        for key, item in record.items():
            spec = next((s for s in _FIELDS[:3] if s[0] == key), None)  # a record names no network class
            if spec is None:
                raise ValueError(f"{source} holds the unknown key {str(key)[:80]!r}; a recipe records "
                                 f"{', '.join(k for k, _, _ in _FIELDS[:3])}")
            if not spec[2](item):
                raise ValueError(f"{source}#{key} is {item!r}; expected {spec[1]}")
        recipe = cls(**record)
        return next((named for named in RECIPES.values() if named == recipe), recipe)

    @property
    def name(self) -> str | None:
        """The name of the equal recipe of :data:`RECIPES`, or ``None``."""
        return next((name for name, named in RECIPES.items() if named == self), None)

    @property
    def label(self) -> str:
        """The recipe as messages name it, its quoted name or, where it has none, its record."""
        return repr(self.name) if self.name else str(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The record that :meth:`of` reads back: the three input settings, plain values."""
        return {"mask_input": self.mask_input, "fill": self.fill, "mask_as_channel": self.mask_as_channel}

    def image_only(self) -> InputRecipe:
        """The recipe that gives the same image without the mask: what a plain network beside this recipe's
        network takes (:class:`~pconv3d.inferers.RoutedInferer`). A soft fill fills as ``"interpolate"`` does."""
        return InputRecipe.of({"mask_input": False, "fill": None if self.fill is None else "interpolate",
                               "mask_as_channel": False})

    def in_channels(self, image_channels: int = 1) -> int:
        """Channels the network takes for an image of ``image_channels``."""
        return image_channels + int(self.mask_as_channel)

    def image_channels(self, in_channels: int) -> int:
        """Channels of the image files for a network that takes ``in_channels``."""
        return in_channels - int(self.mask_as_channel)

    def transforms(self, image_key: str = _IMAGE, mask_key: str = _MASK) -> list[MapTransform]:
        """The last transforms of a recipe (after masked normalization, which leaves holes at 0), for the image
        and mask under ``image_key`` and ``mask_key`` (a second view of a patch has its own keys)."""
        steps: list[MapTransform] = []
        if self.fill is not None:
            steps.append(InterpolateMissingd(image_key, mask_key=mask_key, soft=self.fill == "soft"))
        if self.mask_as_channel:
            steps.append(ConcatItemsd([image_key, mask_key], image_key))
        return steps

    def prepare_batch(self, complete_view: bool = False) -> PrepareBatch:
        """MONAI engines' batch preparation: the mask as ``condition`` (which sliding windows carry) or none.

        Args:
            complete_view: the batch also holds each patch without its simulated holes (``image_complete``,
                ``mask_complete``; ``train_transforms(complete_view=True)``): both views, concatenated along
                the batch (:class:`~pconv3d.transforms.PrepareBatchViews`), for
                :class:`~pconv3d.losses.ConsistencyLoss`.
        """
        prepare = PrepareBatchExtraInput(extra_keys={"condition": _MASK}) if self.mask_input else PrepareBatchDefault()
        return PrepareBatchViews(prepare) if complete_view else prepare

    def check_network(self, network: nn.Module | type) -> None:
        """Raise a ``ValueError`` unless ``network`` takes a mask (a ``condition`` argument of ``forward``)
        exactly when the recipe gives one: a partial network given no mask would treat its holes as data,
        and a plain one cannot be given a mask."""
        cls = network if isinstance(network, type) else type(network)
        takes_mask = "condition" in inspect.signature(cls.forward).parameters
        if takes_mask == self.mask_input:
            return
        label = f"recipe {self.label}" if self.name else f"the recipe {self.label}"
        if takes_mask:
            raise ValueError(f"{cls.__name__} takes a validity mask (network(x, condition=mask)), but {label} gives "
                             "it none, so its holes would count as data; use the recipe 'partial' or a network "
                             "without a mask input")
        raise ValueError(f"{cls.__name__} takes no mask input, but {label} gives it one; use the recipe 'gated' or "
                         "'plain', or a partial network")


class PrepareBatchViews(PrepareBatch):
    """Two views of each patch in one batch: ``prepare`` applied to the batch as it is (the holed view), then to
    the batch with ``image`` and ``mask`` taken from ``image_key`` and ``mask_key`` (the complete view); images,
    labels and every extra input (a ``condition`` mask) concatenated along the batch, holed first.

    Args:
        prepare: the recipe's batch preparation (:meth:`~pconv3d.transforms.InputRecipe.prepare_batch`).
        image_key: key of the second view's image.
        mask_key: key of the second view's mask.

    Example:
        >>> import torch
        >>> batch = {"image": torch.zeros(2, 1, 4, 4, 4), "image_complete": torch.ones(2, 1, 4, 4, 4),
        ...          "mask": torch.zeros(2, 1, 4, 4, 4), "mask_complete": torch.ones(2, 1, 4, 4, 4),
        ...          "label": torch.zeros(2, 1, 4, 4, 4)}
        >>> image, label, args, kwargs = PrepareBatchViews(RECIPES["partial"].prepare_batch())(batch)
        >>> image.shape[0], label.shape[0], image[:2].max().item(), kwargs["condition"][2:].min().item()
        (4, 4, 0.0, 1.0)
    """

    def __init__(
        self, prepare: PrepareBatch, image_key: str = COMPLETE_KEYS[0], mask_key: str = COMPLETE_KEYS[1]
    ) -> None:
        self.prepare = prepare
        self.image_key = image_key
        self.mask_key = mask_key

    def __call__(self, batchdata: dict[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple:
        complete = {**batchdata, _IMAGE: batchdata[self.image_key], _MASK: batchdata[self.mask_key]}
        views = [self.prepare(b, device, non_blocking, **kwargs) for b in (batchdata, complete)]
        image, label = (torch.cat([v[i] for v in views]) for i in (0, 1))
        if len(views[0]) == 2:
            return image, label
        (_, _, args, kw), (_, _, args_c, kw_c) = views
        return (image, label, tuple(torch.cat(pair) for pair in zip(args, args_c)),
                {k: torch.cat([kw[k], kw_c[k]]) for k in kw})


_FIELDS = (
    ("mask_input", "true or false", lambda v: isinstance(v, bool)),
    ("fill", f"null, {' or '.join(repr(f) for f in FILL_MODES)}", lambda v: v is None or v in FILL_MODES),
    ("mask_as_channel", "true or false", lambda v: isinstance(v, bool)),
    ("network", "null or a dotted class path", lambda v: v is None or isinstance(v, str)),
)

# the study's three ways of working (README, "Which recipe to use when"), each with the network made for it
RECIPES: dict[str, InputRecipe] = {
    "gated": InputRecipe(fill="soft", mask_as_channel=True, network="pconv3d.networks.GatedUNet"),
    "plain": InputRecipe(fill="interpolate", network="monai.networks.nets.UNet"),
    "partial": InputRecipe(mask_input=True, network="pconv3d.networks.PartialUNet"),
}
