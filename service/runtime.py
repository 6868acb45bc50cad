"""The runtime of one worker: the loaded models, their engines, the session store and the metrics.

`submit` is the one way in for generation: it claims the session (if any), builds the engine request
and hands it to the engine with the most free places. Engines hand each step's events to the event
loop in one call (`_deliver`); `_dispatch` puts them into each request's `Channel`, which the HTTP
layer (streaming.py) reads. A request's final event first settles its session — commit the state it
reached, or release the claim unchanged — so a client that has the final event can continue at once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from .artifact import Artifact
from .chat import ChatFormat
from .constraints import ConstraintError, Vocabulary
from .config import Config, engine_threads, stream_interval
from .engine import Engine, Overloaded
from .requests import Done, Event, Failed, GenerationRequest, Text
from .errors import RequestError, busy
from .metrics import ServiceMetrics
from .prefix_cache import PrefixCache
from .processors import Controls
from .sampler import SamplingParams
from .sessions import Claim, SessionBusy, SessionError, SessionState, SessionStore
from .tokenizer import EncodeError

log = logging.getLogger("rnnserve")

LONG_PROMPT = 1024  # characters: a longer prompt to a subword tokenizer is encoded off the event loop
SESSION_ERROR_TYPES = {404: "session_not_found", 409: "session_busy", 503: "session_store_unavailable"}


class Channel:
    """One request's events on the event loop: the step's hand-off appends, the writer takes them all.
    (An asyncio.Queue does the same with more work per token: this is the per-token hot path.)

    Pacing: after a write the writer sets `not_before`; text that arrives before then waits, without a timer,
    for the first hand-off after it (a step later at most), and a final event wakes the writer at once. The
    writer never sleeps itself: one wake-up per write instead of a sleep and a wake-up."""
    __slots__ = ("items", "waiter", "final_only", "overflowed", "last_take", "expect", "not_before", "urgent")

    def __init__(self, final_only: bool = False):
        self.expect = 0  # final events the reader waits for: one per choice of every request it carries
        self.items: list[Event] = []
        self.waiter: asyncio.Future | None = None
        self.final_only = final_only  # a whole (non-streamed) answer needs only the final event
        self.overflowed = False  # the client stopped reading: too many events waited too long
        self.last_take = time.monotonic()
        self.not_before = 0.0  # monotonic time before which text alone does not wake the writer
        self.urgent = False  # a final (or failed) event is waiting

    def put(self, ev: Event) -> None:
        if type(ev) is Text:
            if self.final_only:
                return
        else:
            self.urgent = True
        self.items.append(ev)
        w = self.waiter
        if w is not None and not w.done() and (self.urgent or time.monotonic() >= self.not_before):
            w.set_result(None)

    def wants_text(self, now: float) -> bool:
        """Whether text handed over now would be taken (engine thread, once per row and step): not before
        `not_before`, never for a whole answer. Until then the engine keeps a row's new text and hands it over
        at once later, one event instead of one per token."""
        return not self.final_only and now >= self.not_before

    async def take(self) -> list[Event]:
        """Wait for at least one event (and, for text alone, for `not_before`), then take everything that has
        piled up."""
        while not self.items or not (self.urgent or time.monotonic() >= self.not_before):
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items, self.items, self.urgent = self.items, [], False
        self.last_take = time.monotonic()
        return items


def empty_prompt() -> RequestError:
    return RequestError(422, "prompt: must not be empty for this model: it has no start text (bos_text) to begin "
                             "a fresh text from", "prompt", "invalid_value")


def model_replaced(sid: str, model: str, was: str, now: str) -> RequestError:
    """A session's state was computed by other weights than the model of that name has now: never fed to them."""
    def names(fp: str) -> str:
        onnx_sha, _, tok_sha = fp.partition("/")
        return f"onnx sha256 {onnx_sha[:12]}…, tokenizer sha256 {tok_sha[:12]}…"
    return RequestError(409, f"session_id {sid!r}: its state belongs to model {model!r} as it was ({names(was)}); the "
                             f"model has been replaced since ({names(now)}), and a state is never fed to other "
                             "weights: start a new session", "session_id", "session_model_changed")


