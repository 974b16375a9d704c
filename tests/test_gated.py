"""Gated blocks and GatedUNet against the formula: MONAI's block times sigmoid of the gate's convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet

from pconv3d.blocks import Gated, GatedConvolution, GatedResidualUnit, conv_together, gate_for
from pconv3d.networks import GatedUNet

GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "transposed",
            "output_padding", "padding_mode")


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


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, transposed: bool, **geometry) -> torch.Tensor:
    """The gate's convolution, from torch.nn.functional with the geometry the test spells out."""
    dims = x.dim() - 2
    return getattr(F, f"conv_transpose{dims}d" if transposed else f"conv{dims}d")(x, weight, bias, **geometry)


# MONAI Convolution arguments -> the geometry its convolution layer (and so the gate) must have
CONVOLUTION_GEOMETRIES = [
    (dict(dilation=2), dict(stride=1, padding=2, dilation=2)),
    (dict(padding=0), dict(stride=1, padding=0)),
    (dict(strides=2, padding=(2, 1, 0)), dict(stride=2, padding=(2, 1, 0))),
    (dict(strides=2, kernel_size=(3, 1, 5), groups=2), dict(stride=2, padding=(1, 0, 2), groups=2)),
    (dict(strides=2, is_transposed=True), dict(stride=2, padding=1, output_padding=1)),
    (dict(strides=2, is_transposed=True, dilation=2, output_padding=0), dict(stride=2, padding=2, dilation=2)),
    (dict(strides=3, is_transposed=True, padding=0, groups=2), dict(stride=3, padding=0, output_padding=2, groups=2)),
]


@pytest.mark.parametrize("kwargs, geometry", CONVOLUTION_GEOMETRIES,
                         ids=["dilation", "padding0", "padding_strided", "groups", "transposed",
                              "transposed_dilation", "transposed_groups"])
def test_the_gate_has_the_whole_geometry_of_the_convolution(kwargs, geometry):
    torch.manual_seed(3)
    transposed = kwargs.get("is_transposed", False)
    block = GatedConvolution(3, 4, 6, norm="batch", **kwargs).double().eval()
    plain = Convolution(3, 4, 6, norm="batch", **kwargs).double().eval()
    missing = plain.load_state_dict(block.state_dict(), strict=False)
    assert missing.missing_keys == [] and sorted(missing.unexpected_keys) == ["gate.bias", "gate.weight"]
    gate, conv = block.gate, block.block.conv
    assert {a: getattr(gate, a) for a in GEOMETRY} == {a: getattr(conv, a) for a in GEOMETRY}
    x = torch.randn(2, 4, 7, 6, 9, dtype=torch.float64)
    y = plain(x)
    assert block(x).shape == gate(x).shape == y.shape
    # a gate of zero weights and bias b: MONAI's block times sigmoid(b)
    b = torch.randn(6, dtype=torch.float64)
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.copy_(b)
    torch.testing.assert_close(block(x), y * torch.sigmoid(b).view(1, -1, 1, 1, 1), rtol=1e-12, atol=1e-12)
    # a random gate: the convolution of x with its weights, in the geometry spelled out above
    with torch.no_grad():
        gate.weight.normal_()
    expected = y * torch.sigmoid(_conv(x, gate.weight, gate.bias, transposed, **geometry))
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, geometry", [
    (dict(dilation=2), dict(padding=2, dilation=2)),
    (dict(strides=2, padding=2, subunits=1), dict(stride=2, padding=2)),
    (dict(kernel_size=(3, 5, 1)), dict(padding=(1, 2, 0))),
], ids=["dilation", "padding", "kernel"])
def test_the_gate_of_a_residual_unit_has_the_geometry_of_its_first_convolution(kwargs, geometry):
    torch.manual_seed(4)
    unit = GatedResidualUnit(3, 3, 4, **kwargs).double()
    plain = ResidualUnit(3, 3, 4, **kwargs).double()
    plain.load_state_dict(unit.state_dict(), strict=False)
    conv = unit.block.conv.unit0.conv
    assert {a: getattr(unit.gate, a) for a in GEOMETRY} == {a: getattr(conv, a) for a in GEOMETRY}
    x = torch.randn(1, 3, 8, 9, 10, dtype=torch.float64)
    gate = F.conv3d(x, unit.gate.weight, unit.gate.bias, **geometry)
    torch.testing.assert_close(unit(x), plain(x) * torch.sigmoid(gate), rtol=1e-12, atol=1e-12)


