"""`rnnserve import`: the textbook's models, written out here as plain PyTorch modules and trained briefly,
taken in from a state dict or an ONNX graph and served by the real server; every refusal says why and
writes nothing; a session never continues a state on other weights."""
import json
import os

import httpx
import pytest
import torch
from torch import nn

from export.importer import ImportArgs, ImportRefused, run_import
from service.artifact import load_artifact
from tests.conftest import Server, make_labelled, make_text, rnnserve

TEXT = make_text(200, seed=11)
CHARS = sorted(set(TEXT))  # the char-rnn convention: no padding, no unknown id
STOI = {c: i for i, c in enumerate(CHARS)}


class LSTMLanguageModel(nn.Module):
    """The textbook character LM: forward(x, hidden) -> (logits, hidden)."""

    def __init__(self, vocab_size, embed_dim=24, hidden_dim=48, num_layers=1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x, hidden=None):
        out, hidden = self.lstm(self.embedding(x), hidden)
        return self.fc(out), hidden


class GRULanguageModel(nn.Module):
    """The same with a GRU, and other attribute names."""

    def __init__(self, vocab_size, embed_dim=24, hidden_dim=48, num_layers=1):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.GRU(embed_dim, hidden_dim, num_layers, batch_first=True)
        self.decoder = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x, hidden=None):
        out, hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(out), hidden


class BiClassifier(nn.Module):
    """The textbook 2-layer bidirectional classifier: the last layer's final forward and backward states."""

    def __init__(self, vocab_size, num_classes, embed_dim=16, hidden_dim=24):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden_dim, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden_dim, num_classes)

    def forward(self, x):
        _, h = self.gru(self.emb(x))
        return self.head(torch.cat([h[-2], h[-1]], dim=1))


class GRUNormLanguageModel(nn.Module):
    """A 2-layer GRU with a LayerNorm and a two-layer head around it."""

    def __init__(self, vocab_size, embed_dim=24, hidden_dim=48):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.GRU(embed_dim, hidden_dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Sequential(nn.Linear(hidden_dim, 64), nn.ReLU(), nn.Linear(64, vocab_size))

    def forward(self, x, hidden=None):
        out, hidden = self.rnn(self.emb(x), hidden)
        return self.head(self.norm(out)), hidden


class LSTMClassifier(nn.Module):
    """The seed's classifier: a 2-layer bidirectional LSTM, the last layer's final states in both directions."""

    def __init__(self, vocab_size, num_classes, embed_dim=16, hidden_dim=24):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden_dim, num_classes)

    def forward(self, x):
        _, (h, _) = self.lstm(self.emb(x))
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))


class Unrolled(nn.Module):
    """A Python loop over an LSTMCell: traced, one copy of the cell per step; scripted, a Loop."""

    def __init__(self, vocab_size, embed_dim=8, hidden_dim=16):
        super().__init__()
        self.emb, self.cell = nn.Embedding(vocab_size, embed_dim), nn.LSTMCell(embed_dim, hidden_dim)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 16)
        c = torch.zeros(x.shape[0], 16)
        e, outs = self.emb(x), []
        for t in range(x.shape[1]):
            h, c = self.cell(e[:, t], (h, c))
            outs.append(self.fc(h))
        return torch.stack(outs, 1)


class LearnedStart(LSTMLanguageModel):
    """Starts from a learned state, not zeros: no carried state can stand in for it."""

    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.h0 = nn.Parameter(torch.ones(1, 1, 48))

    def forward(self, x, hidden=None):
        start = self.h0.expand(1, x.shape[0], 48).contiguous()
        out, _ = self.lstm(self.embedding(x), (start, torch.zeros_like(start)))
        return self.fc(out)


class TwoPaths(LSTMLanguageModel):
    """Two LSTMs side by side over the same embedding: two states, not one."""

    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.other = nn.LSTM(24, 48, batch_first=True)

    def forward(self, x, hidden=None):
        e = self.embedding(x)
        return self.fc(self.lstm(e)[0] + self.other(e)[0])