def session_error(e: SessionError) -> RequestError:
    headers = {"Retry-After": str(max(1, round(e.retry_after)))} if e.retry_after is not None else None
    return RequestError(e.status, e.message, "session_id", SESSION_ERROR_TYPES.get(e.status, "invalid_request"),
                        headers)


class Runtime:
    def __init__(self, config: Config, lms: dict[str, Artifact], classifiers: dict[str, Artifact],
                 store: SessionStore, metrics: ServiceMetrics):
        self.config = config
        self._interval = stream_interval(config)
        self.lms, self.classifiers = lms, classifiers
        self.store = store
        self.metrics = metrics
        # Each language model gets `n` engine threads sharing its ORT session (run() is thread-safe);
        # a request goes to the one with the most free places, so the running streams are split evenly.
        # The limits are split exactly, so the model as a whole keeps max_batch running and max_queue waiting.
        n = max(1, min(engine_threads(config), config.max_batch))
        share = lambda total, i: total // n + (i < total % n)  # noqa: E731
        # one prefix-state cache for the worker: every engine thread and model (its keys carry each model's
        # fingerprint); its block is the prefill chunk, so the prompts' chunks end on its boundaries
        self.prefix_cache = PrefixCache(int(config.prefix_cache_mb * (1 << 20)), max(1, config.prefill_chunk))
        self.by_model = {name: [Engine(art, self._deliver, share(config.max_batch, i), share(config.max_queue, i),
                                       config.prefill_chunk, metrics, name=f"{name}-{i}", cache=self.prefix_cache)
                                for i in range(n)]
                         for name, art in lms.items()}
        self.engines = [e for group in self.by_model.values() for e in group]
        self.chat = {name: ChatFormat.of(art.manifest) for name, art in lms.items()}  # /v1/chat/completions
        self.vocabs = {name: Vocabulary(art.tokenizer) for name, art in lms.items()}  # structured outputs
        self.claims: dict[GenerationRequest, Claim] = {}  # requests working on a session (event loop only)
        self.notes: dict[GenerationRequest, object] = {}  # what such a request keeps with its state: done -> JSON
        self._settling: set[asyncio.Task] = set()
        self.started = time.time()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._handoff: list[list] = []  # steps' events not yet taken by the loop (_deliver)
        self._handoff_lock = threading.Lock()
        self.draining = False
        self._stop = threading.Event()

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        for e in self.engines:
            e.start()
        threading.Thread(target=self._keep_claims, name="session-claims", daemon=True).start()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the HTTP server runs on: where engine events are delivered."""
        self.loop = loop

    def _keep_claims(self) -> None:
        """Renew the claims of running turns, so a long generation keeps its session; a worker that dies
        stops renewing and its claims lapse after `claim_seconds`."""
        period = max(0.05, self.store.claim_seconds / 3)
        while not self._stop.wait(period):
            claims = list(self.claims.copy().values())  # dict.copy is atomic under the GIL
            if claims:
                try:
                    self.store.renew(claims)
                except SessionError as e:
                    log.error(json.dumps({"event": "claims_not_renewed", "error": e.message}))

    def status(self) -> dict:
        """This worker's load, for its heartbeat."""
        self.metrics.refresh()
        return {"active": sum(len(e.active) for e in self.engines), "queued": sum(e.queued for e in self.engines),
                "draining": self.draining}

    def shutdown(self, reason: str = "shutdown") -> None:
        """From any thread but the event loop's: end every stream with a final event, settle sessions."""
        self.draining = True
        for e in self.engines:
            e.shutdown(reason)
        self._stop.set()
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:  # the drained requests' final events are on their way to the loop: let their sessions settle
                asyncio.run_coroutine_threadsafe(self._settled(), loop).result(10)
            except Exception as e:  # noqa: BLE001 — a stopped loop has nothing left to settle
                log.debug("settling sessions at shutdown: %r", e)

    async def _settled(self) -> None:
        await asyncio.sleep(0)  # the engines' last hand-offs are scheduled before this coroutine
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

    def busy(self) -> bool:
        return any(e.load() for e in self.engines)

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(e.alive() and now - e.heartbeat < 10 for e in self.engines)

    def pace(self) -> float:
        """Seconds a stream holds text back after a write: RNNSERVE_STREAM_INTERVAL, or (auto) 0.25 ms per
        active stream, at most 25 ms."""
        if self._interval is not None:
            return self._interval
        return min(0.025, 0.00025 * sum(len(e.active) for e in self.engines))

    # ---------------------------------------------------------------- models
    def lm_name(self, name: str | None) -> str:
        if not self.lms:
            raise RequestError(404, "no language model is served", "model", "model_not_found")
        if name is None:
            return next(iter(self.lms))
        if name not in self.lms:
            raise RequestError(404, f"unknown model {name!r} (language models served: {', '.join(self.lms)})",
                               "model", "model_not_found")
        return name

    async def controls(self, model: str, fields) -> Controls | None:
        """A request's logits controls (schemas.SamplingFields, ConstraintFields) for `model`: a token id outside
        its vocabulary is a 422 naming it; a constraint is compiled off the event loop (llguidance lets go of
        the GIL), and one that cannot be is a 422 with the library's reason. None when all are neutral."""
        spec = fields.constraint_spec()
        if spec is None and fields.neutral():
            return None  # the common request: nothing to build
        kw = fields.controls()
        vocab = self.lms[model].tokenizer.vocab_size
        outside = [t for t in kw["bias"] if t >= vocab]
        if outside:
            raise RequestError(422, f"logit_bias: token id {outside[0]} is outside the vocabulary of model {model!r} "
                                    f"(ids 0..{vocab - 1})", "logit_bias", "invalid_value")
        if spec is not None:
            try:
                vocab = self.vocabs[model]
                kw["grammar"] = vocab.cached(spec) or await asyncio.to_thread(vocab.grammar, spec)
            except ConstraintError as e:
                raise spec.error(str(e)) from None
        return Controls.of(**kw)

    # ---------------------------------------------------------------- sessions
    async def _store(self, fn, *args):
        """Call the session store: directly when it is in memory, off the event loop when it does I/O."""
        if self.store.blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def create_session(self, model: str | None) -> tuple[str, str]:
        model = self.lm_name(model)
        try:
            sid = await self._store(self.store.create, model, self.lms[model].state_bytes)
        except SessionBusy as e:
            raise busy(e.message) from None
        except SessionError as e:
            raise session_error(e) from None
        return sid, model

    async def delete_session(self, sid: str) -> None:
        try:
            await self._store(self.store.delete, sid)
        except SessionError as e:
            raise session_error(e) from None

    # ---------------------------------------------------------------- generation
    async def submit(self, *, model: str | None, prompt: str, max_tokens: int, sampling: SamplingParams,
                     stop: list[str], session_id: str | None = None, stream: bool = True, n: int = 1,
                     base: int = 0, logprobs: int | None = None, prompt_logprobs: bool = False,
                     reply: Channel | None = None, controls: Controls | None = None,
                     start: SessionState | None = None, note=None) -> GenerationRequest:
        """Start a generation of `n` choices; its events arrive in the returned request's `reply` Channel (a new
        one, or `reply`, shared with other requests of one HTTP request: their choices are numbered from `base`).
        With `session_id` the turn continues the session's state and commits the state it reaches there; `start`
        (another session's state: a stored response's) replaces the session's own as the starting point, and
        `note(done)` gives the JSON text to keep with the committed state."""
        self.loop = self.loop or asyncio.get_running_loop()
        if self.draining:
            raise busy("server shutting down; retry on another replica")
        model = self.lm_name(model)
        art = self.lms[model]
        prompt_ids = await self.encode_prompt(model, prompt, fresh=session_id is None)
        claim = None
        if session_id is not None:
            try:
                claim = await self._store(self.store.claim, session_id, model)
            except SessionError as e:
                raise session_error(e) from None
        if start is None and claim is not None:
            start = claim.state
        if claim is not None and start is None and not prompt_ids and not self.by_model[model][0].bos_ids:
            await self._store(self.store.release, claim)
            raise empty_prompt()
        if claim is not None and start is not None and start.artifact not in ("", art.fingerprint):
            await self._store(self.store.release, claim)
            raise model_replaced(session_id, model, start.artifact, art.fingerprint)
        reply = reply if reply is not None else Channel(final_only=not stream)
        req = GenerationRequest(prompt_ids, max_tokens, sampling, stop,
                                start=start, keep_state=claim is not None, n=n, base=base,
                                logprobs=logprobs, prompt_logprobs=prompt_logprobs, reply=reply, controls=controls)
        if claim is not None:
            self.claims[req] = claim
            if note is not None:
                self.notes[req] = note
        try:
            live = [e for e in self.by_model[model] if e.alive()]
            if not live:
                raise Overloaded(f"no engine of model {model!r} is running (see /health)")
            max(live, key=lambda e: e.free()).submit(req)
            reply.expect += n
        except Overloaded as e:
            if claim is not None:
                del self.claims[req]
                self.notes.pop(req, None)
                await self._store(self.store.release, claim)
            raise busy(f"server busy: {e}; retry shortly") from None
        return req

    async def encode_prompt(self, model: str, prompt: str, fresh: bool) -> list[int]:
        """The prompt's ids; 422 naming the word or character a vocabulary without an unknown token cannot
        encode, or an empty prompt to a model that has no start text (`bos_text`) to begin a fresh text from.
        A long prompt to a `tokenizers` vocabulary is encoded off the event loop (8,192 characters take about
        4 ms to byte-level BPE; the library lets go of the GIL meanwhile), so the streams' writes go on."""
        tok = self.lms[model].tokenizer
        try:
            ids = await asyncio.to_thread(tok.encode, prompt) if len(prompt) > LONG_PROMPT and tok.type != "char" \
                else tok.encode(prompt)
        except EncodeError as e:
            raise RequestError(422, f"prompt: {e}", "prompt", "invalid_value") from None
        if fresh and not ids and not self.by_model[model][0].bos_ids:
            raise empty_prompt()
        return ids

    # engine thread -> event loop, once per step; steps that end while the loop has not yet taken the last
    # hand-off join it (one wake-up of the loop, not one per step of each engine)
    def _deliver(self, events: list[tuple[GenerationRequest, Event]]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self._handoff_lock:
            self._handoff.append(events)
            if len(self._handoff) > 1:
                return  # a wake-up is already on its way
        try:
            loop.call_soon_threadsafe(self._dispatch_handoff)
        except RuntimeError:
            pass  # loop closed during shutdown

    def _dispatch_handoff(self) -> None:
        with self._handoff_lock:
            batches, self._handoff = self._handoff, []
        for events in batches:
            self._dispatch(events)

    def _dispatch(self, events: list[tuple[GenerationRequest, Event]]) -> None:
        limit = self.config.stream_buffer_events
        for req, ev in events:
            claim = self.claims.pop(req, None) if type(ev) is not Text else None
            if claim is not None:
                note = self.notes.pop(req, None)
                if note is not None and type(ev) is Done and ev.state is not None:
                    ev.state.note = note(ev)
            if claim is None:
                reply = req.reply
                reply.put(ev)
                # Its writer has not taken anything for a second and events pile up: the client stopped reading
                # (a busy loop may let a burst pile up, but never for a second).
                if len(reply.items) > limit and not req.cancelled and time.monotonic() - reply.last_take > 1.0:
                    log.info(json.dumps({"event": "client_too_slow", "waiting_events": len(reply.items)}))
                    reply.overflowed = True
                    req.cancel()
            elif self.store.blocking:
                task = asyncio.ensure_future(self._settle_off_loop(claim, req, ev))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
            else:
                req.reply.put(self._settle(claim, ev))

    async def _settle_off_loop(self, claim: Claim, req: GenerationRequest, ev: Event) -> None:
        req.reply.put(await asyncio.to_thread(self._settle, claim, ev))

    def _settle(self, claim: Claim, ev: Event) -> Event:
        """A session's turn has ended: commit the state it reached, or release the session unchanged. The
        event to pass on: the final event, or a failure when the new state could not be stored (the client
        must know that the session does not remember this turn)."""
        try:
            if isinstance(ev, Done) and ev.state is not None:
                if not self.store.commit(claim, ev.state):
                    log.info(json.dumps({"event": "session_not_committed", "session_id": claim.session_id,
                                         "why": "deleted, expired or claimed again after this claim lapsed"}))
            else:
                self.store.release(claim)
        except SessionError as e:
            log.error(json.dumps({"event": "session_settle_failed", "session_id": claim.session_id,
                                  "error": e.message}))
            if isinstance(ev, Done):
                return Failed(f"this turn's state could not be stored ({e.message}); the session continues from "
                              "before it", "session_store_unavailable", "session_id")
        return ev
