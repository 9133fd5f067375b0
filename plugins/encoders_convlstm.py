"""Built-in plugin: the ``convlstm`` sequence encoder (a convolutional LSTM over time).

A ConvLSTM (Shi et al., 2015, without peephole connections) replaces the matrix products of an
LSTM by 2-D convolutions, so every pixel of a feature map carries its own LSTM cell whose state
sees a ``kernel_size`` neighbourhood. For one layer, with ``*`` a same-padded convolution and
``x_t`` the input frame ``t``::

    z_t = W_x * x_t + b + W_h * h_{t-1}          (4 * hidden channels: gates i, f, o, g, in that order)
    i, f, o = sigmoid(z_t[i, f, o]);  g = tanh(z_t[g])
    c_t = f c_{t-1} + i g;            h_t = o tanh(c_t)

How it is computed (the maths is exactly the one above):

* All four gates come from one fused convolution of ``4 * hidden`` output channels per operand.
* ``W_x * x_t + b`` is computed for all ``T`` frames of a layer in one batched convolution
  (``(B*T, C, H, W)``) before the time loop; only ``W_h * h_{t-1}`` (no bias) runs per step. It is
  skipped at the first step when the sequence starts from the zero state (a convolution of zeros).
* The time loop of a layer is one :class:`torch.autograd.Function` with a hand-written
  back-propagation through time: the forward pass writes the activated gates in place over the
  pre-activations (no ``cat``, no ``split`` copies, no per-gate autograd nodes); the backward pass
  computes the gradient of the four gate pre-activations of a step into one buffer and runs one
  convolution backward for ``W_h`` and ``h_{t-1}`` per step. It supports first derivatives only
  (no double backward).
* The input convolution's backward (``x``, ``W_x``, bias) runs once over all ``B*T`` frames on
  CUDA; on CPU it runs per step on the step's gate gradients while they are in cache, which avoids
  a second ``(B*T, 4*hidden, H, W)`` buffer (measured faster on CPU: large fresh buffers cost page
  faults there).
* On CPU the feature maps are kept ``channels_last`` inside the layer (oneDNN's preferred layout);
  the output is returned in PyTorch's default contiguous layout. Buffers are time-major so that a
  step's slice is contiguous.

Layers are stacked: layer ``l > 0`` takes layer ``l - 1``'s output sequence; the encoder returns
the last layer's ``h_t`` for every step and the state ``[(h_T, c_T) per layer]``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lstmdet import hookimpl
from lstmdet.errors import OptionError
from lstmdet.layers import ENCODER_INITS, zero_projection
from lstmdet.options import check_bool, check_choice, check_int

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

__all__ = ["ELEMENTWISE_FLOPS_PER_UNIT", "ConvLSTMEncoder", "ConvLSTMLayer", "lstmdet_register_encoders"]

#: Nominal FLOPs per hidden unit and step for the gate nonlinearities and the cell update:
#: 3 sigmoids and 2 tanh (1 FLOP each), 3 multiplies and 1 add, rounded up to 10.
ELEMENTWISE_FLOPS_PER_UNIT = 10

#: Per layer: ``(h, c)``, each ``(B, hidden, H, W)``.
ConvLSTMState = list[tuple[Tensor, Tensor]]


def _conv_backward(
    grad: Tensor, inp: Tensor, weight: Tensor, bias: bool, pad: int, mask: list[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``F.conv2d(inp, weight, bias, padding=pad)`` w.r.t. input, weight, bias."""
    return torch.ops.aten.convolution_backward(
        grad,
        inp,
        weight,
        [weight.shape[0]] if bias else None,
        [1, 1],
        [pad, pad],
        [1, 1],
        False,
        [0, 0],
        1,
        mask,
    )


