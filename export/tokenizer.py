"""Tokenizers: text <-> integer ids.

The models only ever see ids, so everything a model needs to know about its
tokenizer is `vocab_size`, `pad_id` and `unk_id`. A tokenizer is saved as plain
JSON (`tokenizer.json`, format in docs/artifact.md) and loaded back by `load`.
A subword tokenizer (for example one from the `tokenizers` library) can be
added by implementing the same small interface and registering its `type`.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Protocol

PAD = "<pad>"
UNK = "<unk>"


class Tokenizer(Protocol):
    type: str
    pad_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_json(self) -> dict: ...


class CharTokenizer:
    """One id per character; id 0 is padding, id 1 stands for unknown characters."""

    type = "char"
    pad_id = 0
    unk_id = 1

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("a character vocabulary holds distinct single characters")
        self.chars = list(chars)
        self.itos = [PAD, UNK] + self.chars
        self.stoi = {c: i + 2 for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "CharTokenizer":
        """Vocabulary of the characters seen at least `min_count` times, most frequent first
        (ties broken by code point, so the same text always gives the same ids)."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t)
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        if max_size is not None:
            kept = kept[: max(0, max_size - 2)]
        return cls(kept)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        itos = self.itos
        out = []
        for i in ids:
            i = int(i)
            if i == self.pad_id:
                continue
            out.append(itos[i] if 1 < i < len(itos) else "\ufffd")
        return "".join(out)

    def to_json(self) -> dict:
        return {"type": self.type, "version": 1, "pad_id": self.pad_id, "unk_id": self.unk_id,
                "vocab": self.itos}

    @classmethod
    def from_json(cls, d: dict) -> "CharTokenizer":
        vocab = d["vocab"]
        if vocab[:2] != [PAD, UNK] or d.get("pad_id", 0) != 0 or d.get("unk_id", 1) != 1:
            raise ValueError("char tokenizer must start with <pad>, <unk> at ids 0 and 1")
        return cls(vocab[2:])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")


_TYPES = {"char": CharTokenizer}


def load(path: str | Path) -> Tokenizer:
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    kind = d.get("type")
    if kind not in _TYPES:
        raise ValueError(f"{path}: unknown tokenizer type {kind!r} (known: {sorted(_TYPES)})")
    return _TYPES[kind].from_json(d)
