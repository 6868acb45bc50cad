"""LSTM and GRU cells written from their gate equations.

Reference only: they exist to be read and to be checked against PyTorch's
fused `nn.LSTM`/`nn.GRU` (tests/test_cells.py). The models use the fused
modules, which are much faster and export to ONNX's native LSTM/GRU operators.

Weights follow PyTorch's layout so a trained `nn.LSTM`/`nn.GRU` can be loaded
into them: the rows of `weight_ih`/`weight_hh` are the gates stacked in the
order PyTorch uses (LSTM: i, f, g, o; GRU: r, z, n).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class LSTMCell(nn.Module):
    """One LSTM step.

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)     input gate
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)     forget gate
        g = tanh   (W_ig x + b_ig + W_hg h + b_hg)     candidate cell
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)     output gate
        c' = f * c + i * g
        h' = o * tanh(c')
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.zeros(4 * hidden_size))
        k = hidden_size ** -0.5
        for w in (self.weight_ih, self.weight_hh):
            nn.init.uniform_(w, -k, k)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        gates = x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        i, f, g, o = gates.chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c


class GRUCell(nn.Module):
    """One GRU step, exactly as PyTorch defines it.

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)         reset gate
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)         update gate
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      candidate
        h' = (1 - z) * n + z * h

    Two details differ from the way many textbooks write the GRU:
    - the reset gate multiplies the hidden part *after* its matmul,
      r * (W_hn h + b_hn), not W_hn (r * h) (ONNX calls this linear_before_reset=1);
    - z weighs the *old* state: h' = (1 - z) * n + z * h. Textbooks often write
      h' = z * n + (1 - z) * h; the two are the same cell with z replaced by 1 - z.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.zeros(3 * hidden_size))
        k = hidden_size ** -0.5
        for w in (self.weight_ih, self.weight_hh):
            nn.init.uniform_(w, -k, k)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        xr, xz, xn = (x @ self.weight_ih.T + self.bias_ih).chunk(3, dim=-1)
        hr, hz, hn = (h @ self.weight_hh.T + self.bias_hh).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class StackedRNN(nn.Module):
    """Layers of reference cells run over a batch-first sequence, like nn.LSTM/nn.GRU
    (unidirectional, no dropout). State shapes match PyTorch: (layers, batch, hidden)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        cls = {"lstm": LSTMCell, "gru": GRUCell}[cell]
        self.cell = cell
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(cls(input_size if i == 0 else hidden_size, hidden_size)
                                    for i in range(num_layers))

    @classmethod
    def from_torch(cls, rnn: nn.LSTM | nn.GRU) -> "StackedRNN":
        """Copy the weights of a fused, batch-first, unidirectional nn.LSTM/nn.GRU."""
        if rnn.bidirectional or not rnn.batch_first:
            raise ValueError("reference cells model batch-first unidirectional RNNs")
        cell = "lstm" if isinstance(rnn, nn.LSTM) else "gru"
        ref = cls(cell, rnn.input_size, rnn.hidden_size, rnn.num_layers)
        with torch.no_grad():
            for k, layer in enumerate(ref.layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(layer, name).copy_(getattr(rnn, f"{name}_l{k}"))
        return ref

    def forward(self, x: Tensor, state=None):
        batch = x.shape[0]
        zeros = x.new_zeros(len(self.layers), batch, self.hidden_size)
        if self.cell == "lstm":
            h, c = state if state is not None else (zeros, zeros.clone())
            hs, cs = list(h.unbind(0)), list(c.unbind(0))
        else:
            hs = list((state if state is not None else zeros).unbind(0))
        outputs = []
        for t in range(x.shape[1]):
            inp = x[:, t]
            for k, layer in enumerate(self.layers):
                if self.cell == "lstm":
                    hs[k], cs[k] = layer(inp, (hs[k], cs[k]))
                else:
                    hs[k] = layer(inp, hs[k])
                inp = hs[k]
            outputs.append(inp)
        out = torch.stack(outputs, dim=1)
        if self.cell == "lstm":
            return out, (torch.stack(hs), torch.stack(cs))
        return out, torch.stack(hs)
