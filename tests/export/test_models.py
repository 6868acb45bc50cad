import pytest
import torch

from export.models import Classifier, LanguageModel


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_init_state_shapes(cell):
    lm = LanguageModel(20, cell, num_layers=3, hidden_size=8)
    s = lm.init_state(5)
    for t in (s if cell == "lstm" else (s,)):
        assert t.shape == (3, 5, 8) and not t.any()
    clf = Classifier(20, 3, cell, hidden_size=8)
    s = clf.init_state(4)
    for t in (s if cell == "lstm" else (s,)):
        assert t.shape == (4, 4, 8)


def test_lstm_forget_gate_bias_is_one():
    lm = LanguageModel(10, "lstm", hidden_size=6)
    b = lm.rnn.bias_ih_l0 + lm.rnn.bias_hh_l0
    assert torch.all(b[6:12] == 1) and torch.all(b[:6] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_classifier_padding_invariance(cell):
    torch.manual_seed(0)
    clf = Classifier(30, 4, cell, hidden_size=12, embed_dim=8).eval()
    seqs = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15]]
    x = torch.zeros(3, 7, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
    batched = clf(x, torch.tensor([len(s) for s in seqs]))
    for i, s in enumerate(seqs):
        alone = clf(torch.tensor([s]), torch.tensor([len(s)]))
        assert torch.allclose(batched[i], alone[0], atol=1e-6)
    # and the padding really is ignored: garbage in the padded positions changes nothing
    x2 = x.clone()
    x2[1, 2:] = 29
    assert torch.allclose(clf(x2, torch.tensor([7, 2, 4])), batched, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generation_carries_state(cell):
    """N tokens in one call equal the same tokens generated over two calls with the state passed on."""
    torch.manual_seed(0)
    lm = LanguageModel(25, cell, num_layers=2, hidden_size=16, embed_dim=8).eval()
    prompt = [3, 4, 5]
    full = lm.generate(prompt, 20, temperature=0)
    first, state = lm.generate(prompt, 8, temperature=0, return_state=True)
    rest = lm.generate([first[-1]], 12, temperature=0, state=state)
    assert first + rest == full
    # sampled generation is reproducible by seed and respects top-k=1 (= greedy)
    assert lm.generate(prompt, 15, temperature=1.0, seed=7) == lm.generate(prompt, 15, temperature=1.0, seed=7)
    assert lm.generate(prompt, 15, temperature=1.0, top_k=1, seed=3) == lm.generate(prompt, 15, temperature=0)


def test_generate_never_reruns_the_prefix(monkeypatch):
    lm = LanguageModel(10, "gru", hidden_size=8).eval()
    lengths = []
    orig = lm.rnn.forward
    monkeypatch.setattr(lm.rnn, "forward", lambda x, h=None: (lengths.append(x.shape[1]), orig(x, h))[1])
    lm.generate([1, 2, 3, 4], 5, temperature=0)
    assert lengths == [4, 1, 1, 1, 1]
