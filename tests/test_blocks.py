"""Partial blocks: MONAI weight compatibility, mask rules against oracles, hole invariance, scripting."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution, ResidualUnit, SubpixelUpsample, UpSample
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetResBlock, UnetUpBlock
from monai.networks.layers.factories import Conv, Norm

from pconv3d import PartialConv2d, PartialConv3d
from pconv3d.blocks import (
    MaskedInstanceNorm3d,
    PartialADN,
    PartialConvolution,
    PartialConvTranspose1d,
    PartialConvTranspose2d,
    PartialConvTranspose3d,
    PartialMaxPool,
    PartialResidualUnit,
    PartialSequential,
    PartialSkipConnection,
    PartialSubpixelUpsample,
    PartialUnetBasicBlock,
    PartialUnetOutBlock,
    PartialUnetResBlock,
    PartialUnetUpBlock,
    PartialUpSample,
    mask_union,
)
from tests.masks import FILLS, fill_holes, holes, run
from tests.oracle import partial_conv_oracle, windows

# (name, partial builder, MONAI builder or None, in_channels, spatial dims); every block maps (x, mask) -> (y, mask)
BLOCKS = [
    ("conv_default", lambda: PartialConvolution(3, 2, 4), lambda: Convolution(3, 2, 4), 2, 3),
    (
        "conv_strided_batch_dropout",
        lambda: PartialConvolution(3, 2, 4, strides=2, norm=("batch", {}), dropout=0.2, adn_ordering="NDA"),
        lambda: Convolution(3, 2, 4, strides=2, norm=("batch", {}), dropout=0.2, adn_ordering="NDA"),
        2, 3,
    ),
    (
        # activation before the norm, and one that does not map 0 to 0
        "conv_sigmoid_first_group",
        lambda: PartialConvolution(3, 2, 4, kernel_size=(3, 1, 5), act="sigmoid", norm=("group", {"num_groups": 2}), adn_ordering="AN"),
        lambda: Convolution(3, 2, 4, kernel_size=(3, 1, 5), act="sigmoid", norm=("group", {"num_groups": 2}), adn_ordering="AN"),
        2, 3,
    ),
    ("conv_2d_dilated", lambda: PartialConvolution(2, 2, 3, dilation=2, groups=1), lambda: Convolution(2, 2, 3, dilation=2), 2, 2),
    ("conv_grouped", lambda: PartialConvolution(3, 4, 4, groups=2, act="relu"), lambda: Convolution(3, 4, 4, groups=2, act="relu"), 4, 3),
    (
        "conv_transposed",
        lambda: PartialConvolution(3, 2, 4, strides=2, is_transposed=True, act="sigmoid"),
        lambda: Convolution(3, 2, 4, strides=2, is_transposed=True, act="sigmoid"),
        2, 3,
    ),
    ("conv_only", lambda: PartialConvolution(3, 2, 4, conv_only=True), lambda: Convolution(3, 2, 4, conv_only=True), 2, 3),
    ("res_strided", lambda: PartialResidualUnit(3, 2, 4, strides=2, subunits=2), lambda: ResidualUnit(3, 2, 4, strides=2, subunits=2), 2, 3),
    ("res_identity", lambda: PartialResidualUnit(3, 3, 3, act="sigmoid"), lambda: ResidualUnit(3, 3, 3, act="sigmoid"), 3, 3),
    ("res_channels_2d", lambda: PartialResidualUnit(2, 2, 4, last_conv_only=True), lambda: ResidualUnit(2, 2, 4, last_conv_only=True), 2, 2),
    ("upsample_deconv", lambda: PartialUpSample(3, 2, 4, mode="deconv"), lambda: UpSample(3, 2, 4, mode="deconv"), 2, 3),
    ("upsample_deconvgroup", lambda: PartialUpSample(3, 4, 2, mode="deconvgroup"), lambda: UpSample(3, 4, 2, mode="deconvgroup"), 4, 3),
    (
        "upsample_deconv_k3",
        lambda: PartialUpSample(3, 2, 2, kernel_size=3, mode="deconv"),
        lambda: UpSample(3, 2, 2, kernel_size=3, mode="deconv"),
        2, 3,
    ),
    (
        "upsample_linear_preconv",
        lambda: PartialUpSample(3, 2, 4, mode="nontrainable", interp_mode="linear"),
        lambda: UpSample(3, 2, 4, mode="nontrainable", interp_mode="linear"),
        2, 3,
    ),
    (
        "upsample_nearest_2d",
        lambda: PartialUpSample(2, 2, 2, mode="nontrainable", interp_mode="nearest", align_corners=None),
        lambda: UpSample(2, 2, 2, mode="nontrainable", interp_mode="nearest", align_corners=None),
        2, 2,
    ),
    ("upsample_pixelshuffle", lambda: PartialUpSample(3, 2, 4, mode="pixelshuffle"), lambda: UpSample(3, 2, 4, mode="pixelshuffle"), 2, 3),
    (
        "upsample_pixelshuffle_2d_x3_no_pool",
        lambda: PartialUpSample(2, 2, 3, scale_factor=3, mode="pixelshuffle", apply_pad_pool=False, bias=False),
        lambda: UpSample(2, 2, 3, scale_factor=3, mode="pixelshuffle", apply_pad_pool=False, bias=False),
        2, 2,
    ),
    (
        "upsample_pixelshuffle_1d_no_preconv",
        lambda: PartialUpSample(1, 4, mode="pixelshuffle", pre_conv=None),
        lambda: UpSample(1, 4, mode="pixelshuffle", pre_conv=None),
        4, 1,
    ),
    ("maxpool", lambda: PartialMaxPool(3, kernel_size=2), None, 2, 3),
    ("skip_cat", lambda: PartialSkipConnection(PartialConvolution(3, 2, 3)), None, 2, 3),
    ("skip_add", lambda: PartialSkipConnection(PartialConvolution(3, 2, 2), mode="add"), None, 2, 3),
    ("skip_mul", lambda: PartialSkipConnection(PartialConvolution(3, 2, 2), mode="mul"), None, 2, 3),
    (
        "sequential",
        lambda: PartialSequential(PartialConvolution(3, 2, 4, strides=2), PartialConvolution(3, 4, 2, strides=2, is_transposed=True)),
        None, 2, 3,
    ),
    (
        "unet_basic",
        lambda: PartialUnetBasicBlock(3, 2, 4, kernel_size=3, stride=2, norm_name="instance", dropout=0.1),
        lambda: UnetBasicBlock(3, 2, 4, kernel_size=3, stride=2, norm_name="instance", dropout=0.1),
        2, 3,
    ),
    (
        "unet_res_down",
        lambda: PartialUnetResBlock(3, 2, 4, kernel_size=(3, 3, 1), stride=(2, 2, 1), norm_name=("instance", {"affine": True})),
        lambda: UnetResBlock(3, 2, 4, kernel_size=(3, 3, 1), stride=(2, 2, 1), norm_name=("instance", {"affine": True})),
        2, 3,
    ),
    (
        "unet_res_identity",
        lambda: PartialUnetResBlock(3, 2, 2, kernel_size=3, stride=1, norm_name="batch", act_name="sigmoid"),
        lambda: UnetResBlock(3, 2, 2, kernel_size=3, stride=1, norm_name="batch", act_name="sigmoid"),
        2, 3,
    ),
    ("unet_out", lambda: PartialUnetOutBlock(3, 2, 3), lambda: UnetOutBlock(3, 2, 3), 2, 3),
]
IDS = [b[0] for b in BLOCKS]


def inputs(channels: int, dims: int, n: int = 2, size: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, channels) + (size,) * dims
    return torch.randn(shape, generator=g), holes((n, 1) + (size,) * dims, seed=seed)


@pytest.mark.parametrize("name,partial,monai,channels,dims", [b for b in BLOCKS if b[2] is not None], ids=[b[0] for b in BLOCKS if b[2]])
def test_weights_load_strictly_both_ways(name, partial, monai, channels, dims):
    ours, theirs = partial(), monai()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("name,partial,monai,channels,dims", BLOCKS, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
def test_hole_invariance(name, partial, monai, channels, dims, training):
    torch.manual_seed(0)
    block = partial().train(training)
    x, m = inputs(channels, dims)
    x = x.requires_grad_(True)
    y, mo = run(block, x, m)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))  # one fixed upstream gradient
    (y * weights).sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    assert torch.isfinite(y).all()
    assert torch.equal(y * (mo == 0), torch.zeros_like(y)), "holes of the output are exact zeros"
    for fill in FILLS:
        block.zero_grad()
        xf = fill_holes(x.detach(), m, fill).requires_grad_(True)
        yf, mof = run(block, xf, m)
        (yf * weights).sum().backward()
        assert torch.allclose(yf, y, rtol=0, atol=1e-6), fill
        assert torch.equal(mof, mo)
        for p, g in zip(block.parameters(), grads):
            assert torch.isfinite(p.grad).all() and torch.allclose(p.grad, g, atol=1e-5), fill
        assert torch.isfinite(xf.grad).all()


@pytest.mark.parametrize("name,partial,monai,channels,dims", BLOCKS, ids=IDS)
def test_all_valid_mask_equals_no_mask(name, partial, monai, channels, dims):
    block = partial().eval()
    x, _ = inputs(channels, dims)
    y0, m0 = block(x)
    for ones in (torch.ones((2, 1) + x.shape[2:]), torch.ones((1, 1) + x.shape[2:], dtype=torch.bool)):
        y1, m1 = block(x, ones)
        torch.testing.assert_close(y1, y0, rtol=0, atol=1e-6)
        torch.testing.assert_close(m1, m0)


@pytest.mark.parametrize("name,partial,monai,channels,dims", BLOCKS, ids=IDS)
def test_scripted_block_matches_eager(name, partial, monai, channels, dims):
    block = partial().eval()
    scripted = torch.jit.script(block)
    x, m = inputs(channels, dims)
    for mask in (m, None):
        y, mo = block(x, mask)
        ys, mos = scripted(x, mask)
        torch.testing.assert_close(ys, y)
        torch.testing.assert_close(mos, mo)


def test_unet_up_block_masks_and_weights():
    ours = PartialUnetUpBlock(3, 4, 2, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name="instance")
    theirs = UnetUpBlock(3, 4, 2, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name="instance")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x, m = inputs(4, 3, size=5)
    skip, skip_m = inputs(2, 3, size=10, seed=3)
    y, mo = ours(x, skip, m, skip_m)
    up_mask = ours.transp_conv(x, m)[1]
    # the concatenation's mask is the union; the basic block then grows it like its convolutions
    assert torch.equal(ours.conv_block(torch.cat([ours.transp_conv(x, m)[0], skip * skip_m], 1), torch.maximum(up_mask, skip_m))[1], mo)
    for fill in FILLS:
        yf, _ = ours(fill_holes(x, m, fill), fill_holes(skip, skip_m, fill), m, skip_m)
        torch.testing.assert_close(yf, y, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.jit.script(ours)(x, skip, m, skip_m)[0], y)


# ---------------------------------------------------------------------------------------------------
# mask rules against oracles


@pytest.mark.parametrize(
    "cls,dims,kernel,stride,padding,output_padding,dilation",
    [
        (PartialConvTranspose3d, 3, 3, 2, 1, 1, 1),  # MONAI UNet's up convolution
        (PartialConvTranspose3d, 3, 2, 2, 0, 0, 1),  # BasicUNet / DynUNet
        (PartialConvTranspose3d, 3, (1, 2, 3), (1, 2, 2), (0, 0, 1), (0, 0, 1), 1),
        (PartialConvTranspose2d, 2, 3, 2, 0, 1, 2),
        (PartialConvTranspose1d, 1, 1, 2, 0, 1, 1),  # odd outputs reached by no input: invalid
    ],
)
def test_transposed_matches_oracle(cls, dims, kernel, stride, padding, output_padding, dilation):
    conv = cls(2, 3, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, return_mask=True)
    x = torch.randn((2, 2) + (7,) * dims)
    m = holes((2, 1) + (7,) * dims, block=False)
    y, mo = conv(fill_holes(x, m, float("nan")), m)
    # oracle in float64: contributions of valid voxels, rescaled by (all contributors / valid contributors)
    f = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
    geo = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation)
    ones_k = torch.ones((1, 1) + conv.kernel_size, dtype=torch.float64)
    s = f(m.double(), ones_k, **geo)
    full = f(torch.ones_like(m).double(), ones_k, **geo)
    raw = f((x * m).double(), conv.weight.double(), **geo)
    want = torch.where(s > 0, raw * full / s.clamp_min(1) + conv.bias.double().view((1, -1) + (1,) * dims), 0.0)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(mo, (s > 0).float())
    # an all-valid mask is the plain transposed convolution wherever some input reaches
    plain = getattr(nn, f"ConvTranspose{dims}d")(2, 3, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation)
    plain.load_state_dict(conv.state_dict())
    yv, mv = conv(x, None)
    torch.testing.assert_close(yv, torch.where(mv > 0, plain(x), 0.0), rtol=1e-6, atol=1e-6)


def test_maxpool_over_valid_voxels():
    pool = PartialMaxPool(2, kernel_size=2)
    x = torch.randn(2, 3, 6, 8)
    m = holes((2, 1, 6, 8), frac=0.6, block=False)
    y, mo = pool(fill_holes(x, m, float("inf")), m)
    win_x = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 3, 4, 4)
    win_m = m.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 1, 3, 4, 4).expand(2, 3, 3, 4, 4)
    want = torch.where(win_m > 0, win_x, -torch.inf).amax(-1)
    assert torch.equal(mo, win_m[:, :1].amax(-1))
    assert torch.equal(y, torch.where(mo > 0, want, 0.0))


def test_normalized_interpolation():
    up = PartialUpSample(2, 2, 2, mode="nontrainable", interp_mode="bilinear", align_corners=True)
    x = torch.randn(1, 2, 5, 5)
    m = holes((1, 1, 5, 5), block=False)
    y, mo = up(x, m)
    interp = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    num, den = interp(x * m), interp(m)
    torch.testing.assert_close(y, torch.where(den > 0, num / den, 0.0))
    assert torch.equal(mo, (den > 0).float())


@pytest.mark.parametrize(
    "dims,scale,pad_pool,soft",
    [(3, 2, True, False), (2, 3, True, True), (2, 2, False, False), (1, 3, True, False)],
    ids=["3d_x2", "2d_x3_soft_mask", "2d_x2_no_pool", "1d_x3"],
)
def test_pixelshuffle_matches_oracle(dims, scale, pad_pool, soft):
    """The sub-pixel convolution from its formula: a partial convolution (tests/oracle.py), every sub-pixel
    voxel taken from its channel with the validity of its source voxel, then the pad-pool as the average of
    the valid voxels of each window (its padding missing)."""
    up = PartialSubpixelUpsample(dims, 2, 3, scale_factor=scale, apply_pad_pool=pad_pool).double()
    spatial = (5,) * dims
    x = torch.randn((2, 2) + spatial, dtype=torch.float64)
    m = holes((2, 1) + spatial, frac=0.5, block=False).double()
    if soft:
        m = m * torch.rand(m.shape, dtype=torch.float64)
    y, mo = up(fill_holes(x, m, float("nan")), m)
    ones = (1,) * dims
    conv, valid = partial_conv_oracle(x, up.conv_block.weight, up.conv_block.bias, m, stride=ones, padding=ones,
                                      dilation=ones, groups=1)
    conv = conv.reshape((2, 3, scale**dims) + spatial)  # channel c * scale**dims + k: sub-pixel k of channel c
    out_shape = tuple(scale * s for s in spatial)
    want = torch.zeros((2, 3) + out_shape, dtype=torch.float64)
    want_mask = torch.zeros((2, 1) + out_shape, dtype=torch.float64)
    for k, offsets in enumerate(itertools.product(range(scale), repeat=dims)):  # the last axis's offset fastest
        at = (slice(None), slice(None)) + tuple(slice(o, None, scale) for o in offsets)
        want[at] = conv[:, :, k]
        want_mask[at] = valid
    if pad_pool:
        # each voxel and its scale - 1 predecessors along every axis, beyond the border nothing valid
        pad = [scale - 1, 0] * dims
        values, _ = windows(F.pad(want, pad), (scale,) * dims, ones, ones)
        weights, _ = windows(F.pad(want_mask, pad), (scale,) * dims, ones, ones)
        count = weights.sum(-1)
        mean = torch.where(count > 0, (values * weights).sum(-1) / count.clamp_min(1), 0.0)
        want, want_mask = mean.reshape(want.shape), (count > 0).double().reshape(want_mask.shape)
    torch.testing.assert_close(y, want)
    assert torch.equal(mo, want_mask)
    # MONAI's SubpixelUpsample wherever every window lies in the image and every voxel is valid
    theirs = SubpixelUpsample(dims, 2, 3, scale_factor=scale, apply_pad_pool=pad_pool).double()
    theirs.load_state_dict(up.state_dict(), strict=True)
    inner = (slice(None), slice(None)) + (slice(scale + pad_pool * (scale - 1), -scale),) * dims
    torch.testing.assert_close(up(x)[0][inner], theirs(x)[inner])


def test_skip_and_residual_mask_rules():
    a = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    b = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    assert torch.equal(mask_union(a, b), torch.tensor([[[0.0, 1.0, 1.0, 1.0]]]))
    assert torch.equal(mask_union(a, None), torch.ones_like(a))
    assert torch.equal(mask_union(torch.stack([a[0], b[0]], 1), None), torch.ones(1, 1, 4))

    class Fixed(nn.Module):  # returns b as its mask, to see how the skip merges masks
        def forward(self, x, mask=None):
            return x * b, b

    x = torch.ones(1, 1, 4)
    for mode, want in (("cat", mask_union(a, b)), ("add", mask_union(a, b)), ("mul", a * b)):
        y, mo = PartialSkipConnection(Fixed(), mode=mode)(x, a)
        assert torch.equal(mo, want), mode
    y, _ = PartialSkipConnection(Fixed())(torch.where(a > 0, 1.0, torch.nan), a)
    assert torch.equal(y[:, 0], a[:, 0]), "the skip's own holes are cleared before concatenation"

    # residual unit: the output mask is the union of the conv path (which grows the valid region) and the input
    unit = PartialResidualUnit(1, 1, 1, kernel_size=3, subunits=1, norm=None, act=None)
    m = torch.tensor([[[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]])
    _, mo = unit(torch.randn(1, 1, 8), m)
    assert torch.equal(mo, torch.tensor([[[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]]))


def test_per_channel_mask_is_counted_exactly():
    """A mask shaped like the image (one channel per image channel) reaches the first conv as is."""
    block = PartialConvolution(3, 2, 4, norm=None, act=None)
    x, m = inputs(2, 3)
    m2 = torch.cat([m, holes(m.shape, seed=5)], 1)
    y, mo = block(x, m2)
    ref = PartialConv3d(2, 4, 3, padding=1, multi_channel=True, return_mask=True)
    ref.load_state_dict(block.conv.state_dict())
    want, want_mask = ref(x, m2)
    torch.testing.assert_close(y, want)
    assert mo.shape[1] == 1 and torch.equal(mo, want_mask[:, :1])
    # identical channels give the single-channel result
    torch.testing.assert_close(block(x, m.expand_as(x))[0], block(x, m)[0])


def test_interior_matches_monai_convolution():
    """All voxels valid: partial padding changes the border only; the interior is MONAI's block."""
    ours = PartialConvolution(3, 2, 4, act="prelu", norm=None, kernel_size=5)
    theirs = Convolution(3, 2, 4, act="prelu", norm=None, kernel_size=5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 2, 12, 12, 12)
    y, _ = ours(x)
    inner = (slice(None), slice(None)) + (slice(2, -2),) * 3
    torch.testing.assert_close(y[inner], theirs(x)[inner])
    assert not torch.allclose(y[:, :, 0], theirs(x)[:, :, 0])