def train_lm(model, steps=60):
    torch.manual_seed(0)
    ids = torch.tensor([STOI[c] for c in TEXT])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(steps):
        starts = torch.randint(0, len(ids) - 33, (16,))
        batch = torch.stack([ids[s:s + 33] for s in starts])
        logits, _ = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def greedy(model, prompt: str, n: int) -> str:
    """The module's own greedy loop: the prompt's ids, then one token at a time with the hidden state carried."""
    logits, hidden = model(torch.tensor([[STOI[c] for c in prompt]]))
    out = []
    for _ in range(n):
        token = int(logits[0, -1].argmax())
        out.append(CHARS[token])
        logits, hidden = model(torch.tensor([[token]]), hidden)
    return "".join(out)


CLF_VOCAB = ["<pad>", "<unk>"] + sorted(set("".join(make_labelled(200, seed=4))) - {"\n"})
CLF_STOI = {c: i for i, c in enumerate(CLF_VOCAB)}


def clf_ids(text):
    return [CLF_STOI.get(c, 1) for c in text]


def train_classifier(model, steps=80):
    torch.manual_seed(0)
    rows = [line.split(",", 1) for line in make_labelled(200, seed=4).splitlines()[1:]]
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(steps):
        label, text = rows[step % len(rows)]
        loss = nn.functional.cross_entropy(model(torch.tensor([clf_ids(text)])), torch.tensor([label == "soft"]).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


LMS = {"lstm1": (LSTMLanguageModel, 1), "lstm2": (LSTMLanguageModel, 2), "gru1": (GRULanguageModel, 1),
       "gru2": (GRULanguageModel, 2)}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    (root / "vocab.json").write_text(json.dumps(STOI, ensure_ascii=False), encoding="utf-8")
    modules = {}
    for name, (cls, layers) in LMS.items():
        torch.manual_seed(layers)
        modules[name] = train_lm(cls(len(CHARS), num_layers=layers))
        torch.save(modules[name].state_dict(), root / f"{name}.pt")
    rnnserve("import", "lm", "--state-dict", root / "lstm1.pt", "--tokenizer", root / "vocab.json",
             "--out", root / "models" / "lstm1")  # the command line itself, once
    (root / "held-out.txt").write_text(make_text(40, seed=12), encoding="utf-8")
    for name in ("lstm2", "gru1", "gru2"):
        run_import(ImportArgs("lm", str(root / "vocab.json"), str(root / "models" / name),
                              state_dict=str(root / f"{name}.pt"),
                              check_text=str(root / "held-out.txt") if name == "gru2" else None))
    # the classifier, its vocabulary as a text file of one token a line
    (root / "clf-vocab.txt").write_text("\n".join(CLF_VOCAB) + "\n", encoding="utf-8")
    clf = train_classifier(BiClassifier(len(CLF_VOCAB), 2))
    torch.save(clf.state_dict(), root / "clf.pt")
    (root / "labelled.csv").write_text(make_labelled(60, seed=5), encoding="utf-8")
    rnnserve("import", "classifier", "--state-dict", root / "clf.pt", "--tokenizer", root / "clf-vocab.txt",
             "--labels", "hard,soft", "--out", root / "models" / "clf", "--check-text", root / "labelled.csv")
    # the same weights with a vocabulary that names no unknown token: a character outside it cannot be read
    strict = ["<oov>" if t == "<unk>" else t for t in CLF_VOCAB]
    (root / "strict.json").write_text(json.dumps({t: i for i, t in enumerate(strict)}))
    run_import(ImportArgs("classifier", str(root / "strict.json"), str(root / "models" / "strict"),
                          state_dict=str(root / "clf.pt"), labels="hard,soft", max_len=50))
    # the ONNX route: the textbook LM exported by its owner under other names
    onnx_path = root / "theirs.onnx"
    model = modules["lstm1"]

    class Step(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, h, c):
            logits, (h2, c2) = self.m(input_ids, (h, c))
            return logits, h2, c2
    h = torch.zeros(1, 2, 48)
    torch.onnx.export(Step(model), (torch.zeros(2, 3, dtype=torch.long), h, h), str(onnx_path), dynamo=False,
                      input_names=["input_ids", "h_in", "c_in"], output_names=["scores", "h_out", "c_out"],
                      dynamic_axes={"input_ids": {0: "b", 1: "t"}, "scores": {0: "b", 1: "t"},
                                    **{n: {1: "b"} for n in ("h_in", "c_in", "h_out", "c_out")}})
    rnnserve("import", "lm", "--onnx", onnx_path, "--tokenizer", root / "vocab.json", "--out", root / "models" / "onnx",
             "--rename", "input_ids=tokens,h_in=h0,c_in=c0,scores=logits,h_out=hn,c_out=cn")
    return root, modules, clf


@pytest.fixture(scope="module")
def server(imported):
    s = Server(imported[0] / "models")
    yield s
    s.stop()


@pytest.mark.parametrize("name", list(LMS) + ["onnx"])
def test_greedy_generation_equals_the_modules_own_loop(imported, server, name):
    _, modules, _ = imported
    prompt = "The cat sat"
    want = greedy(modules["lstm1" if name == "onnx" else name], prompt, 100)
    r = httpx.post(server.url + "/generate", json={"model": name, "prompt": prompt, "max_tokens": 100,
                                                   "temperature": 0, "stream": False}, timeout=60).json()
    assert r["text"] == want
    assert r["usage"]["prompt_tokens"] == len(prompt)  # fed exactly the prompt's ids, nothing prepended


def test_imported_manifest_says_where_it_came_from(imported):
    root = imported[0]
    m = json.loads((root / "models" / "gru2" / "model.json").read_text())
    assert (m["cell"], m["layers"], m["hidden"], m["embed"], m["vocab_size"]) == ("gru", 2, 48, 24, len(CHARS))
    assert m["parity"] <= 1e-4 and m["bos_text"] is None and m["pad_id"] is None and m["unk_id"] is None
    src = m["exported_from"]
    assert src["imported"] == "state_dict" and src["source"].endswith("gru2.pt") and len(src["source_sha256"]) == 64
    evaluated = json.loads(rnnserve("eval", root / "models" / "gru2", "--data", root / "held-out.txt", "--json").stdout)
    assert m["metrics"]["bpc"] == pytest.approx(evaluated["bpc"], abs=1e-6)  # --check-text, recorded
    c = json.loads((root / "models" / "clf" / "model.json").read_text())
    assert c["metrics"]["n"] == 60 and c["metrics"]["accuracy"] > 0.5 and c["max_chars"] == 400
    o = json.loads((root / "models" / "onnx" / "model.json").read_text())
    assert o["exported_from"]["imported"] == "onnx" and o["checks"]["chunked_vs_whole"] <= 1e-4
    assert o["inputs"] == ["tokens", "h0", "c0"] and o["outputs"] == ["logits", "hn", "cn"]


def test_an_empty_prompt_needs_a_start_text(server):
    r = httpx.post(server.url + "/generate", json={"model": "lstm1", "prompt": "", "stream": False})
    assert r.status_code == 422 and "bos_text" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/generate", json={"model": "lstm1", "prompt": "The Zebra", "stream": False})
    assert r.status_code == 422 and "'Z' is not in the model's vocabulary" in r.json()["error"]["message"]


def test_classify_labels_equal_the_modules_argmax(imported, server):
    _, _, clf = imported
    texts = ["aeiou aei", "bcdfg krst", "a", "kkk rrr ttt", "oooo uuuu aa", "sss ddd", "ea kt"]
    got = httpx.post(server.url + "/classify", json={"texts": texts, "model": "clf"}).json()["results"]
    with torch.no_grad():
        want = [["hard", "soft"][int(clf(torch.tensor([clf_ids(t)])).argmax())] for t in texts]
    assert [g["label"] for g in got] == want and len(set(want)) == 2


def test_a_text_a_strict_vocabulary_cannot_read_is_a_422(server):
    ok = httpx.post(server.url + "/classify", json={"model": "strict", "text": "aeiou kkk"})
    assert ok.status_code == 200
    r = httpx.post(server.url + "/classify", json={"model": "strict", "texts": ["aeiou", "kkk €"]})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["field"] == "texts" and err["message"].startswith("texts[1]: '€' is not in the model's vocabulary")


def test_refusals_say_why_and_write_nothing(imported, tmp_path):
    root, modules, _ = imported

    def refused(match, **kw):
        out = tmp_path / "out"
        with pytest.raises(ImportRefused, match=match):
            run_import(ImportArgs(kw.pop("kind", "lm"), kw.pop("tokenizer", str(root / "vocab.json")), str(out), **kw))
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    short = tmp_path / "short.json"
    short.write_text(json.dumps({c: i for i, c in enumerate(CHARS[:-1])}))
    refused(rf"--tokenizer holds {len(CHARS) - 1} tokens, but the embedding has {len(CHARS)} rows",
            tokenizer=str(short), state_dict=str(root / "lstm1.pt"))
    extra = dict(modules["lstm1"].state_dict(), **{"proj.weight": torch.zeros(48, 48), "proj.bias": torch.zeros(48)})
    torch.save(extra, tmp_path / "extra.pt")
    refused(r"tensors that could not be placed: .*proj\.weight \(48, 48\)", state_dict=str(tmp_path / "extra.pt"))
    torch.save(modules["lstm1"], tmp_path / "module.pt")  # a whole pickled module
    refused(r"LSTMLanguageModel\).* never loaded.* torch\.save\(model\.state_dict\(\)",
            state_dict=str(tmp_path / "module.pt"))
    torch.save({"epoch": 3, "model_state_dict": modules["lstm1"].state_dict()}, tmp_path / "ckpt.pt")
    refused(r"a training checkpoint .* torch\.save\(torch\.load\(.*\)\['model_state_dict'\], 'model\.pt'\)",
            state_dict=str(tmp_path / "ckpt.pt"))
    refused(r"bidirectional", state_dict=str(root / "clf.pt"), tokenizer=str(root / "clf-vocab.txt"))
    # graphs whose recurrence cannot be made stateful: each refused with the reason, naming the way out
    for module, match in ((Unrolled(len(CHARS)), r"unrolled into matrix products.*nn\.LSTM/nn\.GRU"),
                          (torch.jit.script(Unrolled(len(CHARS))), r"a Loop operator.*torch\.onnx\.export"),
                          (LearnedStart(len(CHARS)), r"starting state h .* is not zeros"),
                          (TwoPaths(len(CHARS)), r"more than one independent recurrent path")):
        graph = tmp_path / "theirs.onnx"
        torch.onnx.export(module, (torch.ones(1, 5, dtype=torch.long),), str(graph), dynamo=False)
        refused(match, onnx=str(graph))
        with pytest.raises(ImportRefused) as e:
            run_import(ImportArgs("lm", str(root / "vocab.json"), str(tmp_path / "out"), onnx=str(graph)))
        assert "--rename" not in str(e.value)  # no renaming adds a state
    cli = rnnserve("import", "lm", "--state-dict", tmp_path / "extra.pt", "--tokenizer", root / "vocab.json", "--out",
                   tmp_path / "out", check=False)
    assert cli.returncode == 2 and "proj.weight" in cli.stderr and "Traceback" not in cli.stderr
    taken = rnnserve("import", "lm", "--state-dict", root / "lstm1.pt", "--tokenizer", root / "vocab.json", "--out",
                     root / "models" / "lstm1", check=False)
    assert taken.returncode == 2 and "--force" in taken.stderr


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_session_never_continues_on_replaced_weights(imported, tmp_path, store, request):
    root, modules, _ = imported
    env = {"RNNSERVE_STATE_DIR": str(tmp_path / "state")}
    if store == "redis":
        env["RNNSERVE_SESSIONS"] = request.getfixturevalue("redis_server").url
    models = tmp_path / "models"
    (tmp_path / "chat.jinja").write_text("{% for m in messages %}{{ m.content }} {% endfor %}")  # this vocabulary's
    run_import(ImportArgs("lm", str(root / "vocab.json"), str(models / "mylm"), state_dict=str(root / "lstm1.pt"),
                          chat_template=str(tmp_path / "chat.jinja")))
    s = Server(models, **env)
    try:
        sid = httpx.post(s.url + "/sessions", json={"model": "mylm"}).json()["session_id"]
        turn = {"model": "mylm", "prompt": "The", "max_tokens": 5, "stream": False, "session_id": sid}
        assert httpx.post(s.url + "/generate", json=turn).status_code == 200
        rr = httpx.post(s.url + "/v1/responses", json={"model": "mylm", "input": "The", "max_output_tokens": 5})
        assert rr.status_code == 200, rr.text
        rid = rr.json()["id"]
    finally:
        s.stop()
    run_import(ImportArgs("lm", str(root / "vocab.json"), str(models / "mylm"), state_dict=str(root / "lstm2.pt"),
                          force=True))  # same name, other weights
    s = Server(models, **env)
    try:
        r = httpx.post(s.url + "/generate", json=turn)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["field"] == "session_id" and err["type"] == "session_model_changed"
        assert "has been replaced" in err["message"] and "onnx sha256" in err["message"]
        fresh = httpx.post(s.url + "/sessions", json={"model": "mylm"}).json()["session_id"]
        assert httpx.post(s.url + "/generate", json={**turn, "session_id": fresh}).status_code == 200
        assert httpx.post(s.url + "/generate", json=turn).status_code == 409  # the refused session was released
        r = httpx.post(s.url + "/v1/responses", json={"model": "mylm", "input": "x", "previous_response_id": rid})
        assert r.status_code == 409 and r.json()["error"]["field"] == "previous_response_id", r.text
        assert r.json()["error"]["type"] == "session_model_changed"
    finally:
        s.stop()
    assert os.path.exists(models / "mylm" / "model.json")


def test_an_onnx_classifier_is_checked_by_its_padded_rows(imported, tmp_path):
    import onnx
    root, _, clf = imported
    theirs = onnx.load(str(root / "models" / "clf" / "model.onnx"))  # a graph with other names, as elsewhere
    for v in list(theirs.graph.input) + list(theirs.graph.output):
        new = {"tokens": "ids", "lengths": "lens", "logits": "scores"}[v.name]
        for node in theirs.graph.node:
            node.input[:] = [new if x == v.name else x for x in node.input]
            node.output[:] = [new if x == v.name else x for x in node.output]
        v.name = new
    onnx.save(theirs, str(tmp_path / "theirs.onnx"))
    m = run_import(ImportArgs("classifier", str(root / "clf-vocab.txt"), str(tmp_path / "ok"),
                              onnx=str(tmp_path / "theirs.onnx"), rename="ids=tokens,lens=lengths,scores=logits",
                              labels="hard,soft"))
    assert m["checks"]["padded_vs_alone"] <= 1e-4 and m["cell"] == "gru" and m["hidden"] == 24

    class IgnoresLengths(nn.Module):  # reads the padding as text: a padded row is not the row alone
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, tokens, lengths):
            return self.inner(tokens) + 0 * lengths[:, None]
    torch.onnx.export(IgnoresLengths(clf), (torch.ones(2, 5, dtype=torch.long), torch.tensor([5, 3])),
                      str(tmp_path / "padded.onnx"), dynamo=False, input_names=["tokens", "lengths"],
                      output_names=["logits"], dynamic_axes={"tokens": {0: "b", 1: "t"}, "lengths": {0: "b"},
                                                             "logits": {0: "b"}})
    with pytest.raises(ImportRefused, match="a padded row's logits differ from the same text alone"):
        run_import(ImportArgs("classifier", str(root / "clf-vocab.txt"), str(tmp_path / "bad"),
                              onnx=str(tmp_path / "padded.onnx"), labels="hard,soft"))
    assert not (tmp_path / "bad").exists()


