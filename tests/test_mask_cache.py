"""Cached mask statistics are reused where they may be and never stale."""

from __future__ import annotations

import gc

import pytest
import torch

import pconv3d.mask_stats as ms
from pconv3d import PartialConv3d
from tests.oracle import partial_conv_oracle


@pytest.fixture
def counted(monkeypatch):
    """Counts real statistic computations."""
    calls = []
    real = ms.compute_stats

    def spy(*args, **kwargs):
        calls.append(args[0] is None)
        return real(*args, **kwargs)

    monkeypatch.setattr(ms, "compute_stats", spy)
    ms.clear_cache()
    yield calls
    ms.clear_cache()


def oracle(conv, x, m):
    return partial_conv_oracle(x, conv.weight, conv.bias, m, stride=conv.stride, padding=conv.padding,
                               dilation=conv.dilation, groups=conv.groups)[0].float()


def test_shared_mask_statistics_computed_once_per_geometry(counted):
    a, b = PartialConv3d(2, 2, 3, padding=1), PartialConv3d(2, 2, 3, padding=1)
    c = PartialConv3d(2, 2, 3, padding=2, dilation=2)
    x = torch.randn(1, 2, 8, 8, 8)
    m = (torch.rand(1, 1, 8, 8, 8) > 0.5).float()
    a(x, m), b(x, m), a(x, m)
    assert len(counted) == 1
    c(x, m)
    assert len(counted) == 2
    a(x), b(x), a(x.double().float())
    assert counted.count(True) == 1


def test_in_place_edit_of_mask_is_seen(counted):
    conv = PartialConv3d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    m = torch.ones(1, 1, 8, 8, 8)
    first = conv(x, m)
    m[..., :4] = 0
    torch.testing.assert_close(conv(x, m), oracle(conv, x, m), rtol=1e-4, atol=1e-5)
    m.view(-1)[:10].fill_(1.0)  # through a view: shared version counter
    torch.testing.assert_close(conv(x, m), oracle(conv, x, m), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first, conv(x, m))


def test_fresh_mask_at_a_freed_address_is_not_confused(counted):
    conv = PartialConv3d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    seen_same_address = False
    for i in range(12):  # enough rounds for the allocator to hand an address back at least once
        m = torch.ones(1, 1, 8, 8, 8)
        m[..., : i % 6 + 1] = 0
        addr, oid = m.data_ptr(), id(m)
        torch.testing.assert_close(conv(x, m), oracle(conv, x, m), rtol=1e-4, atol=1e-5)
        del m
        gc.collect()
        nxt = torch.empty(1, 1, 8, 8, 8)
        seen_same_address |= nxt.data_ptr() == addr or id(nxt) == oid
        del nxt
    assert seen_same_address  # the allocator really did reuse memory, so the test exercised that case


def test_masked_then_unmasked_then_batch_and_dtype_changes(counted):
    conv = PartialConv3d(2, 2, 3, padding=1, return_mask=True)
    m = (torch.rand(1, 1, 8, 8, 8) > 0.5).float()
    for n in (1, 3, 2):
        x = torch.randn(n, 2, 8, 8, 8)
        torch.testing.assert_close(conv(x, m)[0], oracle(conv, x, m), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(conv(x)[0], oracle(conv, x, None), rtol=1e-4, atol=1e-5)
        assert conv(x)[1].shape == (n, 1, 8, 8, 8)
    d = conv.double()
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64)
    out, mask = d(x)
    assert out.dtype == mask.dtype == torch.float64
    ref = partial_conv_oracle(x, d.weight, d.bias, None, stride=d.stride, padding=d.padding, dilation=d.dilation, groups=1)[0]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # a different spatial shape is a different entry
    x = torch.randn(1, 2, 7, 8, 9, dtype=torch.float64)
    torch.testing.assert_close(d(x)[0], partial_conv_oracle(x, d.weight, d.bias, None, stride=d.stride, padding=d.padding,
                                                             dilation=d.dilation, groups=1)[0], rtol=1e-12, atol=1e-12)


