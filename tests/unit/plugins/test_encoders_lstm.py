"""Tests of the ``identity``, ``lstm`` and ``bilstm`` encoders (plugin ``encoders_lstm``).

The sweeps are checked against an independent computation: the ``nn.LSTM`` weights are copied
into ``nn.LSTMCell`` objects that are stepped position by position in Python, over rows and
columns gathered by explicit indexing.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lstmdet.plugins.encoders_lstm import (
    BiLSTMSweepEncoder,
    IdentityEncoder,
    LSTMSweepEncoder,
    lstmdet_register_encoders,
)


class _Recorder:
    def __init__(self) -> None:
        self.factories: dict[str, object] = {}

    def add(self, name: str, factory: object) -> None:
        self.factories[name] = factory


def _cell(lstm: nn.LSTM, layer: int, reverse: bool) -> nn.LSTMCell:
    """An LSTMCell carrying one layer/direction's weights of ``lstm``."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih = getattr(lstm, "weight_ih" + suffix)
    cell = nn.LSTMCell(w_ih.shape[1], lstm.hidden_size)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(lstm, name + suffix))
    return cell


def _lstm_step_by_step(lstm: nn.LSTM, seqs: list[Tensor]) -> list[Tensor]:
    """Run ``lstm`` on each ``(L, in)`` sequence one position at a time; returns ``(L, D*hidden)`` each."""
    results = []
    for seq in seqs:
        inp = seq
        for layer in range(lstm.num_layers):
            outs = []
            for reverse in [False, True][: 1 + lstm.bidirectional]:
                cell = _cell(lstm, layer, reverse)
                h = torch.zeros(1, lstm.hidden_size)
                c = torch.zeros(1, lstm.hidden_size)
                out: list[Tensor] = [torch.empty(0)] * len(inp)
                order = range(len(inp) - 1, -1, -1) if reverse else range(len(inp))
                for pos in order:
                    h, c = cell(inp[pos : pos + 1], (h, c))
                    out[pos] = h[0]
                outs.append(torch.stack(out))
            inp = torch.cat(outs, dim=-1)
        results.append(inp)
    return results


def _reference(enc: LSTMSweepEncoder, x: Tensor) -> Tensor:
    """Independent computation of the sweeps of ``enc`` for ``x`` (B, T, C, H, W)."""
    b, t, _, height, width = x.shape
    frames = x.reshape(b * t, *x.shape[2:])
    out = []
    for frame in frames:  # (C, H, W)
        z = frame
        if enc.row_lstm is not None:
            rows = [z[:, r, :].t() for r in range(height)]  # (W, C): left to right
            swept = _lstm_step_by_step(enc.row_lstm, rows)
            z = torch.stack([s.t() for s in swept], dim=1)  # (D, H, W)
        if enc.col_lstm is not None:
            cols = [z[:, :, q].t() for q in range(width)]  # (H, C): top to bottom
            swept = _lstm_step_by_step(enc.col_lstm, cols)
            z = torch.stack([s.t() for s in swept], dim=2)  # (D, H, W)
        out.append(z)
    return torch.stack(out).reshape(b, t, -1, height, width)


def test_plugin_registers_the_three_encoders() -> None:
    rec = _Recorder()
    lstmdet_register_encoders(rec)
    assert rec.factories == {"identity": IdentityEncoder, "lstm": LSTMSweepEncoder, "bilstm": BiLSTMSweepEncoder}


def test_identity_returns_input_unchanged() -> None:
    enc = IdentityEncoder(7)
    x = torch.randn(2, 3, 7, 4, 5)
    y, state = enc(x)
    assert y is x and state is None
    assert enc.out_channels == 7 and enc.stateful is False
    assert enc.flops((2, 3, 7, 4, 5)) == 0