def test_vocabulary_files(tmp_path):
    from export.importer import read_vocabulary
    (tmp_path / "list.json").write_text(json.dumps(["a", "b", " ", "<oov>"]))
    tok = read_vocabulary(tmp_path / "list.json", unk_token="<oov>")
    assert tok.type == "char" and tok.unk_id == 3 and tok.encode("ab z") == [0, 1, 2, 3]
    (tmp_path / "words.txt").write_text("<pad>\n<unk>\nthe\ncat\n")
    words = read_vocabulary(tmp_path / "words.txt")
    assert words.type == "word" and (words.pad_id, words.unk_id) == (0, 1) and words.encode("the dog") == [2, 1]
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(ImportRefused, match="line 2 is empty"):
        read_vocabulary(tmp_path / "gap.txt")
    (tmp_path / "twice.json").write_text(json.dumps({"a": 0, "b": 0}))
    with pytest.raises(ImportRefused, match="each once"):
        read_vocabulary(tmp_path / "twice.json")


# ---------------------------------------------------------------- stateless graphs made stateful (export/stateful.py)
# Exported as their owners would: `torch.onnx.export(model, (x,), path)` of the module called without a state, by the
# legacy exporter and by the dynamo one (both keep nn.LSTM/nn.GRU as one operator), with the sizes of the example
# input baked in unless dynamic axes were asked for.
STATELESS = {  # name: (module key, exporter, example batch, dynamic axes)
    "plain-lstm1": ("lstm1", "legacy", 2, False), "plain-lstm2-dynamo": ("lstm2", "dynamo", 2, False),
    "plain-lstm2": ("lstm2", "legacy", 2, True), "plain-grunorm": ("grunorm", "legacy", 2, False),
    "plain-grunorm-dynamo": ("grunorm", "dynamo", 2, False), "plain-batch1": ("lstm1", "legacy", 1, False),
}
STATELESS_CLF = {"plain-clf": "legacy", "plain-clf-dynamo": "dynamo"}


