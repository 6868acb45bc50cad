import json

from export.tokenizer import CharTokenizer, load


def test_round_trip_and_unknown(tmp_path):
    tok = CharTokenizer.build(["hello world", "ünïcödé ✓"])
    text = "hello ünïcödé ✓"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("hello Ω!")
    assert ids[-2] == tok.unk_id and ids[-1] == tok.unk_id
    assert tok.decode([tok.pad_id] + tok.encode("he")) == "he"
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))  # plain JSON
    assert d["type"] == "char" and d["vocab"][:2] == ["<pad>", "<unk>"]
    again = load(path)
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size


def test_vocabulary_is_deterministic_and_ordered_by_frequency():
    a = CharTokenizer.build(["aaabbc"])
    b = CharTokenizer.build(["cbbaaa"])
    assert a.chars == b.chars == ["a", "b", "c"]
    assert CharTokenizer.build(["aaabbc"], min_count=2).chars == ["a", "b"]


def test_service_reader_agrees_with_training_tokenizer(tmp_path):
    from service.artifact import load_tokenizer
    tok = CharTokenizer.build(["some text, with ünïcode"])
    tok.save(tmp_path / "t.json")
    served = load_tokenizer(tmp_path / "t.json")
    for s in ["some text", "ünï?", ""]:
        assert served.encode(s) == tok.encode(s)
        assert served.decode(served.encode(s)) == tok.decode(tok.encode(s))
