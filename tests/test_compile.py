"""``torch.compile`` of the partial layer and networks: the same numbers as eager, no recompilation for a fresh
mask, and the ``--compile`` switch of ``pconv3d train`` / ``pconv3d infer``.

The networks compile with the ``aot_eager`` backend (dynamo and AOT autograd: graph breaks, guards and the
backward graph are all exercised, in seconds); the lone layer and a small ``PartialUNet`` also with inductor,
which needs a C++ compiler (skipped, saying so, where none works).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch._dynamo

from pconv3d import PartialConv3d
from pconv3d.networks import GatedUNet, PartialUNet
from tests.cli_helpers import TINY, cli, files_under


def _masks(shape: tuple[int, ...], count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(shape, generator=g) > 0.3).float() for _ in range(count)]


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches empty before and after the test; the fixture's value forbids recompilation from the
    moment it is called (every later call must hit a graph compiled before)."""
    torch._dynamo.reset()
    yield lambda: setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.config.error_on_recompile = False
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C++ compiler for inductor")
def test_inductor_layer_equals_eager_for_fresh_masks(fresh_dynamo):
    torch.manual_seed(0)
    conv = PartialConv3d(2, 4, 3, padding=1, return_mask=True)
    compiled = torch.compile(conv)
    x = torch.randn(2, 2, 8, 8, 8)
    masks = _masks((2, 1, 8, 8, 8))
    for i, mask in enumerate(masks):
        if i == 1:
            fresh_dynamo()
        x_holes = x.masked_fill(mask == 0, float("nan"))  # hole contents never leak, compiled either
        out, new_mask = compiled(x_holes, mask.clone())
        ref, ref_mask = conv(x, mask)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(new_mask, ref_mask)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C++ compiler for inductor")
def test_inductor_network_equals_eager_for_fresh_masks(fresh_dynamo):
    """Strided, transposed and 1x1 windows, masked norms and skip unions, through inductor (whose statistics
    are the opaque ``pconv3d::window_stats`` operator)."""
    torch.manual_seed(0)
    net = PartialUNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    compiled = torch.compile(net)
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        for i, mask in enumerate(_masks((2, 1, 8, 8, 8))):
            if i == 1:
                fresh_dynamo()
            out = compiled(x.masked_fill(mask == 0, float("nan")), mask.clone())
            torch.testing.assert_close(out, net(x, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["PartialUNet", "GatedUNet"])
def test_compiled_network_trains_like_eager_without_recompiling(name, fresh_dynamo):
    torch.manual_seed(0)
    if name == "PartialUNet":
        net = PartialUNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
        call = lambda module, x, m: module(x, m)  # noqa: E731
        x = torch.randn(2, 1, 16, 16, 16)
    else:
        net = GatedUNet(3, 2, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
        call = lambda module, x, m: module(torch.cat([x * m, m], 1))  # noqa: E731  image and confidence channel
        x = torch.randn(2, 1, 16, 16, 16)
    compiled = torch.compile(net, backend="aot_eager")
    for i, mask in enumerate(_masks((2, 1, 16, 16, 16))):
        if i == 1:
            fresh_dynamo()
        for training in (True, False):
            net.train(training)
            net.zero_grad()
            out = call(compiled, x, mask.clone())
            if training:
                out.square().mean().backward()
                grads = [p.grad.clone() for p in net.parameters()]
                net.zero_grad()
            ref = call(net, x, mask)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            if training:
                ref.square().mean().backward()
                for g, p in zip(grads, net.parameters()):
                    torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_train_and_infer_compile_switch(dataset, tmp_path, capsys, fresh_dynamo):
    """``--compile`` trains and segments through MONAI's engines (``compile=``), and the checkpoint keeps the
    plain network's keys, so the run loads without compiling too."""
    backend = ["--compile_kwargs", "{backend: aot_eager}"]
    partial = ["--recipe", "partial"]
    run = tmp_path / "run"
    code, err = cli(capsys, "train", "--data", dataset, "--output", run, "--epochs", "1", *TINY, *partial,
                    "--compile", *backend)
    assert code == 0, err
    volumes = dataset / "imagesTs"
    outputs = {}
    for flags in ([], ["--compile", *backend]):
        out = tmp_path / f"pred{len(flags)}"
        code, err = cli(capsys, "infer", "--model", run / "best.pt", "--input", volumes, "--output", out,
                        "--progress", "false", *flags)
        assert code == 0, err
        outputs[len(flags)] = files_under(out)
    assert outputs[0] == outputs[3] and outputs[0]