@pytest.fixture(scope="module")
def stateless(imported):
    root, modules, _ = imported
    torch.manual_seed(3)
    modules = {**modules, "grunorm": train_lm(GRUNormLanguageModel(len(CHARS)))}
    clf = train_classifier(LSTMClassifier(len(CLF_VOCAB), 2))
    out = root / "stateless"
    for name, (key, exporter, batch, dynamic) in STATELESS.items():
        graph = root / f"{name}.onnx"
        kw = dict(input_names=["x"], dynamic_axes={"x": {0: "b", 1: "t"}}) if dynamic else {}
        torch.onnx.export(modules[key], (torch.zeros(batch, 7, dtype=torch.long),), str(graph),
                          dynamo=exporter == "dynamo", **kw)
        run_import(ImportArgs("lm", str(root / "vocab.json"), str(out / name), onnx=str(graph)))
    for name, exporter in STATELESS_CLF.items():
        graph = root / f"{name}.onnx"
        torch.onnx.export(clf, (torch.ones(2, 9, dtype=torch.long),), str(graph), dynamo=exporter == "dynamo")
        run_import(ImportArgs("classifier", str(root / "clf-vocab.txt"), str(out / name), onnx=str(graph),
                              labels="hard,soft"))
    s = Server(out)
    yield s, modules, clf, out
    s.stop()