@pytest.mark.parametrize("cls", [LSTMSweepEncoder, BiLSTMSweepEncoder])
@pytest.mark.parametrize("scan", ["rows", "cols", "both"])
@pytest.mark.parametrize("layers", [1, 2])
def test_sweep_matches_step_by_step_cells(cls: type[LSTMSweepEncoder], scan: str, layers: int) -> None:
    torch.manual_seed(0)
    enc = cls(3, hidden=4, layers=layers, scan=scan)
    x = torch.randn(2, 2, 3, 3, 4)  # H != W so that rows and columns cannot be confused
    with torch.no_grad():
        y, state = enc(x)
        expected = _reference(enc, x)
    dirs = 2 if cls is BiLSTMSweepEncoder else 1
    assert enc.out_channels == 4 * dirs
    assert state is None and enc.stateful is False
    assert y.shape == (2, 2, 4 * dirs, 3, 4) and y.is_contiguous()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_rows_and_cols_sweeps_differ_in_direction() -> None:
    # A lone non-zero pixel at the top-left: a left-to-right rows sweep spreads it along row 0
    # only, a top-to-bottom cols sweep along column 0 only.
    torch.manual_seed(0)
    x = torch.zeros(1, 1, 2, 3, 3)
    x[0, 0, :, 0, 0] = 5.0
    for scan, changed in (("rows", (slice(0, 1), slice(None))), ("cols", (slice(None), slice(0, 1)))):
        enc = LSTMSweepEncoder(2, hidden=3, scan=scan)
        with torch.no_grad():
            y = enc(x)[0][0, 0]
            base = enc(torch.zeros_like(x))[0][0, 0]
        moved = (y - base).abs().sum(0) > 1e-7  # (H, W) pixels that saw the impulse
        mask = torch.zeros(3, 3, dtype=torch.bool)
        mask[changed] = True
        assert torch.equal(moved, mask), scan


def test_gradients_reach_input_and_weights() -> None:
    torch.manual_seed(0)
    enc = BiLSTMSweepEncoder(3, hidden=4, layers=2)
    x = torch.randn(1, 2, 3, 3, 3, requires_grad=True)
    enc(x)[0].square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())


def test_flops_lstm_rows_by_hand() -> None:
    enc = LSTMSweepEncoder(3, hidden=2, scan="rows")
    # One step, one layer, one direction: gates 4*2*(3+2)*2 = 80, sum of the two parts 4*2 = 8,
    # elementwise 10*2 = 20 -> 108 FLOPs; one step per pixel: 1*1*2*2 = 4 pixels.
    assert enc.flops((1, 1, 3, 2, 2)) == 4 * 108


def test_flops_bilstm_both_two_layers_by_hand() -> None:
    enc = BiLSTMSweepEncoder(3, hidden=2, layers=2, scan="both")
    step_in3 = 4 * 2 * (3 + 2) * 2 + 4 * 2 + 10 * 2  # 108: input of 3 channels
    step_in4 = 4 * 2 * (4 + 2) * 2 + 4 * 2 + 10 * 2  # 124: input of 2*hidden = 4 channels
    rows = 2 * (step_in3 + step_in4)  # 2 directions, layers 0 and 1
    cols = 2 * (step_in4 + step_in4)  # the cols sweep reads the rows sweep's 4 channels
    pixels = 2 * 3 * 2 * 2  # B*T*H*W
    assert rows + cols == 960
    assert enc.flops((2, 3, 3, 2, 2)) == pixels * 960


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"hidden": 0}, "hidden"),
        ({"hidden": 2.5}, "hidden"),
        ({"layers": 0}, "layers"),
        ({"layers": True}, "layers"),
        ({"scan": "diagonal"}, "scan"),
        ({"scan": None}, "scan"),
    ],
)
@pytest.mark.parametrize("cls", [LSTMSweepEncoder, BiLSTMSweepEncoder])
def test_bad_options_raise_value_error_naming_the_option(
    cls: type[LSTMSweepEncoder], options: dict[str, object], option: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{cls.name} encoder: {option} must be .*, got {options[option]!r}") as info:
        cls(3, **options)
    if option == "scan":
        assert "rows, cols, both" in str(info.value)


@pytest.mark.parametrize("factory", [IdentityEncoder, LSTMSweepEncoder, BiLSTMSweepEncoder])
def test_bad_in_channels_and_input_shape(factory: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match="in_channels"):
        factory(0)
    enc = factory(3)
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        enc(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"got \(1, 1, 5, 3, 3\)"):
        enc(torch.randn(1, 1, 5, 3, 3))


@pytest.mark.gpu
def test_bilstm_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    enc = BiLSTMSweepEncoder(3, hidden=4, layers=2)
    x = torch.randn(2, 2, 3, 5, 6)
    with torch.no_grad():
        expected = enc(x)[0]
        got = enc.cuda()(x.cuda())[0]
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
