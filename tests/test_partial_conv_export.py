"""PartialConv under TorchScript (script and trace), torch.compile(fullgraph=True) and ONNX."""

from __future__ import annotations

import pytest
import torch
from monai.networks.utils import convert_to_torchscript

from pconv3d import PartialConv2d, PartialConv3d


class TwoLayers(torch.nn.Module):
    """A module that uses partial convolutions the way blocks do: mask in, mask out."""

    def __init__(self):
        super().__init__()
        self.a = PartialConv3d(2, 4, 3, padding=1, return_mask=True)
        self.b = PartialConv3d(4, 2, 3, padding=1, stride=2, multi_channel=True, return_mask=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        x, mask = self.a(x, mask)
        x, mask = self.b(x, mask)
        return x, mask


def inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 8, 8)
    m = (torch.rand(2, 1, 8, 8, 8) > 0.4).float()
    x[m.expand_as(x) == 0] = float("nan")
    return x, m


def test_torchscript_script_and_trace():
    net = TwoLayers().eval()
    x, m = inputs()
    ref = net(x, m)
    scripted = torch.jit.script(net)
    traced = torch.jit.trace(net, (x, m))
    for mod in (scripted, traced):
        out = mod(x, m)
        torch.testing.assert_close(out[0], ref[0])
        torch.testing.assert_close(out[1], ref[1])
    # MONAI's converter (scripting) on a single-output layer, with its own verification
    conv = PartialConv2d(2, 3, 3, padding=1).eval()
    convert_to_torchscript(conv, inputs=[torch.randn(1, 2, 8, 8)], verify=True, rtol=1e-5, atol=1e-6)


def test_compile_fullgraph_matches_eager():
    net = TwoLayers().eval()
    x, m = inputs()
    ref = net(x, m)
    compiled = torch.compile(net, fullgraph=True)
    out = compiled(x, m)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], ref[1])


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = TwoLayers().eval()
    x, m = inputs()
    x = torch.nan_to_num(x)  # ONNX's Where treats NaN the same, but keep the comparison simple
    ref = net(x, m)
    path = tmp_path / "pconv.onnx"
    torch.onnx.export(net, (x, m), str(path), input_names=["x", "mask"], output_names=["y", "mask_out"], dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y, mask_out = sess.run(None, {"x": x.numpy(), "mask": m.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(mask_out), ref[1])
