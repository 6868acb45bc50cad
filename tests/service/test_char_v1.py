"""A `char` artifact exported before subword vocabularies existed (tests/data/char-v1: a tiny LSTM language
model and classifier, exported by the code of commit eea2529) loads and serves exactly what that code served:
served.json was recorded from it with the same requests."""
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from service.artifact import load_artifact
from service.classifier import classify_texts
from service.engine import Engine
from service.requests import Done, GenerationRequest, Text
from service.sampler import SamplingParams

OLD = Path(__file__).resolve().parents[1] / "data" / "char-v1"
RECORDED = json.loads((OLD / "served.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", RECORDED["generate"], ids=lambda c: repr(c["prompt"]))
def test_old_char_language_model_serves_what_it_served(case):
    lm = load_artifact(OLD / "lm", threads=1)
    assert lm.tokenizer.type == "char" and "tokenizer_type" not in lm.manifest
    got, cv = [], threading.Condition()

    def deliver(events):
        with cv:
            got.extend(ev for _, ev in events)
            cv.notify_all()
    engine = Engine(lm, deliver, max_batch=8).start()
    try:
        req = GenerationRequest(lm.tokenizer.encode(case["prompt"]), case["max_tokens"],
                                SamplingParams(case["temperature"], case["top_k"], case["top_p"], case["seed"]),
                                case["stop"], keep_state=True)
        engine.submit(req)
        with cv:
            assert cv.wait_for(lambda: any(isinstance(e, Done) for e in got), 30)
    finally:
        engine.shutdown()
    done = got[-1]
    assert done.text == case["text"] and "".join(e.text for e in got if isinstance(e, Text)) == case["pieces"]
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens, done.state.next_token) == \
        (case["finish_reason"], case["prompt_tokens"], case["completion_tokens"], case["next_token"])


def test_old_char_classifier_gives_the_same_probabilities():
    clf = load_artifact(OLD / "clf", threads=1)
    texts = [c["text"] for c in RECORDED["classify"]]
    for p, c in zip(classify_texts(clf, texts), RECORDED["classify"]):
        assert np.allclose(p, c["probs"], atol=1e-6)
    assert clf.info()["max_chars"] == 40 and clf.info()["max_tokens"] is None
