"""The logits processors against a plain per-row reading of each control's definition, and the grammar masks of
llguidance over real vocabularies (the bundled models' char and byte-level BPE tokenizers)."""
import json
import re

import numpy as np
import pytest

from service.constraints import ConstraintError, MaskBatch, Spec, Vocabulary
from service.processors import BatchControls, Controls
from service.sampler import sample
from service.tokenizer import load
from tests.conftest import ROOT


def reference(logits, c: Controls, prompt, output, temperature):
    """One row, straight from the definitions (vLLM's repetition penalty, OpenAI's penalties and bias, min_p)."""
    x = logits.astype(np.float64).copy()
    counts = np.bincount(np.asarray(output, dtype=np.int64), minlength=len(x))
    if c.repetition != 1:
        for t in set(prompt) | set(output):
            x[t] = x[t] / c.repetition if x[t] > 0 else x[t] * c.repetition
    x -= c.frequency * counts + c.presence * (counts > 0)
    for t, b in (c.bias or {}).items():
        x[t] += b
    if c.min_p:
        p = np.exp((x - x.max()) / temperature)
        x[p < c.min_p] = -np.inf
    return x


def test_each_control_is_its_definition_row_by_row():
    rng = np.random.default_rng(0)
    vocab, steps = 40, 12
    rows = [Controls.of(frequency=0.7), Controls.of(presence=-0.5, bias={3: 100.0, 5: -100.0}),
            None, Controls.of(repetition=1.8, frequency=0.2, presence=0.3), Controls.of(min_p=0.2),
            Controls.of(bias={1: 2.5}, min_p=0.05, repetition=0.7)]
    assert rows[2] is None and Controls.of(frequency=0, presence=0, repetition=1, bias={}, min_p=0) is None
    prompts = [list(rng.integers(0, vocab, 6)) for _ in rows]
    companions = [c.row(vocab, p) if c is not None else None for c, p in zip(rows, prompts)]
    outputs = [[] for _ in rows]
    temperature = np.array([1.0, 0.8, 1.0, 1.3, 0.7, 1.0], dtype=np.float32)
    for step in range(steps):
        if step % 5 == 0:  # the batch is rebuilt now and then (a row joins or leaves): counts carry over
            batch = BatchControls(companions, vocab, None)
        logits = rng.normal(0, 3, (len(rows), vocab)).astype(np.float32)
        want = [reference(logits[i], c, prompts[i], outputs[i], temperature[i]) if c else logits[i].astype(np.float64)
                for i, c in enumerate(rows)]
        batch.apply(logits, temperature)
        for i in range(len(rows)):
            np.testing.assert_allclose(logits[i], want[i], rtol=1e-5, atol=1e-4)
        new = sample(logits, temperature, np.zeros(len(rows), np.int64), np.ones(len(rows), np.float32),
                     rng.random(len(rows))).tolist()
        assert new[1] == 3  # +100 forces
        assert batch.after(new) == {}
        for i, t in enumerate(new):
            outputs[i].append(t)


@pytest.fixture(scope="module", params=["fortunes", "fortunes-bpe"])
def vocab(request):
    return Vocabulary(load(ROOT / "models" / request.param / "tokenizer.json"))


def walk(vocab: Vocabulary, spec: Spec, seed: int, limit: int = 400) -> tuple[str, bool]:
    """Random allowed tokens until the grammar is complete: (text, complete)."""
    g = vocab.grammar(spec)
    m, masks, rng, ids = g.matcher(), MaskBatch(vocab.vocab), np.random.default_rng(seed), []
    for _ in range(limit):
        allowed = np.flatnonzero(masks.allowed([m])[0])
        assert allowed.size, "a grammar that is not complete always allows a token"
        t = int(rng.choice(allowed))
        assert m.consume_token(t)
        ids.append(t)
        if m.is_stopped():
            return vocab.tok.decode(ids), True
    return vocab.tok.decode(ids), False


def test_masks_keep_every_walk_inside_the_grammar(vocab):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "n": {"type": "integer", "minimum": -5, "maximum": 500},
                                               "ok": {"type": "boolean"}},
              "required": ["name", "n", "ok"], "additionalProperties": False}
    import jsonschema
    for seed in range(5):
        text, complete = walk(vocab, Spec("json_schema", schema, "s"), seed)
        assert complete, text
        jsonschema.validate(json.loads(text), schema)
        text, complete = walk(vocab, Spec("regex", r"[0-9]{3}-[a-z]{2,5}!", "r"), seed)
        assert complete and re.fullmatch(r"[0-9]{3}-[a-z]{2,5}!", text), text
        text, complete = walk(vocab, Spec("choice", ["yes", "no", "not at all"], "c"), seed)
        assert complete and text in ("yes", "no", "not at all")
        text, complete = walk(vocab, Spec("json_object", None, "j"), seed, limit=3000)
        assert not complete or isinstance(json.loads(text), dict)


def test_what_cannot_compile_gets_the_library_reason(vocab):
    for spec, words in ((Spec("json_schema", {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}, "s"), "/nope"),
                        (Spec("regex", "([", "r"), "regex"), (Spec("grammar", "start: nope", "g"), "nope"),
                        (Spec("regex", "", "r"), "empty")):
        with pytest.raises(ConstraintError, match=re.escape(words)):
            vocab.grammar(spec)
    assert vocab.grammar(Spec("regex", "a+", "r")).proto is vocab.grammar(Spec("regex", "a+", "r")).proto  # cached


def test_a_vocabulary_whose_decoder_spaces_words_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from service.tokenizer import LibraryTokenizer
    tk = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    with pytest.raises(ConstraintError, match="word"):
        Vocabulary(LibraryTokenizer(tk)).grammar(Spec("regex", "a", "r"))
