"""Tokenizers: text <-> ids. One module for both halves (export/ trains and saves them, service/ loads them);
no torch here.

Two kinds, told apart by their tokenizer.json (docs/artifact.md):

- `char`: one id per character, written by hand: `{"type": "char", "vocab": [...], "pad_id", "unk_id"}`.
- everything else is a file of Hugging Face's `tokenizers` library, kept exactly as the library writes it so
  that other tools load it too. Its type is named after the library's model: `bpe` (`rnnserve train
  --tokenizer bpe` makes a byte-level one), `word` (word level), `wordpiece`, `unigram`.

What the rest of rnnserve uses: `vocab_size`, `pad_id`, `unk_id` (None when the vocabulary has no unknown
token), `encode(text)` (EncodeError naming the first word or character a vocabulary without an unknown token
cannot encode), `decode(ids)`, `encode_counted(text)` (ids and the characters of the text each token
stands for: what bits per character are counted over) and `stream(context)`, one sequence's incremental
decoder: fed one id at a time it returns the new text, never half a character and never a piece whose
spacing a later token could still change (the library's `DecodeStream` for library tokenizers).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from .utf8 import Utf8Guard

PAD = "<pad>"
UNK = "<unk>"
KINDS = ("char", "bpe", "word")  # what `rnnserve train --tokenizer` makes
DEFAULT_VOCAB = {"bpe": 1024, "word": 16384}
DEFAULT_MIN_COUNT = {"char": 1, "bpe": 2, "word": 2}
BYTE_ALPHABET = 256  # a byte-level BPE's first tokens: one per byte
STREAM_CONTEXT = 8  # ids of the text so far an incremental decoder starts from (a character is at most 4 byte tokens)


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message names the file and the problem."""


class EncodeError(ValueError):
    """A text holds a word or character that a vocabulary without an unknown token cannot encode."""

    def __init__(self, piece: str, kind: str):
        self.piece = piece
        super().__init__(f"{piece!r} is not in the model's vocabulary, which has no unknown token "
                         f"({'character' if kind == 'char' else 'word'} level)")


Stream = Callable[[int], str]


def is_special(token: str) -> bool:
    """A special token of a character vocabulary: a name in angle brackets (`<pad>`, `<unk>`, `<eos>` ...)."""
    return len(token) > 2 and token[0] == "<" and token[-1] == ">"