def test_factories_register_new_names_only():
    assert Conv["partialconv", 3] is PartialConv3d and Conv["PartialConv", 2] is PartialConv2d
    assert Conv["partialconvtrans", 3] is PartialConvTranspose3d
    assert Conv["conv", 3] is nn.Conv3d and Conv["convtrans", 3] is nn.ConvTranspose3d
    assert Norm["maskedinstance", 3] is MaskedInstanceNorm3d and Norm["instance", 3] is nn.InstanceNorm3d
    # norm arguments in MONAI style reach the masked norms
    conv = PartialConvolution(3, 1, 4, norm=("maskedinstance", {"affine": True}))
    assert isinstance(conv.adn.N, MaskedInstanceNorm3d) and conv.adn.N.affine
    assert isinstance(PartialADN("N", 4, norm="instance", norm_dim=3).N, MaskedInstanceNorm3d)
    assert set(PartialADN("AN", 4, act="relu", norm="batch", norm_dim=2).state_dict()) == set(
        ADN("AN", 4, act="relu", norm="batch", norm_dim=2).state_dict()
    )
    with pytest.raises(ValueError, match="mask-aware"):
        PartialConvolution(3, 1, 4, norm=("layer", {"normalized_shape": (8, 8, 8)}))
    # a module of the user's own has no known mask rule
    with pytest.raises(ValueError, match="custom pre_conv"):
        PartialUpSample(3, 4, 4, mode="pixelshuffle", pre_conv=nn.Conv3d(4, 32, 3, padding=1))
    with pytest.raises(ValueError, match="custom conv_block"):
        PartialSubpixelUpsample(3, 4, 4, conv_block=nn.Conv3d(4, 32, 3, padding=1))


def test_fully_masked_block_gives_zeros():
    block = PartialResidualUnit(3, 2, 4, strides=2, norm=("batch", {}), act="sigmoid")
    x = torch.full((2, 2, 8, 8, 8), float("nan"), requires_grad=True)
    y, mo = block(x, torch.zeros(2, 1, 8, 8, 8))
    assert torch.equal(y, torch.zeros_like(y)) and torch.equal(mo, torch.zeros_like(mo))
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("ordering", ["NDA", "NAD", "DNA"])
def test_alpha_dropout_after_the_norm_leaves_holes_at_zero(ordering):
    """Alpha dropout moves 0 away from 0: after it the holes are cleared again, in training mode too."""
    torch.manual_seed(0)
    block = PartialConvolution(2, 2, 4, act="prelu", norm="instance", dropout=("alphadropout", {"p": 0.5}),
                               adn_ordering=ordering).train()
    x, m = torch.randn(1, 2, 12, 12), torch.ones(1, 1, 12, 12)
    m[..., :5] = 0
    y, out = block(x, m)
    holes = (out == 0).expand_as(y)
    assert holes.any() and torch.all(y[holes] == 0)
