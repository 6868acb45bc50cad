"""The naive peer: the textbook way to serve a PyTorch RNN language model.

A plain FastAPI endpoint with the same HTTP contract as rnnserve's /generate,
running a `generate()` loop per request: batch 1, one `model(x, hidden)` call
per token, no batching across requests. The model is rebuilt in PyTorch from
the artifact's ONNX weights (so the bundled artifact is all it needs) and
checked against ONNX Runtime before serving.

    python -m loadtest.naive_server ARTIFACT_DIR --port 8100
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from export.models import LanguageModel


def torch_from_onnx(artifact: Path) -> tuple[LanguageModel, dict, dict]:
    manifest = json.loads((artifact / "model.json").read_text())
    tok = json.loads((artifact / "tokenizer.json").read_text())
    g = onnx.load(str(artifact / "model.onnx")).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    cell, hidden = manifest["cell"], manifest["hidden"]
    model = LanguageModel(manifest["vocab_size"], cell, manifest["layers"], hidden, manifest["embed"]).eval()
    rnn_nodes = [n for n in g.node if n.op_type == cell.upper()]
    gather = next(n for n in g.node if n.op_type == "Gather" and n.input[0] in init)
    matmul = next(n for n in g.node if n.op_type == "MatMul" and n.input[1] in init)
    add = next(n for n in g.node if n.op_type == "Add" and n.output[0] == "logits")
    # ONNX orders gates i,o,f,c (LSTM) and z,r,h (GRU); PyTorch i,f,g,o and r,z,n
    order = [0, 2, 3, 1] if cell == "lstm" else [1, 0, 2]
    n = len(order)

    def reorder(w):
        parts = np.split(w, n, axis=0)
        return np.concatenate([parts[i] for i in order], axis=0)

    sd = {"embed.weight": init[gather.input[0]], "out.weight": init[matmul.input[1]].T,
          "out.bias": init[next(i for i in add.input if i in init)]}
    for k, node in enumerate(rnn_nodes):
        W, R, B = (init[node.input[i]][0] for i in (1, 2, 3))
        sd[f"rnn.weight_ih_l{k}"], sd[f"rnn.weight_hh_l{k}"] = reorder(W), reorder(R)
        sd[f"rnn.bias_ih_l{k}"], sd[f"rnn.bias_hh_l{k}"] = reorder(B[: n * hidden]), reorder(B[n * hidden:])
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()})
    return model, manifest, tok


def check_against_ort(model: LanguageModel, artifact: Path) -> float:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    tokens = np.random.default_rng(0).integers(2, model.embed.num_embeddings, size=(2, 20))
    state = model.init_state(2)
    feeds = {"tokens": tokens, "h0": (state[0] if isinstance(state, tuple) else state).numpy()}
    if isinstance(state, tuple):
        feeds["c0"] = state[1].numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens))[0].numpy()
    return float(np.abs(sess.run(None, feeds)[0] - ref).max())


def build_app(artifact: Path):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    # The peer gets its best setting: oneDNN's LSTM kernel is ~6x slower per call at batch 1 here
    # (export/compare.py), and a careful hand-rolled server would turn it off.
    torch.backends.mkldnn.enabled = False
    model, manifest, tok = torch_from_onnx(artifact)
    diff = check_against_ort(model, artifact)
    assert diff < 1e-4, f"naive peer disagrees with the artifact: {diff}"
    itos = tok["vocab"]
    stoi = {c: i for i, c in enumerate(itos) if i > 1}
    app = FastAPI()

    def generate(prompt: str, max_tokens: int, temperature: float, seed):
        """The textbook loop: feed the prompt, then one model(x, hidden) call per token."""
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        ids = [stoi.get(c, 1) for c in "\n" + prompt]
        with torch.no_grad():
            logits, hidden = model(torch.tensor([ids]))
            for _ in range(max_tokens):
                probs = torch.softmax(logits[0, -1] / max(temperature, 1e-6), -1)
                nxt = int(torch.multinomial(probs, 1, generator=gen)) if temperature > 0 else int(probs.argmax())
                yield itos[nxt] if nxt > 1 else ""
                logits, hidden = model(torch.tensor([[nxt]]), hidden)

    @app.post("/generate")
    async def endpoint(request: Request):
        body = await request.json()
        args = (body.get("prompt", ""), int(body.get("max_tokens", 256)), float(body.get("temperature", 1.0)),
                body.get("seed"))
        if not body.get("stream", True):
            text = "".join(generate(*args))
            return JSONResponse({"finish_reason": "length", "text": text,
                                 "usage": {"prompt_tokens": len(args[0]), "completion_tokens": args[1]}})

        def sse():
            text = []
            for i, piece in enumerate(generate(*args)):
                text.append(piece)
                yield f"data: {json.dumps({'text': piece, 'index': i})}\n\n"
            final = {"finish_reason": "length", "text": "".join(text),
                     "usage": {"prompt_tokens": len(args[0]), "completion_tokens": args[1]}, "session_id": None}
            yield f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.get("/health")
    def health():
        return "ok"

    return app


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--port", type=int, default=8100)
    a = ap.parse_args(argv)
    import uvicorn
    uvicorn.run(build_app(Path(a.artifact)), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
