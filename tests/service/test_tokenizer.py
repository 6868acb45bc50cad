"""Tokenizers (service/tokenizer.py, one torch-free module for training and serving): char, byte-level BPE and
word level, their files, incremental decoding and the UTF-8 guard of byte-level vocabularies."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer as LibraryFile

from service import tokenizer as T
from tests.conftest import make_text

MULTI = "Café crème, жизнь и мир 😀 naïve ünïcödé ✓ — ok.\n"
TEXT = make_text(300, seed=4) + MULTI * 30


def test_char_round_trip_and_unknown(tmp_path):
    tok = T.CharTokenizer.build(["hello world", "ünïcödé ✓"])
    text = "hello ünïcödé ✓"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("hello Ω!")
    assert ids[-2] == tok.unk_id and ids[-1] == tok.unk_id
    assert tok.decode([tok.pad_id] + tok.encode("he")) == "he"
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))  # plain JSON
    assert d["type"] == "char" and d["vocab"][:2] == ["<pad>", "<unk>"]
    again = T.load(path)
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size


def test_char_vocabulary_is_deterministic_and_ordered_by_frequency():
    a = T.CharTokenizer.build(["aaabbc"])
    b = T.CharTokenizer.build(["cbbaaa"])
    assert a.itos[2:] == b.itos[2:] == ["a", "b", "c"]
    assert T.CharTokenizer.build(["aaabbc"], min_count=2).itos[2:] == ["a", "b"]


def test_char_vocabulary_without_unknown_names_the_character():
    tok = T.CharTokenizer(list("abc "), pad_id=None, unk_id=None)  # the char-rnn convention: no specials at all
    assert tok.encode("cab a") == [2, 0, 1, 3, 0]
    with pytest.raises(T.EncodeError, match="'x' is not in the model's vocabulary"):
        tok.encode("abx c")


def test_bpe_is_byte_level_the_library_file_and_lossless(tmp_path):
    tok = T.build("bpe", [TEXT], vocab_size=400)
    assert tok.type == "bpe" and tok.vocab_size == 400 and tok.pad_id == 0 and tok.unk_id is None
    for s in (MULTI, "never seen: 漢字 🚀 ß", " leading and trailing  \n\n"):
        assert tok.decode(tok.encode(s)) == s  # any text encodes, nothing is lost
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT) / 2  # merges learnt: more than two characters a token here
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    other = LibraryFile.from_file(str(path))  # the library's own file: other tools load it as it is
    assert other.encode(MULTI).ids == tok.encode(MULTI)
    assert T.load(path).encode(MULTI) == tok.encode(MULTI)
    with pytest.raises(T.TokenizerError, match="more than 257"):
        T.build("bpe", [TEXT], vocab_size=200)


def test_word_level_has_unknown_and_minimum_count():
    tok = T.build("word", ["the cat sat on the mat the cat", "a dog"], min_count=2)
    assert tok.type == "word" and tok.decode(tok.encode("the cat")) == "the cat"
    assert tok.encode("the dog") == [tok.encode("the")[0], tok.unk_id]  # "dog" was seen once
    capped = T.build("word", [TEXT], vocab_size=10)
    assert capped.vocab_size == 10


def test_word_level_without_unknown_names_the_first_word(tmp_path):
    from tokenizers import models, pre_tokenizers
    lib = LibraryFile(models.WordLevel({"<pad>": 0, "hello": 1, "world": 2}, unk_token=None))
    lib.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    lib.save(str(tmp_path / "t.json"))
    tok = T.load(tmp_path / "t.json")
    assert tok.unk_id is None and tok.encode("hello world") == [1, 2]
    with pytest.raises(T.EncodeError, match="'there' is not in the model's vocabulary"):
        tok.encode("hello there world zzz")


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_counted_characters_add_up_to_the_text(kind):
    tok = T.build(kind, [TEXT], vocab_size=400 if kind != "char" else None, min_count=1)
    text = TEXT[:3000]
    ids, chars = tok.encode_counted(text)
    assert len(ids) == len(chars) and all(c >= 0 for c in chars)
    assert sum(chars) == len(text.rstrip()) if kind == "word" else sum(chars) == len(text)


def test_stream_pieces_are_whole_characters_and_join_to_the_text():
    tok = T.build("bpe", [TEXT], vocab_size=300)  # few merges: the multi-byte characters span several tokens
    ids = tok.encode(MULTI * 3)
    step = tok.stream()
    pieces = [step(i) for i in ids]
    assert "".join(pieces) == MULTI * 3
    assert "" in pieces and not any("\ufffd" in p for p in pieces)  # some bytes were held for their character
    cut = ids.index(tok.encode("😀")[0]) + 1  # inside the emoji: the stream must finish it, not lose it
    assert tok.decode(ids[:cut]).endswith("\ufffd")
    rest = tok.stream(ids[:cut])
    assert "".join(rest(i) for i in ids[cut:]) == tok.decode(ids)[len(tok.decode(ids[:cut])) - 1:]


def test_utf8_guard_only_lets_valid_text_through():
    tok = T.build("bpe", [TEXT], vocab_size=300)
    guard = tok.utf8_guard()
    assert T.CharTokenizer.build(["x"]).utf8_guard() is None and T.build("word", [TEXT]).utf8_guard() is None
    lone = [i for i, b in enumerate(guard.token_bytes) if len(b) == 1 and 0x80 <= b[0] < 0xC0]
    assert len(lone) == 64 and set(lone) <= set(guard.banned)  # continuation bytes never start a character
    rng = np.random.default_rng(0)
    for _ in range(20):
        pending, out = b"", b""
        for _ in range(200):
            token = int(rng.choice(np.flatnonzero(guard.allowed(pending))))
            out += guard.token_bytes[token]
            pending = guard.after(pending, token)
        complete = out[: len(out) - len(pending)]
        complete.decode("utf-8")  # strict: raises on anything invalid
        assert guard.pending_of(tok.encode("ok 😀")) == b""


def test_load_refuses_what_it_cannot_use(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"type": "sentencepiece", "vocab": []}')
    with pytest.raises(T.TokenizerError, match="not supported"):
        T.load(bad)
    bad.write_text('{"model": {"type": "BPE", "vocab": 3}}')
    with pytest.raises(T.TokenizerError, match="cannot load it"):
        T.load(bad)
    bad.write_text("{nope")
    with pytest.raises(T.TokenizerError, match="not valid JSON"):
        T.load(bad)
