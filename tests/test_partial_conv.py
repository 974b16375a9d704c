"""PartialConv1d/2d/3d against the float64 oracle, plus numerics, state and export properties."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference_baseline import ReferencePartialConv3d
from pconv3d import PartialConv1d, PartialConv2d, PartialConv3d
from pconv3d.masks.apply import apply_mask
from tests.oracle import partial_conv_oracle

PCONV = {1: PartialConv1d, 2: PartialConv2d, 3: PartialConv3d}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def holes(shape, frac=0.4, seed=0, full_block=True) -> torch.Tensor:
    """Binary float mask with random holes and (optionally) a fully masked block in the first batch item."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(shape, generator=g) > frac).float()
    if full_block:
        sl = tuple(slice(0, max(1, s // 2)) for s in shape[2:])
        m[(0, slice(None)) + sl] = 0
    return m


@st.composite
def geometries(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kind = draw(st.sampled_from(["int", "same", "valid"]))
    if kind == "same":
        stride = (1,) * nd
        padding = "same"
    elif kind == "valid":
        padding = "valid"
    else:
        padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    lo = [d * (kk - 1) + 1 for d, kk in zip(dil, k)]
    size = tuple(draw(st.integers(max(lo[i], 3), 7 if nd == 3 else 9)) for i in range(nd))
    if mode != "zeros" and padding not in ("same", "valid"):
        padding = tuple(min(p, s - 1) for p, s in zip(padding, size))  # reflect needs pad < size
    multi = draw(st.booleans())
    mask_kind = draw(st.sampled_from(["none", "binary", "soft", "bool", "channels", "batch1"]))
    if mask_kind == "channels" and not multi:
        mask_kind = "binary"
    return dict(nd=nd, groups=groups, c_in=c_in, c_out=c_out, k=k, stride=stride, dil=dil, padding=padding,
                mode=mode, size=size, multi=multi, mask_kind=mask_kind, bias=draw(st.booleans()),
                n=draw(st.integers(1, 2)), seed=draw(st.integers(0, 10_000)))


def make_mask(g, x):
    n, c = x.shape[:2]
    sp = tuple(x.shape[2:])
    kind = g["mask_kind"]
    if kind == "none":
        return None
    if kind == "channels":
        return holes((n, c, *sp), seed=g["seed"])
    if kind == "batch1":
        return holes((1, 1, *sp), seed=g["seed"])
    m = holes((n, 1, *sp), seed=g["seed"])
    if kind == "soft":
        return m * torch.rand(m.shape, generator=torch.Generator().manual_seed(g["seed"] + 1))
    if kind == "bool":
        return m.bool()
    return m


@settings(max_examples=200, deadline=None)
@given(geometries())
def test_matches_oracle(g):
    torch.manual_seed(g["seed"])
    conv = PCONV[g["nd"]](g["c_in"], g["c_out"], g["k"], stride=g["stride"], padding=g["padding"], dilation=g["dil"],
                          groups=g["groups"], bias=g["bias"], padding_mode=g["mode"], multi_channel=g["multi"],
                          return_mask=True).double()
    x = torch.randn(g["n"], g["c_in"], *g["size"], dtype=torch.float64)
    mask = make_mask(g, x)
    out, mask_out = conv(x, mask)
    ref, ref_mask = partial_conv_oracle(x, conv.weight, conv.bias, mask, stride=g["stride"], padding=g["padding"],
                                        dilation=g["dil"], groups=g["groups"], padding_mode=g["mode"],
                                        multi_channel=g["multi"])
    assert out.shape == CONV[g["nd"]](g["c_in"], g["c_out"], g["k"], stride=g["stride"], padding=g["padding"],
                                      dilation=g["dil"], groups=g["groups"], padding_mode=g["mode"])(x.float()).shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mask_out, ref_mask.to(mask_out.dtype))
    # float32 agrees too (statistics in float32)
    out32 = conv.float()(x.float(), mask)[0]
    torch.testing.assert_close(out32.double(), ref, rtol=1e-4, atol=1e-4)


def test_no_mask_matches_conv_inside_and_reference_at_border():
    torch.manual_seed(0)
    conv = PartialConv3d(3, 5, 3, padding=1)
    plain = nn.Conv3d(3, 5, 3, padding=1)
    ref = ReferencePartialConv3d(3, 5, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    ref.load_state_dict(conv.state_dict(), strict=False)
    x = torch.randn(2, 3, 9, 10, 11)
    out, expected = conv(x), plain(x)
    torch.testing.assert_close(out[..., 1:-1, 1:-1, 1:-1], expected[..., 1:-1, 1:-1, 1:-1])
    assert not torch.allclose(out[..., 0, :, :], expected[..., 0, :, :])  # borders are renormalized
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-6)
    # masked call, multi-channel reference semantics (no groups) agree as well
    ref_mc = ReferencePartialConv3d(3, 5, 3, padding=1, multi_channel=True)
    ref_mc.load_state_dict(conv.state_dict(), strict=False)
    conv_mc = PartialConv3d(3, 5, 3, padding=1, multi_channel=True)
    conv_mc.load_state_dict(conv.state_dict())
    m = holes((2, 3, 9, 10, 11))
    torch.testing.assert_close(conv_mc(x, m), ref_mc(x, m), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [dict(mask=(2, 1), multi=False), dict(mask=(1, 1), multi=False), dict(mask=(2, 4), multi=True, groups=2),
     dict(mask=(2, 4), multi=True, groups=1, soft=True), dict(mask=(2, 1), multi=False, ones=True),
     dict(mask=None, multi=False)],
    ids=["single", "broadcast", "groups", "soft", "all-valid", "none"],
)
def test_gradcheck(kw):
    # the cases with every window valid take the one-pass rescaling, the others the two-pass one
    torch.manual_seed(1)
    conv = PartialConv2d(4, 4, 3, padding=1, groups=kw.get("groups", 1), multi_channel=kw["multi"]).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    m = None if kw["mask"] is None else holes((*kw["mask"], 5, 6)).double()
    if kw.get("soft"):
        m = m * torch.rand_like(m)
    if kw.get("ones"):
        m = torch.ones_like(m)
    w, b = conv.weight, conv.bias

    def f(x, w, b):
        return torch.func.functional_call(conv, {"weight": w, "bias": b}, (x, m))

    assert torch.autograd.gradcheck(f, (x, w, b))


GARBAGE = [lambda t: torch.randn_like(t) * 1e3, lambda t: torch.full_like(t, 1e6), lambda t: torch.full_like(t, float("inf")),
           lambda t: torch.full_like(t, float("nan")), lambda t: torch.full_like(t, -float("inf"))]


@pytest.mark.parametrize("fill", range(len(GARBAGE)))
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool, torch.uint8])
def test_holes_never_leak(fill, mask_dtype):
    torch.manual_seed(2)
    conv = PartialConv3d(2, 3, 3, padding=1, return_mask=True)
    x = torch.randn(2, 2, 8, 8, 8, requires_grad=True)
    m = holes((2, 1, 8, 8, 8)).to(mask_dtype)
    bad = torch.where(m.bool(), x.detach(), GARBAGE[fill](x.detach())).requires_grad_()
    out_a, mask_a = conv(x, m)
    out_b, mask_b = conv(bad, m)
    assert torch.equal(out_a, out_b) and torch.equal(mask_a, mask_b)
    g = torch.randn_like(out_a)
    ga = torch.autograd.grad(out_a, (x, conv.weight, conv.bias), g)
    gb = torch.autograd.grad(out_b, (bad, conv.weight, conv.bias), g)
    for a, b in zip(ga, gb):
        assert torch.equal(a, b)
    assert torch.count_nonzero(ga[0][~m.bool().expand_as(x)]) == 0  # no gradient into holes


def test_fully_masked_windows_are_zero_in_all_precisions():
    conv = PartialConv3d(2, 4, 3, padding=1, return_mask=True)
    with torch.no_grad():
        conv.bias.fill_(5.0)
    x = torch.randn(1, 2, 8, 8, 8) * 100
    m = torch.ones(1, 1, 8, 8, 8)
    m[..., :4] = 0  # columns 0..2 of the output see no valid voxel
    x[..., :4] = float("nan")
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out, mask_out = conv(x, m)
        assert torch.isfinite(out).all()
        assert (out[..., :3] == 0).all() and (mask_out[..., :3] == 0).all()
        assert (out[..., 3:] != 0).any()
    for dtype in (torch.float16, torch.bfloat16):
        c = copy.deepcopy(conv).to(dtype)
        out, mask_out = c(x.to(dtype), m.to(dtype))
        assert out.dtype == dtype and mask_out.dtype == dtype
        assert torch.isfinite(out).all() and (out[..., :3] == 0).all()
        ref = conv(x, m)[0]
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.5)


