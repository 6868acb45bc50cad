"""The prefix-state cache: longest cached prefix, block and tail entries, LRU within a byte budget, keys bound to
the weights; and the engine with it gives exactly the outputs it gives without it."""
import numpy as np
import pytest

from service.artifact import load_artifact
from service.engine import Engine, Metrics
from service.prefix_cache import PrefixCache, root_of
from service.requests import GenerationRequest
from service.sampler import SamplingParams
from tests.service.test_engine import Collector

STATE = [np.ones((1, 1, 8), np.float32)]


def test_longest_prefix_block_and_tail_entries():
    c = PrefixCache(1 << 20, block=4)
    root = root_of("weights-a")
    ids = list(range(20))
    chain = c.chain(root, ids, 19)
    assert len(chain) == 5  # boundaries 0, 4, 8, 12, 16
    assert c.lookup(chain, ids, 19) is None and c.misses == 1
    c.offer(chain, ids, 8, [STATE[0] * 8])   # a block boundary
    c.offer(chain, ids, 11, [STATE[0] * 11])  # a tail after the boundary at 8
    n, arrays = c.lookup(chain, ids, 19)
    assert n == 11 and arrays[0][0, 0, 0] == 11
    assert c.lookup(chain, ids, 10)[0] == 8  # the limit: never more than what may be skipped
    other = ids[:9] + [99] + ids[10:]  # differs inside the tail: the block entry still serves
    assert c.lookup(c.chain(root, other, 19), other, 19)[0] == 8
    assert c.lookup(c.chain(root_of("weights-b"), ids, 19), ids, 19) is None  # other weights never hit
    assert c.stats()["hits"] == 3 and c.stats()["tokens_saved"] == 11 + 8 + 8


def test_eviction_keeps_the_byte_budget_least_recently_used_first():
    one = [np.zeros((1, 1, 256), np.float32)]  # 1 KB a state
    c = PrefixCache(3 * 1200, block=2)
    root = root_of("w")
    seqs = [[i, i + 1, i + 2] for i in range(0, 50, 10)]
    for s in seqs[:3]:
        c.offer(c.chain(root, s, 3), s, 3, one)
    assert c.stats()["entries"] == 3
    c.lookup(c.chain(root, seqs[0], 3), seqs[0], 3)  # used: stays
    c.offer(c.chain(root, seqs[3], 3), seqs[3], 3, one)
    assert c.bytes <= c.max_bytes and c.stats()["evicted"] == 1
    assert c.lookup(c.chain(root, seqs[1], 3), seqs[1], 3) is None  # the least recently used went
    assert c.lookup(c.chain(root, seqs[0], 3), seqs[0], 3)[0] == 3
    assert PrefixCache(0).enabled is False


class Counting(Metrics):
    def __init__(self):
        self.found = []

    def prefix(self, tokens):
        self.found.append(tokens)


@pytest.fixture
def lm(artifacts):
    return load_artifact(artifacts / "tinylm", threads=1)


def run(engine, out, prompt, n, **sampling):
    req = GenerationRequest(engine.art.tokenizer.encode(prompt), n, SamplingParams(**sampling))
    engine.submit(req)
    return out.wait(req).text


def test_the_cache_on_and_off_give_the_same_texts_and_a_resent_conversation_is_a_lookup(lm):
    runs = {}
    for name, cache in (("off", None), ("on", PrefixCache(1 << 20, block=16))):
        out, metrics = Collector(), Counting()
        e = Engine(lm, out, prefill_chunk=16, metrics=metrics, cache=cache).start()
        try:
            texts, history = [], "the cat sat on a mat and a dog ran to the park"
            for turn in range(4):  # a conversation resent in full, turn after turn
                history += f" turn {turn}:"
                reply = run(e, out, history, 12, temperature=0.9, seed=turn)
                texts.append(reply)
                history += reply
            texts.append(run(e, out, "bright stars shine at night so we sing quiet songs " * 3, 20, temperature=0))
            texts.append(run(e, out, "bright stars shine at night so we sing quiet songs " * 3 + "again", 20,
                             temperature=0))
        finally:
            e.shutdown()
        runs[name] = (texts, metrics.found, cache)
    assert runs["on"][0] == runs["off"][0]  # exactly the same outputs
    found, cache = runs["on"][1], runs["on"][2]
    assert found[0] == 0 and all(f > 0 for f in found[1:4])  # every resend after the first found its past
    # a resend resumes at the end of the previous turn: everything fed before, the reply's last token excepted
    tok = lm.tokenizer
    history = "the cat sat on a mat and a dog ran to the park turn 0:" + runs["on"][0][0]
    assert found[1] == len(tok.encode("\n" + history)) - 1
    assert found[5] >= 16 * (len(tok.encode("\n" + "bright stars shine at night so we sing quiet songs " * 3)) // 16)
    assert cache.stats()["entries"] > 4 and cache.bytes <= cache.max_bytes