class CharTokenizer:
    """One id per character: id = position in `itos`. Training builds `<pad>`, `<unk>`, then the characters;
    a vocabulary from elsewhere may have no padding or unknown entry at all (`pad_id`/`unk_id` None), and other
    special tokens in angle brackets (`<eos>`), which no text encodes to and which decode to nothing."""

    type = "char"

    def __init__(self, itos: list[str], pad_id: int | None = 0, unk_id: int | None = 1):
        if any(i is not None and not 0 <= i < len(itos) for i in (pad_id, unk_id)):
            raise TokenizerError("pad_id/unk_id must be positions in the vocabulary")
        if any(not isinstance(c, str) for c in itos):
            raise TokenizerError("a character vocabulary holds strings")
        specials = {i for i in (pad_id, unk_id) if i is not None} | {i for i, c in enumerate(itos) if is_special(c)}
        chars = [c for i, c in enumerate(itos) if i not in specials]
        if any(len(c) != 1 for c in chars):
            raise TokenizerError("a character vocabulary holds single characters (besides special tokens in angle "
                                 "brackets such as <pad> and <unk>)")
        if len(set(chars)) != len(chars):
            raise TokenizerError("a character vocabulary holds each character once")
        self.itos = list(itos)
        self.pad_id, self.unk_id = pad_id, unk_id
        self.stoi = {c: i for i, c in enumerate(itos) if i not in specials}
        self._pieces = ["" if i in specials else c for i, c in enumerate(itos)]
        if unk_id is not None:
            self._pieces[unk_id] = "\ufffd"

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
        return cls([PAD, UNK] + kept)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        ids = [get(c, unk) for c in text]
        if unk is None and None in ids:
            raise EncodeError(text[ids.index(None)], self.type)
        return ids

    def encode_counted(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.encode(text)
        return ids, [1] * len(ids)

    @property
    def reads_any_text(self) -> bool:
        return self.unk_id is not None

    def piece(self, token_id: int) -> str:
        """The text of one id: padding and other special tokens give nothing, the unknown id U+FFFD."""
        return self._pieces[token_id]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.piece(int(i)) for i in ids)

    def stream(self, context: list[int] = ()) -> Stream:
        return self.piece  # every id is a whole character: nothing to carry between steps

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (what log-probabilities are reported with)."""
        return self.piece(token_id).encode()

    def utf8_guard(self) -> None:
        return None  # every id is a whole character: any sequence is text

    def to_json(self) -> dict:
        return {"type": self.type, "version": 1, "pad_id": self.pad_id, "unk_id": self.unk_id, "vocab": self.itos}

    @classmethod
    def from_json(cls, d: dict) -> "CharTokenizer":
        vocab = d.get("vocab")
        if not isinstance(vocab, list) or len(vocab) < 2:
            raise TokenizerError("'vocab' must be a list of at least 2 entries")
        return cls(vocab, d.get("pad_id", 0), d.get("unk_id", 1))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")


FROM_FILE = object()  # pad_id/unk_id not given: read them off the tokenizer file
_LIBRARY_TYPES = {"BPE": "bpe", "WordLevel": "word", "WordPiece": "wordpiece", "Unigram": "unigram"}


class LibraryTokenizer:
    """A `tokenizers` library tokenizer: any vocabulary its tokenizer.json describes."""

    def __init__(self, tk, pad_id: int | None | object = FROM_FILE, unk_id: int | None | object = FROM_FILE):
        """`pad_id`/`unk_id` as an artifact's manifest records them; by default read off the file: the id of
        `<pad>`, and of the model's unknown token (None where there is none)."""
        self.tk = tk
        d = json.loads(tk.to_str())
        self.type = _LIBRARY_TYPES.get(d["model"].get("type"), str(d["model"].get("type", "?")).lower())
        unk_token = d["model"].get("unk_token")
        self.pad_id = tk.token_to_id(PAD) if pad_id is FROM_FILE else pad_id
        self.unk_id = (tk.token_to_id(unk_token) if unk_token else None) if unk_id is FROM_FILE else unk_id
        self._pre = tk.pre_tokenizer
        self._vocab = tk.get_vocab(with_added_tokens=True)
        dec = d.get("decoder") or {}
        self.byte_level = any(x.get("type") == "ByteLevel" for x in [dec, *dec.get("decoders", [])])
        self._bytes: list[bytes] | None = None

    @property
    def reads_any_text(self) -> bool:
        """Whether every text encodes: a byte-level vocabulary, or one with an unknown token."""
        return self.byte_level or self.unk_id is not None

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        try:
            return self.tk.encode(text, add_special_tokens=False).ids
        except Exception as e:  # the library raises a plain Exception for a word it cannot place
            raise EncodeError(self._first_unknown(text), self.type) from e

    def encode_counted(self, text: str) -> tuple[list[int], list[int]]:
        """Ids and, per token, the characters of `text` it stands for: from the end of the one before to its
        own end (a word-level token also covers the spaces before it; of the byte tokens of one character the
        first carries it). They add up to the characters the tokens cover."""
        try:
            enc = self.tk.encode(text, add_special_tokens=False)
        except Exception as e:
            raise EncodeError(self._first_unknown(text), self.type) from e
        counts, last = [], 0
        for _, end in enc.offsets:
            end = max(end, last)
            counts.append(end - last)
            last = end
        return enc.ids, counts

    def _first_unknown(self, text: str) -> str:
        normalizer = self.tk.normalizer
        norm = normalizer.normalize_str(text) if normalizer else text
        pieces = self._pre.pre_tokenize_str(norm) if self._pre else [(w, None) for w in norm.split()]
        return next((w for w, _ in pieces if w not in self._vocab), text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def stream(self, context: list[int] = ()) -> Stream:
        """One sequence's incremental decoder, started after `context` (the last ids of the text so far, so
        that the first new piece is spaced as it continues that text, and a character whose first bytes
        ended the context is completed rather than lost)."""
        from tokenizers.decoders import DecodeStream
        ds, tk = DecodeStream(skip_special_tokens=False), self.tk
        step = ds.step
        for i in list(context)[-STREAM_CONTEXT:]:
            step(tk, i)
        return lambda token_id: step(tk, token_id) or ""

    def utf8_guard(self) -> "Utf8Guard | None":
        """For a byte-level vocabulary, what keeps generated bytes valid UTF-8 (see Utf8Guard); None for others,
        whose tokens are text already."""
        return Utf8Guard(self._all_token_bytes()) if self.byte_level else None

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for: a byte-level token's bytes (maybe part of a character), else its text."""
        return self._all_token_bytes()[token_id]

    def _all_token_bytes(self) -> list[bytes]:
        if self._bytes is None:
            to_byte = byte_level_alphabet() if self.byte_level else {}
            pieces = [self.tk.id_to_token(i) or "" for i in range(self.vocab_size)]
            self._bytes = [bytes(to_byte[c] for c in p) if p and all(c in to_byte for c in p) else p.encode()
                           for p in pieces]
        return self._bytes

    def to_json(self) -> dict:
        return json.loads(self.tk.to_str())

    def save(self, path: str | Path) -> None:
        self.tk.save(str(path))


Tokenizer = CharTokenizer | LibraryTokenizer


def byte_level_alphabet() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's, the `tokenizers` ByteLevel pre-tokenizer's): character -> byte.
    Printable bytes stand for themselves; the others are shifted past 255."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, shifted = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def from_vocabulary(itos: list[str], unk_token: str = UNK, pad_token: str = PAD) -> Tokenizer:
    """A vocabulary from elsewhere (id = position). All single characters, apart from special tokens in angle
    brackets: a character vocabulary (the char-rnn convention, `sorted(set(text))`, maybe with no padding or
    unknown id at all). Anything else: word level, split on whitespace, decoded by joining words with single
    spaces. `unk_token` and `pad_token` are the unknown and padding tokens wherever they appear."""
    if not itos:
        raise TokenizerError("the vocabulary is empty")
    if len(set(itos)) != len(itos):
        twice = next(t for t in itos if itos.count(t) > 1)
        raise TokenizerError(f"the token {twice!r} appears twice")
    pad_id = itos.index(pad_token) if pad_token in itos else None
    unk_id = itos.index(unk_token) if unk_token in itos else None
    if all(len(t) == 1 or is_special(t) or t in (pad_token, unk_token) for t in itos):
        return CharTokenizer(itos, pad_id, unk_id)
    from tokenizers import Tokenizer as Tk, models, pre_tokenizers
    tk = Tk(models.WordLevel({t: i for i, t in enumerate(itos)}, unk_token=unk_token if unk_id is not None else None))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = [t for t in itos if t in (pad_token, unk_token)]
    if specials:
        tk.add_special_tokens(specials)  # kept whole and never split; the ids stay the vocabulary's
    return LibraryTokenizer(tk, pad_id, unk_id)


