"""Mask-aware norms against a float64 oracle over valid voxels, plus torch/MONAI compatibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.networks.layers.factories import Norm
from monai.networks.layers.utils import get_norm_layer

from pconv3d.blocks import (
    MaskedBatchNorm1d,
    MaskedBatchNorm2d,
    MaskedBatchNorm3d,
    MaskedGroupNorm,
    MaskedInstanceNorm1d,
    MaskedInstanceNorm2d,
    MaskedInstanceNorm3d,
    masked_norm,
)

INSTANCE = {1: MaskedInstanceNorm1d, 2: MaskedInstanceNorm2d, 3: MaskedInstanceNorm3d}
BATCH = {1: MaskedBatchNorm1d, 2: MaskedBatchNorm2d, 3: MaskedBatchNorm3d}
TORCH_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
TORCH_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SPATIAL = {1: (20,), 2: (9, 8), 3: (6, 5, 7)}


def make(kind: str, dims: int, channels: int = 4, **kw) -> nn.Module:
    if kind == "group":
        return MaskedGroupNorm(2, channels, **kw)
    return (INSTANCE if kind == "instance" else BATCH)[dims](channels, **kw)


def randomize_affine(norm: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if norm.weight is not None:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) + 0.5)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))


def oracle(x: torch.Tensor, mask: torch.Tensor | None, kind: str, groups: int, eps: float, weight, bias) -> np.ndarray:
    """Statistics of the valid voxels written out with numpy loops, float64."""
    xs = x.double().numpy()
    n, c = xs.shape[:2]
    valid = np.ones(xs.shape, bool) if mask is None else np.broadcast_to(mask.numpy() != 0, xs.shape)
    out = np.zeros_like(xs)
    if kind == "instance":
        sets = [(i, slice(ch, ch + 1)) for i in range(n) for ch in range(c)]
    elif kind == "batch":
        sets = [(slice(None), slice(ch, ch + 1)) for ch in range(c)]
    else:
        k = c // groups
        sets = [(i, slice(g * k, (g + 1) * k)) for i in range(n) for g in range(groups)]
    for idx in sets:
        v = xs[idx][valid[idx]]
        mean, var = (v.mean(), v.var()) if v.size else (0.0, 0.0)
        out[idx] = (xs[idx] - mean) / np.sqrt(var + eps)
    if weight is not None:
        shape = (1, c) + (1,) * (xs.ndim - 2)
        out = out * weight.detach().double().numpy().reshape(shape) + bias.detach().double().numpy().reshape(shape)
    return np.where(valid, out, 0.0)


def holes(shape, frac=0.4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) > frac


@pytest.mark.parametrize("kind", ["instance", "batch", "group"])
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mask_kind", ["none", "single", "per_channel", "batch_broadcast", "empty_instance"])
def test_matches_oracle(kind, dims, mask_kind):
    x = torch.randn((3, 4) + SPATIAL[dims]) * 3 + 1
    mask = {
        "none": None,
        "single": holes((3, 1) + SPATIAL[dims]),
        "per_channel": holes((3, 4) + SPATIAL[dims]),
        "batch_broadcast": holes((1, 1) + SPATIAL[dims]),
        "empty_instance": holes((3, 1) + SPATIAL[dims]),
    }[mask_kind]
    if mask_kind == "empty_instance":
        mask[0] = False  # a whole instance missing: normalizes to 0, not NaN
    norm = make(kind, dims, affine=True)
    randomize_affine(norm)
    got = norm(x, mask)
    want = oracle(x, mask, kind, 2, norm.eps, norm.weight, norm.bias)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["instance", "batch", "group"])
def test_mask_dtypes_agree(kind):
    x = torch.randn(2, 4, 6, 6, 6)
    m = holes((2, 1, 6, 6, 6))
    norm = make(kind, 3)
    ref = norm(x, m)
    torch.testing.assert_close(norm(x, m.float()), ref)
    torch.testing.assert_close(norm(x, m.double()), ref)
    torch.testing.assert_close(norm(x, m.int() * 3), ref)


@pytest.mark.parametrize("kind", ["instance", "batch"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("all_valid", [False, True], ids=["holes", "all-valid"])
def test_running_stats_from_valid_voxels(kind, momentum, all_valid):
    # all-valid masks take the torch norms' kernels: the same rules must hold
    torch.manual_seed(0)
    norm = make(kind, 3, affine=True, track_running_stats=True, momentum=momentum)
    randomize_affine(norm)
    masks = [torch.ones(2, 1, 5, 6, 5, dtype=torch.bool) if all_valid else holes((2, 1, 5, 6, 5), seed=s) for s in range(2)]
    batches = [(torch.randn(2, 4, 5, 6, 5) * 2 + 3, m) for m in masks]
    mean_ref, var_ref = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for i, (x, m) in enumerate(batches):
        norm.train()(x, m)
        valid = m.expand_as(x).numpy()
        xs = x.double().numpy()
        if kind == "batch":
            means = [xs[:, c][valid[:, c]].mean() for c in range(4)]
            vars_ = [xs[:, c][valid[:, c]].var(ddof=1) for c in range(4)]
        else:  # torch's instance rule: average the per-instance statistics over the batch
            means = [np.mean([xs[n, c][valid[n, c]].mean() for n in range(2)]) for c in range(4)]
            vars_ = [np.mean([xs[n, c][valid[n, c]].var(ddof=1) for n in range(2)]) for c in range(4)]
        f = momentum if momentum is not None else 1.0 / (i + 1)
        mean_ref = (1 - f) * mean_ref + f * torch.tensor(means)
        var_ref = (1 - f) * var_ref + f * torch.tensor(vars_)
    torch.testing.assert_close(norm.running_mean.double(), mean_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_var.double(), var_ref, rtol=1e-5, atol=1e-5)
    # eval mode normalizes with the running statistics, holes 0
    x, m = batches[0]
    got = norm.eval()(x, m)
    view = (1, 4, 1, 1, 1)
    want = (x - norm.running_mean.view(view)) / torch.sqrt(norm.running_var.view(view) + norm.eps)
    want = torch.where(m, want * norm.weight.view(view) + norm.bias.view(view), 0.0)
    torch.testing.assert_close(got, want.detach())


@pytest.mark.parametrize("kind", ["instance", "batch"])
def test_empty_instances_take_no_part_in_running_stats(kind):
    norm = make(kind, 3, track_running_stats=True, momentum=0.5).train()
    x = torch.randn(2, 4, 5, 5, 5) + 2
    m = holes((2, 1, 5, 5, 5))
    m[1] = False
    norm(x, m)
    valid = m[0].expand(4, 5, 5, 5).numpy()
    xs = x[0].double().numpy()
    want_mean = 0.5 * torch.tensor([xs[c][valid[c]].mean() for c in range(4)])
    want_var = 0.5 + 0.5 * torch.tensor([xs[c][valid[c]].var(ddof=1) for c in range(4)])
    torch.testing.assert_close(norm.running_mean.double(), want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var.double(), want_var, rtol=1e-5, atol=1e-6)
    norm(x, torch.zeros_like(m))  # nothing valid anywhere: running statistics unchanged
    torch.testing.assert_close(norm.running_mean.double(), want_mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["instance", "batch", "group"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_all_valid_equals_torch_norm(kind, dims, training):
    kw = {"affine": True} if kind != "group" else {}
    if kind == "batch":
        kw["track_running_stats"] = True
    masked = make(kind, dims, **kw)
    randomize_affine(masked)
    if kind == "group":
        ref = nn.GroupNorm(2, 4)
    else:
        ref = (TORCH_INSTANCE if kind == "instance" else TORCH_BATCH)[dims](4, **kw)
    ref.load_state_dict(masked.state_dict(), strict=True)
    masked.train(training)
    ref.train(training)
    x = torch.randn((2, 4) + SPATIAL[dims])
    want = ref(x)
    torch.testing.assert_close(masked(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked(x, torch.ones((2, 1) + SPATIAL[dims])), ref(x), rtol=1e-5, atol=1e-5)
    for name, buf in masked.named_buffers():  # running statistics moved the same way (two calls each)
        torch.testing.assert_close(buf, dict(ref.named_buffers())[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["instance", "batch", "group"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e6, "random"])
def test_hole_invariance_values_and_gradients(kind, training, fill):
    kw = {"affine": True, "track_running_stats": True} if kind != "group" else {}
    norm = make(kind, 3, **kw).train(training)
    randomize_affine(norm)
    x = torch.randn(2, 4, 6, 6, 6)
    m = holes((2, 1, 6, 6, 6))
    outs = []
    for filled in (x, x.masked_fill(~m, 0) + torch.where(m, 0.0, torch.randn_like(x) * 50 if fill == "random" else torch.full_like(x, fill))):
        norm.zero_grad()
        xi = filled.clone().requires_grad_(True)
        y = norm(xi, m)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in norm.parameters()], xi.grad))
    (y0, g0, xg0), (y1, g1, xg1) = outs
    assert torch.equal(y0, y1)
    assert torch.equal(y1[~m.expand_as(y1)], torch.zeros_like(y1[~m.expand_as(y1)]))
    for a, b in zip(g0, g1):
        assert torch.isfinite(b).all() and torch.allclose(a, b, atol=1e-6)
    assert torch.isfinite(xg1).all() and torch.equal(xg1 * ~m, torch.zeros_like(xg1))


@pytest.mark.parametrize("kind", ["instance", "batch", "group"])
def test_fully_masked_gives_zeros(kind):
    norm = make(kind, 3, affine=True) if kind != "group" else make(kind, 3)
    x = torch.full((2, 4, 4, 4, 4), float("nan"), requires_grad=True)
    y = norm(x, torch.zeros(2, 1, 4, 4, 4))
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in norm.parameters())


def test_state_dict_and_factories_match_torch_and_monai():
    for dims in (1, 2, 3):
        for name, torch_cls in (("maskedinstance", TORCH_INSTANCE[dims]), ("maskedbatch", TORCH_BATCH[dims])):
            ours = get_norm_layer((name, {"affine": True, "track_running_stats": True}), spatial_dims=dims, channels=5)
            assert isinstance(ours, torch_cls) and type(ours).__name__.startswith("Masked")
            theirs = torch_cls(5, affine=True, track_running_stats=True)
            theirs.load_state_dict(ours.state_dict(), strict=True)
            ours.load_state_dict(theirs.state_dict(), strict=True)
        group = get_norm_layer(("maskedgroup", {"num_groups": 5}), spatial_dims=dims, channels=10)
        assert isinstance(group, MaskedGroupNorm) and group.num_channels == 10
        nn.GroupNorm(5, 10).load_state_dict(group.state_dict(), strict=True)
        # MONAI's own names are untouched
        assert Norm["instance", dims] is TORCH_INSTANCE[dims] and Norm["batch", dims] is TORCH_BATCH[dims]
    assert Norm["group", 3] is nn.GroupNorm


def test_masked_norm_translation():
    assert masked_norm("INSTANCE") == ("MASKEDINSTANCE", {})
    assert masked_norm(("batch", {"momentum": 0.2})) == ("MASKEDBATCH", {"momentum": 0.2})
    assert masked_norm(("group", {"num_groups": 2})) == ("MASKEDGROUP", {"num_groups": 2})
    assert masked_norm("maskedinstance") == ("MASKEDINSTANCE", {})
    assert masked_norm((MaskedGroupNorm, {"num_groups": 2})) == (MaskedGroupNorm, {"num_groups": 2})
    assert masked_norm(None) is None
    for unsupported in ("layer", ("localresponse", {"size": 2}), (nn.InstanceNorm3d, {})):
        with pytest.raises(ValueError, match="mask-aware"):
            masked_norm(unsupported)


@pytest.mark.parametrize("kind", ["instance", "batch", "group"])
def test_scripted_norm_matches_eager(kind):
    kw = {"affine": True, "track_running_stats": True} if kind != "group" else {}
    norm = make(kind, 3, **kw)
    randomize_affine(norm)
    scripted = torch.jit.script(make(kind, 3, **kw))
    scripted.load_state_dict(norm.state_dict())
    x, m = torch.randn(2, 4, 5, 5, 5), holes((2, 1, 5, 5, 5))
    for training in (True, False):
        norm.train(training)
        scripted.train(training)
        torch.testing.assert_close(scripted(x, m), norm(x, m))
        torch.testing.assert_close(scripted(x), norm(x))


@pytest.mark.parametrize("kind", ["instance", "batch", "group"])
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 0.02), (torch.bfloat16, 0.07)], ids=["fp16", "bf16"])
def test_half_precision_statistics_neither_overflow_nor_drift(kind, dtype, atol):
    # 2 x 40^3 voxels around 20: half-precision sums and counts would overflow (fp16) or round (bf16)
    torch.manual_seed(0)
    norm = make(kind, 3, affine=True)
    x = torch.randn(2, 4, 40, 40, 40) * 3 + 20
    m = holes((2, 1, 40, 40, 40))
    want = norm(x, m)
    got = norm.to(dtype)(x.to(dtype), m.to(dtype))
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, rtol=0, atol=atol)