@pytest.mark.parametrize("name", list(STATELESS))
def test_a_stateless_graph_made_stateful_generates_as_the_module(stateless, name):
    s, modules, _, out = stateless
    module = modules[STATELESS[name][0]]
    m = json.loads((out / name / "model.json").read_text())
    assert m["inputs"][:2] == ["tokens", "h0"] and m["outputs"][:2] == ["logits", "hn"]
    assert m["checks"]["stateless_vs_rewritten"] <= 1e-5 and m["checks"]["chunked_vs_whole"] <= 1e-4
    assert m["exported_from"]["made_stateful"]["layers"] == module.__dict__["_modules"].get(
        "lstm", getattr(module, "rnn", None)).num_layers
    prompt = "The cat sat"
    r = httpx.post(s.url + "/generate", json={"model": name, "prompt": prompt, "max_tokens": 100, "temperature": 0,
                                              "stream": False}, timeout=60).json()
    assert r["text"] == greedy(module, prompt, 100)  # a text longer than the export's 7 tokens, from a carried state
    sid = httpx.post(s.url + "/sessions", json={"model": name}).json()["session_id"]
    turns = [httpx.post(s.url + "/generate", json={"model": name, "prompt": p, "max_tokens": 20, "temperature": 0,
                                                   "stream": False, "session_id": sid}, timeout=60).json()["text"]
             for p in (prompt, "", "")]
    assert "".join(turns) == greedy(module, prompt, 60)  # three turns of a session = one long call


