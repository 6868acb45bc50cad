"""Texts -> class probabilities: length-bucketed padded calls, each text's answer its own."""
import numpy as np
import pytest

from service.artifact import load_artifact
from service.classifier import classify_batch, classify_texts, length_buckets, max_chars, read_chars, windows


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
    texts = ["aeiou", "bcdfg krst " * 30, "a", "kkk rrr", "ae" * 100, "x", "aeiou kkk " * 100]
    probs = classify_texts(clf, texts)
    assert len(probs) == len(texts)
    for t, p in zip(texts, probs):
        alone = classify_texts(clf, [t])[0]
        assert np.allclose(p, alone, atol=1e-5) and abs(p.sum() - 1) < 1e-5
        if len(t) <= max_chars(clf):  # one window: the model's own answer
            assert np.allclose(p, classify_batch(clf, [t])[0], atol=1e-5)


def test_windows_cover_the_text_between_words_up_to_the_limit():
    text = " ".join(f"w{i:03d}" for i in range(200))  # 999 characters
    for n in (7, 40, 120, 400):
        ws = windows(text, n)
        assert 1 <= len(ws) <= 4 and all(len(w) <= n for w in ws)
        read = text[: 4 * n]
        assert "".join(ws).replace(" ", "") == read.replace(" ", "")  # all of it up to the limit, in order, once
        assert len(ws) == -(-len(read) // n)  # the fewest windows that hold it
        if n >= 40:
            assert " ".join(ws).split() == read.split()  # cut between words
    assert windows("short", 120) == ["short"]


def test_a_long_text_is_the_weighted_product_of_its_windows(clf):
    n = max_chars(clf)
    text = "bcdfg krst " * 70 + "aeiou ae " * 40  # two kinds of text, 1,130 characters
    ws = windows(text, n)
    assert len(ws) == 3
    logp = np.log(classify_batch(clf, ws)) * np.array([len(w) for w in ws])[:, None]
    expect = np.exp(logp.sum(0) / sum(len(w) for w in ws))
    assert np.allclose(classify_texts(clf, [text])[0], expect / expect.sum(), atol=1e-5)
    assert not np.allclose(classify_texts(clf, [text])[0], classify_batch(clf, [text])[0], atol=1e-3)


def test_text_is_read_up_to_the_limit_the_manifest_names(clf):
    n, total = max_chars(clf), read_chars(clf)
    assert n == clf.manifest["max_chars"] == clf.info()["max_chars"]  # the exporter wrote the training length
    assert total == 4 * n == clf.info()["read_chars"]
    base = "bcdfg " * 400
    a = classify_texts(clf, [base[:total]])[0]
    b = classify_texts(clf, [base[:total] + "aeiou" * 50])[0]
    assert np.allclose(a, b)  # what lies past the limit is not read
    c = classify_texts(clf, [base[:total - 60] + "aeiou " * 10])[0]
    assert not np.allclose(a, c, atol=1e-4)  # what lies before it is
