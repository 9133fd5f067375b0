"""Benchmark lstmdet's LSTM-family encoders against the common ways of writing the same maths.

Two comparisons, on CPU with 2 threads, forward + backward of ``y.sum()``:

* ``convlstm`` (``lstmdet.plugins.encoders_convlstm``) against the widely copied public design of
  a ConvLSTM cell: per step, concatenate ``x_t`` and ``h_{t-1}``, one ``nn.Conv2d`` for all four
  gates, ``torch.split`` into four, separate activations (written out below as
  :class:`ConcatConvLSTM`). Same maths, same parameter count; the baseline gets lstmdet's
  weights, and both outputs are checked to match before timing. Target: >= 1.3x the clips/s.
* ``bilstm`` (rows then columns, both directions, ``nn.LSTM`` over all rows at once) against a
  Python loop over positions with ``nn.LSTMCell`` computing the same maths (:class:`LoopBiLSTM`).
  Target: >= 5x.

Each pair is timed interleaved (ours, baseline, ours, ...) after a warm-up, and the median is
reported. On a shared machine other processes distort timings badly (two OpenMP threads on two
busy cores); by default each timed run waits until the CPU looks idle (``/proc/stat``, Linux only)
and is preceded by one untimed run, since the first run after a pause is slow (``--no-wait-idle``
turns both off).

Usage::

    python benchmarks/encoders.py [--repeats 15] [--warmup 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import wait_until_idle
from torch import Tensor, nn

from lstmdet.plugins.encoders_convlstm import ConvLSTMEncoder
from lstmdet.plugins.encoders_lstm import BiLSTMSweepEncoder

THREADS = 2


# --------------------------------------------------------------------------- baselines


class ConcatConvLSTMCell(nn.Module):
    """The widely copied ConvLSTM cell: ``conv(cat([x, h]))``, split into 4 gates."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h_cur, c_cur = state
        combined = torch.cat([x, h_cur], dim=1)
        cc_i, cc_f, cc_o, cc_g = torch.split(self.conv(combined), self.hidden, dim=1)
        i = torch.sigmoid(cc_i)
        f = torch.sigmoid(cc_f)
        o = torch.sigmoid(cc_o)
        g = torch.tanh(cc_g)
        c_next = f * c_cur + i * g
        h_next = o * torch.tanh(c_next)
        return h_next, c_next


class ConcatConvLSTM(nn.Module):
    """Stacked :class:`ConcatConvLSTMCell` over ``(B, T, C, H, W)``, zero initial state."""

    def __init__(self, in_channels: int, hidden: int, layers: int, kernel_size: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.cells = nn.ModuleList(
            ConcatConvLSTMCell(in_channels if n == 0 else hidden, hidden, kernel_size) for n in range(layers)
        )

    @torch.no_grad()
    def load_from(self, enc: ConvLSTMEncoder) -> None:
        """Copy an lstmdet ConvLSTM's weights (same gate order i, f, o, g)."""
        for cell, layer in zip(self.cells, enc.layers, strict=True):
            cell.conv.weight.copy_(torch.cat([layer.weight_x, layer.weight_h], dim=1))
            cell.conv.bias.copy_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t_len, _, height, width = x.shape
        cur = x
        for cell in self.cells:
            h = torch.zeros(b, self.hidden, height, width, device=x.device, dtype=x.dtype)
            c = torch.zeros_like(h)
            outs = []
            for t in range(t_len):
                h, c = cell(cur[:, t], (h, c))
                outs.append(h)
            cur = torch.stack(outs, dim=1)
        return cur


def _cells_from(lstm: nn.LSTM) -> nn.ModuleList:
    """One LSTMCell per direction with ``lstm``'s layer-0 weights (forward, reverse)."""
    cells = nn.ModuleList()
    for suffix in ("_l0", "_l0_reverse"):
        cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(lstm, name + suffix))
        cells.append(cell)
    return cells


