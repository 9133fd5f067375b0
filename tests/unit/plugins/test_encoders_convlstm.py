"""Tests of the ``convlstm`` encoder (plugin ``encoders_convlstm``).

The encoder's fused kernel (batched input convolution, in-place gates, hand-written backward
through time) is checked against the ConvLSTM equations written out with ``F.conv2d`` and
autograd, frame by frame.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lstmdet.plugins.encoders_convlstm import (
    ConvLSTMEncoder,
    _ConvLSTMLayerFunction,
    lstmdet_register_encoders,
)


def _plain_convlstm(
    enc: ConvLSTMEncoder, x: Tensor, state: list[tuple[Tensor, Tensor]] | None = None
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The ConvLSTM equations, one frame and one convolution per operand at a time (autograd)."""
    b, t_len, _, height, width = x.shape
    y = x
    new_state = []
    for n, layer in enumerate(enc.layers):
        hid, pad = layer.hidden, layer.kernel_size // 2
        if state is None:
            h = c = torch.zeros(b, hid, height, width, dtype=x.dtype)
        else:
            h, c = state[n]
        outs = []
        for t in range(t_len):
            z = F.conv2d(y[:, t], layer.weight_x, layer.bias, padding=pad) + F.conv2d(h, layer.weight_h, padding=pad)
            zi, zf, zo, zg = z.split(hid, dim=1)
            c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
            h = torch.sigmoid(zo) * torch.tanh(c)
            outs.append(h)
        y = torch.stack(outs, dim=1)
        new_state.append((h, c))
    return y, new_state


def _random_state(b: int, hid: int, h: int, w: int, layers: int, dtype: torch.dtype = torch.float32) -> list:
    return [(torch.randn(b, hid, h, w, dtype=dtype), torch.randn(b, hid, h, w, dtype=dtype)) for _ in range(layers)]


def test_plugin_registers_convlstm() -> None:
    registered: dict[str, object] = {}

    class Recorder:
        def add(self, name: str, factory: object) -> None:
            registered[name] = factory

    lstmdet_register_encoders(Recorder())
    assert registered == {"convlstm": ConvLSTMEncoder}


def test_shapes_and_attributes() -> None:
    enc = ConvLSTMEncoder(3, hidden=5, layers=2, kernel_size=5)
    y, state = enc(torch.randn(2, 4, 3, 6, 7))
    assert enc.out_channels == 5 and enc.stateful is True
    assert y.shape == (2, 4, 5, 6, 7) and y.is_contiguous()
    assert len(state) == 2 and all(h.shape == c.shape == (2, 5, 6, 7) for h, c in state)
    torch.testing.assert_close(state[1][0], y[:, -1])


def test_residual_adds_the_input_to_the_plain_convlstm_and_streams() -> None:
    torch.manual_seed(4)
    enc = ConvLSTMEncoder(4, hidden=4, layers=2, residual=True)
    x = torch.randn(2, 5, 4, 6, 7)
    y, state = enc(x)
    plain, plain_state = _plain_convlstm(enc, x)
    torch.testing.assert_close(y, x + plain, atol=1e-5, rtol=1e-5)
    # the state is h, not x + h
    torch.testing.assert_close(state[-1][0], plain_state[-1][0], atol=1e-5, rtol=1e-5)
    first, mid = enc(x[:, :2])
    rest, _ = enc(x[:, 2:], mid)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), y, atol=1e-5, rtol=1e-5)


