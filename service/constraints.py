"""Structured outputs: a grammar per row, matched by llguidance.

rnnserve owns only the batching of masks; the matching is the library's (llguidance: the Rust engine of
vLLM, SGLang and llama.cpp; numpy bitmasks, no torch). What a client asks for becomes one llguidance
grammar:

- `json_object` (any JSON object) and `json_schema` (OpenAI's `response_format`, the Responses API's
  `text.format`, vLLM's `guided_json`): llguidance's JSON-schema compiler, compact (no free whitespace);
- `regex` (vLLM's `guided_regex`), `choice` (`guided_choice`: one of the strings) and `grammar`
  (`guided_grammar`: a Lark grammar, llguidance's own format).

A grammar that cannot compile is a 422 with the library's reason. A row carries its own matcher (`Grammar.
matcher()`), made at admission, advanced by every token the row takes (`consume`), dropped at retirement.

The vocabulary is handed to llguidance as each id's bytes (service/tokenizer.py's `token_bytes`), padding
and unknown ids as special tokens that no text produces, plus one virtual end-of-text id after the last
(these models have none): a row ends with finish_reason `stop` when its grammar allows nothing more (the
closing brace of a JSON object, the end of a choice); a grammar that could go on (`[a-z]+`) runs to a stop
string or `max_tokens` (`length`). Character and byte-level vocabularies concatenate their tokens' bytes
into the text, which is what the library matches; a vocabulary whose decoder adds spacing between tokens
(word level, WordPiece, Unigram) does not, and is refused with that reason. A grammar that needs text the
vocabulary cannot write (a character it lacks) is refused when it must begin with it, and ends its row with
an error (`constraint_unsatisfiable`, nothing kept) when it comes to it later.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict

import numpy as np

from .errors import RequestError

GRAMMAR_CACHE = 64  # compiled grammars kept per model (a client sends the same schema again and again)
JSON_OPTIONS = {"whitespace_flexible": False}  # compact JSON: "," and ":" with no whitespace between tokens


class ConstraintError(ValueError):
    """What the client asked for cannot be a grammar here: the message is the reason (the library's)."""


def _lib():
    import llguidance
    import llguidance.numpy  # noqa: F401 — the bitmask helpers
    return llguidance


class Vocabulary:
    """One artifact's vocabulary as llguidance sees it, and the compiled grammars for it (thread-safe)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.vocab = tokenizer.vocab_size
        self.eos = self.vocab  # the virtual end-of-text id: allowed when the grammar may end
        self.refusal = None
        if tokenizer.type not in ("char",) and not getattr(tokenizer, "byte_level", False):
            self.refusal = (f"structured outputs need a character or byte-level vocabulary, whose tokens' bytes make "
                            f"the text; this model's is {tokenizer.type}, whose decoder adds spacing between tokens")
        self._lltok = None
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def lltok(self):
        if self._lltok is None:
            llg = _lib()
            from llguidance._tokenizer import TokenizerWrapper
            tok = self.tok
            specials = sorted({i for i in (tok.pad_id, tok.unk_id) if i is not None}
                              | {i for i in range(self.vocab) if not tok.token_bytes(i)})
            unknown = {tok.unk_id}
            tokens = [b"\xff<special_%d>" % i if i in specials else tok.token_bytes(i) for i in range(self.vocab)]

            class Wrapped:  # what llguidance's TokenizerWrapper reads
                eos_token_id, bos_token_id = self.eos, None
                special_token_ids = specials + [self.eos]

                def __call__(self, text):  # the library's own tokenizing of forced text: never the unknown id
                    ids = tok.encode(text.decode("utf-8") if isinstance(text, bytes) else text)
                    if unknown.intersection(ids):
                        raise ValueError("text outside the vocabulary")
                    return ids
            Wrapped.tokens = tokens + [b"\xff<|end|>"]
            self._lltok = llg.LLTokenizer(TokenizerWrapper(Wrapped()))
        return self._lltok

    def cached(self, spec: "Spec") -> "Grammar | None":
        """The grammar of a constraint compiled before (a dictionary look-up: cheap enough for the event loop)."""
        with self._lock:
            proto = self._cache.get(spec.key)
            if proto is None:
                return None
            self._cache.move_to_end(spec.key)
            return Grammar(proto, self)

    def grammar(self, spec: "Spec") -> "Grammar":
        """The compiled grammar of a request's constraint (cached by what was asked); ConstraintError with the
        library's reason."""
        if self.refusal:
            raise ConstraintError(self.refusal)
        hit = self.cached(spec)
        if hit is not None:
            return hit
        llg = _lib()
        source = spec.grammar_source(llg.LLMatcher)
        proto = llg.LLMatcher(self.lltok, source, log_level=0)  # compiles (the GIL let go meanwhile)
        if proto.is_error():
            raise ConstraintError(proto.get_error())
        if proto.is_stopped():
            raise ConstraintError("it allows only the empty text")
        if not MaskBatch(self.vocab).allowed([proto.deep_copy()]).any():  # no token can begin it
            if proto.is_accepting():
                raise ConstraintError("it allows only the empty text")
            raise ConstraintError("no token of this model's vocabulary can begin it (it needs a character the "
                                  "vocabulary does not have)")
        with self._lock:
            self._cache[spec.key] = proto
            while len(self._cache) > GRAMMAR_CACHE:
                self._cache.popitem(last=False)
        return Grammar(proto, self)


class Spec:
    """What a request asked for: kind (json_object, json_schema, regex, choice, grammar) and its value."""
    __slots__ = ("kind", "value", "field", "key")

    def __init__(self, kind: str, value, field: str):
        self.kind, self.value, self.field = kind, value, field
        self.key = kind + ":" + (value if isinstance(value, str) else json.dumps(value, sort_keys=True))

    def grammar_source(self, matcher_cls) -> str:
        try:
            if self.kind == "json_object":
                return matcher_cls.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
            if self.kind == "json_schema":
                return matcher_cls.grammar_from_json_schema(self.value, defaults=JSON_OPTIONS)
        except ValueError as e:
            raise ConstraintError(str(e)) from None
        if self.kind == "regex":
            return matcher_cls.grammar_from_regex(self.value)
        if self.kind == "choice":
            return matcher_cls.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in self.value))
        return matcher_cls.grammar_from_lark(self.value)  # grammar

    def error(self, reason: str) -> RequestError:
        return RequestError(422, f"{self.field}: cannot be used as a constraint: {reason}", self.field.split(".")[0],
                            "invalid_value")


