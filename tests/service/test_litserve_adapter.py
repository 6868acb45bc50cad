"""The one adapter to LitServe internals: what it relies on is checked, with a message that says what broke."""
import pytest

import litserve.specs.base as base
from service import litserve_adapter
from service.litserve_adapter import LitServeIncompatible, check_litserve


def test_the_pinned_litserve_has_what_the_adapter_uses():
    check_litserve()


def test_a_litserve_without_it_fails_with_a_clear_message(monkeypatch):
    class Bare:  # a LitSpec that lost its queues
        def __init__(self):
            pass
    monkeypatch.setattr(litserve_adapter, "LitSpec", Bare)
    with pytest.raises(LitServeIncompatible) as e:
        check_litserve()
    assert "LitSpec has no 'response_buffer'" in str(e.value) and "0.2.19" in str(e.value)
    assert base.LitSpec is not Bare


def test_a_classify_spec_pickles_without_its_api_side():
    import pickle
    batcher = litserve_adapter.ClassifyBatcher(8, 0.001)
    spec = litserve_adapter.ClassifySpec(batcher)
    assert batcher.spec is spec and spec.api_path == "/classify"
    clone = pickle.loads(pickle.dumps(spec))
    assert clone.batcher is None
