"""`rnnserve serve` (and the other online commands): argument parsing, torch-free."""
from __future__ import annotations

import argparse


def add_serve_parser(sub) -> None:
    sp = sub.add_parser("serve", help="serve artifacts over HTTP (not yet available)",
                        description="Serve exported artifacts over HTTP.")
    sp.add_argument("--model", action="append", metavar="NAME=ARTIFACT_DIR")


def serve_handlers() -> dict:
    def serve(a):
        raise SystemExit("rnnserve serve: not yet: the HTTP service lands with the service issue")
    return {"serve": serve}