def test_editing_a_returned_mask_does_not_poison_the_cache(counted):
    conv = PartialConv3d(2, 2, 3, padding=1, return_mask=True)
    x = torch.randn(1, 2, 8, 8, 8)
    _, mask = conv(x)
    mask.zero_()  # user edits what we returned
    out, mask2 = conv(x)
    assert mask2.all()
    torch.testing.assert_close(out, oracle(conv, x, None), rtol=1e-4, atol=1e-5)


def test_inference_mode_then_training_mode():
    conv = PartialConv3d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.inference_mode():
        m = torch.ones(1, 1, 8, 8, 8)
        conv(x), conv(x, m)
    out = conv(x)  # statistics made in inference mode must not be saved for backward
    out.sum().backward()
    assert conv.weight.grad is not None


def test_meta_device_change_is_a_new_entry():
    conv = PartialConv3d(2, 2, 3, padding=1, return_mask=True)
    conv(torch.randn(1, 2, 8, 8, 8))
    meta = PartialConv3d(2, 2, 3, padding=1, return_mask=True, device="meta")
    out, mask = meta(torch.randn(1, 2, 8, 8, 8, device="meta"))
    assert out.device.type == "meta" and mask.device.type == "meta"


def test_hole_bits_follow_in_place_edits_and_soft_values():
    from pconv3d.masking import apply_mask

    x = torch.full((1, 2, 4, 4), float("nan"))
    x[..., :2] = 3.0
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2] = 1.0
    assert torch.equal(apply_mask(x, m)[..., :2], x[..., :2]) and (apply_mask(x, m)[..., 2:] == 0).all()
    m[..., :2] = 0.5  # binary -> soft, in place
    assert torch.equal(apply_mask(x, m)[..., :2], torch.full((1, 2, 4, 2), 1.5))
    m[..., 0] = 0.0  # a new hole, in place
    out = apply_mask(x, m)
    assert (out[..., 0] == 0).all() and (out[..., 1] == 1.5).all()


def test_clear_cache_after_an_edit_behind_torchs_back():
    from pconv3d.masking import apply_mask

    x = torch.ones(1, 1, 4, 4)
    m = torch.ones(1, 1, 4, 4)
    assert torch.equal(apply_mask(x, m), x)
    m.numpy()[...] = 0.5  # invisible to the version counter
    ms.clear_cache()
    assert torch.equal(apply_mask(x, m), torch.full_like(x, 0.5))


def test_clean_marks_skip_only_what_is_already_clean():
    from pconv3d.masking import apply_mask, mark_clean

    x = torch.full((1, 2, 4, 4), float("nan"))
    x[..., :2] = 3.0
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2] = 1.0
    y = apply_mask(x, m)
    assert apply_mask(y, m) is y  # marked clean under m: nothing to do
    assert apply_mask(y, m.clone()) is not y  # another mask tensor: masked again
    y[..., 2] = float("nan")  # an in-place edit of y drops its mark
    assert (apply_mask(y, m)[..., 2:] == 0).all()
    y = apply_mask(x, m)
    m[..., 1] = 0.0  # an in-place edit of the mask too
    assert (apply_mask(y, m)[..., 1:] == 0).all() and (apply_mask(y, m)[..., 0] == 3.0).all()
    soft = torch.full((1, 1, 4, 4), 0.5)
    z = mark_clean(torch.ones(1, 2, 4, 4), soft)
    assert torch.equal(apply_mask(z, soft), torch.full_like(z, 0.5))  # weights are still applied
    assert apply_mask(x, torch.ones(1, 1, 4, 4)) is x  # nothing to clear where everything is valid


def test_all_valid_masks_share_the_unmasked_statistics(counted):
    conv = PartialConv3d(2, 2, 3, padding=1, return_mask=True)
    x = torch.randn(1, 2, 8, 8, 8)
    m = torch.ones(1, 1, 8, 8, 8)
    torch.testing.assert_close(conv(x, m)[0], conv(x)[0])
    assert counted == [True]
    _, returned = conv(x, m)
    conv(x, returned[:, :1])  # a view of a mask a layer returned: known all valid, nothing computed
    assert counted == [True]
    m[..., 3:5, :, :] = 0  # no longer all valid: its own statistics
    torch.testing.assert_close(conv(x, m)[0], oracle(conv, x, m), rtol=1e-4, atol=1e-5)
    assert counted == [True, False]
