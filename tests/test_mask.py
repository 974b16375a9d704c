"""The mask carrier: statistics shared within a call and nothing kept after it, facts that only skip work,
no host synchronisation off the CPU, and partial layers that hooks and MONAI's GradCAM see."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from monai.visualize import GradCAM
from torch._subclasses.fake_tensor import FakeTensor

from pconv3d import PartialConv3d
from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import Mask
from pconv3d.masks.counting import Windows, window_stats
from pconv3d.networks import GatedUNet, PartialBasicUNet, PartialDynUNet, PartialSegResNet, PartialUNet
from tests.masks import holes
from tests.oracle import partial_conv_oracle


@pytest.fixture
def counted(monkeypatch):
    """Counts statistic computations (``True`` for those of an all-valid mask)."""
    import pconv3d.masks.counting as counting

    calls = []
    real_stats, real_full = counting._counted_stats, counting._all_valid_stats

    def spy(windows, mask, *args):
        calls.append(mask is None)
        return real_stats(windows, mask, *args)

    def spy_full(*args):
        calls.append(True)
        return real_full(*args)

    monkeypatch.setattr(counting, "_counted_stats", spy)
    monkeypatch.setattr(counting, "_all_valid_stats", spy_full)
    return calls


def oracle(conv, x, m):
    return partial_conv_oracle(x, conv.weight, conv.bias, m, stride=conv.stride, padding=conv.padding,
                               dilation=conv.dilation, groups=conv.groups)[0].float()


def test_statistics_computed_once_per_geometry_and_carrier(counted):
    a, b = PartialConv3d(2, 2, 3, padding=1), PartialConv3d(2, 2, 3, padding=1)
    c = PartialConv3d(2, 2, 3, padding=2, dilation=2)
    x = torch.randn(1, 2, 8, 8, 8)
    m = holes((1, 1, 8, 8, 8))
    carrier = Mask(m)
    outs = [a(x, carrier), b(x, carrier), a(x, carrier)]
    assert counted == [False]
    c(x, carrier)
    assert counted == [False, False]
    for out, conv in zip(outs, (a, b, a)):
        torch.testing.assert_close(out, conv(x, m))  # a tensor mask: the same result, counted afresh
    assert len(counted) == 5
    a(x), a(x)  # nothing survives a call: no mask, counted on every call
    assert counted[-2:] == [True, True]


def test_all_valid_masks_take_the_separable_statistics_of_no_mask(counted):
    conv = PartialConv3d(2, 2, 3, padding=1, return_mask=True)
    x = torch.randn(1, 2, 8, 8, 8)
    torch.testing.assert_close(conv(x, torch.ones(1, 1, 8, 8, 8))[0], conv(x)[0])
    torch.testing.assert_close(conv(x)[0], oracle(conv, x, None), rtol=1e-4, atol=1e-5)
    assert counted == [True, True, True]  # an all-valid mask counted as no mask, per dim
    m = torch.ones(1, 1, 8, 8, 8)
    m[..., 3:5, :, :] = 0
    torch.testing.assert_close(conv(x, m)[0], oracle(conv, x, m), rtol=1e-4, atol=1e-5)
    assert counted[-1] is False
    _, out_mask = conv(x, Mask(None))
    assert isinstance(out_mask, Mask) and out_mask.binary and out_mask.all_valid  # set by the layer, not read


def test_tensor_masks_are_read_on_every_call():
    conv = PartialConv3d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    m = torch.ones(1, 1, 8, 8, 8)
    first = conv(x, m)
    m[..., :4] = 0  # in place, between calls
    torch.testing.assert_close(conv(x, m), oracle(conv, x, m), rtol=1e-4, atol=1e-5)
    m.numpy()[..., :6] = 0.5  # behind torch's back: nothing was remembered, so nothing is stale
    torch.testing.assert_close(conv(x, m), oracle(conv, x, m), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first, conv(x, m))


def test_editing_a_returned_mask_changes_no_later_call():
    conv = PartialConv3d(2, 2, 3, padding=1, return_mask=True)
    x = torch.randn(1, 2, 8, 8, 8)
    m = holes((1, 1, 8, 8, 8))
    _, mask = conv(x, m)
    want = mask.clone()
    mask.zero_()
    out, mask2 = conv(x, m)
    assert torch.equal(mask2, want)
    torch.testing.assert_close(out, oracle(conv, x, m), rtol=1e-4, atol=1e-5)
    _, all_valid = conv(x)  # a broadcast view: writing into part of it is refused
    with pytest.raises(RuntimeError):
        all_valid[..., :4] = 0


def test_inference_mode_then_training_mode():
    conv = PartialConv3d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.inference_mode():
        carrier = Mask(torch.ones(1, 1, 8, 8, 8))
        conv(x), conv(x, carrier)
    out = conv(x, holes((1, 1, 8, 8, 8)))
    out.sum().backward()
    assert conv.weight.grad is not None


def test_marked_clean_skips_only_what_is_already_clean():
    x = torch.full((1, 2, 4, 4), float("nan"))
    x[..., :2] = 3.0
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2] = 1.0
    carrier = Mask(m)
    y = apply_mask(x, carrier)
    assert apply_mask(y, carrier) is y  # marked as zero in its holes: nothing to do
    assert apply_mask(y, Mask(m.clone())) is not y  # another carrier knows nothing of y
    assert apply_mask(y, m) is not y  # nor does a plain tensor: it remembers nothing
    y[..., 2] = float("nan")  # an in-place edit of y ends the mark
    assert (apply_mask(y, carrier)[..., 2:] == 0).all()
    soft = Mask(torch.full((1, 1, 4, 4), 0.5))
    z = mark_clean(torch.ones(1, 2, 4, 4), soft)
    assert torch.equal(apply_mask(z, soft), torch.full_like(z, 0.5))  # weights are still applied
    assert apply_mask(x, Mask(torch.ones(1, 1, 4, 4))) is x  # nothing to clear where everything is valid
    assert apply_mask(x, torch.ones(1, 1, 4, 4)) is x


def test_a_mark_keeps_nothing_alive():
    carrier = Mask(holes((1, 1, 8, 8)))
    y = apply_mask(torch.randn(1, 4, 8, 8), carrier)
    assert carrier.has_zeros_in_holes(y)
    ref = weakref.ref(y)
    del y
    gc.collect()
    assert ref() is None


def test_user_facts_are_taken_as_given():
    m = holes((1, 1, 8, 8, 8))
    conv = PartialConv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    declared = Mask(m, binary=True, all_valid=False)
    assert declared.binary and not declared.all_valid
    torch.testing.assert_close(conv(x, declared), conv(x, m))
    assert Mask(m * 0.5).binary is False and Mask(m.bool()).binary is True


def live_tensors() -> tuple[int, int]:
    """Number of live tensors and bytes of their distinct storages (fake tensors that an earlier test's
    ``torch.compile`` left in its caches hold no memory and are not counted)."""
    gc.collect()
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.device.type == "cpu"
               and not isinstance(o, FakeTensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return len(tensors), sum(storages.values())


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_memory_after_forward_passes_equals_memory_before(grad):
    """Counted before the first call ever: nothing a call computes (statistics, facts, masks) outlives it."""
    torch.manual_seed(0)
    net = PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1)
    conv = PartialConv3d(1, 4, 3, padding=1)
    x = torch.randn(1, 1, 16, 16, 16)
    before = live_tensors()
    with torch.set_grad_enabled(grad):
        for seed in range(20):
            m = holes((1, 1, 16, 16, 16), seed=seed)
            y = net(x, m).sum() + net(x).sum() + conv(x, Mask(m)).sum() + conv(x).sum()
            if grad:
                y.backward()
    del y, m
    net.zero_grad(set_to_none=True)
    conv.zero_grad(set_to_none=True)
    assert live_tensors() == before


@pytest.mark.parametrize("backend", [None, "aot_eager"], ids=["eager", "compiled"])
def test_memory_after_50_inference_calls_equals_that_after_5(backend):
    """Fresh masks every call, as in sliding-window inference: nothing accumulates, compiled or not."""
    torch.manual_seed(0)
    net = PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1).eval()
    torch._dynamo.reset()
    call = net if backend is None else torch.compile(net, backend=backend)
    x = torch.randn(1, 1, 16, 16, 16)
    counted = {}
    with torch.no_grad():
        for i in range(1, 51):
            call(x, holes((1, 1, 16, 16, 16), seed=i))
            if i in (5, 50):
                counted[i] = live_tensors()
    torch._dynamo.reset()
    assert counted[50] == counted[5]


def test_two_threads_run_one_network_at_once():
    torch.manual_seed(0)
    net = PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1).eval()
    inputs = [(torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(s)), holes((1, 1, 16, 16, 16), seed=s))
              for s in range(2)]
    with torch.no_grad():
        want = [net(x, m) for x, m in inputs]
    barrier = threading.Barrier(2)
    got: list[list[torch.Tensor]] = [[], []]

    def worker(i: int) -> None:
        x, m = inputs[i]
        barrier.wait()
        with torch.no_grad():
            for _ in range(10):
                got[i].append(net(x, m))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert len(got[i]) == 10
        for y in got[i]:
            assert torch.equal(y, want[i])


def test_off_the_cpu_forward_never_synchronises():
    """On the meta device every read of a value (``.item()``, ``bool()``, ``.tolist()``) raises, like the
    host synchronisation it would be on a GPU: a forward that completes there reads no value back."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.ones(1, device="meta").item()
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(torch.ones(1, device="meta") > 0)
    torch.manual_seed(0)
    nets = [
        PartialConv3d(1, 4, 3, padding=1, return_mask=True),
        PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1),
        PartialBasicUNet(3, 1, 2, features=(4, 4, 8, 8, 8, 4)),
        PartialDynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 8]),
        PartialSegResNet(3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,)),
        PartialSegResNet(3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,),
                         upsample_mode="pixelshuffle"),
    ]
    for net in nets:
        net.to("meta")
        for training in (True, False):
            net.train(training)
            x = torch.randn(2, 1, 32, 16, 16, device="meta", requires_grad=training)
            for mask in (None, torch.ones(2, 1, 32, 16, 16, device="meta"), torch.ones(2, 1, 32, 16, 16, device="meta").bool()):
                out = net(x, mask)
                out = out[0] if isinstance(out, tuple) else out
                assert out.device.type == "meta" and out.shape[2:] == x.shape[2:]
                if training:
                    out.sum().backward()
    # GatedUNet takes the mask as a channel: its gates, not a mask argument, must read no value either
    net = GatedUNet(3, 2, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1).to("meta")
    out = net(torch.randn(2, 2, 32, 16, 16, device="meta", requires_grad=True))
    out.sum().backward()
    assert out.device.type == "meta"