def test_one_step_matches_hand_computation() -> None:
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(3, hidden=4, kernel_size=3)
    layer = enc.layers[0]
    x = torch.randn(2, 1, 3, 5, 6)
    h0, c0 = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        y, [(h1, c1)] = enc(x, [(h0, c0)])
        # z = W_x * x + b + W_h * h, gates in the order i, f, o, g; no concatenation.
        z = F.conv2d(x[:, 0], layer.weight_x, layer.bias, padding=1) + F.conv2d(h0, layer.weight_h, padding=1)
        i, f, o, g = z[:, 0:4], z[:, 4:8], z[:, 8:12], z[:, 12:16]
        c_ref = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
        h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
        # From the zero state the hidden convolution vanishes and c = i * g.
        y0, [(_, c_zero)] = enc(x)
        z0 = F.conv2d(x[:, 0], layer.weight_x, layer.bias, padding=1)
        c0_ref = torch.sigmoid(z0[:, 0:4]) * torch.tanh(z0[:, 12:16])
    torch.testing.assert_close(c1, c_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h1, h_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y[:, 0], h_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c_zero, c0_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y0[:, 0], torch.sigmoid(z0[:, 8:12]) * torch.tanh(c0_ref), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
def test_whole_clip_matches_frame_by_frame_convolutions(with_state: bool) -> None:
    # The batched (B*T) input convolution must equal one convolution per frame.
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(3, hidden=4, layers=2)
    x = torch.randn(2, 5, 3, 5, 6)
    state = _random_state(2, 4, 5, 6, 2) if with_state else None
    with torch.no_grad():
        y, new_state = enc(x, state)
        y_ref, ref_state = _plain_convlstm(enc, x, state)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for (h, c), (h_ref, c_ref) in zip(new_state, ref_state, strict=True):
        torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pieces", [[1, 1, 1, 1, 1, 1], [2, 3, 1]])
def test_streaming_with_state_equals_whole_clip(pieces: list[int]) -> None:
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(3, hidden=4, layers=2)
    x = torch.randn(2, sum(pieces), 3, 5, 6)
    with torch.no_grad():
        whole, whole_state = enc(x)
        outs, state, start = [], None, 0
        for n in pieces:
            y, state = enc(x[:, start : start + n], state)
            outs.append(y)
            start += n
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, atol=1e-5, rtol=1e-5)
    for (h, c), (hw, cw) in zip(state, whole_state, strict=True):
        torch.testing.assert_close(h, hw, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, cw, atol=1e-5, rtol=1e-5)


