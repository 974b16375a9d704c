"""Gated blocks and GatedUNet against the formula: MONAI's block times sigmoid of the gate's convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet

from pconv3d.blocks import GatedConvolution, GatedResidualUnit
from pconv3d.networks import GatedUNet


def _open_gates(module: torch.nn.Module) -> None:
    """Gates at sigmoid = 1 exactly (in float64): the gated network must then be MONAI's."""
    for name, p in module.named_parameters():
        if name.endswith("gate.weight"):
            p.data.zero_()
        elif name.endswith("gate.bias"):
            p.data.fill_(1e4)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("strides", [1, 2])
def test_gated_convolution_is_the_block_times_the_sigmoid_of_the_gate(transposed, strides):
    torch.manual_seed(0)
    block = GatedConvolution(3, 2, 5, strides=strides, is_transposed=transposed, norm="batch").double().eval()
    plain = Convolution(3, 2, 5, strides=strides, is_transposed=transposed, norm="batch").double().eval()
    missing = plain.load_state_dict(block.state_dict(), strict=False)
    assert missing.missing_keys == [] and sorted(missing.unexpected_keys) == ["gate.bias", "gate.weight"]
    x = torch.randn(2, 2, 7, 6, 5, dtype=torch.float64)
    g = block.gate
    if transposed:
        gate = F.conv_transpose3d(x, g.weight, g.bias, stride=strides, padding=1, output_padding=strides - 1)
    else:
        gate = F.conv3d(x, g.weight, g.bias, stride=strides, padding=1)
    torch.testing.assert_close(block(x), plain(x) * torch.sigmoid(gate), rtol=1e-12, atol=1e-12)


def test_gated_residual_unit_is_the_unit_times_the_sigmoid_of_the_gate():
    torch.manual_seed(1)
    unit = GatedResidualUnit(3, 3, 4, strides=2, subunits=2).double()
    plain = ResidualUnit(3, 3, 4, strides=2, subunits=2).double()
    plain.load_state_dict(unit.state_dict(), strict=False)
    x = torch.randn(1, 3, 8, 9, 10, dtype=torch.float64)
    gate = F.conv3d(x, unit.gate.weight, unit.gate.bias, stride=2, padding=1)
    torch.testing.assert_close(unit(x), plain(x) * torch.sigmoid(gate), rtol=1e-12, atol=1e-12)


def test_new_gates_start_mostly_open():
    unit = GatedResidualUnit(3, 2, 4)
    assert torch.all(unit.gate.bias == 2.0)


@pytest.mark.parametrize("num_res_units", [0, 2])
def test_gated_unet_with_open_gates_is_monai_unet_and_loads_its_weights(num_res_units):
    torch.manual_seed(2)
    args = dict(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8, 16), strides=(2, 2),
                num_res_units=num_res_units)
    unet, gated = UNet(**args).double().eval(), GatedUNet(**args).double().eval()
    result = gated.load_state_dict(unet.state_dict(), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys
    assert all(k.endswith(("gate.weight", "gate.bias")) for k in result.missing_keys)
    # gated: encoder and bottom blocks, and the inner decoder blocks (transposed conv, + unit if any)
    n = len(args["channels"])
    assert len(result.missing_keys) == 2 * (n + (n - 2) * (2 if num_res_units else 1))
    _open_gates(gated)
    x = torch.randn(1, 2, 16, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(gated(x), unet(x), rtol=1e-10, atol=1e-10)


def test_gated_unet_learns_its_gates_in_2d():
    net = GatedUNet(2, 2, 2, channels=(4, 8), strides=(2,), num_res_units=1)
    net(torch.randn(2, 2, 16, 16)).sum().backward()
    grads = [p.grad for n, p in net.named_parameters() if n.endswith("gate.weight")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_gated_unet_scripts_to_the_same_arithmetic():
    from monai.networks.utils import convert_to_torchscript

    net = GatedUNet(3, 2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    scripted = convert_to_torchscript(net, verify=True, inputs=[x])  # MONAI's default tolerances
    with torch.no_grad():
        assert torch.equal(scripted(x), net(x))