def partial_layers(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from pconv3d.partial_conv import PartialConvBase

    return {name: mod for name, mod in net.named_modules() if isinstance(mod, PartialConvBase)}


@pytest.mark.parametrize(
    "net",
    [
        lambda: PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=2),
        lambda: PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2)),
        lambda: PartialBasicUNet(3, 1, 2, features=(4, 4, 8, 8, 8, 4)),
        lambda: PartialBasicUNet(3, 1, 2, features=(4, 4, 8, 8, 8, 4), upsample="nontrainable"),
        lambda: PartialBasicUNet(3, 1, 2, features=(4, 4, 8, 8, 8, 4), upsample="pixelshuffle"),
        lambda: PartialDynUNet(3, 1, 2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                               filters=[4, 8, 8, 8], res_block=True, deep_supervision=True, deep_supr_num=2),
    ],
    ids=["unet_res", "unet", "basic", "basic_nontrainable", "basic_pixelshuffle", "dyn_res_deep"],
)
def test_forward_hooks_fire_on_every_partial_convolution(net):
    net = net().train()
    layers = partial_layers(net)
    assert layers
    fired: dict[str, list] = {name: [] for name in layers}
    for name, layer in layers.items():
        layer.register_forward_hook(lambda mod, args, out, name=name: fired[name].append(out.shape))
    net(torch.randn(1, 1, 32, 32, 32), holes((1, 1, 32, 32, 32)))
    assert [name for name, shapes in fired.items() if not shapes] == []


