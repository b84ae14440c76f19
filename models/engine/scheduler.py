"""Continuous batching over the static latent cache, with chunked prefill: one scheduler loop per replica.

Each engine step is decided first and run second (as vLLM v1's scheduler): `schedule()` returns a plain
`SchedulerOutput` (which running requests decode one token, which prompt pieces are prefilled), and
`_execute()` runs the model on it. Two ways to prefill beside decode rows:
- packed steps (`mixed_step="graph"`, the default on a GPU): a step takes prompt pieces first come, first
  served into an area of `prefill_budget` rows (Sarathi-Serve's chunked prefill, several pieces a step as in
  vLLM's token budget), and runs them with the decode rows as one CUDA-graphed forward (one expert pass);
  with a `packed_backlog` set (off by default), while more than that many prompt tokens wait, whole prompts
  go behind the decode graph instead;
- whole prompts (the default on CPU): the decode batch, then the waiting prompts' prefill (up to
  `max_prefill_tokens`) launched behind it. A `prefill_budget` without the graph cuts prompts over steps
  the same way, but each piece then reads every routed expert again (slower on an H100; ENGINE_NOTES.md).

Admission is first come, first served: partially prefilled requests are continued before anyone else,
and the head of the queue is never passed over for a shorter prompt behind it. Slots are taken lowest
first, so the decode batch (slots 0..highest running) stays dense. Tokens are streamed to each request's
handle (an iterator) and optional callback as they come.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from models.errors import ModelError

from .cuda_graphs import PACKED_MAX_PIECES, DecodeRunner, PackedRunner
from .mixed_batch import MixedBatch, PackedStep
from .model import EngineModel

TokenCallback = Callable[[int, int], None]  # (request id, token id)
# (prompt + generated ids, fp32 logits [vocab]) -> logits: e.g. transformers' repetition penalty
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


class RequestError(ModelError):
    """A request the engine cannot serve (empty prompt, longer than the cache, bad token ids)."""


@dataclass
class Request:
    id: int
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    on_token: TokenCallback | None = None
    logits_processor: LogitsProcessor | None = None
    output: list[int] = field(default_factory=list)
    slot: int = -1
    cache_len: int = 0  # tokens whose latent rows are in the cache
    finish_reason: str | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    stream: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class PrefillPiece:
    """Prompt tokens [start, stop) of one request, prefilled in this step into its cache slot."""

    request: Request
    start: int
    stop: int

    @property
    def completes_prompt(self) -> bool:
        return self.stop == len(self.request.prompt)


@dataclass
class SchedulerOutput:
    """What one engine step runs: a plain decision, no tensors."""

    decode: list[Request] = field(default_factory=list)  # running requests, one token each
    prefill: list[PrefillPiece] = field(default_factory=list)  # FCFS order
    admitted: list[Request] = field(default_factory=list)  # given a cache slot in this step
    budget: int = 0  # the prefill-token budget this step was planned under

    @property
    def prefill_tokens(self) -> int:
        return sum(p.stop - p.start for p in self.prefill)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


class RequestHandle:
    """Iterate for tokens as they are generated; `result()` waits for the whole output."""

    def __init__(self, engine: "Engine", request: Request):
        self._engine, self.request = engine, request

    @property
    def id(self) -> int:
        return self.request.id

    def __iter__(self) -> Iterator[int]:
        while True:
            try:
                tok = self.request.stream.get_nowait()
            except queue.Empty:
                if self._engine.running:
                    tok = self.request.stream.get()
                else:
                    self._engine.step()  # no background loop: drive the engine from the caller
                    continue
            if tok is None:
                return
            yield tok

    def result(self) -> list[int]:
        for _ in self:
            pass
        return list(self.request.output)


class Engine:
    """The generation engine of one replica: static latent cache, CUDA-graph decode, grouped experts."""

    def __init__(
        self,
        model: EngineModel,
        max_batch: int,
        use_cuda_graphs: bool = True,
        prefill_chunk: int = 32768,
        max_prefill_tokens: int = 32768,
        seed: int = 0,
        prefill_chunk_continued: int = 8192,
        prefill_budget: int | None = None,
        mixed_step: bool | str = False,
        packed_backlog: int | None = None,
        packed_max_pieces: int = PACKED_MAX_PIECES,
    ):
        self.model, self.max_batch, self.max_seq_len = model, max_batch, model.max_seq_len
        self.device = model.device
        self.prefill_chunk, self.max_prefill_tokens = prefill_chunk, max_prefill_tokens
        self.prefill_chunk_continued = prefill_chunk_continued
        # prompt tokens per step while requests are decoding; None (the default): whole prompts, launched
        # behind the decode graph. A budget cuts each prompt over steps, but every piece of more than
        # ~100 tokens reads all routed experts again: on an H100 (lite, bf16) a 2,048 budget served 8.4
        # req/s at saturation against 12.8 without (benchmarks/results/engine_serving_budgets_h100.json)
        self.prefill_budget = prefill_budget
        # a step with both decode rows and prompt tokens runs them as one packed forward (one expert pass)
        # when its prompt tokens fit one plain chunk; else the decode graph, then the prefill behind it.
        # Off by default: measured on an H100 the eager packed forward lost to the decode graph + a
        # separate prefill (benchmarks/results/engine_serving_mixed_h100.json).
        # "graph": while requests decode, a step takes prompt pieces (FCFS, the last one cut) packed into an area
        # of `prefill_budget` rows (at most PackedRunner.max_pieces pieces, each after the first at an aligned
        # row), run with the decode rows as a packed step in fixed shapes (mixed_batch.PackedStep), one CUDA
        # graph per (batch bucket, piece bucket, sequence bucket) on GPU (cuda_graphs.PackedRunner)
        if mixed_step not in (False, True, "graph"):
            raise ValueError(f"mixed_step must be False, True or 'graph', not {mixed_step!r}")
        if mixed_step == "graph" and not prefill_budget:
            raise ValueError("mixed_step='graph' needs a prefill_budget (the packed step's piece size)")
        self.mixed_step = mixed_step
        self.cache = model.new_cache(max_batch)
        self.runner = DecodeRunner(model, self.cache, max_batch, use_cuda_graphs)
        self.packed_runner = (PackedRunner(model, self.cache, max_batch, prefill_budget, use_cuda_graphs, self.runner.pool,
                                           max_pieces=packed_max_pieces) if mixed_step == "graph" else None)
        # with more prompt tokens than this waiting for a slot, a step prefills whole prompts behind the decode
        # graph instead of packed pieces. None (the default): packed steps whatever waits. Measured on an H100
        # (benchmarks/results/engine_serving_pieces_h100.json) with up to 4 pieces a step, the switch at 4 C
        # bought no throughput at 48 req/s (2,147 against 2,165 tok/s) and cost the tails: inter-token p99
        # 331 against 23 ms (a whole-prompt step stalls every decoding request), TTFT p99 4.7 against 4.2 s
        self.packed_backlog = packed_backlog
        self._free = list(range(max_batch))  # a heap: the lowest free slot first keeps decode batches dense
        self._active: dict[int, Request] = {}  # slot -> request decoding
        self._prefilling: list[Request] = []  # holding a slot, prompt not yet all in the cache (FCFS)
        self._queue: deque[Request] = deque()  # waiting for a slot (FCFS), filled from _waiting
        self._waiting: queue.SimpleQueue[Request] = queue.SimpleQueue()  # submissions from any thread
        self._ids = itertools.count()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        self.stats = {"decode_steps": 0, "prefill_tokens": 0, "generated_tokens": 0, "steps": 0,
                      "prefill_steps": 0, "mixed_steps": 0, "decode_rows": 0, "decode_slots": 0,
                      "max_step_prefill_tokens": 0, "mixed_forwards": 0}

    # ---- public API -------------------------------------------------------------------------

    def capture_graphs(self) -> float:
        """Capture every decode and packed-step CUDA graph now; returns the seconds taken (0 off CUDA). Graphs
        are otherwise captured lazily, so the first request to meet a new (batch, sequence, piece) bucket would
        wait for its capture, compile and kernel autotuning (seconds for a packed step). The capture steps
        write only the cache's unused last position, so this is safe while requests run (it holds the lock)."""
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            self.runner.capture_all()
            if self.packed_runner is not None:
                self.packed_runner.capture_all()
        return time.perf_counter() - t0 if self.runner.use_graphs else 0.0

    def warm_up(self, synthetic: bool | None = None, new_tokens: int = 4) -> float:
        """Before serving (nothing else running: a replica at load): capture every CUDA graph, then run each kind
        of step once on synthetic prompts, so that no request pays a first use's compile or kernel tuning: a
        prompt alone (prefill of one row), prompts arriving while it decodes (packed pieces, or prefill behind the
        decode), then several prompts at once (several packed pieces a step; with a `packed_backlog`, more prompt
        tokens than it: whole prompts, several rows, behind the decode rows). On an H100 the first engine of a
        process took 2.2 s for its first whole-prompt step behind decode rows without this, 151 ms once compiled;
        with it, its slowest step at 8 req/s took 224 ms (benchmarks/ENGINE_NOTES.md). The synthetic steps run on
        CUDA (on CPU nothing is compiled or tuned) unless `synthetic` says otherwise. The stats are reset after;
        returns the seconds spent (0 where nothing ran)."""
        if self.running or self._active or self._prefilling or self._queue or not self._waiting.empty():
            raise RuntimeError("warm_up runs on an idle engine, before it serves")
        t0 = time.perf_counter()
        captured = self.capture_graphs()
        if not (self.device.type == "cuda" if synthetic is None else synthetic):
            return captured
        vocab, chunk = self.model.args.vocab_size, self.prefill_budget or 256
        first_new = 6 * new_tokens  # the first request decodes through every later step
        room = max(1, self.max_seq_len - first_new - 1)
        length = max(1, min(room, 2 * chunk))
        n_backlog = max(2, min(self.max_batch - 2, (self.packed_backlog or 0) // max(1, length) + 2))

        def prompt(i: int, n: int) -> list[int]:
            return [(7919 * i + 31 * j + 1) % vocab for j in range(max(1, n - i))]

        with self._lock:
            first = self.submit(prompt(0, length), min(first_new, self.max_seq_len - length))
            self.step()  # alone: one row's prefill
            self.step()
            if self.max_batch > 1:
                self.submit(prompt(1, min(room, chunk // 2 + 3)), new_tokens)  # while it decodes: a packed piece
                self.step()
                for i in range(n_backlog):  # several at once: packed pieces, or with a packed_backlog whole prompts
                    self.submit(prompt(2 + i, length), new_tokens)
            while self.step():
                pass
        assert first.request.done.is_set()
        self.stats = dict.fromkeys(self.stats, 0)
        return time.perf_counter() - t0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(
        self,
        prompt_token_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        stop_token_ids: Sequence[int] = (),
        on_token: TokenCallback | None = None,
        logits_processor: LogitsProcessor | None = None,
    ) -> RequestHandle:
        prompt = [int(t) for t in prompt_token_ids]
        if not prompt:
            raise RequestError("empty prompt")
        if max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if len(prompt) + max_new_tokens > self.max_seq_len:
            raise RequestError(
                f"prompt of {len(prompt)} tokens + {max_new_tokens} new tokens exceeds max_seq_len {self.max_seq_len}"
            )
        vocab = self.model.args.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise RequestError(f"token ids must be in [0, {vocab})")
        req = Request(next(self._ids), prompt, max_new_tokens, float(temperature), top_k,
                      frozenset(int(t) for t in stop_token_ids), on_token, logits_processor)
        self._waiting.put(req)
        self._wake.set()
        return RequestHandle(self, req)

    def generate(self, prompts_token_ids: Sequence[Sequence[int]], max_new_tokens: int, **kwargs) -> list[list[int]]:
        """Submit all prompts, run until all finish; the generated ids of each (prompt excluded)."""
        handles = [self.submit(p, max_new_tokens, **kwargs) for p in prompts_token_ids]
        if not self.running:
            while not all(h.request.done.is_set() for h in handles):
                self.step()
        return [h.result() for h in handles]

    def start(self) -> None:
        """Run the scheduler loop in a background thread (one per replica)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def pending(self) -> dict[str, int]:
        """Occupancy now: requests decoding, partly prefilled, waiting for a slot."""
        return {"decoding": len(self._active), "prefilling": len(self._prefilling),
                "waiting": len(self._queue) + self._waiting.qsize()}

    def occupancy(self) -> dict[str, float | int]:
        """What a serving replica reports: the queue now (decoding, prefilling, waiting for a slot) and
        the batch occupancy so far (mean real rows per decode step, over the slots there are)."""
        st = self.stats
        mean_batch = st["decode_slots"] / st["decode_steps"] if st["decode_steps"] else 0.0
        return {**self.pending(), "slots": self.max_batch, "steps": st["steps"], "decode_steps": st["decode_steps"],
                "mixed_forwards": st["mixed_forwards"], "generated_tokens": st["generated_tokens"],
                "mean_decode_batch": mean_batch, "batch_occupancy": mean_batch / self.max_batch}

    @torch.inference_mode()
    def prefill_hidden(self, token_ids: Sequence[Sequence[int]] | torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Prefill-only forward (no cache, no generation): final-normed hidden states [B, L, H],
        equal to transformers' `model(...).last_hidden_state`. Rows are right-padded to the longest."""
        tokens, lengths = self._pad(token_ids, lengths)
        with self._lock:
            out = [self.model.prefill(chunk, None, None, 0) for chunk in self._split(tokens)]
        return torch.cat(out)

    @torch.inference_mode()
    def prefill_logits(self, token_ids, lengths: Sequence[int] | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits of a prefill-only forward: [B, L, vocab], or [B, vocab] at each row's last real token."""
        tokens, lens = self._pad(token_ids, lengths)
        hidden = self.prefill_hidden(tokens, lens)
        if last_only:
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), torch.as_tensor(lens, device=hidden.device) - 1]
        return self.model.logits(hidden).float()

    # ---- the scheduler: decide ----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.step():
                self._wake.wait(0.05)
                self._wake.clear()

    @torch.inference_mode()
    def step(self) -> bool:
        """Schedule one step and run it. True while work remains."""
        with self._lock:
            out = self.schedule()
            if out:
                self._execute(out)
            return bool(self._active or self._prefilling or self._queue or not self._waiting.empty())

    def schedule(self) -> SchedulerOutput:
        """Decide the next step: every running request decodes; prompt tokens up to the budget go,
        first to the partly prefilled request(s), then to waiting requests in arrival order, each
        given a free slot (the one whose piece does not fit is cut, and carried to the next step)."""
        while True:
            try:
                self._queue.append(self._waiting.get_nowait())
            except queue.Empty:
                break
        out = SchedulerOutput(decode=[self._active[s] for s in sorted(self._active)])
        chunked = bool(out.decode) and self.prefill_budget is not None
        if chunked and self.packed_runner is not None and self.packed_backlog is not None and self._free:
            chunked = sum(len(r.prompt) for r in self._queue) <= self.packed_backlog  # a backlog: whole prompts
        budget = self.prefill_budget if chunked else self.max_prefill_tokens
        out.budget = budget
        left = budget
        runner = self.packed_runner if chunked else None  # a packed step: as many pieces as fit its area

        def room() -> int:
            if runner is None:
                return left
            if len(out.prefill) >= runner.max_pieces:
                return 0
            lengths = [p.stop - p.start for p in out.prefill]
            return runner.chunk - PackedStep.placement(lengths + [0], runner.align)[-1]

        for req in self._prefilling:
            take = room()
            if take <= 0:
                break
            stop = len(req.prompt) if not chunked else min(len(req.prompt), req.cache_len + take)
            out.prefill.append(PrefillPiece(req, req.cache_len, stop))
            left -= stop - req.cache_len
        while self._queue and self._free:
            take = room()
            if take <= 0:
                break
            req = self._queue[0]
            if not chunked and out.prefill and len(req.prompt) > take:
                break  # whole prompts only: this one goes first next step
            self._queue.popleft()
            req.slot = heapq.heappop(self._free)
            self._prefilling.append(req)
            out.admitted.append(req)
            stop = len(req.prompt) if not chunked else min(len(req.prompt), take)
            out.prefill.append(PrefillPiece(req, 0, stop))
            left -= stop
        return out

    # ---- the scheduler: run -------------------------------------------------------------------

    def _execute(self, out: SchedulerOutput) -> None:
        """Run a scheduled step, then read every sampled token back at once. A step with decode rows
        and prompt tokens runs as one mixed forward when `mixed_step` is on and the pieces fit one
        plain chunk; otherwise the decode graph is launched first and the prefill pieces behind it
        (their host-side launches overlap the decode on the GPU)."""
        dec_reqs, dec_tokens = [], None
        first_reqs, first_tokens = [], []
        packed = self._runs_packed(out)
        if packed or self._runs_mixed(out):
            dec_reqs, first_reqs, toks = self._launch_packed(out) if packed else self._launch_mixed(out)
            dec_tokens = toks[: len(dec_reqs)]
            first_tokens.append(toks[len(dec_reqs):])
            self.stats["mixed_forwards"] += 1
        else:
            if out.decode:
                dec_reqs, dec_tokens = self._launch_decode(out.decode)
            for group in self._prefill_groups(out.prefill, out.budget):
                done, toks = self._launch_prefill(group)
                first_reqs += done
                if toks is not None:
                    first_tokens.append(toks)
        tp = out.prefill_tokens
        self.stats["steps"] += 1
        self.stats["prefill_tokens"] += tp
        self.stats["max_step_prefill_tokens"] = max(self.stats["max_step_prefill_tokens"], tp)
        if out.prefill:
            self.stats["prefill_steps"] += 1
            self.stats["mixed_steps"] += bool(out.decode)
        for piece in out.prefill:
            piece.request.cache_len = piece.stop
        # read back: one sync for the whole step
        if dec_tokens is not None:
            self.stats["decode_steps"] += 1
            self.stats["decode_rows"] += len(dec_reqs)
            self.stats["decode_slots"] += sum(r is not None for r in dec_reqs)
            for req, tok in zip(dec_reqs, dec_tokens.tolist()):
                if req is not None:
                    req.cache_len += 1
                    self._emit(req, tok)
        if first_reqs:
            toks = torch.cat(first_tokens).tolist()
            for req, tok in zip(first_reqs, toks):
                self._prefilling.remove(req)
                self._active[req.slot] = req
                self._emit(req, tok)

    def _runs_mixed(self, out: SchedulerOutput) -> bool:
        """Mixed only where it pays and stays plain: decode rows and prompt tokens both present, every
        piece within one first chunk (plain causal attention), all of them within one continued chunk."""
        return (self.mixed_step is True and bool(out.decode) and bool(out.prefill)
                and out.prefill_tokens <= min(self.prefill_chunk, self.prefill_chunk_continued)
                and all(p.stop <= self.prefill_chunk for p in out.prefill))

    def _runs_packed(self, out: SchedulerOutput) -> bool:
        """A packed (graphed) mixed step: decode rows and pieces that fit the packed runner's area."""
        return (self.packed_runner is not None and bool(out.decode)
                and self.packed_runner.fits([p.stop - p.start for p in out.prefill]))

    def _launch_packed(self, out: SchedulerOutput):
        """Decode rows and the step's prefill pieces through the packed runner (a CUDA graph per bucket on GPU);
        sampled tokens (on the device) of the decode rows, then of the requests whose prompt this step completes."""
        rows, tokens, pos = self._decode_rows(out.decode)
        pieces = [(p.request.slot, p.request.prompt[p.start : p.stop], p.start) for p in out.prefill]
        dec_logits, piece_logits = self.packed_runner.step(tokens, pos, max(r.cache_len for r in out.decode) + 1, pieces)
        done = [i for i, p in enumerate(out.prefill) if p.completes_prompt]
        first = [out.prefill[i].request for i in done]
        if not first:
            return rows, first, self._sample(dec_logits, rows)
        # usually a prefix (the last piece is the one cut short): a slice, no index copy
        picked = piece_logits[: len(done)] if done == list(range(len(done))) else piece_logits.index_select(0, self._tensor(done))
        return rows, first, self._sample(torch.cat([dec_logits, picked]), rows + first)

    def _decode_rows(self, reqs: list[Request]):
        """The decode batch covers slots 0..highest running slot; slots in between that are free or
        still prefilling decode a dummy row at the cache's last position, which no request ever reads
        (prompt + new tokens <= max_seq_len leaves it unused). (rows, token ids, positions)."""
        by_slot = {r.slot: r for r in reqs}
        rows = [by_slot.get(s) for s in range(max(by_slot) + 1)]
        dummy = self.max_seq_len - 1
        return rows, [r.output[-1] if r else 0 for r in rows], [r.cache_len if r else dummy for r in rows]

    def _launch_mixed(self, out: SchedulerOutput):
        """Decode rows and prefill pieces as one packed forward; sampled tokens (on the device) of the
        decode rows, then of the requests whose prompt this step completes."""
        rows, tokens, pos = self._decode_rows(out.decode)
        n = len(rows)
        last, first_reqs = [], []
        for piece in out.prefill:
            tokens += piece.request.prompt[piece.start : piece.stop]
            pos += range(piece.start, piece.stop)
            if piece.completes_prompt:
                last.append(len(tokens) - 1)
                first_reqs.append(piece.request)
        # token ids were checked at submit; one host-to-device copy for ids, positions, slots, picks
        meta = self._tensor(tokens + pos + [p.request.slot for p in out.prefill] + list(range(n)) + last)
        t, k = len(tokens), len(out.prefill)
        slots = meta[2 * t : 2 * t + k]
        batch = MixedBatch(n, meta[t : t + n], max(r.cache_len for r in out.decode) + 1,
                           tuple((slots[i : i + 1], p.start, p.stop - p.start) for i, p in enumerate(out.prefill)))
        hidden = self.model.mixed(meta[:t], meta[t : 2 * t], self.cache, batch)
        picked = hidden.index_select(0, meta[2 * t + k :])
        return rows, first_reqs, self._sample(self.model.logits(picked), rows + first_reqs)

    def _launch_decode(self, reqs: list[Request]):
        """One token for each running request, through the decode runner (a CUDA graph on GPU)."""
        rows, tokens, pos = self._decode_rows(reqs)
        inputs = self._tensor([tokens, pos])  # one host-to-device copy
        logits = self.runner.step(inputs[0], inputs[1], max(r.cache_len for r in reqs) + 1)
        return rows, self._sample(logits, rows)

    def _prefill_groups(self, pieces: list[PrefillPiece], cap: int) -> list[list[PrefillPiece]]:
        """Pieces that run as one padded [B, C] forward: same start, padded size <= cap (else alone);
        fresh pieces are grouped by length (less padding), each continued piece runs alone."""
        groups = [[p] for p in pieces if p.start > 0]
        fresh = sorted((p for p in pieces if p.start == 0), key=lambda p: p.stop)
        batch: list[PrefillPiece] = []
        for p in fresh:
            if batch and p.stop * (len(batch) + 1) > cap:
                groups.append(batch)
                batch = []
            batch.append(p)
        if batch:
            groups.append(batch)
        return groups

    def _launch_prefill(self, pieces: list[PrefillPiece]):
        """Prefill pieces sharing one start into their slots; sampled first tokens (on the device) of
        the requests whose prompt this completes."""
        start = pieces[0].start
        lens = [p.stop - p.start for p in pieces]
        width = max(lens)
        # token ids were checked at submit; no _pad (its checks would sync with the running decode)
        tokens = self._tensor([p.request.prompt[p.start : p.stop] + [0] * (width - n) for p, n in zip(pieces, lens)])
        slots = self._tensor([p.request.slot for p in pieces])
        last = [i for i, p in enumerate(pieces) if p.completes_prompt]
        last_index = self._tensor([start + n - 1 for n in lens])
        rows = torch.arange(len(pieces), device=self.device)
        last_hidden = None
        for lo, hi in self._chunks(width, start):
            h = self.model.prefill(tokens[:, lo - start : hi - start], self.cache, slots, lo)
            if not last:
                continue
            local = (last_index - lo).clamp(0, hi - lo - 1)
            picked = h[rows, local]
            here = ((last_index >= lo) & (last_index < hi))[:, None]
            last_hidden = picked if last_hidden is None else torch.where(here, picked, last_hidden)
        if not last:
            return [], None
        reqs = [pieces[i].request for i in last]
        hidden = last_hidden if len(last) == len(pieces) else last_hidden[self._tensor(last)]
        return reqs, self._sample(self.model.logits(hidden), reqs)

    def _chunks(self, length: int, start: int = 0) -> list[tuple[int, int]]:
        """Prefill chunk bounds over positions start..start+length-1: a first chunk (from position 0)
        of `prefill_chunk` tokens (plain causal attention), then chunks of `prefill_chunk_continued`
        (attention to the cached prefix with a lower-right causal mask, which measured faster in 8K
        pieces: 128K prompt 11.8 s vs 23.4 s in 32K pieces)."""
        bounds, pos, end = [], start, start + length
        while pos < end:
            size = self.prefill_chunk if pos == 0 else min(self.prefill_chunk, self.prefill_chunk_continued)
            bounds.append((pos, min(end, pos + size)))
            pos += size
        return bounds

    def _sample(self, logits: torch.Tensor, reqs: Sequence[Request | None]) -> torch.Tensor:
        """Next token per row, left on the device (read back once per step)."""
        processed = [i for i, r in enumerate(reqs) if r is not None and r.logits_processor is not None]
        if processed:  # on a copy in fp32 (as transformers' generate): the runner's logits are a graph buffer
            logits = logits.to(torch.float32, copy=True)
            for i in processed:
                logits[i] = reqs[i].logits_processor(reqs[i].prompt + reqs[i].output, logits[i])
        out = logits.argmax(dim=-1)
        hot = [i for i, r in enumerate(reqs) if r is not None and r.temperature > 0]
        if hot:
            rows = torch.tensor(hot, device=logits.device)
            temps = torch.tensor([reqs[i].temperature for i in hot], device=logits.device)[:, None]
            scaled = logits[rows].float() / temps
            for j, i in enumerate(hot):
                if reqs[i].top_k:
                    kth = scaled[j].topk(reqs[i].top_k).values[-1]
                    scaled[j] = scaled[j].masked_fill(scaled[j] < kth, float("-inf"))
            drawn = torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=self._gen)[:, 0]
            out = out.clone()
            out[rows] = drawn
        return out

    def _emit(self, req: Request, tok: int) -> None:
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        req.output.append(tok)
        self.stats["generated_tokens"] += 1
        req.stream.put(tok)
        if req.on_token is not None:
            req.on_token(req.id, tok)
        if tok in req.stop_token_ids:
            req.finish_reason = "stop"
        elif len(req.output) >= req.max_new_tokens:
            req.finish_reason = "length"
        if req.finish_reason:
            del self._active[req.slot]
            heapq.heappush(self._free, req.slot)
            req.stream.put(None)
            req.done.set()

    # ---- helpers ----------------------------------------------------------------------------

    def _tensor(self, data) -> torch.Tensor:
        """A long tensor on the device without waiting for the GPU (a pageable copy would)."""
        t = torch.tensor(data, dtype=torch.long)
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def _pad(self, token_ids, lengths=None) -> tuple[torch.Tensor, list[int]]:
        if isinstance(token_ids, torch.Tensor):
            tokens = token_ids.to(self.device, torch.long)
            if tokens.dim() != 2:
                raise RequestError("token_ids must be [batch, length]")
            lens = [tokens.shape[1]] * tokens.shape[0] if lengths is None else [int(x) for x in lengths]
        else:
            seqs = [list(s) for s in token_ids]
            if not seqs or any(len(s) == 0 for s in seqs):
                raise RequestError("every sequence needs at least one token")
            lens = [len(s) for s in seqs]
            width = max(lens)
            tokens = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=self.device)
        if tokens.shape[1] > self.max_seq_len:
            raise RequestError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len {self.max_seq_len}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.model.args.vocab_size):
            raise RequestError(f"token ids must be in [0, {self.model.args.vocab_size})")
        return tokens, lens

    def _split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        rows = max(1, self.max_prefill_tokens // max(1, tokens.shape[1]))
        return list(tokens.split(rows))