def build(kind: str, texts: list[str], vocab_size: int | None = None, min_count: int | None = None) -> Tokenizer:
    """A tokenizer made from training texts: `char` (every character seen `min_count` times), `bpe`
    (byte-level BPE: any text encodes, no unknown token) or `word` (words split on whitespace, those seen
    `min_count` times, the most frequent `vocab_size`; the rest `<unk>`)."""
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer {kind!r} (known: {', '.join(KINDS)})")
    min_count = DEFAULT_MIN_COUNT[kind] if min_count is None else min_count
    if kind == "char":
        return CharTokenizer.build(texts, min_count=min_count, max_size=vocab_size)
    from tokenizers import Tokenizer as Tk, decoders, models, pre_tokenizers, trainers
    size = vocab_size or DEFAULT_VOCAB[kind]
    if kind == "bpe" and size <= BYTE_ALPHABET + 1:
        raise TokenizerError(f"--vocab-size {size}: byte-level BPE starts from {BYTE_ALPHABET} byte tokens and "
                             f"<pad>; give more than {BYTE_ALPHABET + 1} so that it learns merges")
    if kind == "word" and size < 3:
        raise TokenizerError(f"--vocab-size {size}: a word vocabulary holds <pad>, <unk> and at least one word")
    if kind == "bpe":
        tk = Tk(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=min_count, special_tokens=[PAD],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tk = Tk(models.WordLevel(unk_token=UNK))
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(vocab_size=size, min_frequency=min_count, special_tokens=[PAD, UNK],
                                            show_progress=False)
    tk.train_from_iterator(texts, trainer)
    return LibraryTokenizer(tk)


def loads(text: str, where: str = "tokenizer.json", pad_id=FROM_FILE, unk_id=FROM_FILE) -> Tokenizer:
    """A tokenizer from the text of its tokenizer.json: rnnserve's `char` format or a `tokenizers` file."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise TokenizerError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise TokenizerError(f"{where}: must hold a JSON object")
    if d.get("type") == "char":
        try:
            return CharTokenizer.from_json(d)
        except TokenizerError as e:
            raise TokenizerError(f"{where}: {e}") from None
    if isinstance(d.get("model"), dict):
        from tokenizers import Tokenizer as Tk
        try:
            tk = Tk.from_str(text)
        except Exception as e:  # the library's own parse error
            raise TokenizerError(f"{where}: the tokenizers library cannot load it ({e})") from None
        return LibraryTokenizer(tk, pad_id, unk_id)
    raise TokenizerError(f"{where}: tokenizer type {d.get('type')!r} is not supported (a `char` tokenizer, or a "
                         "tokenizer.json of the `tokenizers` library)")


def load(path: str | Path, pad_id=FROM_FILE, unk_id=FROM_FILE) -> Tokenizer:
    """A tokenizer.json; `pad_id`/`unk_id` (a manifest's) override what a `tokenizers` file says."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: cannot read tokenizer ({e})") from None
    return loads(text, str(path), pad_id, unk_id)
