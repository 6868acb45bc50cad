"""The sampler: one vectorised call turns a batch of logits into tokens, each row with its parameters."""
import numpy as np

from service.sampler import SamplingParams, sample


def test_sampler_greedy_top_k_1_and_tiny_top_p_agree():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    greedy = logits.argmax(1)
    u = rng.random(6)
    ones = np.ones(6, np.float32)
    assert (sample(logits, np.zeros(6, np.float32), np.zeros(6, np.int64), ones, u) == greedy).all()
    assert (sample(logits, ones, np.ones(6, np.int64), ones, u) == greedy).all()
    assert (sample(logits, ones, np.zeros(6, np.int64), np.full(6, 1e-6, np.float32), u) == greedy).all()


def test_sampler_follows_the_distribution_and_respects_top_k():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    rng = np.random.default_rng(1)
    n = 20000
    draws = np.array([sample(logits, np.ones(1, np.float32), np.zeros(1, np.int64), np.ones(1, np.float32),
                             rng.random(1))[0] for _ in range(n)])
    freq = np.bincount(draws, minlength=4) / n
    assert np.abs(freq - [0.5, 0.3, 0.15, 0.05]).max() < 0.015
    top2 = np.array([sample(logits, np.ones(1, np.float32), np.full(1, 2), np.ones(1, np.float32),
                            rng.random(1))[0] for _ in range(4000)])
    assert set(top2) == {0, 1} and abs((top2 == 0).mean() - 0.5 / 0.8) < 0.03
    # top_p = 0.7 keeps tokens 0 and 1 (0.5 + 0.3 reaches 0.7)
    nucleus = np.array([sample(logits, np.ones(1, np.float32), np.zeros(1, np.int64), np.full(1, 0.7, np.float32),
                               rng.random(1))[0] for _ in range(4000)])
    assert set(nucleus) == {0, 1}


def test_sampler_mixed_rows_each_keep_their_parameters():
    logits = np.log(np.tile(np.array([[0.4, 0.3, 0.2, 0.1]], np.float32), (3, 1)))
    temp = np.array([0.0, 1.0, 1.0], np.float32)
    topk = np.array([0, 1, 0])
    topp = np.ones(3, np.float32)
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(500):
        out = sample(logits, temp, topk, topp, rng.random(3))
        assert out[0] == 0 and out[1] == 0
        seen.add(int(out[2]))
    assert seen == {0, 1, 2, 3}


def test_a_seed_gives_the_same_draws_and_none_gives_fresh_ones():
    a, b = SamplingParams(1.0, seed=11), SamplingParams(1.0, seed=11)
    assert [a.rng.random() for _ in range(5)] == [b.rng.random() for _ in range(5)]
    assert SamplingParams(seed=None).rng.random() != SamplingParams(seed=None).rng.random()


def test_extreme_parameters_stay_sane():
    from service.sampler import MIN_TEMPERATURE
    rng = np.random.default_rng(4)
    logits = (rng.normal(size=(5, 40)) * 8).astype(np.float32)
    greedy = logits.argmax(1)
    u = rng.random(5)
    none, ones = np.zeros(5, np.int64), np.ones(5, np.float32)
    for t in (1e-40, 1e-30, MIN_TEMPERATURE / 2):  # logits / T would overflow: greedy instead
        assert (sample(logits, np.full(5, t, np.float32), none, ones, u) == greedy).all()
    for top_p in (1e-46, 1e-45, 1e-30):  # below float32's smallest numbers: the most likely token, never the least
        assert (sample(logits, ones, none, np.full(5, top_p, np.float32), u) == greedy).all()
    hot = sample(logits, np.full(5, 5.0, np.float32), np.full(5, 10**6), ones, np.full(5, 0.999999))
    assert ((hot >= 0) & (hot < 40)).all()  # top_k past the vocabulary: off; the highest uniform: a real token
    edge = sample(logits, ones, none, ones, np.zeros(5))
    assert ((edge >= 0) & (edge < 40)).all()
