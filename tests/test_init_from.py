"""From a trained MONAI network to a mask-aware one: --init-from loads model-zoo weights strictly."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet

from pconv3d.networks import GatedUNet, PartialBasicUNet, PartialDynUNet, PartialSegResNet, PartialUNet
from pipelines.handlers import init_network, load_checkpoint
from tests.cli_helpers import TINY, cli

# the model zoo's architectures (random weights: nothing is downloaded)
ZOO = {
    # spleen_ct_segmentation
    "spleen": (UNet, PartialUNet, dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                                        strides=(2, 2, 2, 2), num_res_units=2, norm="batch")),
    # prostate_mri_anatomy (2 MR channels)
    "prostate": (UNet, PartialUNet, dict(spatial_dims=3, in_channels=2, out_channels=3, channels=(16, 32, 64, 128, 256),
                                          strides=(2, 2, 2, 2), num_res_units=4, norm="batch")),
    # pediatric_abdominal_ct_segmentation
    "pediatric": (DynUNet, PartialDynUNet, dict(spatial_dims=3, in_channels=1, out_channels=4, kernel_size=[3, 3, 3, 3],
                                                strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2], res_block=True,
                                                norm_name="instance")),
    "basic": (BasicUNet, PartialBasicUNet, dict(spatial_dims=3, in_channels=1, out_channels=2)),
    # brats_mri_segmentation (4 MR sequences)
    "brats": (SegResNet, PartialSegResNet, dict(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16,
                                                in_channels=4, out_channels=3, dropout_prob=0.2)),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_model_zoo_weights_load_strictly_into_the_partial_twin(name, tmp_path):
    plain, partial, kwargs = ZOO[name]
    torch.manual_seed(0)
    trained = plain(**kwargs)
    torch.save(trained.state_dict(), tmp_path / "model.pt")  # as the model zoo ships it
    net = init_network(partial(**kwargs), tmp_path / "model.pt")
    got, want = net.state_dict(), trained.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_unet_starts_a_gated_unet_whose_gates_are_new(tmp_path):
    kwargs = dict(spatial_dims=3, in_channels=2, out_channels=4, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    torch.save(UNet(**kwargs).state_dict(), tmp_path / "unet.pt")
    fresh = GatedUNet(**kwargs)
    gates = {k: v.clone() for k, v in fresh.state_dict().items() if "gate." in k}
    net = init_network(fresh, tmp_path / "unet.pt")
    unet = torch.load(tmp_path / "unet.pt", weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in unet.items())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in gates.items())


def test_a_mask_channel_starts_at_zero_so_the_network_computes_the_checkpoints(tmp_path):
    kwargs = dict(spatial_dims=3, out_channels=3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    torch.manual_seed(1)
    trained = UNet(in_channels=1, **kwargs).eval()
    torch.save(trained.state_dict(), tmp_path / "unet.pt")
    net = init_network(UNet(in_channels=2, **kwargs), tmp_path / "unet.pt", mask_channel=True).eval()
    image = torch.randn(2, 1, 16, 16, 16)
    mask = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(torch.cat([image, mask], 1)), trained(image))
    gated = init_network(GatedUNet(in_channels=2, **kwargs), tmp_path / "unet.pt", mask_channel=True).state_dict()
    for k, v in trained.state_dict().items():  # the image channel's weights as trained, the mask channel's zero
        assert torch.equal(gated[k][:, :1] if v.shape != gated[k].shape else gated[k], v)
        assert v.shape == gated[k].shape or not gated[k][:, 1:].any()


def test_keys_and_shapes_that_do_not_match_are_named(tmp_path):
    kwargs = ZOO["spleen"][2]
    torch.save(UNet(**kwargs).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt holds weights of another architecture than PartialUNet.*shapes differ"):
        init_network(PartialUNet(**{**kwargs, "channels": (8, 32, 64, 128, 256)}), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt holds weights of another architecture than PartialUNet.*unexpected"):
        init_network(PartialUNet(**{**kwargs, "num_res_units": 1}), tmp_path / "model.pt")
    for channels, mask_channel in ((2, False), (3, True)):  # one channel more is the recipe's mask; no other
        with pytest.raises(ValueError, match=rf"shapes differ \(model.0.conv.unit0.conv.weight: \(16, 1, 3, 3, 3\) "
                                             rf"vs \(16, {channels}, 3, 3, 3\)"):
            init_network(PartialUNet(**{**kwargs, "in_channels": channels}), tmp_path / "model.pt", mask_channel)


def test_train_init_from_a_monai_unet_fine_tunes_it(dataset, tmp_path, capsys):
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=4, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    torch.manual_seed(3)
    torch.save(UNet(**kwargs).state_dict(), tmp_path / "unet.pt")
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "1", *TINY,
                    "--recipe", "partial", "--init-from", tmp_path / "unet.pt",
                    "--learning_rate", "0.0")
    assert code == 0, err
    unet = torch.load(tmp_path / "unet.pt", weights_only=True)
    best = load_checkpoint(out / "best.pt")["network"]
    assert all(torch.equal(best[k], v) for k, v in unet.items())  # learning rate 0: the weights it started from
    # the plain recipe's run starts the default recipe's, which adds a mask channel (docs/guides/choosing-a-method.md)
    code, err = cli(capsys, "train", "--data", dataset, "--output", tmp_path / "plain", "--epochs", "1", *TINY,
                    "--recipe", "plain", "--init-from", tmp_path / "unet.pt", "--learning_rate", "0.0")
    assert code == 0, err
    code, err = cli(capsys, "train", "--data", dataset, "--output", tmp_path / "gated", "--epochs", "1", *TINY,
                    "--init-from", tmp_path / "plain" / "best.pt", "--learning_rate", "0.0")
    assert code == 0, err
    best = load_checkpoint(tmp_path / "gated" / "best.pt")["network"]
    assert all(torch.equal(best[k][:, :1] if best[k].shape != v.shape else best[k], v) for k, v in unet.items())
    code, err = cli(capsys, "train", "--data", dataset, "--output", tmp_path / "other", "--epochs", "1", *TINY,
                    "--init-from", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt" in err and not (tmp_path / "other").exists()