def test_gradients_flow_and_match_autograd_of_the_equations() -> None:
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(3, hidden=4, layers=2)
    x = torch.randn(2, 4, 3, 5, 6, requires_grad=True)
    state = [(h.requires_grad_(), c.requires_grad_()) for h, c in _random_state(2, 4, 5, 6, 2)]
    y, new_state = enc(x, state)
    w = torch.randn_like(y)
    loss = (y * w).sum() + new_state[0][1].square().sum() + new_state[1][0].sum()
    leaves = [x, *enc.parameters(), *(s for pair in state for s in pair)]
    grads = torch.autograd.grad(loss, leaves)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    y_ref, ref_state = _plain_convlstm(enc, x, state)
    loss_ref = (y_ref * w).sum() + ref_state[0][1].square().sum() + ref_state[1][0].sum()
    for g, g_ref in zip(grads, torch.autograd.grad(loss_ref, leaves), strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
    # And through .backward() into .grad of the parameters.
    enc.zero_grad()
    enc(x)[0].sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


@pytest.mark.parametrize(("channels_last", "per_step"), [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("with_state", [False, True])
def test_layer_function_gradcheck(channels_last: bool, per_step: bool, with_state: bool) -> None:
    # (True, True) is the CPU path, (False, False) the CUDA one; all are checked here on CPU.
    torch.manual_seed(0)
    d = torch.float64
    x = torch.randn(2, 3, 2, 3, 4, dtype=d, requires_grad=True)
    wx = (0.5 * torch.randn(8, 2, 3, 3, dtype=d)).requires_grad_()
    b = torch.randn(8, dtype=d, requires_grad=True)
    wh = (0.5 * torch.randn(8, 2, 3, 3, dtype=d)).requires_grad_()
    h0 = torch.randn(2, 2, 3, 4, dtype=d, requires_grad=True) if with_state else None
    c0 = torch.randn(2, 2, 3, 4, dtype=d, requires_grad=True) if with_state else None

    def fn(*args: Tensor) -> tuple[Tensor, Tensor]:
        return _ConvLSTMLayerFunction.apply(*args, channels_last, per_step)

    assert torch.autograd.gradcheck(fn, (x, wx, b, wh, h0, c0), fast_mode=True)


def test_no_grad_inference_and_float64() -> None:
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(2, hidden=3).double()
    x = torch.randn(1, 3, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y, _ = enc(x)
        y_ref, _ = _plain_convlstm(enc, x)
    assert y.dtype == torch.float64 and not y.requires_grad
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)


def test_flops_by_hand() -> None:
    enc = ConvLSTMEncoder(3, hidden=2, kernel_size=3)
    # Per pixel and step: both convolutions 2 * 4*2 * 9 * (3 + 2) = 720, adding them 4*2 = 8,
    # gates and cell 10*2 = 20 -> 748; pixels of all steps: B*T*H*W = 1*2*4*4 = 32.
    assert enc.flops((1, 2, 3, 4, 4)) == 32 * 748
    two = ConvLSTMEncoder(3, hidden=2, layers=2, kernel_size=3)
    # The second layer reads the first one's 2 channels: 2 * 8 * 9 * (2 + 2) + 8 + 20 = 604.
    assert two.flops((1, 2, 3, 4, 4)) == 32 * (748 + 604)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"hidden": 0}, "hidden"),
        ({"hidden": "64"}, "hidden"),
        ({"layers": 0}, "layers"),
        ({"layers": 1.0}, "layers"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": -3}, "kernel_size"),
        ({"residual": "yes"}, "residual"),
        ({"residual": True, "hidden": 5}, "residual"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(options: dict[str, object], option: str) -> None:
    with pytest.raises(ValueError, match=rf"^convlstm encoder: {option} "):
        ConvLSTMEncoder(3, **options)


def test_even_kernel_message_says_odd() -> None:
    with pytest.raises(ValueError, match="must be odd"):
        ConvLSTMEncoder(3, kernel_size=2)


def test_bad_input_and_state_raise_value_error() -> None:
    enc = ConvLSTMEncoder(3, hidden=4, layers=2)
    with pytest.raises(ValueError, match="in_channels"):
        ConvLSTMEncoder(0)
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        enc(torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match="T >= 1"):
        enc(torch.randn(2, 0, 3, 5, 6))
    x = torch.randn(2, 1, 3, 5, 6)
    with pytest.raises(ValueError, match="list of 2"):
        enc(x, _random_state(2, 4, 5, 6, 1))
    with pytest.raises(ValueError, match=r"layer 1 must be a pair \(h, c\) of tensors of shape \(2, 4, 5, 6\)"):
        enc(x, [*_random_state(2, 4, 5, 6, 1), *_random_state(2, 4, 5, 7, 1)])


@pytest.mark.gpu
def test_cuda_matches_cpu_including_gradients() -> None:
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(3, hidden=4, layers=2)
    x = torch.randn(2, 3, 3, 5, 6, requires_grad=True)
    y, _ = enc(x)
    y.sum().backward()
    grads = [p.grad.clone() for p in enc.parameters()]
    enc = enc.cuda()
    enc.zero_grad()
    xc = x.detach().cuda().requires_grad_()
    yc, state = enc(xc)
    yc.sum().backward()
    assert yc.device.type == "cuda" and state[0][0].device.type == "cuda"
    torch.testing.assert_close(yc.cpu(), y, atol=1e-4, rtol=1e-4)
    for p, g in zip(enc.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad.cpu(), g, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("residual", [False, True])
def test_export_step_from_zeros_equals_forward_frame_by_frame(residual):
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(6, hidden=6, layers=2, kernel_size=3, residual=residual).eval()
    x = torch.randn(2, 4, 6, 5, 7)
    with torch.no_grad():
        want, want_state = enc(x)
        state = [torch.zeros(2, 6, 5, 7) for _ in range(4)]
        steps = []
        for t in range(4):
            y, state = enc.export_step(x[:, t], state)
            steps.append(y)
    torch.testing.assert_close(torch.stack(steps, dim=1), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, [s for pair in want_state for s in pair], atol=1e-5, rtol=1e-5)