def test_a_gated_convolution_indexes_as_monai_convolution_not_as_its_gate():
    block = GatedConvolution(3, 2, 4, strides=2, dropout=0.1)
    plain = block.block
    assert isinstance(plain, Convolution)
    assert block[0] is plain[0] is plain.conv and block[-1] is plain[-1] is plain.adn
    assert len(block) == len(plain) == 2 and list(block) == list(plain)
    assert all(m is not block.gate for m in block)


def test_state_dict_keys_are_the_blocks_as_if_the_gate_were_its_child():
    block = GatedConvolution(3, 2, 4, norm="batch")
    plain = list(Convolution(3, 2, 4, norm="batch").state_dict())
    assert list(block.state_dict()) == plain + ["gate.weight", "gate.bias"]
    # the composition is what named_parameters shows; loading takes either spelling
    names = [name for name, _ in block.named_parameters()]
    assert names[0] == "block.conv.weight" and names[-2:] == ["gate.weight", "gate.bias"]
    composed = {**dict(block.named_parameters()), **{f"block.{k}": v for k, v in block.block.named_buffers()}}
    assert str(GatedConvolution(3, 2, 4, norm="batch").load_state_dict(composed)) == "<All keys matched successfully>"
    nested = torch.nn.Sequential(block)
    assert all(k.startswith("0.") and ".block." not in k for k in nested.state_dict())


def test_what_cannot_be_gated_is_refused():
    with pytest.raises(ValueError, match="geometry of a convolution layer, not of Linear"):
        gate_for(torch.nn.Linear(2, 3))
    conv = torch.nn.Conv2d(2, 3, 3)
    with pytest.raises(ValueError, match=r"Gated has its own \['block', 'gate'\]"):
        Gated(Gated(conv, gate_for(conv)), gate_for(conv))


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


def _unet_with_gates(unet: UNet) -> list[tuple[str, tuple[int, ...]]]:
    """MONAI UNet's keys and shapes with ``gate.weight`` and ``gate.bias`` after the keys of every block GatedUNet
    gates: its Convolutions and ResidualUnits (not those inside a unit) but those of the top decoder layer
    (``model.2``), the gate's weight shaped as the block's first convolution's."""
    gates: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # block -> gate weight and bias shapes
    for name, module in unet.named_modules():
        inside = [p for p in gates if name.startswith(p + ".")]
        if isinstance(module, (Convolution, ResidualUnit)) and not inside and not name.startswith("model.2"):
            conv = module.conv if isinstance(module, Convolution) else module.conv.unit0.conv
            gates[name] = tuple(conv.weight.shape), (module.out_channels,)
    state = [(k, tuple(v.shape)) for k, v in unet.state_dict().items()]
    expected = []
    for i, (key, shape) in enumerate(state):
        expected.append((key, shape))
        following = state[i + 1][0] if i + 1 < len(state) else ""
        for block, (weight, bias) in gates.items():
            if key.startswith(block + ".") and not following.startswith(block + "."):
                expected += [(f"{block}.gate.weight", weight), (f"{block}.gate.bias", bias)]
    return expected


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_res_units, kernel_size", [(0, 3), (1, 3), (2, 3), (1, 5)])
def test_gated_unet_state_dict_is_monai_unets_plus_the_gates(spatial_dims, num_res_units, kernel_size):
    args = dict(spatial_dims=spatial_dims, in_channels=2, out_channels=3, channels=(4, 8, 16, 32),
                strides=(2, 2, 1), num_res_units=num_res_units, kernel_size=kernel_size)
    got = [(k, tuple(v.shape)) for k, v in GatedUNet(**args).state_dict().items()]
    assert got == _unet_with_gates(UNet(**args))


