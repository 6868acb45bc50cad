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
def test_classifier_equal_length_batch_skips_packing_with_the_same_result(cell):
    """A batch of texts that all fill the time axis runs unpacked (faster); logits and gradients are those of
    the packed path, which a longer text in the batch forces."""
    torch.manual_seed(1)
    clf = Classifier(30, 4, cell, hidden_size=12, embed_dim=8, dropout=0.0)
    same = torch.randint(1, 30, (3, 5))
    longer = torch.cat([torch.cat([same, torch.zeros(3, 2, dtype=torch.long)], 1), torch.randint(1, 30, (1, 7))])
    fast = clf(same, torch.tensor([5, 5, 5]))
    packed = clf(longer, torch.tensor([5, 5, 5, 7]))[:3]
    assert torch.allclose(fast, packed, atol=1e-6)
    g_fast = torch.autograd.grad(fast.sum(), clf.rnn.weight_hh_l0)[0]
    g_packed = torch.autograd.grad(clf(longer, torch.tensor([5, 5, 5, 7]))[:3].sum(), clf.rnn.weight_hh_l0)[0]
    assert torch.allclose(g_fast, g_packed, atol=1e-5)


def test_length_batches_put_equal_lengths_together_and_every_text_once():
    import random

    from export.train import length_batches
    lengths = [3] * 10 + [4] * 7 + [5] * 2 + [9]
    batches = length_batches(lengths, 4, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths))) and all(1 <= len(b) <= 4 for b in batches)
    uniform = [b for b in batches if len({lengths[i] for i in b}) == 1 and len(b) == 4]
    assert len(uniform) == 2 + 1  # two full batches of length 3, one of length 4; the rest mixed, length-sorted
    assert length_batches(lengths, 4) == length_batches(lengths, 4)  # no rng: a fixed order


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