def test_multichannel_fp16_large_window_has_no_overflow():
    # winsize = 64 channels * 27 taps = 1728: ratio stays finite in fp16 when one element is valid
    conv = PartialConv3d(64, 2, 3, padding=1, multi_channel=True).half()
    x = torch.randn(1, 64, 5, 5, 5).half()
    m = torch.zeros(1, 64, 5, 5, 5).half()
    m[0, 0, 2, 2, 2] = 1
    out = conv(x, m)
    assert torch.isfinite(out).all()


def test_state_dict_interchange_and_module_holds_no_tensors():
    torch.manual_seed(3)
    for nd in (1, 2, 3):
        for bias in (True, False):
            p = PCONV[nd](2, 4, 3, padding=1, bias=bias, multi_channel=True)
            c = CONV[nd](2, 4, 3, padding=1, bias=bias)
            assert list(p.state_dict()) == list(c.state_dict())
            c.load_state_dict(p.state_dict(), strict=True)
            p.load_state_dict(c.state_dict(), strict=True)
            assert isinstance(p, CONV[nd])
            x = torch.randn(1, 2, *([6] * nd))
            p(x, holes((1, 2, *([6] * nd))))
            p(x)
            allowed = set(p._parameters) | set(p._buffers)
            stray = {k for k, v in vars(p).items() if isinstance(v, torch.Tensor) and k not in allowed}
            assert not stray and not p._buffers