def test_gated_unet_learns_its_gates_in_2d():
    net = GatedUNet(2, 2, 2, channels=(4, 8), strides=(2,), num_res_units=1)
    net(torch.randn(2, 2, 16, 16)).sum().backward()
    grads = [p.grad for n, p in net.named_parameters() if n.endswith("gate.weight")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_gated_unet_scripts_to_the_same_function():
    """TorchScript runs each block's convolutions one by one, eager mode stacks them: the same sums, so float32
    agrees to rounding."""
    from monai.networks.utils import convert_to_torchscript

    net = GatedUNet(3, 2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    scripted = convert_to_torchscript(net, verify=True, inputs=[x])  # MONAI's default tolerances
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, geometry", CONVOLUTION_GEOMETRIES[:4] + CONVOLUTION_GEOMETRIES[5:6])
def test_a_one_map_gate_is_shared_by_every_channel(kwargs, geometry):
    """gate_channels=1: one gate convolution output (groups 1), broadcast over the block's channels."""
    torch.manual_seed(3)
    transposed = kwargs.get("is_transposed", False)
    block = GatedConvolution(3, 4, 6, gate_channels=1, **kwargs).double()
    plain = Convolution(3, 4, 6, **kwargs).double()
    plain.load_state_dict(block.state_dict(), strict=False)
    assert block.gate.weight.shape[:2] == ((4, 1) if transposed else (1, 4))
    x = torch.randn(2, 4, 9, 8, 7, dtype=torch.float64)
    gate = _conv(x, block.gate.weight, block.gate.bias, transposed, **{**geometry, "groups": 1})
    assert gate.shape[1] == 1
    torch.testing.assert_close(block(x), plain(x) * torch.sigmoid(gate), rtol=1e-12, atol=1e-12)


def test_gated_unet_with_one_map_per_block():
    """gate_channels reaches every gated block; the keys are the full gates', the parameters far fewer."""
    args = dict(spatial_dims=3, in_channels=2, out_channels=3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    full, light = GatedUNet(**args), GatedUNet(**args, gate_channels=1)
    assert list(full.state_dict()) == list(light.state_dict())
    gates = {n: p for n, p in light.named_parameters() if ".gate." in n}
    assert gates and all(p.shape[0] == 1 or p.shape[1] == 1 for n, p in gates.items() if n.endswith("weight"))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(light) < count(UNet(**args)) * 1.1 < count(full)
    x = torch.randn(1, 2, 16, 16, 16)
    assert light(x).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="gate has 1 or 8"):
        gate_for(torch.nn.Conv3d(4, 8, 3), channels=4)


@settings(max_examples=40, deadline=None)
@given(dims=st.integers(1, 3), transposed=st.booleans(), in_channels=st.integers(1, 3),
       outs=st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=3),
       kernel=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       size=st.integers(5, 7))
def test_conv_together_is_each_convolution_on_its_own(dims, transposed, in_channels, outs, kernel, stride, padding,
                                                      dilation, size):
    """One call for layers of one geometry: each output, and each gradient, is the layer's own (float64)."""
    torch.manual_seed(0)
    kind = getattr(torch.nn, f"ConvTranspose{dims}d" if transposed else f"Conv{dims}d")
    extra = dict(output_padding=stride - 1) if transposed and stride > dilation else {}
    convs = [kind(in_channels, out, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, **extra)
             .double() for out, bias in outs]
    x = torch.randn(2, in_channels, *[size] * dims, dtype=torch.float64, requires_grad=True)
    try:
        expected = [conv(x) for conv in convs]
    except RuntimeError:  # no output for this geometry
        return
    got = conv_together(x, convs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    weights = [torch.randn_like(e) for e in expected]
    grads = lambda ys: torch.autograd.grad(  # noqa: E731
        sum((y * w).sum() for y, w in zip(ys, weights)), [x] + [p for c in convs for p in c.parameters()])
    for g, e in zip(grads(got), grads(expected)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make, args, stacked", [
    (GatedResidualUnit, dict(strides=2, subunits=2), 3),  # gate and residual stacked with the first convolution
    (GatedResidualUnit, dict(dilation=2), 2),  # the residual (1x1, no dilation) on its own
    (GatedConvolution, dict(strides=2, is_transposed=True), 2),
    (GatedConvolution, dict(groups=2, gate_channels=1), 0),  # cannot stack: the layers one by one
], ids=["residual_stacked", "residual_apart", "transposed", "grouped_one_map"])
def test_gated_blocks_train_as_their_composition(make, args, stacked, monkeypatch):
    """The stacked forward has the composition's output and gradients: block(x) * sigmoid(gate(x)), in float64."""
    import pconv3d.blocks.gated as gated

    calls = []
    monkeypatch.setattr(gated, "conv_together", lambda x, convs: calls.append(len(convs)) or conv_together(x, convs))
    torch.manual_seed(5)
    block = make(3, 4, 6, **args).double()
    x = torch.randn(2, 4, 6, 7, 8, dtype=torch.float64)
    composed = block.block(x) * torch.sigmoid(block.gate(x))
    r = torch.randn_like(composed)
    params = list(block.parameters())
    expected = torch.autograd.grad((composed * r).sum(), params)
    y = block(x)
    torch.testing.assert_close(y, composed, rtol=1e-12, atol=1e-12)
    for g, e in zip(torch.autograd.grad((y * r).sum(), params), expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    assert calls == ([stacked] if stacked else [])
