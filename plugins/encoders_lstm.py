"""Built-in plugin: the ``identity``, ``lstm`` and ``bilstm`` sequence encoders.

``lstm`` and ``bilstm`` are ReNet-style sweeps (Visin et al., 2015) *inside* each frame: an LSTM
runs along every row of a feature map (left to right; sequence length ``W``), then another runs
along every column of the result (top to bottom; sequence length ``H``). Every output pixel thus
sees its whole row and, after both sweeps, the whole image. ``bilstm`` uses bidirectional LSTMs,
so a row sweep also reads right to left and a column sweep bottom to top. Frames of a clip are
independent (``T`` is folded into the batch), so these encoders keep no state between calls.

Each sweep is one ``torch.nn.LSTM(batch_first=True)`` call over all rows (or columns) of all
frames at once, so it runs in the fused cuDNN / oneDNN kernels; there is no Python loop over
positions. Rows of a ``(N, C, H, W)`` map become a batch of ``N*H`` sequences of ``W`` steps;
columns a batch of ``N*W`` sequences of ``H`` steps.

``identity`` passes its input through: the baseline every LSTM encoder is measured against.

``init: identity`` (``lstm``, ``bilstm``, and ``convlstm`` in its own plugin) makes an encoder start
as the identity: it returns ``x + proj(sweep(x))`` with ``proj`` a 1x1 convolution whose weights
and bias start at zero (:func:`lstmdet.layers.zero_projection`), so ``out_channels`` equals ``in_channels`` and a
pretrained detector's outputs do not change when the encoder is inserted, until it is trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from lstmdet import hookimpl
from lstmdet.layers import ENCODER_INITS, zero_projection
from lstmdet.options import check_choice, check_int

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

__all__ = [
    "ELEMENTWISE_FLOPS_PER_UNIT",
    "SCANS",
    "BiLSTMSweepEncoder",
    "IdentityEncoder",
    "LSTMSweepEncoder",
    "lstm_step_flops",
    "lstmdet_register_encoders",
]

#: Allowed values of the ``scan`` option.
SCANS: tuple[str, ...] = ("rows", "cols", "both")

#: Nominal FLOPs per hidden unit and step for the gate nonlinearities and the cell update:
#: 3 sigmoids and 2 tanh (1 FLOP each), 3 multiplies and 1 add, rounded up to 10.
ELEMENTWISE_FLOPS_PER_UNIT = 10


def lstm_step_flops(in_features: int, hidden: int) -> int:
    """FLOPs of one LSTM step of one layer in one direction.

    ``8*hidden*(in + hidden)`` for the two gate matrix-vector products (``4*hidden`` gates,
    multiply-adds count 2, which also covers adding the bias), ``4*hidden`` to add the input and
    hidden contributions, and :data:`ELEMENTWISE_FLOPS_PER_UNIT` ``* hidden`` for the gates and
    the cell update.

    Args:
        in_features: Size of the step's input vector.
        hidden: Hidden size of the LSTM.

    Returns:
        The FLOP count.
    """
    return 4 * hidden * (in_features + hidden) * 2 + 4 * hidden + ELEMENTWISE_FLOPS_PER_UNIT * hidden


def _check_input(encoder: str, x: Tensor, in_channels: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[2] != in_channels:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{encoder} expects input of shape (B, T, {in_channels}, H, W), got {got}")


class IdentityEncoder(nn.Module):
    """Returns its input unchanged: the no-LSTM baseline.

    Args:
        in_channels: Channels ``C`` of the input; also ``out_channels``.

    Raises:
        ValueError: ``in_channels`` is not a positive integer.
    """

    stateful = False

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", "identity encoder", minimum=1)
        self.out_channels = in_channels

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, None]:
        """Pass ``x`` through.

        Args:
            x: ``(B, T, C, H, W)`` feature maps.
            state: Ignored (this encoder has no memory).

        Returns:
            ``(x, None)``, ``x`` the very same tensor.
        """
        _check_input("identity", x, self.in_channels)
        return x, None

    def flops(self, shape: tuple[int, int, int, int, int]) -> int:
        """FLOPs for an input of ``shape`` ``(B, T, C, H, W)``: always 0."""
        return 0


class LSTMSweepEncoder(nn.Module):
    """ReNet-style LSTM sweeps along the rows and/or columns of every frame.

    Args:
        in_channels: Channels ``C`` of the input feature maps.
        hidden: Hidden size of every LSTM (per direction).
        layers: Stacked LSTM layers in each sweep (``num_layers`` of ``nn.LSTM``).
        scan: ``"rows"`` (one sweep along rows, left to right), ``"cols"`` (one sweep along
            columns, top to bottom) or ``"both"`` (rows, then columns over the rows' output).
        init: ``"default"`` (PyTorch's LSTM initialisation) or ``"identity"``: return
            ``x + proj(sweeps)`` with a zero-initialised 1x1 ``proj``, the identity until trained.

    Attributes:
        out_channels: ``hidden`` (``2 * hidden`` for the bidirectional subclass); ``in_channels``
            with ``init="identity"``.
        row_lstm: The rows sweep's ``nn.LSTM`` (``None`` when ``scan="cols"``).
        col_lstm: The columns sweep's ``nn.LSTM`` (``None`` when ``scan="rows"``).

    Raises:
        ValueError: An option has a value that is not allowed; the message says which.
    """

    name: ClassVar[str] = "lstm"
    bidirectional: ClassVar[bool] = False
    stateful = False

    def __init__(
        self, in_channels: int, *, hidden: int = 64, layers: int = 1, scan: str = "both", init: str = "default"
    ) -> None:
        super().__init__()
        owner = f"{self.name} encoder"
        self.in_channels = check_int(in_channels, "in_channels", owner, minimum=1)
        self.hidden = check_int(hidden, "hidden", owner, minimum=1)
        self.num_layers = check_int(layers, "layers", owner, minimum=1)
        self.scan = check_choice(scan, "scan", owner, choices=SCANS)
        self.directions = 2 if self.bidirectional else 1
        self.out_channels = hidden * self.directions
        self.row_lstm = self._lstm(in_channels) if scan in ("rows", "both") else None
        col_in = self.out_channels if scan == "both" else in_channels
        self.col_lstm = self._lstm(col_in) if scan in ("cols", "both") else None
        self.init = check_choice(init, "init", owner, choices=ENCODER_INITS)
        self.proj = zero_projection(self.out_channels, in_channels) if init == "identity" else None
        if self.proj is not None:
            self.out_channels = in_channels

    def _lstm(self, input_size: int) -> nn.LSTM:
        return nn.LSTM(
            input_size,
            self.hidden,
            num_layers=self.num_layers,
            batch_first=True,
            bidirectional=self.bidirectional,
        )

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden={self.hidden}, layers={self.num_layers}, scan={self.scan!r}, "
            f"init={self.init!r}"
        )

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, None]:
        """Sweep every frame.

        Args:
            x: ``(B, T, C, H, W)`` feature maps; frames are processed independently.
            state: Ignored (frames are independent, nothing carries over between calls).

        Returns:
            ``(y, None)`` with ``y`` ``(B, T, out_channels, H, W)``, contiguous.

        Raises:
            ValueError: ``x`` is not 5-D or has the wrong number of channels.
        """
        _check_input(self.name, x, self.in_channels)
        b, t, c, height, width = x.shape
        n = b * t
        z = x.reshape(n, c, height, width).permute(0, 2, 3, 1)  # (N, H, W, C)
        if self.row_lstm is not None:
            rows = z.reshape(n * height, width, z.shape[-1])  # N*H sequences of W steps
            z = self.row_lstm(rows)[0].view(n, height, width, -1)
        if self.col_lstm is not None:
            cols = z.transpose(1, 2).reshape(n * width, height, z.shape[-1])  # N*W sequences of H steps
            z = self.col_lstm(cols)[0].view(n, width, height, -1).transpose(1, 2)  # back to (N, H, W, D)
        y = z.permute(0, 3, 1, 2)  # (N, D, H, W)
        if self.proj is not None:
            return x + self.proj(y).reshape(b, t, c, height, width), None
        return y.reshape(b, t, self.out_channels, height, width).contiguous(), None

    def flops(self, shape: tuple[int, int, int, int, int]) -> int:
        """Analytic FLOPs of one forward pass for an input of ``shape``.

        Every sweep runs one LSTM step per pixel of every frame, per layer and direction, each
        costing :func:`lstm_step_flops` (the input size is ``C`` for the first layer of the
        first sweep and ``out_channels`` after that). Layout copies are not counted.

        Args:
            shape: ``(B, T, C, H, W)`` of the input.

        Returns:
            The FLOP count as an integer.
        """
        b, t, _, height, width = shape
        pixels = b * t * height * width
        total = 0
        for lstm in (self.row_lstm, self.col_lstm):
            if lstm is None:
                continue
            per_pixel = 0
            for layer in range(self.num_layers):
                in_features = lstm.input_size if layer == 0 else self.hidden * self.directions
                per_pixel += self.directions * lstm_step_flops(in_features, self.hidden)
            total += pixels * per_pixel
        if self.proj is not None:  # the 1x1 projection (multiply-adds count 2) and the residual add
            total += pixels * (2 * self.hidden * self.directions * self.in_channels + 2 * self.in_channels)
        return total


class BiLSTMSweepEncoder(LSTMSweepEncoder):
    """Bidirectional ReNet sweeps: like :class:`LSTMSweepEncoder` with ``nn.LSTM(bidirectional=True)``.

    Each sweep reads both ways (rows: left to right and right to left; columns: top to bottom and
    bottom to top) and concatenates the two directions, so ``out_channels = 2 * hidden``.

    Args:
        in_channels: Channels ``C`` of the input feature maps.
        hidden: Hidden size of every LSTM per direction.
        layers: Stacked bidirectional LSTM layers in each sweep.
        scan: ``"rows"``, ``"cols"`` or ``"both"`` (see :class:`LSTMSweepEncoder`).
        init: ``"default"`` or ``"identity"`` (see :class:`LSTMSweepEncoder`).

    Raises:
        ValueError: An option has a value that is not allowed; the message says which.
    """

    name: ClassVar[str] = "bilstm"
    bidirectional: ClassVar[bool] = True

    def __init__(
        self, in_channels: int, *, hidden: int = 64, layers: int = 1, scan: str = "both", init: str = "default"
    ) -> None:
        super().__init__(in_channels, hidden=hidden, layers=layers, scan=scan, init=init)


@hookimpl
def lstmdet_register_encoders(registry: Registrar) -> None:
    """Register ``identity``, ``lstm`` and ``bilstm``."""
    registry.add("identity", IdentityEncoder)
    registry.add("lstm", LSTMSweepEncoder)
    registry.add("bilstm", BiLSTMSweepEncoder)
