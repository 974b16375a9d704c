"""Partial networks inside MONAI: TorchScript/ONNX/compile exports, sliding windows, engines, bundles."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.metrics import Loss
from monai.bundle import ConfigParser, verify_net_in_out
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import PrepareBatchExtraInput
from monai.handlers import ValidationHandler
from monai.inferers import SimpleInferer, SlidingWindowInferer, sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.utils import convert_to_onnx, convert_to_torchscript

from pconv3d.networks import PartialBasicUNet, PartialDynUNet, PartialSegResNet, PartialUNet
from tests.masks import MIXED, fill_holes, holes

UNET = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1)


def volume(spatial, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, channels) + spatial, generator=g), holes((1, 1) + spatial, seed=seed)


def seeded(**kw) -> PartialUNet:
    torch.manual_seed(0)
    return PartialUNet(**kw).eval()


# ---------------------------------------------------------------------------------------------------
# exports


@pytest.mark.parametrize(
    "net",
    [
        PartialUNet(**UNET),
        PartialBasicUNet(3, 1, 2, features=(4, 4, 4, 8, 8, 4), norm=("group", {"num_groups": 2})),
        PartialDynUNet(3, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8], res_block=True, norm_name="batch"),
        PartialSegResNet(3, init_filters=4, in_channels=1, out_channels=2, blocks_down=(1, 2), blocks_up=(1,),
                         norm=("group", {"num_groups": 2})),
    ],
    ids=["unet", "basic", "dyn", "segres"],
)
def test_torchscript_through_monai(net, tmp_path):
    x, m = volume((16, 16, 16))
    path = str(tmp_path / "net.ts")
    # the interpreter runs the scripted graph as written: the profiling executor's first calls would spend
    # ~20 s per network optimizing it, which this test is not about
    with torch.jit.optimized_execution(False):
        _check_scripted(net, x, m, path)


def _check_scripted(net: torch.nn.Module, x: torch.Tensor, m: torch.Tensor, path: str) -> None:
    # MONAI's default tolerances (rtol 1e-4, atol 0): the scripted network does the eager arithmetic
    convert_to_torchscript(net, path, verify=True, inputs=[x, m])
    convert_to_torchscript(net, verify=True, inputs=[x])
    loaded = torch.jit.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(fill_holes(x, m, MIXED), m), net(x, m)) and torch.equal(loaded(x), net(x))
        # where a mask is all valid, both take the torch norm's kernel (eager knows it from its carrier)
        ones = torch.ones_like(m)
        assert torch.equal(loaded(x, ones), net(x, ones))


def test_onnx_image_and_mask_through_monai_with_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = seeded(**UNET)
    x, m = volume((16, 16, 16))
    path = str(tmp_path / "net.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_to_onnx(net, [x, m], filename=path, verify=True, use_ort=True, rtol=1e-4, atol=1e-5)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    image, mask = (i.name for i in session.get_inputs())
    got = session.run(None, {image: fill_holes(x, m, MIXED).numpy(), mask: m.numpy()})[0]
    np.testing.assert_allclose(got, net(x, m).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_torch_compile_fullgraph():
    net = PartialUNet(**UNET, norm=("batch", {})).train()
    compiled = torch.compile(net, fullgraph=True)
    x, m = volume((16, 16, 16))
    x = torch.cat([x, volume((16, 16, 16), seed=1)[0]])
    m = torch.cat([m, holes(m.shape, seed=1)])
    want = net(x, m)
    torch.testing.assert_close(compiled(x, m), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled(fill_holes(x, m, MIXED), m), want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# sliding windows


def test_sliding_window_condition_on_a_large_volume():
    net = seeded(**UNET)
    x, m = volume((24, 28, 20))
    with torch.no_grad():
        by_condition = sliding_window_inference(x, (16, 16, 16), 2, net, overlap=0.25, condition=m)
        nan_holes = sliding_window_inference(fill_holes(x, m, MIXED), (16, 16, 16), 2, net, overlap=0.25, condition=m)
        inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=1, overlap=0.5)
        by_inferer = inferer(x, net, condition=m)
        by_inferer_nan = inferer(fill_holes(x, m, MIXED), net, condition=m)
        unmasked = sliding_window_inference(x, (16, 16, 16), 2, net, overlap=0.25)
    assert by_condition.shape == (1, 2, 24, 28, 20)
    torch.testing.assert_close(nan_holes, by_condition, rtol=0, atol=1e-6)
    torch.testing.assert_close(by_inferer_nan, by_inferer, rtol=0, atol=1e-6)
    assert not torch.allclose(unmasked, by_condition, atol=1e-3)


def test_sliding_window_on_a_small_volume_marks_its_padding_missing():
    net = seeded(**UNET)
    x, m = volume((10, 12, 16))
    with torch.no_grad():
        by_condition = sliding_window_inference(x, (16, 16, 16), 1, net, condition=m)
        # what the padding means: a missing border, whatever the image holds there
        pad = [0, 0, 2, 2, 3, 3]  # F.pad order, split as sliding_window_inference splits it
        window = net(F.pad(x, pad, value=1e6), F.pad(m, pad))
    want = window[:, :, 3:13, 2:14, :]
    torch.testing.assert_close(by_condition, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# engines and bundles


def dataset(fill, n=4, spatial=(16, 16, 16)):
    items = []
    for i in range(n):
        x, m = volume(spatial, seed=i)
        label = (x > 0.5).float()[0]
        items.append({"image": fill_holes(x, m, fill)[0], "mask": m[0], "label": label})
    return items


def train(items, prepare_batch, epochs=2):
    torch.manual_seed(0)
    net = PartialUNet(**UNET)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    loader = DataLoader(Dataset(items), batch_size=2, shuffle=False, num_workers=0)
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=loader,
        network=net,
        prepare_batch=PrepareBatchExtraInput({"condition": "mask"}),
        inferer=SlidingWindowInferer((16, 16, 8), sw_batch_size=2),
        key_val_metric={"val_loss": Loss(loss, output_transform=lambda out: (out["pred"], out["label"]))},
        decollate=False,
    )
    trainer = SupervisedTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=loader, network=net, optimizer=opt, loss_function=loss,
        prepare_batch=prepare_batch, inferer=SimpleInferer(), decollate=False,
        train_handlers=[ValidationHandler(validator=evaluator, interval=1)],
    )
    trainer.run()
    return net, trainer, evaluator


def test_trainer_and_evaluator_with_extra_input_ignore_hole_contents():
    net_a, trainer, evaluator = train(dataset(float("nan")), PrepareBatchExtraInput("mask"))
    net_b, _, evaluator_b = train(dataset("random"), PrepareBatchExtraInput("mask"))
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4
    assert np.isfinite(trainer.state.output["loss"].item())
    assert np.isfinite(evaluator.state.metrics["val_loss"])
    # what holes hold changes nothing in two epochs of training and validation
    for (k, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert evaluator.state.metrics["val_loss"] == pytest.approx(evaluator_b.state.metrics["val_loss"], rel=1e-5)


def test_bundle_config_and_verify_net_in_out(tmp_path):
    config = {
        "network_def": {
            "_target_": "pconv3d.networks.PartialUNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [4, 8],
            "strides": [2],
            "num_res_units": 1,
        },
        "dyn_def": {
            "_target_": "pconv3d.networks.PartialDynUNet",
            "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3],
            "strides": [1, 2, 2], "upsample_kernel_size": [2, 2], "filters": [4, 8, 8], "norm_name": "maskedinstance",
        },
    }
    parser = ConfigParser(config)
    assert isinstance(parser.get_parsed_content("network_def"), PartialUNet)
    assert isinstance(parser.get_parsed_content("dyn_def"), PartialDynUNet)
    meta = {
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16, 16], "dtype": "float32"}},
            "outputs": {"pred": {"num_channels": 2, "dtype": "float32"}},
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    verify_net_in_out("network_def", str(tmp_path / "meta.json"), str(tmp_path / "config.json"), device="cpu")
