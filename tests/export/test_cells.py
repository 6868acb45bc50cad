"""The reference cells follow the gate equations and match PyTorch's fused modules."""
import pytest
import torch
from torch import nn

from export.cells import GRUCell, LSTMCell, StackedRNN


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_stacked_cells_match_torch(cls, layers):
    torch.manual_seed(layers)
    rnn = cls(7, 11, layers, batch_first=True)
    ref = StackedRNN.from_torch(rnn)
    x = torch.randn(3, 9, 7)
    h = torch.randn(layers, 3, 11)
    state = (h, torch.randn(layers, 3, 11)) if cls is nn.LSTM else h
    want_y, want_state = rnn(x, state)
    got_y, got_state = ref(x, state)
    assert torch.allclose(got_y, want_y, atol=1e-5)
    for g, w in zip(got_state if isinstance(got_state, tuple) else [got_state],
                    want_state if isinstance(want_state, tuple) else [want_state]):
        assert torch.allclose(g, w, atol=1e-5)


def test_zero_initial_state_matches_torch_default():
    torch.manual_seed(0)
    rnn = nn.GRU(5, 6, 2, batch_first=True)
    x = torch.randn(2, 4, 5)
    assert torch.allclose(StackedRNN.from_torch(rnn)(x)[0], rnn(x)[0], atol=1e-5)


def test_gru_uses_reset_after_matmul_and_keeps_old_state_with_z():
    """With the update gate saturated at 1 the GRU keeps its old state (h' = (1-z)n + z h)."""
    cell = GRUCell(3, 4)
    with torch.no_grad():
        cell.bias_ih[4:8] = 50.0  # z -> 1
    h = torch.randn(2, 4)
    assert torch.allclose(cell(torch.randn(2, 3), h), h, atol=1e-5)


def test_lstm_cell_gate_equations_by_hand():
    torch.manual_seed(1)
    cell = LSTMCell(2, 3)
    x, h, c = torch.randn(1, 2), torch.randn(1, 3), torch.randn(1, 3)
    W = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    i, f, g, o = torch.sigmoid(W[:, :3]), torch.sigmoid(W[:, 3:6]), torch.tanh(W[:, 6:9]), torch.sigmoid(W[:, 9:])
    c2 = f * c + i * g
    h2, c2_got = cell(x, (h, c))
    assert torch.allclose(c2_got, c2) and torch.allclose(h2, o * torch.tanh(c2))