class _ConvLSTMLayerFunction(torch.autograd.Function):
    """One ConvLSTM layer over a whole sequence, with a hand-written backward through time.

    Inputs: ``x`` (B, T, C, H, W), ``weight_x`` (4h, C, k, k), ``bias`` (4h,), ``weight_h``
    (4h, h, k, k), ``h0`` and ``c0`` (B, h, H, W) or ``None`` (zero state), ``channels_last``
    (bool: layout of the internal buffers) and ``per_step_input_backward`` (bool: run the input
    convolution's backward per step instead of once for all frames). Outputs: ``hs``
    (B, T, h, H, W) and ``c_T`` (B, h, H, W).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight_x: Tensor,
        bias: Tensor,
        weight_h: Tensor,
        h0: Tensor | None,
        c0: Tensor | None,
        channels_last: bool,
        per_step_input_backward: bool,
    ) -> tuple[Tensor, Tensor]:
        b, t_len, c_in, height, width = x.shape
        hid = weight_h.shape[1]
        pad = weight_h.shape[-1] // 2
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # Buffers are time-major, (T*B, ...): step t is the contiguous slice [t*B:(t+1)*B].
        xf = x.transpose(0, 1).reshape(t_len * b, c_in, height, width).contiguous(memory_format=fmt)
        w_h = weight_h.contiguous(memory_format=fmt)
        # Input-to-gates for every frame at once; becomes the activated gates in place below.
        gates = F.conv2d(xf, weight_x, bias, padding=pad).contiguous(memory_format=fmt)
        acts = gates.view(t_len, b, 4 * hid, height, width)
        opts = {"dtype": x.dtype, "device": x.device, "memory_format": fmt}
        hs = torch.empty((t_len * b, hid, height, width), **opts)
        cs = torch.empty((t_len * b, hid, height, width), **opts)
        hs5 = hs.view(t_len, b, hid, height, width)
        cs5 = cs.view(t_len, b, hid, height, width)
        tanh_c = torch.empty((b, hid, height, width), **opts)
        h_prev = None if h0 is None else h0.contiguous(memory_format=fmt)
        c_prev = None if c0 is None else c0.contiguous(memory_format=fmt)
        for t in range(t_len):
            z = acts[t]
            if h_prev is not None:
                z.add_(F.conv2d(h_prev, w_h, padding=pad))
            z[:, : 3 * hid].sigmoid_()
            z[:, 3 * hid :].tanh_()
            i, f, o, g = z.split(hid, dim=1)
            c = cs5[t]
            torch.mul(i, g, out=c)
            if c_prev is not None:
                c.addcmul_(f, c_prev)
            torch.tanh(c, out=tanh_c)
            torch.mul(o, tanh_c, out=hs5[t])
            h_prev, c_prev = hs5[t], c
        ctx.save_for_backward(xf, weight_x, w_h, gates, cs, hs, h0, c0)
        ctx.shape = (b, t_len, c_in, height, width)
        ctx.channels_last = channels_last
        ctx.per_step_input_backward = per_step_input_backward
        return hs5.transpose(0, 1), cs5[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_hs: Tensor, grad_c_last: Tensor) -> tuple[Tensor | None, ...]:
        xf, weight_x, w_h, gates, cs, hs, h0, c0 = ctx.saved_tensors
        b, t_len, c_in, height, width = ctx.shape
        hid = w_h.shape[1]
        pad = w_h.shape[-1] // 2
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        need_x, need_wx, need_b, need_wh, need_h0, need_c0 = ctx.needs_input_grad[:6]
        acts = gates.view(t_len, b, 4 * hid, height, width)
        cs5 = cs.view(t_len, b, hid, height, width)
        hs5 = hs.view(t_len, b, hid, height, width)
        grad_hs = grad_hs.transpose(0, 1)
        # Gradients of the gate pre-activations: on CPU one (B, 4h, H, W) buffer reused by every
        # step, with the input convolution's backward run per step while it is in cache; elsewhere
        # one (T*B, 4h, H, W) buffer and a single batched input-convolution backward at the end.
        per_step = ctx.per_step_input_backward
        if per_step:
            dz_step = torch.empty(
                (b, 4 * hid, height, width), dtype=gates.dtype, device=gates.device, memory_format=fmt
            )
            xf5 = xf.view(t_len, b, c_in, height, width)
            d_wx = torch.zeros_like(weight_x) if need_wx else None
            d_b = torch.zeros(4 * hid, dtype=gates.dtype, device=gates.device) if need_b else None
            dx_steps: list[Tensor] = []
        else:
            d_gates = torch.empty_like(gates)
            dz_all = d_gates.view(t_len, b, 4 * hid, height, width)
        d_wh = torch.zeros_like(w_h) if need_wh else None
        dc = grad_c_last.contiguous(memory_format=fmt).clone()
        one = torch.ones_like(dc)
        dh_rec: Tensor | None = None
        h0_f = None if h0 is None else h0.contiguous(memory_format=fmt)
        for t in reversed(range(t_len)):
            i, f, o, g = acts[t].split(hid, dim=1)
            dz = dz_step if per_step else dz_all[t]
            di, df, do, dg = dz.split(hid, dim=1)
            dh = grad_hs[t] if dh_rec is None else dh_rec.add_(grad_hs[t])
            c_prev = cs5[t - 1] if t > 0 else c0
            h_prev = hs5[t - 1] if t > 0 else h0_f
            tanh_c = torch.tanh(cs5[t])
            torch.mul(dh, tanh_c, out=do)  # dL/do
            # dL/dc_t = dc (from c_{t+1} and the output c_T) + dh * o * (1 - tanh(c)^2)
            dc.addcmul_(torch.addcmul(one, tanh_c, tanh_c, value=-1).mul_(o), dh)
            torch.mul(dc, g, out=di)
            if c_prev is None:
                df.zero_()
            else:
                torch.mul(dc, c_prev, out=df)
            torch.mul(dc, i, out=dg)
            s = acts[t, :, : 3 * hid]
            dz[:, : 3 * hid].mul_(torch.addcmul(s, s, s, value=-1))  # sigmoid' = s - s^2
            dg.mul_(torch.addcmul(one, g, g, value=-1))  # tanh' = 1 - g^2
            dc.mul_(f)  # now dL/dc_{t-1}
            if per_step and (need_x or need_wx or need_b):
                gx, gw, gb = _conv_backward(dz, xf5[t], weight_x, True, pad, [need_x, need_wx, need_b])
                if need_x:
                    dx_steps.append(gx)
                if need_wx:
                    d_wx.add_(gw)
                if need_b:
                    d_b.add_(gb)
            if h_prev is None:
                dh_rec = None
            else:
                need_in = t > 0 or need_h0
                dh_rec, d_w, _ = _conv_backward(dz, h_prev, w_h, False, pad, [need_in, need_wh, False])
                if d_w is not None:
                    d_wh.add_(d_w)
        if per_step:
            dx = torch.stack(dx_steps[::-1], dim=1) if need_x else None
        else:
            dx, d_wx, d_b = _conv_backward(d_gates, xf, weight_x, True, pad, [need_x, need_wx, need_b])
            if dx is not None:
                dx = dx.view(t_len, b, c_in, height, width).transpose(0, 1)
        dh0 = dh_rec if need_h0 else None
        dc0 = dc if need_c0 else None
        return dx, d_wx, d_b, d_wh, dh0, dc0, None, None


class ConvLSTMLayer(nn.Module):
    """One ConvLSTM layer: parameters and the call of the fused sequence kernel.

    Args:
        in_channels: Channels ``C`` of the input frames.
        hidden: Channels of ``h`` and ``c``.
        kernel_size: Odd side of both square kernels (same padding).

    Attributes:
        weight_x: ``(4*hidden, in_channels, k, k)`` input-to-gates kernel, gates ``i, f, o, g``.
        bias: ``(4*hidden,)`` gate bias.
        weight_h: ``(4*hidden, hidden, k, k)`` hidden-to-gates kernel (no bias).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden = hidden
        self.kernel_size = kernel_size
        k = kernel_size
        self.weight_x = nn.Parameter(torch.empty(4 * hidden, in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(4 * hidden))
        self.weight_h = nn.Parameter(torch.empty(4 * hidden, hidden, k, k))
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, hidden={self.hidden}, kernel_size={self.kernel_size}"

    def reset_parameters(self) -> None:
        """Initialise like one ``nn.Conv2d(in_channels + hidden, 4*hidden, k)`` (PyTorch's default)."""
        bound = 1.0 / math.sqrt((self.in_channels + self.hidden) * self.kernel_size**2)
        for p in (self.weight_x, self.bias, self.weight_h):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, h0: Tensor | None = None, c0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the layer over a sequence.

        Args:
            x: ``(B, T, C, H, W)`` input frames.
            h0: ``(B, hidden, H, W)`` hidden state before the first frame, or ``None`` for zeros.
            c0: ``(B, hidden, H, W)`` cell state before the first frame, or ``None`` for zeros.

        Returns:
            ``(hs, c_T)``: ``hs`` ``(B, T, hidden, H, W)`` (``h_t`` for every step, so ``h_T`` is
            ``hs[:, -1]``) and ``c_T`` ``(B, hidden, H, W)``.
        """
        if (h0 is None) != (c0 is None):
            raise ValueError("convlstm state: give both h and c for a layer, or neither")
        dtype = x.dtype
        params = [p.to(dtype) for p in (self.weight_x, self.bias, self.weight_h)]
        on_cpu = x.device.type == "cpu"
        with torch.autocast(x.device.type, enabled=False):
            hs, c_last = _ConvLSTMLayerFunction.apply(x, *params, h0, c0, on_cpu, on_cpu)
        return hs, c_last


class ConvLSTMEncoder(nn.Module):
    """Stacked convolutional LSTM over the time axis of feature-map sequences.

    Args:
        in_channels: Channels ``C`` of the input feature maps.
        hidden: Channels of every layer's hidden and cell state; also ``out_channels``.
        layers: Number of stacked ConvLSTM layers.
        kernel_size: Odd, positive side of the square kernels (same padding keeps ``H, W``).
        residual: Return ``x_t + h_t`` instead of ``h_t``: the frame's own features pass
            through unchanged and the memory adds to them (needs ``hidden == in_channels``).
        init: ``"default"``, or ``"identity"``: return ``x_t + proj(h_t)`` with a zero-initialised
            1x1 ``proj`` (:func:`lstmdet.layers.zero_projection`), so the encoder starts as the
            identity (any ``hidden``; ``out_channels`` is then ``in_channels``; not with ``residual``).

    Raises:
        ValueError: An option is not a positive integer, ``kernel_size`` is even, or
            ``residual`` with ``hidden != in_channels``, or with ``init="identity"``.
    """

    stateful = True

    def __init__(
        self, in_channels: int, *, hidden: int = 64, layers: int = 1, kernel_size: int = 3, residual: bool = False,
        init: str = "default",
    ) -> None:  # fmt: skip
        super().__init__()
        owner = "convlstm encoder"
        self.in_channels = check_int(in_channels, "in_channels", owner, minimum=1)
        self.hidden = check_int(hidden, "hidden", owner, minimum=1)
        self.num_layers = check_int(layers, "layers", owner, minimum=1)
        self.kernel_size = check_int(kernel_size, "kernel_size", owner, minimum=1)
        if kernel_size % 2 == 0:
            raise OptionError(
                owner,
                "kernel_size",
                f"must be odd (e.g. {kernel_size - 1} or {kernel_size + 1}) so that the output keeps the input's "
                f"H and W, got {kernel_size!r}",
            )
        check_bool(residual, "residual", owner)
        if residual and hidden != in_channels:
            raise OptionError(
                owner,
                "residual",
                f"adds the input to the output, so hidden ({hidden}) must equal the input's {in_channels} "
                f"channels; set hidden: {in_channels}, or residual: false",
            )
        self.init = check_choice(init, "init", owner, choices=ENCODER_INITS)
        if residual and init == "identity":
            raise OptionError(owner, "init", "identity already adds the input (x + proj(h)); leave out residual: true")
        self.residual = residual
        self.out_channels = in_channels if init == "identity" else hidden
        self.proj = zero_projection(hidden, in_channels) if init == "identity" else None
        self.layers = nn.ModuleList(
            ConvLSTMLayer(in_channels if n == 0 else hidden, hidden, kernel_size) for n in range(layers)
        )

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden={self.hidden}, layers={self.num_layers}, "
            f"kernel_size={self.kernel_size}, residual={self.residual}, init={self.init!r}"
        )

    def forward(self, x: Tensor, state: ConvLSTMState | None = None) -> tuple[Tensor, ConvLSTMState]:
        """Encode a clip, optionally continuing from the state a previous call returned.

        Args:
            x: ``(B, T, C, H, W)`` feature maps, ``T >= 1`` frames.
            state: ``None`` (start from zeros) or the state returned by the previous call: one
                ``(h, c)`` pair per layer, each ``(B, hidden, H, W)``. It is not detached; call
                ``.detach()`` on it for truncated back-propagation through time.

        Returns:
            ``(y, state)``: ``y`` ``(B, T, hidden, H, W)`` is the last layer's ``h_t`` for every
            step (plus ``x_t`` with ``residual``); ``state`` is ``[(h_T, c_T)]`` per layer, to
            pass to the next call.

        Raises:
            ValueError: ``x`` or ``state`` has the wrong shape.
        """
        self._check_input(x, state)
        y = x
        new_state: ConvLSTMState = []
        for n, layer in enumerate(self.layers):
            h0, c0 = (None, None) if state is None else state[n]
            y, c_last = layer(y, h0, c0)
            new_state.append((y[:, -1].clone(), c_last))  # a copy: a view would pin all T steps
        if self.proj is not None:
            b, t = y.shape[:2]
            return x + self.proj(y.flatten(0, 1)).unflatten(0, (b, t)), new_state
        return (x + y if self.residual else y.contiguous()), new_state

    def export_step(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One frame in plain tensor operations: the form ``lstmdet export`` traces into a graph.

        Computes what :meth:`forward` computes for ``T = 1`` (zero tensors as state give what
        ``state=None`` gives), without the fused kernel, so that tracers see every operation.

        Args:
            x: ``(B, C, H, W)`` feature map of one frame.
            state: ``[h_0, c_0, h_1, c_1, ...]``, one ``(B, hidden, H, W)`` pair per layer.

        Returns:
            ``(y, new_state)``: ``y`` ``(B, hidden, H, W)`` as :meth:`forward` gives for the frame, and
            the state after it in the same flat layout.
        """
        y = x
        new_state: list[Tensor] = []
        for n, layer in enumerate(self.layers):
            h, c = state[2 * n], state[2 * n + 1]
            pad = layer.kernel_size // 2
            hid = layer.hidden
            z = F.conv2d(y, layer.weight_x, layer.bias, padding=pad) + F.conv2d(h, layer.weight_h, padding=pad)
            gates = torch.sigmoid(z[:, : 3 * hid])
            i, f, o = gates[:, :hid], gates[:, hid : 2 * hid], gates[:, 2 * hid :]
            g = torch.tanh(z[:, 3 * hid :])
            c = f * c + i * g
            y = o * torch.tanh(c)
            new_state += [y, c]
        if self.proj is not None:
            return x + self.proj(y), new_state
        return (x + y if self.residual else y), new_state

    def _check_input(self, x: Tensor, state: ConvLSTMState | None) -> None:
        if x.dim() != 5 or x.shape[2] != self.in_channels or x.shape[1] < 1:
            raise ValueError(
                f"convlstm expects input of shape (B, T, {self.in_channels}, H, W) with T >= 1, got {tuple(x.shape)}"
            )
        if state is None:
            return
        want = (x.shape[0], self.hidden, x.shape[3], x.shape[4])
        if not isinstance(state, (list, tuple)) or len(state) != self.num_layers:
            raise ValueError(
                f"convlstm state must be a list of {self.num_layers} (h, c) pairs (one per layer, as "
                f"returned by the previous call) or None, got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, (list, tuple)) else "")
            )
        for n, pair in enumerate(state):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or any(not isinstance(s, Tensor) or tuple(s.shape) != want for s in pair)
            ):
                raise ValueError(
                    f"convlstm state for layer {n} must be a pair (h, c) of tensors of shape {want} "
                    "(batch, hidden, H, W of this input); pass None to start a new sequence"
                )

    def flops(self, shape: tuple[int, int, int, int, int]) -> int:
        """Analytic FLOPs of one forward pass for an input of ``shape``.

        Multiply-adds count 2 (which also covers the bias add); convolutions are counted at every
        output pixel with the full ``k x k`` window (zero padding included); the hidden-state
        convolution is counted at every step (the implementation skips it at the first step of a
        sequence that starts from zeros). Per layer, step and pixel:
        ``8*h*k^2*(C_in + h)`` (both convolutions) ``+ 4*h`` (adding the two gate
        pre-activations) ``+ ELEMENTWISE_FLOPS_PER_UNIT*h`` (gates and cell update).

        Args:
            shape: ``(B, T, C, H, W)`` of the input.

        Returns:
            The FLOP count as an integer.
        """
        b, t_len, _, height, width = shape
        h, k2 = self.hidden, self.kernel_size**2
        total = 0
        for layer in self.layers:
            per_pixel = 8 * h * k2 * (layer.in_channels + h) + 4 * h + ELEMENTWISE_FLOPS_PER_UNIT * h
            total += b * t_len * height * width * per_pixel
        if self.proj is not None:  # the 1x1 projection (multiply-adds count 2) and the residual add
            total += b * t_len * height * width * (2 * h * self.in_channels + 2 * self.in_channels)
        return total


@hookimpl
def lstmdet_register_encoders(registry: Registrar) -> None:
    """Register ``convlstm``."""
    registry.add("convlstm", ConvLSTMEncoder)