class LoopBiLSTM(nn.Module):
    """Bidirectional rows-then-columns sweep, one ``LSTMCell`` call per position and direction."""

    def __init__(self, enc: BiLSTMSweepEncoder) -> None:
        super().__init__()
        if enc.num_layers != 1 or enc.scan != "both":
            raise ValueError("LoopBiLSTM reproduces bilstm with layers=1, scan='both' only")
        self.hidden = enc.hidden
        self.row_cells = _cells_from(enc.row_lstm)
        self.col_cells = _cells_from(enc.col_lstm)

    def _sweep(self, seqs: Tensor, cells: nn.ModuleList) -> Tensor:
        """``seqs`` (S, L, C) -> (S, L, 2*hidden)."""
        s, length, _ = seqs.shape
        outs = []
        for cell, order in zip(cells, (range(length), range(length - 1, -1, -1)), strict=True):
            h = seqs.new_zeros(s, self.hidden)
            c = seqs.new_zeros(s, self.hidden)
            steps: list[Tensor] = [seqs] * length
            for pos in order:
                h, c = cell(seqs[:, pos], (h, c))
                steps[pos] = h
            outs.append(torch.stack(steps, dim=1))
        return torch.cat(outs, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c, height, width = x.shape
        n = b * t
        z = x.reshape(n, c, height, width).permute(0, 2, 3, 1)  # (N, H, W, C)
        z = self._sweep(z.reshape(n * height, width, c), self.row_cells).view(n, height, width, -1)
        z = z.transpose(1, 2).reshape(n * width, height, -1)
        z = self._sweep(z, self.col_cells).view(n, width, height, -1).permute(0, 3, 2, 1)
        return z.reshape(b, t, -1, height, width)


# --------------------------------------------------------------------------- timing


def _step(model: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """Seconds for one forward + backward."""
    start = time.perf_counter()
    model(x).sum().backward()
    return time.perf_counter() - start


def compare(
    ours: Callable[[Tensor], Tensor],
    base: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    repeats: int,
    warmup: int,
    wait_idle: bool,
) -> dict[str, Any]:
    """Interleaved timing of two models on ``x``; medians and the speed-up of ``ours``."""
    for _ in range(warmup):
        _step(ours, x)
        _step(base, x)
    t_ours, t_base, busy = [], [], 0
    for _ in range(repeats):
        for model, times in ((ours, t_ours), (base, t_base)):
            if wait_idle:
                busy += not wait_until_idle()
                _step(model, x)  # untimed: the first run after a pause is slow (cold caches, threads)
            times.append(_step(model, x))
    med_ours, med_base = statistics.median(t_ours), statistics.median(t_base)
    clips = x.shape[0]
    return {
        "ours_ms": 1e3 * med_ours,
        "baseline_ms": 1e3 * med_base,
        "ours_clips_per_s": clips / med_ours,
        "baseline_clips_per_s": clips / med_base,
        "speedup": med_base / med_ours,
        "speedup_per_pair_quartiles": statistics.quantiles([b / o for o, b in zip(t_ours, t_base, strict=True)], n=4),
        "runs_started_while_busy": busy,
        "repeats": repeats,
    }


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def convolution_gflop(b: int, t: int, c: int, hw: int, hidden: int, k: int, input_grad: bool) -> tuple[float, float]:
    """Convolution work of forward + backward, ``(ours, baseline)`` in GFLOP, from a zero state.

    A convolution's forward, input gradient and weight gradient cost the same. The baseline runs
    one ``(C + hidden) -> 4*hidden`` convolution per step, its weight gradient, and its input
    gradient except at ``t = 0`` when neither ``x`` nor the zero state needs one. lstmdet runs the
    ``C -> 4*hidden`` convolution for all frames (input gradient only when ``x`` needs one) and the
    ``hidden -> 4*hidden`` one for steps ``1..T-1`` (it is skipped on the zero state). The ratio
    bounds the speed-up when both run their convolutions equally efficiently.
    """

    def conv(c_in: int) -> float:
        return 2 * b * hw * hw * 4 * hidden * c_in * k * k / 1e9

    base = t * 2 * conv(c + hidden) + (t - 1 + input_grad) * conv(c + hidden)
    ours = t * (2 + input_grad) * conv(c) + (t - 1) * 3 * conv(hidden)
    return ours, base


def bench_convlstm(args: argparse.Namespace, input_grad: bool) -> dict[str, Any]:
    b, t, c, hw, hidden, k = 4, 8, 32, 32, 64, 3
    torch.manual_seed(0)
    enc = ConvLSTMEncoder(c, hidden=hidden, layers=1, kernel_size=k)
    base = ConcatConvLSTM(c, hidden, 1, k)
    base.load_from(enc)
    x = torch.randn(b, t, c, hw, hw, requires_grad=input_grad)
    with torch.no_grad():
        y_ours, y_base = enc(x)[0], base(x)
    if not torch.allclose(y_ours, y_base, atol=1e-4, rtol=1e-4):
        raise SystemExit(f"convlstm and the baseline disagree: max |diff| {(y_ours - y_base).abs().max():.3g}")
    if _n_params(enc) != _n_params(base):
        raise SystemExit(f"parameter counts differ: {_n_params(enc)} vs {_n_params(base)}")
    work = convolution_gflop(b, t, c, hw, hidden, k, input_grad)
    res = compare(lambda v: enc(v)[0], base, x, repeats=args.repeats, warmup=args.warmup, wait_idle=args.wait_idle)
    res.update(
        name=f"convlstm (input grad {'on' if input_grad else 'off'})",
        baseline="concat-conv ConvLSTMCell loop",
        shape=[b, t, c, hw, hw],
        options={"hidden": hidden, "layers": 1, "kernel_size": k},
        params=_n_params(enc),
        gflops_forward=enc.flops((b, t, c, hw, hw)) / 1e9,
        conv_gflop_fwd_bwd=dict(zip(("ours", "baseline"), work, strict=True)),
        target=1.3,
    )
    return res


def bench_bilstm(args: argparse.Namespace) -> dict[str, Any]:
    b, t, c, hw, hidden = 4, 1, 32, 32, 64
    torch.manual_seed(0)
    enc = BiLSTMSweepEncoder(c, hidden=hidden, layers=1, scan="both")
    base = LoopBiLSTM(enc)
    x = torch.randn(b, t, c, hw, hw, requires_grad=True)
    with torch.no_grad():
        y_ours, y_base = enc(x)[0], base(x)
    if not torch.allclose(y_ours, y_base, atol=1e-5, rtol=1e-4):
        raise SystemExit(f"bilstm and the loop baseline disagree: max |diff| {(y_ours - y_base).abs().max():.3g}")
    res = compare(lambda v: enc(v)[0], base, x, repeats=args.repeats, warmup=args.warmup, wait_idle=args.wait_idle)
    res.update(
        name="bilstm (scan both)",
        baseline="LSTMCell loop over positions",
        shape=[b, t, c, hw, hw],
        options={"hidden": hidden, "layers": 1, "scan": "both"},
        params=_n_params(enc),
        gflops_forward=enc.flops((b, t, c, hw, hw)) / 1e9,
        target=5.0,
    )
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per implementation (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per implementation first")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--no-wait-idle", dest="wait_idle", action="store_false", help="do not wait for an idle CPU before runs"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)

    results = [bench_convlstm(args, input_grad=False), bench_convlstm(args, input_grad=True), bench_bilstm(args)]

    print(
        f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, "
        f"forward + backward, median of {args.repeats}"
    )
    header = f"{'encoder':34s} {'shape (B,T,C,H,W)':20s} {'ours ms':>9s} {'base ms':>9s} {'ours clips/s':>13s} "
    header += f"{'base clips/s':>13s} {'speed-up':>9s} {'target':>7s}"
    print(header)
    print("-" * len(header))
    for r in results:
        shape = "x".join(str(s) for s in r["shape"])
        ok = "ok" if r["speedup"] >= r["target"] else "MISSED"
        print(
            f"{r['name']:34s} {shape:20s} {r['ours_ms']:9.1f} {r['baseline_ms']:9.1f} {r['ours_clips_per_s']:13.2f} "
            f"{r['baseline_clips_per_s']:13.2f} {r['speedup']:8.2f}x {r['target']:5.1f}x {ok}"
        )
    for r in results:
        q = r["speedup_per_pair_quartiles"]
        print(
            f"  {r['name']}: vs {r['baseline']}; per-pair speed-up quartiles {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}; "
            f"{r['params']} params, {r['gflops_forward']:.2f} GFLOP forward; runs started while busy: "
            f"{r['runs_started_while_busy']}"
        )
    for r in results:
        if "conv_gflop_fwd_bwd" in r:
            work = r["conv_gflop_fwd_bwd"]
            bound = work["baseline"] / work["ours"]
            print(
                f"  {r['name']}: convolution work fwd+bwd {work['ours']:.1f} vs {work['baseline']:.1f} GFLOP: "
                f"at equal convolution efficiency the speed-up would be at most ~{bound:.2f}x "
                "(plus what the elementwise work saves)"
            )
    if args.json is not None:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "machine": platform.processor() or platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