@pytest.mark.parametrize("name", list(STATELESS_CLF))
def test_a_stateless_classifier_made_stateful_classifies_as_the_module(stateless, name):
    s, _, clf, out = stateless
    m = json.loads((out / name / "model.json").read_text())
    assert m["inputs"] == ["tokens", "lengths"] and m["checks"]["padded_vs_alone"] <= 1e-5
    assert m["exported_from"]["made_stateful"]["bidirectional"] is True
    texts = ["aeiou aei", "bcdfg krst", "a", "kkk rrr ttt", "oooo uuuu aa", "sss ddd", "ea kt"]
    got = httpx.post(s.url + "/classify", json={"texts": texts, "model": name}).json()["results"]
    with torch.no_grad():
        want = [["hard", "soft"][int(clf(torch.tensor([clf_ids(t)])).argmax())] for t in texts]
    assert [g["label"] for g in got] == want


def test_import_quantize_int8_records_its_cost(imported, stateless, tmp_path):
    """--quantize int8 on import: per row for a state dict and for a graph of the textbook shape (its cost
    measured on --check-text, or on text the float model writes), ONNX Runtime's dynamic quantisation for a
    graph with more in it (here a LayerNorm), marked not batch-exact so that auto serves float32."""
    root = imported[0]
    (tmp_path / "check.txt").write_text(make_text(400, seed=13), encoding="utf-8")
    m = run_import(ImportArgs("lm", str(root / "vocab.json"), str(tmp_path / "sd"), state_dict=str(root / "gru2.pt"),
                              check_text=str(tmp_path / "check.txt"), quantize="int8"))
    q = m["int8"]
    assert (q["method"], q["batch_exact"]) == ("per-row", True)
    assert q["quality"]["text"] == f"--check-text {tmp_path / 'check.txt'}" and abs(q["quality"]["delta"]) < 0.05
    assert load_artifact(tmp_path / "sd", int8=True).onnx_file == "model.int8.onnx"
    theirs = rnnserve("import", "lm", "--onnx", root / "theirs.onnx", "--tokenizer", root / "vocab.json",
                      "--out", tmp_path / "onnx", "--quantize", "int8",
                      "--rename", "input_ids=tokens,h_in=h0,c_in=c0,scores=logits,h_out=hn,c_out=cn")
    assert "int8 (per-row, exact across batches)" in theirs.stdout and "sampled from the float32 model" in theirs.stdout
    norm = run_import(ImportArgs("lm", str(root / "vocab.json"), str(tmp_path / "norm"),
                                 onnx=str(root / "plain-grunorm.onnx"), quantize="int8"))["int8"]
    assert norm["method"] == "onnxruntime-dynamic" and norm["batch_exact"] is False
    assert "LayerNormalization" in norm["why_not_per_row"]
