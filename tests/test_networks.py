"""Partial networks: MONAI weights and shapes, calling conventions, hole invariance, gradients, to_partial."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.networks import eval_mode
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet

from pconv3d import PartialConv3d
from pconv3d.masks.carrier import Mask
from pconv3d.networks import PartialBasicUNet, PartialDynUNet, PartialSegResNet, PartialUNet, to_partial
from tests.masks import MIXED, fill_holes, holes, run, stray_tensors

# (name, partial class, MONAI class, arguments, input spatial shape)
NETS = [
    ("unet_3d", PartialUNet, UNet, dict(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8, 8), strides=(2, 2)), (16, 16, 16)),
    (
        "unet_3d_res2_batch",
        PartialUNet, UNet,
        dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 8), strides=(2, 2), num_res_units=2, norm="batch", dropout=0.1),
        (16, 16, 16),
    ),
    (
        "unet_2d_res1_odd_kernel",
        PartialUNet, UNet,
        dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, kernel_size=5, up_kernel_size=5),
        (24, 24),
    ),
    (
        "unet_3d_anisotropic",
        PartialUNet, UNet,
        dict(
            spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1,
            kernel_size=(3, 3, 1), up_kernel_size=(3, 3, 3), norm=("group", {"num_groups": 2}), act="sigmoid", adn_ordering="ADN",
        ),
        (16, 16, 8),
    ),
    # sizes keep MONAI's instance norm above one voxel at the bottom (it refuses one)
    ("basic_3d", PartialBasicUNet, BasicUNet, dict(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 8, 4)), (32, 16, 16)),
    (
        "basic_2d_nontrainable_odd",
        PartialBasicUNet, BasicUNet,
        dict(spatial_dims=2, in_channels=2, out_channels=2, features=(4, 4, 8, 8, 8, 4), upsample="nontrainable", dropout=0.1),
        (36, 20),  # 36 -> 18 -> 9 -> 4: an odd size, so the up path pads
    ),
    (
        "dyn_3d_res_deep",
        PartialDynUNet, DynUNet,
        dict(
            spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2],
            upsample_kernel_size=[2, 2, 2], filters=[4, 8, 8, 8], res_block=True, deep_supervision=True, deep_supr_num=2,
        ),
        (16, 16, 16),
    ),
    (
        "dyn_3d_anisotropic",
        PartialDynUNet, DynUNet,
        dict(
            spatial_dims=3, in_channels=2, out_channels=2, kernel_size=[3, (3, 3, 1), 3], strides=[1, (2, 2, 1), 2],
            upsample_kernel_size=[(2, 2, 1), 2], filters=[4, 8, 8], norm_name="batch", trans_bias=True, dropout=0.1,
        ),
        (16, 16, 8),
    ),
    (
        "dyn_2d",
        PartialDynUNet, DynUNet,
        dict(spatial_dims=2, in_channels=1, out_channels=3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 8]),
        (16, 16),
    ),
]
NETS += [
    (
        "segres_3d_group",
        PartialSegResNet, SegResNet,
        dict(spatial_dims=3, init_filters=4, in_channels=2, out_channels=3, blocks_down=(1, 2), blocks_up=(1,),
             norm=("group", {"num_groups": 2})),
        (16, 16, 16),
    ),
    (
        "segres_2d_deconv_instance",
        PartialSegResNet, SegResNet,
        dict(spatial_dims=2, init_filters=4, in_channels=1, out_channels=2, blocks_down=(1, 1, 2), blocks_up=(1, 1),
             upsample_mode="deconv", norm="instance", dropout_prob=0.1),
        (16, 16),
    ),
    (
        "basic_2d_pixelshuffle_odd",
        PartialBasicUNet, BasicUNet,
        dict(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 8, 4), upsample="pixelshuffle"),
        (36, 20),
    ),
    (
        "segres_3d_pixelshuffle_batch",
        PartialSegResNet, SegResNet,
        dict(spatial_dims=3, init_filters=4, in_channels=1, out_channels=2, blocks_down=(1, 2), blocks_up=(1,),
             norm="batch", upsample_mode="pixelshuffle"),
        (16, 16, 16),
    ),
    (
        "segres_2d_deconvgroup",
        PartialSegResNet, SegResNet,
        dict(spatial_dims=2, init_filters=4, in_channels=2, out_channels=2, blocks_down=(1, 2), blocks_up=(1,),
             norm=("group", {"num_groups": 2}), upsample_mode="deconvgroup"),
        (16, 16),
    ),
]
IDS = [n[0] for n in NETS]
# a partial network treats the zero padding of pixel shuffle's pad-pool as missing, to_partial leaves it alone
PADDING_IN_CONVS_ONLY = [n for n in NETS if "pixelshuffle" not in (n[3].get("upsample"), n[3].get("upsample_mode"))]


def data(kw, spatial, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, kw["in_channels"]) + spatial, generator=g)
    return x, holes((n, 1) + spatial, seed=seed)


def pair(cls_p, cls_m, kw, seed=0):
    """A MONAI network and the partial one holding the same weights."""
    torch.manual_seed(seed)
    theirs = cls_m(**kw)
    ours = cls_p(**kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("name,cls_p,cls_m,kw,spatial", NETS, ids=IDS)
def test_weights_load_strictly_and_shapes_match_monai(name, cls_p, cls_m, kw, spatial):
    ours, theirs = pair(cls_p, cls_m, kw)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x, m = data(kw, spatial)
    with eval_mode(ours, theirs):
        y = ours(x, m)
        assert y.shape == theirs(x).shape == (2, kw["out_channels"]) + spatial
        assert ours(x).shape == y.shape
    if kw.get("deep_supervision"):
        ours.train()
        theirs.train()
        assert run(ours, x, m).shape == theirs(x).shape == (2, 1 + kw["deep_supr_num"], kw["out_channels"]) + spatial


@pytest.mark.parametrize("name,cls_p,cls_m,kw,spatial", NETS, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
def test_hole_invariance(name, cls_p, cls_m, kw, spatial, training):
    net, _ = pair(cls_p, cls_m, kw)
    net.train(training)
    x, m = data(kw, spatial)
    y = run(net, x, m)
    assert torch.isfinite(y).all()
    for fill in (float("nan"), MIXED):
        torch.testing.assert_close(run(net, fill_holes(x, m, fill), m), y, rtol=0, atol=1e-6, msg=f"fill={fill}")
    assert not stray_tensors(net), "the network keeps tensors between calls"


@pytest.mark.parametrize("name,cls_p,cls_m,kw,spatial", NETS, ids=IDS)
def test_calling_conventions_agree(name, cls_p, cls_m, kw, spatial):
    net, _ = pair(cls_p, cls_m, kw)
    net.eval()
    x, m = data(kw, spatial)
    y, y_all_valid = net(x, m), net(x)
    # all-valid mask == no mask (zero padding missing in both)
    torch.testing.assert_close(net(x, torch.ones_like(m)), y_all_valid, rtol=0, atol=1e-6)
    torch.testing.assert_close(net(x, torch.ones((1, 1) + spatial, dtype=torch.bool)), y_all_valid, rtol=0, atol=1e-6)
    # bool, integer and float binary masks, condition=, and a per-channel mask shaped like x
    for other in (net(x, m.bool()), net(x, m.int()), net(x, condition=m), net(x, condition=m.expand_as(x))):
        torch.testing.assert_close(other, y, rtol=0, atol=1e-6)
    # holes change the prediction (the mask is really used)
    assert not torch.allclose(y, y_all_valid, atol=1e-3)
    with pytest.raises(ValueError, match="not both"):
        net(x, m, condition=m)


@pytest.mark.parametrize("name,cls_p,cls_m,kw,spatial", NETS, ids=IDS)
def test_gradients_reach_every_parameter_and_fully_masked_is_zero(name, cls_p, cls_m, kw, spatial):
    net, _ = pair(cls_p, cls_m, kw)
    x, m = data(kw, spatial)
    out = run(net.train(), fill_holes(x, m, float("nan")), m)
    out.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        # a bias followed by a norm has a zero gradient by construction; weights must all learn
        if p.dim() > 1:
            assert p.grad.abs().sum() > 0, pname
    net.zero_grad()
    out = run(net, torch.full_like(x, float("nan")), torch.zeros_like(m))
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name,cls_p,cls_m,kw,spatial", PADDING_IN_CONVS_ONLY, ids=[n[0] for n in PADDING_IN_CONVS_ONLY])
def test_to_partial_monai_net_equals_partial_net_without_mask(name, cls_p, cls_m, kw, spatial):
    """A partial network given no mask is the MONAI network with partial-convolution padding (where only
    convolutions pad with zeros)."""
    ours, theirs = pair(cls_p, cls_m, kw)
    params = {id(p) for p in theirs.parameters()}
    keys = set(theirs.state_dict())
    converted = to_partial(theirs)
    assert converted is theirs and set(converted.state_dict()) == keys
    assert {id(p) for p in converted.parameters()} == params, "the same Parameter objects"
    assert not any(type(mod) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) for mod in converted.modules())
    x, _ = data(kw, spatial)
    with eval_mode(ours, converted):
        torch.testing.assert_close(converted(x), ours(x), rtol=1e-4, atol=1e-5)


def test_to_partial_segresnet_and_single_conv():
    net = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,))
    x = torch.randn(1, 1, 16, 16, 16)
    with eval_mode(net):
        before = net(x)
        to_partial(net)
        after = net(x)
    assert any(isinstance(mod, PartialConv3d) for mod in net.modules())
    assert after.shape == before.shape and not torch.allclose(after, before)
    conv = nn.Conv3d(1, 2, 3, padding=1)
    partial = to_partial(conv)
    assert isinstance(partial, PartialConv3d) and partial.weight is conv.weight
    torch.testing.assert_close(partial(x)[..., 1:-1, 1:-1, 1:-1], conv(x)[..., 1:-1, 1:-1, 1:-1])
    torch.testing.assert_close(torch.jit.script(net)(x), after)


def test_dynunet_heads_are_not_kept_and_eval_returns_one_map():
    _, _, _, kw, spatial = NETS[6]
    net, _ = pair(PartialDynUNet, DynUNet, kw)
    x, m = data(kw, spatial)
    net.train()
    stacked = run(net, x, m)
    net.eval()
    assert net(x, m).shape == stacked[:, 0].shape
    assert not stray_tensors(net)


@pytest.mark.parametrize("precision", ["autocast-bf16", "half", "bfloat16"])
def test_reduced_precision_networks_stay_finite_and_close(precision):
    # values far from 0 and large enough volumes for half-precision sums to overflow if taken in fp16
    torch.manual_seed(0)
    net = PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1)
    x = torch.randn(2, 1, 40, 40, 40) * 50 + 300
    m = holes((2, 1, 40, 40, 40))
    want = net(x, m)
    if precision == "autocast-bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x, m)
    else:
        dtype = torch.float16 if precision == "half" else torch.bfloat16
        net = net.to(dtype)
        got = net(x.to(dtype), m.to(dtype))
    got.float().square().mean().backward()
    assert torch.isfinite(got).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.05 * want.abs().max().item())


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,cls_p,cls_m,kw,spatial", NETS, ids=IDS)
def test_shortcuts_change_nothing(name, cls_p, cls_m, kw, spatial, training, monkeypatch):
    """Vouched-for tensors and all-valid facts (shared statistics, one-pass rescaling, torch norms, union
    shortcut) only skip work: outputs and gradients equal those of a run that takes none of them. In float64,
    so that the two paths' different order of float32 roundings (through training-mode norms of a deep
    network) cannot pass for a difference."""
    net, _ = pair(cls_p, cls_m, kw)
    net.train(training).double()
    x, m = (t.double() for t in data(kw, spatial))

    def forward_and_grads():
        net.zero_grad()
        y = run(net, x, m)
        y = y if isinstance(y, torch.Tensor) else y[0]
        y.square().mean().backward()
        return y.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]

    y_fast, g_fast = forward_and_grads()
    # the facts live in the carrier, and only there: turning them off there turns off every shortcut
    monkeypatch.setattr(Mask, "all_valid", property(lambda self: False))
    monkeypatch.setattr(Mask, "has_zeros_in_holes", lambda self, x: False)
    y_slow, g_slow = forward_and_grads()
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-9, atol=1e-10)
    assert len(g_fast) == len(g_slow)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_network_compiles_fullgraph_and_traces():
    """The carrier is eager Python: torch.compile traces through it in one graph (dynamo's verdict; the eager
    backend spares inductor's code generation, which tests/test_compile.py covers), tracing records its ops."""
    net, _ = pair(PartialUNet, UNet, NETS[1][3])
    net.eval()
    x, m = data(NETS[1][3], (16, 16, 16))
    want = net(x, m)
    torch.testing.assert_close(torch.compile(net, fullgraph=True, backend="eager")(x, m), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.jit.trace(net, (x, m))(x, m), want, rtol=1e-5, atol=1e-6)


def test_segresnet_a_missing_modality_is_a_missing_channel():
    """BraTS-style input, 4 MR sequences: one not acquired is a mask channel of zeros, and whatever that
    channel holds never changes the segmentation."""
    ours, _ = pair(PartialSegResNet, SegResNet, dict(spatial_dims=3, init_filters=4, in_channels=4, out_channels=3,
                                                       blocks_down=(1, 2), blocks_up=(1,), norm=("group", {"num_groups": 2})))
    x = torch.randn(1, 4, 16, 16, 16)
    mask = torch.ones(1, 4, 16, 16, 16)
    mask[:, 2] = 0
    mask[:, 0, 4:8] = 0  # and a slab missing in the first sequence only
    with eval_mode(ours):
        y = ours(x, mask)
        for fill in (float("nan"), 1e30):
            x2 = x.clone()
            x2[mask == 0] = fill
            assert torch.equal(ours(x2, mask), y)
        assert not torch.allclose(ours(x), y, atol=1e-3)  # the mask is used
        scripted = torch.jit.script(ours)
        assert torch.equal(scripted(x, mask), y)
