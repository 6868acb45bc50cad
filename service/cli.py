"""`rnnserve serve`: flags, each backed by an environment variable (torch-free)."""
from __future__ import annotations

import argparse
from dataclasses import fields

from .config import OPTIONS, Config, from_env, int8_setting, stream_interval


def add_serve_parser(sub) -> None:
    sp = sub.add_parser(
        "serve", help="serve artifacts over HTTP (streamed generation, batched classification)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve exported artifacts with LitServe and ONNX Runtime (no torch needed).\n"
                    "With no --model it serves every artifact under RNNSERVE_MODELS (default: the bundled "
                    "models/).\nEvery option can also be set by the environment variable shown.",
        epilog="endpoints: POST /generate, POST /classify, POST /sessions, DELETE /sessions/{id},\n"
               "           POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,\n"
               "           GET /info, GET /metrics\n"
               "example:   rnnserve serve --model fortunes=models/fortunes --port 8000")
    defaults = Config()
    sp.add_argument("--model", action="append", default=[], dest="model_list", metavar="NAME=ARTIFACT_DIR",
                    help="serve this artifact under NAME (repeatable); overrides RNNSERVE_MODELS")
    for f in fields(Config):
        if f.name not in OPTIONS:
            continue
        var, text = OPTIONS[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name == "int8":  # `--int8` alone is 1, as when it was a switch
            sp.add_argument(flag, nargs="?", const="1", default=None, metavar="0|1|auto",
                            help=f"{text} [{var}, default {default!r}]")
        elif isinstance(default, bool):
            sp.add_argument(flag, action="store_true", default=None, help=f"{text} [{var}]")
        else:
            sp.add_argument(flag, type=type(default), default=None, metavar=f.name.upper(),
                            help=f"{text} [{var}, default {default!r}]")


def config_from_args(a) -> Config:
    c = from_env()
    for f in fields(Config):
        v = getattr(a, f.name, None)
        if v is not None and v != []:
            setattr(c, f.name, v)
    try:
        int8_setting(c)
        stream_interval(c)
    except ValueError as e:
        raise SystemExit(f"rnnserve serve: {e}") from None
    return c


def serve_handlers() -> dict:
    def serve(a):
        from .supervisor import serve as run
        run(config_from_args(a))

    return {"serve": serve}
