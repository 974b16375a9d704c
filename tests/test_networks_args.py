"""Every MONAI argument works on the partial networks.

Each ``Partial*`` network is built over the argument grid of MONAI's own shape tests for its twin
(MONAI's ``tests/networks/nets/test_unet.py``, ``test_basic_unet.py``, ``test_dynunet.py`` and
``test_segresnet.py``: spatial dims 1 to 3, every upsampling mode, norms, activations, dropout, deep
supervision), at tiny sizes. Every case must load MONAI's weights strictly and give them back, give MONAI's
output shape under a mask, and be taken by :func:`~pconv3d.networks.to_partial` too (the other road to a
partial network); one case per network and upsampling mode must script, the scripted network equal to the
eager one. What a partial network refuses is in ``REFUSED``, refused before any layer is built.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from monai.networks import eval_mode
from monai.networks.layers import Act, Norm
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from monai.utils import UpsampleMode

from pconv3d.networks import PartialBasicUNet, PartialDynUNet, PartialSegResNet, PartialUNet, to_partial
from tests.masks import holes, run

NORMS = [Norm.INSTANCE, (Norm.BATCH, {"track_running_stats": False}), (Norm.GROUP, {"num_groups": 2})]
ACTS = [Act.PRELU, (Act.LEAKYRELU, {"negative_slope": 0.2}), (nn.LeakyReLU, {"negative_slope": 0.2}), "elu"]
MODES = list(UpsampleMode)  # MONAI's modes, whatever MONAI adds


def case(name, partial, monai, kw, input_shape, output_shape, train_shape=None):
    """One grid point: ``train_shape`` is the training-mode output shape where it differs (deep supervision)."""
    return pytest.param(partial, monai, kw, input_shape, output_shape, train_shape, id=name)


CASES = []
# UNet: 1D to 3D, with and without residual units, norms, activations (one a torch class), ADN orderings
for i, (dims, res) in enumerate(itertools.product((1, 2, 3), (0, 1))):
    kw = dict(spatial_dims=dims, in_channels=2, out_channels=2, channels=(4, 8, 8), strides=(2, 2), num_res_units=res,
              norm=NORMS[i % 3], act=ACTS[i % 4], adn_ordering=("NDA", "NA")[i % 2], dropout=0.1 * (i % 2))
    spatial = (16, 12, 20)[:dims]
    CASES.append(case(f"unet_{dims}d_res{res}", PartialUNet, UNet, kw, (2, 2) + spatial, (2, 2) + spatial))
# BasicUNet: 1D to 3D, every upsampling mode, odd sizes (the up path pads), norms, activations
for i, (dims, mode) in enumerate(itertools.product((1, 2, 3), MODES)):
    kw = dict(spatial_dims=dims, in_channels=2, out_channels=3, features=(4, 4, 6, 8, 8, 4), upsample=mode,
              norm=NORMS[i % 3], act=ACTS[i % 4], dropout=0.1 * (i % 2))
    spatial = ((33,), (33, 42), (33, 18, 17))[dims - 1]
    CASES.append(case(f"basic_{dims}d_{mode}", PartialBasicUNet, BasicUNet, kw, (2, 2) + spatial, (2, 3) + spatial))
# SegResNet: 2D and 3D, every upsampling mode, MONAI's three norms, dropout, with and without the final conv
SEGRES_NORMS = [("GROUP", {"num_groups": 8}), ("batch", {"track_running_stats": False}), "instance"]
for i, (dims, mode) in enumerate(itertools.product((2, 3), MODES)):
    norm, final, out_channels = SEGRES_NORMS[i % 3], i % 2 == 0, 1 + i % 3 // 2
    kw = dict(spatial_dims=dims, init_filters=8, in_channels=1, out_channels=out_channels, norm=norm, upsample_mode=mode,
              dropout_prob=(None, 0.2)[i % 2], use_conv_final=final, act=ACTS[i % 4], blocks_down=(1, 1, 1), blocks_up=(1, 1))
    spatial = (16,) * dims
    out = (2, out_channels if final else 8) + spatial
    CASES.append(case(f"segres_{dims}d_{mode}", PartialSegResNet, SegResNet, kw, (2, 1) + spatial, out))
# DynUNet: MONAI's 2D kernel and stride grid, its anisotropic 3D case, and deep supervision in 2D and 3D
for i, (kernels, strides, res) in enumerate(itertools.product(
        [(3, 3, 3, 1), ((3, 1), 1, (3, 3), (1, 1))], [(1, 1, 1, 1), (2, 2, 2, 1)], (True, False))):
    kw = dict(spatial_dims=2, in_channels=2 + i % 2, out_channels=2, kernel_size=kernels, strides=strides,
              upsample_kernel_size=strides[1:], filters=(4, 4, 8, 8), norm_name="batch",
              act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.2}), res_block=res)
    side = 16 // strides[0]
    CASES.append(case(f"dyn_2d_{i}", PartialDynUNet, DynUNet, kw, (1, 2 + i % 2, 16, 16), (1, 2, side, side)))
for res in (True, False):
    kw = dict(spatial_dims=3, in_channels=1, out_channels=3, kernel_size=(3, (1, 1, 3), 3, 3), strides=((1, 2, 1), 2, 2, 1),
              upsample_kernel_size=(2, 2, 1), filters=(4, 8, 8, 8), norm_name=("INSTANCE", {"affine": True}),
              deep_supervision=True, res_block=res, dropout=("alphadropout", {"p": 0.25}))
    CASES.append(case(f"dyn_3d_anisotropic_res{res}", PartialDynUNet, DynUNet, kw, (1, 1, 16, 16, 16),
                      (1, 3, 16, 8, 16), (1, 2, 3, 16, 8, 16)))
for i, (dims, supr) in enumerate(itertools.product((2, 3), (1, 2))):
    strides = [(1, 2, 1, 2, 1), (2, 2, 2, 1), (2, 1, 1, 2, 2)][i % 3]
    kw = dict(spatial_dims=dims, in_channels=1, out_channels=2, kernel_size=[3] * len(strides), strides=strides,
              upsample_kernel_size=strides[1:], filters=[8] * len(strides), norm_name=("group", {"num_groups": 4}),
              deep_supervision=True, deep_supr_num=supr, res_block=i % 2 == 0)
    spatial = (16 // strides[0],) * dims
    CASES.append(case(f"dyn_{dims}d_deep_supervision{supr}", PartialDynUNet, DynUNet, kw, (1, 1) + (16,) * dims,
                      (1, 2) + spatial, (1, 1 + supr, 2) + spatial))

# one case per network and upsampling mode scripts (scripting costs more than the rest of a case)
SCRIPTED = [c for c in CASES if c.id in
            ["unet_2d_res1", "dyn_3d_anisotropic_resTrue"] + [f"basic_2d_{m}" for m in MODES] + [f"segres_2d_{m}" for m in MODES]]

# MONAI arguments a partial network refuses, and why (pconv3d.networks states the same list)
UNMASKABLE_NORM = ("localresponse", {"size": 2})  # any norm without a mask-aware version: it would count holes
REFUSED = [
    pytest.param(PartialUNet, UNet, dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,),
                                         norm=UNMASKABLE_NORM), id="unet"),
    pytest.param(PartialBasicUNet, BasicUNet, dict(spatial_dims=2, features=(4,) * 6, norm=UNMASKABLE_NORM), id="basic"),
    pytest.param(PartialDynUNet, DynUNet, dict(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3],
                                               strides=[1, 2, 2], upsample_kernel_size=[2, 2], norm_name=UNMASKABLE_NORM),
                 id="dyn"),
    pytest.param(PartialSegResNet, SegResNet, dict(spatial_dims=2, norm=UNMASKABLE_NORM), id="segres"),
]


def built(partial, monai, kw):
    """MONAI's network and the partial one, each loaded with the other's weights, strictly."""
    torch.manual_seed(0)
    theirs, ours = monai(**kw), partial(**kw)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def test_grid_has_every_upsample_mode_of_monai():
    for prefix in ("basic_1d", "basic_2d", "basic_3d", "segres_2d", "segres_3d"):
        modes = {mode for mode in MODES if any(c.id.startswith(f"{prefix}_{mode}") for c in CASES)}
        assert modes == set(UpsampleMode), prefix
    assert len(SCRIPTED) == 2 + 2 * len(MODES)


@pytest.mark.parametrize("partial,monai,kw,input_shape,output_shape,train_shape", CASES)
def test_monai_arguments_build_load_weights_and_run(partial, monai, kw, input_shape, output_shape, train_shape):
    ours, theirs = built(partial, monai, kw)
    x = torch.randn(input_shape)
    m = holes((input_shape[0], 1) + input_shape[2:])
    with eval_mode(ours, theirs):
        assert ours(x, m).shape == theirs(x).shape == output_shape
        if train_shape is not None:
            ours.train()
            theirs.train()
            assert run(ours, x, m).shape == theirs(x).shape == train_shape
    # the other road takes the same arguments
    with eval_mode(theirs):
        assert to_partial(theirs)(x).shape == output_shape


@pytest.mark.parametrize("partial,monai,kw,input_shape,output_shape,train_shape", SCRIPTED)
def test_scripted_equals_eager(partial, monai, kw, input_shape, output_shape, train_shape):
    ours, _ = built(partial, monai, kw)
    ours.eval()
    scripted = torch.jit.script(ours)
    x = torch.randn(input_shape)
    m = holes((input_shape[0], 1) + input_shape[2:])
    # the graph as written (the optimizing executor's first runs compile for seconds: not what is tested here)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for mask in (m, None):
            torch.testing.assert_close(scripted(x, mask), ours(x, mask))


@pytest.mark.parametrize("partial,monai,kw", REFUSED)
def test_refused_before_any_layer_is_built(partial, monai, kw, monkeypatch):
    x = torch.randn((1, 1) + (16,) * kw["spatial_dims"])
    with eval_mode(theirs := monai(**kw)):
        assert to_partial(theirs)(x).shape[2:] == x.shape[2:]  # no mask, norms left alone: to_partial takes it

    def no_layers(*args, **kwargs):
        raise AssertionError("a module was built before the refusal")

    monkeypatch.setattr(nn.Module, "__init__", no_layers)
    with pytest.raises(ValueError, match="mask-aware"):
        partial(**kw)