def test_copy_pickle_dtype_moves_and_bias_updates():
    conv = PartialConv3d(2, 3, 3, padding=1, return_mask=True)
    x = torch.randn(1, 2, 6, 6, 6)
    m = holes((1, 1, 6, 6, 6))
    out = conv(x, m)[0]
    for clone in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        torch.testing.assert_close(clone(x, m)[0], out)
    buf = io.BytesIO()
    torch.save(conv.state_dict(), buf)
    buf.seek(0)
    fresh = PartialConv3d(2, 3, 3, padding=1, return_mask=True)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh(x, m)[0], out)
    d = copy.deepcopy(conv).double()
    torch.testing.assert_close(d(x.double(), m)[0].float(), out)
    assert d(x.double(), m)[0].dtype == torch.float64
    with torch.no_grad():
        conv.bias.add_(1.0)
    shifted = conv(x, m)[0]
    valid = conv(x, m)[1].bool().expand_as(out)
    torch.testing.assert_close(shifted[valid], out[valid] + 1.0)
    assert (shifted[~valid] == 0).all()


def test_masks_any_dtype_and_expanded_views_agree():
    conv = PartialConv3d(2, 3, 3, padding=1)
    x = torch.randn(3, 2, 6, 7, 5)
    m = holes((1, 1, 6, 7, 5))
    ref = conv(x, m.expand(3, 1, 6, 7, 5).contiguous())
    for mm in (m, m.bool(), m.to(torch.uint8), m.expand(3, 1, 6, 7, 5), m.double()):
        torch.testing.assert_close(conv(x, mm), ref)


def test_unbatched_input_like_conv():
    conv = PartialConv2d(2, 3, 3, padding=1, return_mask=True)
    x = torch.randn(2, 6, 6)
    m = holes((1, 1, 6, 6))[0]
    out, mask = conv(x, m)
    out_b, mask_b = conv(x[None], m[None])
    assert out.shape == (3, 6, 6) and mask.shape == (1, 6, 6)
    torch.testing.assert_close(out, out_b[0])


@pytest.mark.parametrize(
    "mask_shape,multi",
    [((2, 1, 6, 6), False), ((2, 1, 6, 6, 6, 1), False), ((2, 1, 6, 6, 5), False), ((2, 2, 6, 6, 6), False),
     ((2, 3, 6, 6, 6), True), ((3, 1, 6, 6, 6), False)],
)
def test_bad_mask_shape_errors_name_both_shapes(mask_shape, multi):
    conv = PartialConv3d(2, 3, 3, padding=1, multi_channel=multi)
    with pytest.raises(ValueError) as e:
        conv(torch.randn(2, 2, 6, 6, 6), torch.ones(mask_shape))
    msg = str(e.value)
    assert str(list(mask_shape)) in msg and "[2, 2, 6, 6, 6]" in msg


def test_unknown_padding_mode_is_refused_by_conv():
    with pytest.raises(ValueError):
        PartialConv3d(2, 3, 3, padding=1, padding_mode="mirror")


