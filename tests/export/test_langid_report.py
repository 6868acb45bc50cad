"""The leave-one-domain-out report's bookkeeping: runs per training seed, their mean, merging with a report
already written. (The runs themselves take 20 minutes each: `make langid-report`.)"""
from export import langid_data as L
from export.langid_report import mean_test, merge


def scores(acc: float, f1: float, cs: float, peer: float = 0.9) -> dict:
    one = {"n": 10, "accuracy": acc, "macro_f1": f1, "recall": {"cs": cs, "en": 1.0},
           "langid_py": {"accuracy": peer, "macro_f1": peer, "recall": {"cs": peer, "en": peer}}}
    return {"full": one, "first30": {**one, "accuracy": acc - 0.1}}


def entry(runs: dict) -> dict:
    return {"trained_on": ["docs"], "train_rows": 100, "runs": runs}


def run(acc: float, cs: float = 0.5) -> dict:
    return {"val_accuracy": 0.9, "steps": 10, "seconds": 1, "test": scores(acc, acc, cs)}


def test_the_mean_of_runs_on_the_same_texts():
    m = mean_test([scores(0.90, 0.80, 0.5), scores(0.94, 0.86, 0.7)])
    assert abs(m["full"]["accuracy"] - 0.92) < 1e-12 and abs(m["full"]["macro_f1"] - 0.83) < 1e-12
    assert abs(m["first30"]["accuracy"] - 0.82) < 1e-12
    assert abs(m["full"]["recall"]["cs"] - 0.6) < 1e-12 and m["full"]["recall"]["en"] == 1.0
    assert m["full"]["langid_py"]["accuracy"] == 0.9 and m["full"]["n"] == 10  # the peer's figures as they are


def test_new_runs_join_the_runs_already_written_seed_by_seed():
    old = merge({}, {"fortunes": entry({"0": run(0.90)}), "words": entry({"0": run(0.80)})}, seed=0)
    assert old["fortunes"]["training_seeds"] == ["0"] and old["fortunes"]["test"]["full"]["accuracy"] == 0.90
    both = merge(old, {"fortunes": entry({"1": run(0.94)})}, seed=0)
    assert both["fortunes"]["training_seeds"] == ["0", "1"]
    assert abs(both["fortunes"]["test"]["full"]["accuracy"] - 0.92) < 1e-12
    assert both["words"] == old["words"]  # a domain not run again keeps its runs
    again = merge(both, {"fortunes": entry({"1": run(0.96)})}, seed=0)  # a seed run again replaces its run
    assert abs(again["fortunes"]["test"]["full"]["accuracy"] - 0.93) < 1e-12
    other = merge(both, {"fortunes": entry({"1": run(0.96)})}, seed=5)  # other data: the old runs do not count
    assert other["fortunes"]["training_seeds"] == ["1"] and "words" not in other
    assert list(merge(old, {}, 0)) == [d for d in L.DOMAINS if d in ("fortunes", "words")]
