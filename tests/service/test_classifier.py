"""Texts -> class probabilities: length-bucketed padded calls, each text's answer its own."""
import numpy as np
import pytest

from service.artifact import load_artifact
from service.classifier import classify_batch, classify_texts, length_buckets, max_chars


def test_length_buckets_keep_calls_of_similar_length():
    lengths = sorted([20] * 300 + [25, 30, 40, 60, 61, 200, 1100])
    buckets = length_buckets([(n, i) for i, n in enumerate(lengths)])
    assert [it for b in buckets for it in b] == sorted((n, i) for i, n in enumerate(lengths))  # all, in order
    assert all(len(b) <= 256 and b[-1][0] <= b[0][0] * 1.5 + 16 for b in buckets)
    assert [b[0][0] for b in buckets][-2:] == [200, 1100]  # the long texts are not padded into short calls
    capped = length_buckets([(400, i) for i in range(256)], max_tokens=8192)
    assert [len(b) for b in capped] == [20] * 12 + [16]  # 20 x 400 <= 8,192 tokens a call


@pytest.fixture(scope="module")
def clf(artifacts):
    return load_artifact(artifacts / "tinyclf", threads=1)


def test_bucketed_texts_equal_each_text_alone(clf):
    texts = ["aeiou", "bcdfg krst " * 30, "a", "kkk rrr", "ae" * 100, "x"]
    probs = classify_texts(clf, texts)
    assert len(probs) == len(texts)
    for t, p in zip(texts, probs):
        alone = classify_batch(clf, [t])[0]
        assert np.allclose(p, alone, atol=1e-5) and abs(p.sum() - 1) < 1e-5


def test_text_is_read_up_to_the_limit_the_manifest_names(clf):
    n = max_chars(clf)
    assert n == clf.manifest["max_chars"] == clf.info()["max_chars"]  # the exporter wrote the training length
    base = "bcdfg " * 200
    a = classify_batch(clf, [base[:n]])[0]
    b = classify_batch(clf, [base[:n] + "aeiou" * 50])[0]
    assert np.allclose(a, b)  # what lies past the limit is not read
