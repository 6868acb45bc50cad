"""Subword and word vocabularies served for real: a byte-level BPE language model trained on text full of
multi-byte characters, a word-level one whose vocabulary has no unknown token, and a BPE classifier on
language-ID texts, exported and served by the real server over HTTP."""
import json
import shutil

import httpx
import numpy as np
import pytest
import torch

from service.artifact import load_artifact
from service.classifier import classify
from service.engine import Engine
from service.labelled import read_labelled
from service.requests import GenerationRequest, Text
from service.sampler import SamplingParams
from tests.conftest import ROOT, Server, make_text, rnnserve
from tests.service.test_engine import Collector

MULTI = ["Café crème pour moi.", "жизнь и мир, друг.", "Smile 😀 and wave 😀.", "Ünïcödé naïve façade."]


def multi_text(n: int = 400, seed: int = 3) -> str:
    lines = make_text(n, seed=seed).splitlines(keepends=True)
    return "".join(line if i % 3 else MULTI[(i // 3) % 4] + " " + line for i, line in enumerate(lines))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("subword")
    (root / "text.txt").write_text(multi_text(), encoding="utf-8")
    rnnserve("train", "lm", "--data", root / "text.txt", "--out", root / "run-bpe", "--tokenizer", "bpe",
             "--vocab-size", 320, "--hidden", 64, "--embed", 16, "--seq-len", 32, "--batch-size", 16, "--steps", 300,
             "--lr", 1e-2, "--quiet", "--seed", 1)
    shutil.copy(ROOT / "models" / "langid" / "eval_sample.csv", root / "langid.csv")
    rnnserve("train", "classifier", "--data", root / "langid.csv", "--out", root / "run-clf", "--tokenizer", "bpe",
             "--vocab-size", 600, "--hidden", 24, "--embed", 16, "--epochs", 6, "--batch-size", 16, "--lr", 1e-2,
             "--max-len", 24, "--cell", "gru", "--quiet")
    # a word-level vocabulary with no unknown token, as a model trained elsewhere may come
    from tokenizers import Tokenizer, models as tm, pre_tokenizers
    from export.models import LanguageModel
    from export.train import save_run, save_val_sample, write_json
    from service.tokenizer import LibraryTokenizer
    words = sorted(set(make_text(50).split()))
    lib = Tokenizer(tm.WordLevel({w: i for i, w in enumerate(["<pad>"] + words)}, unk_token=None))
    lib.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    torch.manual_seed(0)
    save_run(root / "run-word", LanguageModel(len(words) + 1, "gru", 1, 32, 8), LibraryTokenizer(lib), {})
    write_json(root / "run-word" / "metrics.json", {"kind": "lm", "val_bpc": 0, "val_loss": 0})
    save_val_sample(root / "run-word", [" ".join(words)])
    out = root / "models"
    for name, run in (("bpe", "run-bpe"), ("words", "run-word"), ("clf", "run-clf")):
        rnnserve("export", root / run, "--out", out / name)
    return out


@pytest.fixture(scope="module")
def server(models):
    s = Server(models)
    yield s
    s.stop()


def stream(url, body):
    """(text pieces, final event) of a streamed /generate."""
    with httpx.stream("POST", url + "/generate", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    return [e["text"] for e in events[:-1]], events[-1]


def test_streams_are_whole_characters_and_join_to_the_text(server, models):
    tok = load_artifact(models / "bpe").tokenizer
    seen_multibyte = False
    for seed in range(6):
        body = {"prompt": "Café жизнь 😀", "max_tokens": 120, "temperature": 1.0, "seed": seed, "model": "bpe"}
        pieces, final = stream(server.url, body)
        assert not any("\ufffd" in p for p in pieces), pieces
        assert "".join(pieces) == final["text"]
        whole = httpx.post(server.url + "/generate", json={**body, "stream": False}, timeout=60).json()
        assert whole["text"] == final["text"]
        assert final["usage"] == {"prompt_tokens": len(tok.encode("Café жизнь 😀")), "completion_tokens": 120}
        seen_multibyte |= any(ord(c) > 127 for c in final["text"])
    assert len(tok.encode("Café жизнь 😀")) > 3 and seen_multibyte  # the test covered characters of several bytes


def test_a_session_continues_exactly_across_turns(server):
    """Every split of 60 tokens into two turns, some of them inside a character of several byte tokens (the
    session keeps its last ids, so the next turn finishes the character): the same text as one call."""
    whole = httpx.post(server.url + "/generate", json={"model": "bpe", "temperature": 0, "max_tokens": 60,
                                                       "stream": False, "prompt": "Smile "}).json()["text"]
    assert "😀" in whole
    for first in range(1, 60, 3):
        sid = httpx.post(server.url + "/sessions", json={"model": "bpe"}).json()["session_id"]
        turn = {"model": "bpe", "temperature": 0, "stream": False, "session_id": sid}
        a = httpx.post(server.url + "/generate", json={**turn, "prompt": "Smile ", "max_tokens": first}).json()
        b = httpx.post(server.url + "/generate", json={**turn, "prompt": "", "max_tokens": 60 - first}).json()
        assert a["text"] + b["text"] == whole, first


def test_openai_completions_with_a_subword_model(server):
    body = {"model": "bpe", "prompt": "жизнь", "max_tokens": 30, "temperature": 0.7, "seed": 4}
    whole = httpx.post(server.url + "/v1/completions", json=body).json()
    gen = httpx.post(server.url + "/generate", json={**body, "stream": False}).json()
    assert whole["choices"][0]["text"] == gen["text"] and whole["usage"]["completion_tokens"] == 30
    info = httpx.get(server.url + "/info").json()["models"]
    assert (info["bpe"]["tokenizer"], info["words"]["tokenizer"], info["clf"]["tokenizer"]) == ("bpe", "word", "bpe")


def test_a_stop_string_spanning_two_tokens(models):
    art = load_artifact(models / "bpe", threads=1)
    out = Collector()
    engine = Engine(art, out).start()
    try:
        def go(stop=()):
            req = GenerationRequest(art.tokenizer.encode("Smile"), 80, SamplingParams(0.0), list(stop))
            engine.submit(req)
            return req, out.wait(req)
        req, full = go()
        pieces = [e.text for e in out.events[req.id] if isinstance(e, Text)]  # one event per step: token pieces
        k = next(k for k in range(1, len(pieces) - 1) if len(pieces[k]) >= 2 and pieces[k + 1]
                 and full.text.find(pieces[k][-2:] + pieces[k + 1][:2]) == len("".join(pieces[:k + 1])) - 2)
        stop = pieces[k][-2:] + pieces[k + 1][:2]  # the last characters of one token and the first of the next
        req, cut = go([stop])
        assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]
        assert "".join(e.text for e in out.events[req.id] if isinstance(e, Text)) == cut.text
    finally:
        engine.shutdown()


def test_word_vocabulary_without_unknown_token(server):
    r = httpx.post(server.url + "/generate", json={"model": "words", "prompt": "the cat zebra sat", "stream": False})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["field"] == "prompt" and "'zebra' is not in the model's vocabulary" in err["message"]
    r = httpx.post(server.url + "/generate", json={"model": "words", "prompt": "", "stream": False})
    assert r.status_code == 422 and "bos_text" in r.json()["error"]["message"]  # no start text to begin from
    ok = httpx.post(server.url + "/generate", json={"model": "words", "prompt": "the cat", "max_tokens": 5,
                                                    "stream": False}).json()
    assert ok["usage"] == {"prompt_tokens": 2, "completion_tokens": 5}
    assert len(ok["text"].split()) == 5 and ok["text"].startswith(" ")  # words joined by single spaces


def test_bpe_classifier_reads_token_windows(server, models):
    art = load_artifact(models / "clf", threads=1)
    assert art.info()["max_tokens"] == 24 and art.info()["max_chars"] is None
    rows = read_labelled(models.parent / "langid.csv").rows[::6]  # every language
    texts = [t for _, t in rows]
    r = httpx.post(server.url + "/classify", json={"texts": texts}).json()["results"]
    probs, cut = classify(art, texts)
    assert [x["label"] for x in r] == [art.labels[int(p.argmax())] for p in probs]
    assert [x["truncated"] for x in r] == cut and any(cut) and not all(cut)  # more than 4 x 24 tokens
    assert all(c == (len(art.tokenizer.encode(t)) > 96) for t, c in zip(texts, cut))
    accuracy = np.mean([x["label"] == label for x, (label, _) in zip(r, rows)])
    assert accuracy > 0.5  # 8 languages: chance is 1/8