def test_non_zero_padding_modes_equal_conv_without_mask():
    for mode in ("reflect", "replicate", "circular"):
        p = PartialConv3d(2, 3, 3, padding=1, padding_mode=mode)
        c = nn.Conv3d(2, 3, 3, padding=1, padding_mode=mode)
        c.load_state_dict(p.state_dict())
        x = torch.randn(1, 2, 6, 6, 6)
        torch.testing.assert_close(p(x), c(x))


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.float32])
def test_masks_of_every_dtype_are_left_as_they_were(dtype):
    conv = PartialConv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 6, 6, 6)
    binary = holes((1, 1, 6, 6, 6))
    # integer masks: any nonzero value is valid
    m = binary.to(dtype) if dtype in (torch.bool, torch.float32) else binary.to(dtype) * 3
    kept = m.clone()
    out = conv(x, m)
    assert torch.equal(m, kept)
    torch.testing.assert_close(out, conv(x, binary))
    assert torch.equal(apply_mask(x, m), apply_mask(x, binary))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_geometry_set_after_construction_acts_as_on_the_torch_layer(nd):
    """A layer reads its geometry when it runs, as nn.ConvNd does: after setting padding, stride, dilation or a
    weight with another kernel size, a full mask gives nn.ConvNd's output wherever a window lies inside the
    image, and no mask, a full and a partial mask give the oracle's everywhere (scripted too)."""
    torch.manual_seed(0)
    size = [11] * nd
    x = torch.randn(2, 2, *size)
    full, partial = torch.ones(2, 1, *size), holes((2, 1, *size))
    conv = PCONV[nd](2, 3, 3, padding=1, return_mask=True)
    ref = CONV[nd](2, 3, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    changes = [("padding", (2,) * nd), ("stride", (2,) * nd), ("dilation", (2,) * nd), ("padding", (0,) * nd),
               ("weight", torch.randn(3, 2, *([2] * nd))), ("stride", (1,) * nd), ("dilation", (1,) * nd),
               ("padding", "same")]  # kernel 2: 'same' pads one voxel, after
    conv_nd = getattr(torch.nn.functional, f"conv{nd}d")
    for name, value in changes:
        conv(x, partial)  # the geometry before the change has run
        for layer in (conv, ref):
            setattr(layer, name, nn.Parameter(value.clone()) if name == "weight" else value)
        with torch.no_grad():
            out, mask_out = conv(x, full)
            want = ref(x)
            # windows that lie inside the image: their count of image voxels is the kernel's size
            inside = conv_nd(torch.ones(1, 1, *size), torch.ones(1, 1, *conv.weight.shape[2:]), stride=conv.stride,
                             padding=conv.padding, dilation=conv.dilation)[0, 0] == conv.weight[0, 0].numel()
            assert out.shape == want.shape and mask_out.shape[2:] == want.shape[2:] and inside.any(), name
            torch.testing.assert_close(out[:, :, inside], want[:, :, inside], rtol=1e-5, atol=1e-5)
            for m in (None, full, partial):
                expected = partial_conv_oracle(x, conv.weight, conv.bias, m, stride=conv.stride, padding=conv.padding,
                                               dilation=conv.dilation, groups=1)[0]
                torch.testing.assert_close(conv(x, m)[0].double(), expected, rtol=1e-4, atol=1e-5)
    scripted = torch.jit.script(conv)
    torch.testing.assert_close(scripted(x, partial)[0], conv(x, partial)[0])


def test_padding_of_other_modes_is_what_torch_pads_by():
    """nn.ConvNd pads a non-zero padding mode by what it stored at construction, whatever ``padding`` says
    later: so does the partial layer, and with a full mask (or none) it stays equal to nn.ConvNd."""
    torch.manual_seed(0)
    conv = PartialConv3d(2, 3, 3, padding=1, padding_mode="replicate")
    ref = nn.Conv3d(2, 3, 3, padding=1, padding_mode="replicate")
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, 2, 8, 8, 8)
    conv.padding = ref.padding = (2, 2, 2)
    want = ref(x)
    for m in (None, torch.ones(1, 1, 8, 8, 8)):
        torch.testing.assert_close(conv(x, m), want, rtol=1e-5, atol=1e-5)
    m = holes((1, 1, 8, 8, 8))
    expected = partial_conv_oracle(x, conv.weight, conv.bias, m, stride=conv.stride, padding=(1, 1, 1),
                                   dilation=conv.dilation, groups=1, padding_mode="replicate")[0]
    torch.testing.assert_close(conv(x, m).double(), expected, rtol=1e-4, atol=1e-5)