class Grammar:
    """A compiled grammar; `matcher()` gives each row its own (a copy of the compiled one, nothing consumed)."""
    __slots__ = ("proto", "vocab")

    def __init__(self, proto, vocab: Vocabulary):
        self.proto, self.vocab = proto, vocab

    def matcher(self):
        return self.proto.deep_copy()


class MaskBatch:
    """The grammar masks of a step's constrained rows: one int32 bitmask (rows, words) filled by llguidance,
    unpacked into a bool mask (rows, vocab) and applied to those rows' logits."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.words = (vocab + 1 + 31) // 32  # the ids and the virtual end-of-text id
        self._mask = np.empty((0, self.words), dtype=np.int32)

    def allowed(self, matchers: list) -> np.ndarray:
        if self._mask.shape[0] < len(matchers):
            self._mask = np.empty((max(len(matchers), 2 * self._mask.shape[0]), self.words), dtype=np.int32)
        mask = self._mask[: len(matchers)]
        # llguidance.numpy.fill_next_token_bitmask, without its per-call checks: each row written in place
        base, row = mask.ctypes.data, self.words * 4
        for j, m in enumerate(matchers):
            m.unsafe_compute_mask_ptr(base + j * row, row)
        bits = np.unpackbits(mask.view(np.uint8), axis=1, count=self.vocab, bitorder="little")
        return bits.view(bool)
