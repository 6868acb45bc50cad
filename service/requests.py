"""What goes into an engine and what comes out: a generation request, and its events.

A request carries what was asked (prompt, limits, sampling, stop strings, how many choices, whether to
report log-probabilities), the state to start from (a session's) and whether to report the state reached.
The engine answers with `Text` pieces and exactly one final event per choice, `Done`, or one `Failed`. A
request of n choices is prefilled once; its state is then copied into n rows, each sampling with its own
generator. Events carry the choice's `index` (the request's `base` plus the choice: several requests may
share one reply, as a list of prompts does).
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Union

from .processors import Controls
from .sampler import SamplingParams
from .sessions import SessionState

_IDS = itertools.count()


# A generated token's log-probability: (token id, log-probability, [(id, log-probability) of the most likely])
TokenLogprob = tuple[int, float, list[tuple[int, float]]]


@dataclass(slots=True)
class Text:
    """New text of one choice (never part of a stop string); with `logprobs`, the tokens generated since the
    choice's previous piece."""
    text: str
    index: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class Done:
    """A request's end: `finish_reason` is length, stop, cancelled or the shutdown reason."""
    finish_reason: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    state: SessionState | None = None  # the state reached, when the request asked to keep it
    index: int = 0                      # the choice
    logprobs: list[TokenLogprob] | None = None  # every generated token's, when asked
    prompt_logprobs: list[float | None] | None = None  # each prompt token's given what precedes it, when asked
    tail: str = ""  # generated text past a stop string: not part of `text`, but read by the state reached


@dataclass(slots=True)
class Failed:
    """The request could not be completed: the model failed on a step that carried it (nothing was kept),
    or its session's new state could not be stored (the session stays as it was before the turn)."""
    message: str
    kind: str = "inference_error"
    field: str | None = None
    status: int = 503  # a whole answer's HTTP status (503: try again; 422: the request cannot be met)


Event = Union[Text, Done, Failed]


@dataclass(eq=False)
class GenerationRequest:
    """What was asked for. The engine only reads it; `cancel()`, from any thread, is the one write."""
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    start: SessionState | None = None  # continue from this state (a session's); None: a fresh text
    keep_state: bool = False           # report the state reached in the final event
    n: int = 1                         # choices: one prefill, n rows sampling from the same state
    base: int = 0                      # the index of choice 0 in the events (several requests, one reply)
    logprobs: int | None = None        # None: none; k >= 0: each generated token's, and the k most likely
    prompt_logprobs: bool = False      # each prompt token's log-probability (scores a text: no prefix cache)
    controls: Controls | None = None   # penalties, logit bias, min_p, a grammar (processors.py); None: plain
    reply: object = None               # where the HTTP layer routes this request's events; the engine only asks
                                       # it `wants_text(now)` (runtime.Channel) before handing over text
    id: str = field(default_factory=lambda: f"{os.getpid():x}-{next(_IDS):x}")  # unique on this host
    arrival: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the engine to drop this request before its next step (any thread)."""
        self.cancelled = True
