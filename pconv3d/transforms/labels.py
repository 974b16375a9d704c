"""Class indices from predictions, and one-hot labels whose unannotated voxels are left out (predictions set to 0
there), for metrics."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import get_track_meta
from monai.transforms import AsDiscrete as _MonaiAsDiscrete
from monai.transforms import AsDiscreted as _MonaiAsDiscreted
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from pconv3d.transforms.checks import _source, check_volume
from pconv3d.transforms.filling import FillHoles

__all__ = ["AsDiscrete", "AsDiscreted", "OneHotAnnotated", "OneHotAnnotatedd"]


class AsDiscrete(_MonaiAsDiscrete):
    """MONAI's ``AsDiscrete`` (the same arguments and results), whose ``argmax`` is read from ``torch.max``'s indices.

    Both give the first index of the largest value (NaN counting as the largest). On the CPU, ``torch.argmax`` over
    the first dimension of a few channels of a whole volume is slow: 1.5-1.7 s for the 4 class scores of a
    197x233x189 volume in torch 2.13, where ``torch.max`` takes 0.1 s
    (``python -m benchmarks.compare_revisions BEFORE AFTER --cases argmax``).

    Example:
        >>> AsDiscrete(argmax=True)(torch.tensor([[[[0.2, 0.7]]], [[[0.8, 0.3]]]])).flatten().tolist()
        [1.0, 0.0]
    """

    def __call__(self, img: NdarrayOrTensor, argmax: bool | None = None, to_onehot: int | None = None,
                 threshold: float | None = None, rounding: str | None = None) -> NdarrayOrTensor:
        if self.argmax if argmax is None else argmax:
            img = convert_to_tensor(img, track_meta=get_track_meta())
            scores = convert_to_tensor(img, track_meta=False)
            indices = scores.max(dim=self.kwargs.get("dim", 0), keepdim=self.kwargs.get("keepdim", True)).indices
            img = convert_to_dst_type(indices, img, dtype=indices.dtype)[0]
        return super().__call__(img, False, to_onehot, threshold, rounding)


class AsDiscreted(_MonaiAsDiscreted):
    """MONAI's ``AsDiscreted`` (the same arguments) with :class:`AsDiscrete`'s ``argmax``.

    Example:
        >>> d = AsDiscreted("pred", argmax=True)({"pred": torch.tensor([[[[0.2, 0.7]]], [[[0.8, 0.3]]]])})
        >>> d["pred"].flatten().tolist()
        [1.0, 0.0]
    """

    def __init__(self, keys: KeysCollection, argmax: Sequence[bool] | bool = False,
                 to_onehot: Sequence[int | None] | int | None = None,
                 threshold: Sequence[float | None] | float | None = None,
                 rounding: Sequence[str | None] | str | None = None, allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(keys, argmax, to_onehot, threshold, rounding, allow_missing_keys, **kwargs)
        self.converter = AsDiscrete(**kwargs)


class OneHotAnnotated(Transform):
    """One-hot of a map of class indices in which one value marks unannotated voxels: those voxels are 0 in every
    channel, so that a metric over one-hot maps (Dice, surface distances) leaves them out when the prediction's
    one-hot is also set to 0 there (``onehot.any(0)`` is the annotated voxels).

    Args:
        num_classes: classes, background (0) included.
        ignore_index: the label value of unannotated voxels (``None``: every voxel is annotated).

    Example:
        >>> OneHotAnnotated(3, ignore_index=255)(torch.tensor([0, 2, 255]).reshape(1, 3, 1, 1))[:, :, 0, 0]
        tensor([[1., 0., 0.],
                [0., 0., 0.],
                [0., 1., 0.]])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """The float32 one-hot ``(num_classes, X, Y, Z)`` of ``label`` ``(1, X, Y, Z)``, of its type and device."""
        check_volume(label, "label")
        if label.shape[0] != 1:
            raise ValueError(
                f"label{_source(label)}: expected one channel of class indices, got shape {tuple(label.shape)}"
            )
        lab = convert_to_tensor(label, track_meta=False)[0]
        annotated = torch.ones_like(lab, dtype=torch.bool) if self.ignore_index is None else lab != self.ignore_index
        onehot = torch.nn.functional.one_hot(torch.where(annotated, lab, 0).long(), self.num_classes).movedim(-1, 0)
        return convert_to_dst_type(onehot * annotated, label, dtype=torch.float32)[0]


class OneHotAnnotatedd(MapTransform):
    """One-hot label keys whose unannotated voxels (``ignore_index``) are 0 in every channel, and the same voxels
    set to 0 in one-hot predictions, so that a metric over them (MONAI's ``MeanDice``) leaves those voxels out;
    see :class:`OneHotAnnotated`. Use it in place of ``AsDiscreted``'s ``to_onehot``
    for the label, after ``AsDiscreted(argmax=True, to_onehot=num_classes)`` of the predictions.

    Args:
        keys: label keys (class indices ``(1, X, Y, Z)``), each replaced by its one-hot.
        num_classes: classes, background (0) included.
        ignore_index: the label value of unannotated voxels (``None``: every voxel is annotated).
        pred_keys: one-hot prediction keys, set to 0 wherever a label key is unannotated.
        allow_missing_keys: skip absent keys.

    Example:
        >>> label = torch.tensor([1, 255, 0, 1]).reshape(1, 4, 1, 1)
        >>> pred = torch.tensor([[0.0, 0, 1, 0], [1, 1, 0, 1]]).reshape(2, 4, 1, 1)
        >>> d = OneHotAnnotatedd("label", 2, ignore_index=255, pred_keys="pred")({"label": label, "pred": pred})
        >>> d["label"][1].flatten(), d["pred"][1].flatten()
        (tensor([1., 0., 0., 1.]), tensor([1., 0., 0., 1.]))
    """

    backend = OneHotAnnotated.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        ignore_index: int | None = None,
        pred_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.one_hot = OneHotAnnotated(num_classes, ignore_index)
        self.pred_keys = ensure_tuple(pred_keys)
        self.fill = FillHoles()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.one_hot(d[key])
            annotated = convert_to_tensor(d[key], track_meta=False).any(0, keepdim=True)
            for pred_key in self.pred_keys:
                d[pred_key] = self.fill(d[pred_key], annotated)
        return d