def test_gradcam_on_a_partial_convolution_of_a_partial_unet():
    torch.manual_seed(0)
    net = PartialUNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=1).eval()
    target = "model.2.1.conv.unit0.conv"  # the last partial convolution of the decoder
    assert target in partial_layers(net)
    cam = GradCAM(nn_module=net, target_layers=target)
    x = torch.randn(1, 1, 32, 32, 32)
    m = holes((1, 1, 32, 32, 32))
    # GradCAM hands keyword arguments on to the network: the mask travels as `mask=` (or `condition=`)
    heat = cam(x, class_idx=1, mask=m)
    assert heat.shape == (1, 1, 32, 32, 32) and torch.isfinite(heat).all() and heat.max() > 0


def _random_windows(g: torch.Generator, transposed: bool) -> Windows:
    k, s, d = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 5), (1, 4), (1, 3)))
    if transposed:
        op = int(torch.randint(0, max(s, d), (1,), generator=g))
        return Windows([k, 3, 2], [s, 1, 2], [k // 2, 1, 0], [d, 1, 1], [], "constant", [op, 0, 1], True)
    mode = ["constant", "reflect", "replicate", "circular"][int(torch.randint(0, 4, (1,), generator=g))]
    return Windows([k, 3, 2], [s, 1, 2], [0, 0, 0], [d, 1, 1], [1, 0, 2, 1, k // 2, k // 2], mode, [0, 0, 0], False)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_counting_in_bytes_compiled_and_exported_equal_the_float_count(transposed):
    """Binary masks are counted in bytes (up to 255 per window, else in floating point), the compiled graph
    calls pconv3d::window_stats, exported programs use standard operators: all give the float count's
    statistics exactly, for single-channel and grouped multi-channel masks."""
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    g = torch.Generator().manual_seed(0)
    torch._dynamo.reset()
    for trial in range(12):
        w = _random_windows(g, transposed)
        channels, groups = [(1, 1), (4, 2), (40, 1)][trial % 3]  # 40 channels: some windows count past 255
        all_valid = trial % 4 == 3  # the operator then takes its statistics from the geometry, as eager does
        m = torch.rand(2, channels, 7, 6, 5, generator=g) > (-1.0 if all_valid else 0.6)
        spatial = list(m.shape[2:])
        want = window_stats(w, m.float(), spatial, groups, torch.float64, m.device)
        got = window_stats(w, m, spatial, groups, torch.float64, m.device)
        assert torch.equal(got.ratio, want.ratio) and torch.equal(got.valid, want.valid)
        got = torch.compile(window_stats, backend=keep_graph, fullgraph=True)(w, m, spatial, groups, torch.float64,
                                                                                m.device)
        torch.testing.assert_close(got.ratio, want.ratio, rtol=0 if not all_valid else 1e-15, atol=0)
        assert torch.equal(got.valid, want.valid)
    torch._dynamo.reset()
    assert graphs and all("pconv3d.window_stats" in graph for graph in graphs)
    layer = PartialConv3d(1, 2, 3, stride=2, padding=1)
    exported = torch.export.export(layer, (torch.randn(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) > 0.5))
    assert "pconv3d" not in str(exported.graph)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_full_stats_from_host_counts_equal_the_counted_ones(transposed):
    from pconv3d.masks.counting import _all_valid_stats as full_stats, _counted_stats

    g = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(300):
        k, s, d, p = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 5), (1, 4), (1, 3), (0, 5)))
        length = int(torch.randint(1, 10, (1,), generator=g))
        if transposed:
            op = int(torch.randint(0, max(s, d), (1,), generator=g))
            w = Windows([k, 3], [s, 1], [p, 1], [d, 1], [], "constant", [op, 0], True)
        else:
            pre = [] if p % 2 else [1, 0, p, p + 1]  # some with asymmetric pre-padding, by mode
            mode = ["constant", "reflect", "replicate", "circular"][k % 4] if pre else "constant"
            if mode == "reflect" and length <= p + 1:
                continue
            w = Windows([k, 3], [s, 1], [p, 1] if not pre else [0, 0], [d, 1], pre, mode, [0, 0], False)
        try:
            want = _counted_stats(w, None, [length, 5], 1, torch.float64, torch.device("cpu"))
        except RuntimeError:  # a geometry with no output
            continue
        got = full_stats(w, [length, 5], torch.float64, torch.device("cpu"))
        if got is None:
            assert not bool(want.valid.all())
        else:
            checked += 1
            assert bool(want.valid.all())
            torch.testing.assert_close(got.ratio.expand_as(want.ratio), want.ratio, rtol=0, atol=0)
            torch.testing.assert_close(got.valid.expand_as(want.valid), want.valid, rtol=0, atol=0)
    assert checked > 50


def test_one_carrier_across_batch_sizes_dtypes_and_shapes():
    """A carrier keeps what each (geometry, shape, dtype, batch) needs apart: reuse never gives another's."""
    conv = PartialConv3d(2, 2, 3, padding=1, return_mask=True)
    m = holes((1, 1, 8, 8, 8))
    carrier, none = Mask(m), Mask(None)
    for n in (1, 3, 2):
        x = torch.randn(n, 2, 8, 8, 8)
        torch.testing.assert_close(conv(x, carrier)[0], oracle(conv, x, m), rtol=1e-4, atol=1e-5)
        out, mask = conv(x, none)
        torch.testing.assert_close(out, oracle(conv, x, None), rtol=1e-4, atol=1e-5)
        assert mask.tensor.shape == (n, 1, 8, 8, 8)
    d = PartialConv3d(2, 2, 3, padding=1, return_mask=True).double()
    for shape in ((8, 8, 8), (7, 8, 9)):
        x = torch.randn(2, 2, *shape, dtype=torch.float64)
        out, mask = d(x, none)
        assert out.dtype == mask.tensor.dtype == torch.float64
        ref = partial_conv_oracle(x, d.weight, d.bias, None, stride=d.stride, padding=d.padding, dilation=d.dilation, groups=1)[0]
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
