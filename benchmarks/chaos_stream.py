"""Jepsen-style fault campaign for the fraud stream: random fault schedules, counted against a fault-free run.

    python benchmarks/chaos_stream.py --schedules 50 --seed 1 [--records 2000] [--cluster]

Each schedule runs against REAL parts: a tansu broker, PostgreSQL (reached through a TCP proxy this
script controls), and 2-3 `FraudStreamActor`s on a local Ray (with `--cluster`, one more schedule
on a 2-node `ray.cluster_utils.Cluster` with one node killed). While it produces valid simulated
transactions, chargeback labels and hostile records drawn from hypothesis strategies
(`tests/hostile.py`: random bytes, deep nesting, odd and huge numbers, extreme and malformed
timestamps, control characters, oversized payloads, duplicate ids with equal and with different
payloads, labels for transactions never seen), it injects at random times:

    kill        SIGKILL of a consumer actor's process (Ray restarts it; its run is resubmitted)
    zombie      SIGSTOP of a consumer past the session timeout, then SIGCONT (it wakes up fenced)
    store       PostgreSQL outage: new connections refused and open ones cut, for 2-6 s
    broker      broker restart (tansu keeps topics in memory: the producer re-sends everything in
                the same order to the same partitions, so offsets match; what this proves is that
                the stored positions, not the lost Kafka offsets, drive the consumers)
    add/remove  consumers added and stopped (rebalances)

After the schedule it heals everything, waits until the stored positions reach the end of every
partition (the ends the broker acknowledged to the producer: tansu answers an end-offsets query
just after a restart with less, which once stopped the drain early and read as 53 records lost),
then runs a fault-free reference job over the same records (same topics, a new group and schema)
and compares: lost (valid ids not scored), duplicated (rows or dead letters twice,
extra ids), dlq_mismatch (dead letters vs hostile records, and vs the reference, each with a
reason), score_mismatch (|score - reference| > 1e-4), alert_mismatch (alerts vs scores over the
threshold). One line per schedule, then the totals; the exit status is 0 only when all are zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("RAY_AUTH_MODE", "token")

PG_ADMIN = os.environ.get("ARGUS_CHAOS_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
THRESHOLD = 0.5


# --- the store outage: a TCP proxy in front of PostgreSQL ------------------------------------------

class TcpProxy:
    """127.0.0.1:<port> -> upstream. `outage()` closes the listener (new connections refused) and
    cuts every open connection; `heal()` listens again on the same port."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = _free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.down = False
        self.heal()

    def heal(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener, self.down = s, False
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def outage(self) -> None:
        self.down = True
        if self._listener is not None:
            try:  # wakes the blocked accept(); close() alone leaves the socket listening
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def proxied(base: str, port: int) -> str:
    from sqlalchemy.engine import make_url

    return make_url(base).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


# --- the broker and the producer -----------------------------------------------------------------

class Broker:
    def __init__(self, settings, partitions: int, workdir: Path):
        import infra.local_broker as lb

        self.lb, self.settings, self.partitions = lb, settings, partitions
        self.state_dir = workdir / "broker"
        self.port = lb.free_port()
        self.topics: list[str] = []
        self.start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.lb._check_port_free = lambda host, port: None  # the old listener's sockets may sit in TIME_WAIT
        self.lb.start(self.settings, port=self.port, partitions=self.partitions, state_dir=self.state_dir)
        if self.topics:
            self.create(self.topics)

    def create(self, topics: list[str]) -> None:
        from pipelines.kafka_io import create_topics

        self.topics = sorted(set(self.topics) | set(topics))
        create_topics(self.bootstrap, self.topics, self.partitions)

    def stop(self) -> None:
        self.lb.stop(self.settings, state_dir=self.state_dir)


@dataclass
class Sent:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    kind: str  # valid | dead | skip | label
    offset: int = -1


class Producer:
    """Sends records to explicit partitions, one in flight, so a re-send after a broker restart puts
    every record at the offset it had."""

    def __init__(self, settings, partitions: int):
        self.settings, self.partitions = settings, partitions
        self.sent: list[Sent] = []
        self._producer = None

    def _make(self):
        from pipelines.kafka_io import make_producer

        self._producer = make_producer(self.settings, max_in_flight_requests_per_connection=1, linger_ms=5,
                                       retries=10, request_timeout_ms=10_000, max_block_ms=10_000)

    def partition_of(self, key: bytes | None) -> int:
        return zlib.crc32(key or b"") % self.partitions

    def send(self, items: list[Sent]) -> None:
        self._send(items)
        self.sent.extend(items)

    def _send(self, items: list[Sent]) -> None:
        for attempt in range(40):
            try:
                if self._producer is None:
                    self._make()
                futures = [self._producer.send(s.topic, s.value, key=s.key, partition=s.partition) for s in items]
                self._producer.flush(30)
                for s, f in zip(items, futures):
                    md = f.get(timeout=10)
                    if s.offset not in (-1, md.offset):
                        raise AssertionError(f"re-sent record landed at {md.offset}, was {s.offset}")
                    s.offset = md.offset
                return
            except AssertionError:
                raise
            except Exception:  # noqa: BLE001 - the broker is restarting: start over with a fresh producer
                try:
                    self._producer.close(0)
                except Exception:  # noqa: BLE001
                    pass
                self._producer = None
                time.sleep(0.5)
        raise RuntimeError("producer could not send after 40 attempts")

    def resend_all(self) -> None:
        """After a broker restart (memory storage): everything again, in the original order (each
        record must land at the offset it had: checked)."""
        if self._producer is not None:
            try:
                self._producer.close(0)
            except Exception:  # noqa: BLE001
                pass
        self._producer = None
        self._send(list(self.sent))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(5)


# --- the workload ----------------------------------------------------------------------------------

def workload(rng: random.Random, n: int, hostile_frac: float, schedule: int, seed: int, topics: dict[str, str],
             partitions: int) -> list[list[Sent]]:
    """Chunks of (valid transactions, chargebacks for some of them, hostile records), shuffled within a chunk."""
    from pipelines.contracts import Label
    from tests.hostile import draw, hostile_labels, hostile_transactions, realise
    from tests.stream_fixtures import transactions

    prefix = f"s{schedule}"
    valid = transactions(n, customers=max(20, n // 25), terminals=max(30, n // 15), seed=seed * 1000 + schedule,
                         prefix=prefix)
    n_hostile = max(1, int(n * hostile_frac))
    origins: dict[int, str] = {}
    hostile = realise(draw(hostile_transactions(valid, max_oversize=1_200_000), n_hostile, seed * 1000 + schedule),
                      valid, prefix, origins)
    n_bad_labels = max(1, n_hostile // 5)
    bad_labels = realise(draw(hostile_labels(), n_bad_labels, seed * 7919 + schedule), valid, prefix)
    frauds = [t for t in valid if rng.random() < 0.03]
    labels = [Label(transaction_id=t.transaction_id, is_fraud=True, reported_at=t.timestamp, customer_id=t.customer_id,
                    terminal_id=t.terminal_id) for t in frauds]

    def part(key: bytes | None) -> int:
        return zlib.crc32(key or b"") % partitions

    chunks = 5
    out: list[list[Sent]] = [[] for _ in range(chunks)]
    for i, t in enumerate(valid):
        k = t.customer_id.encode()
        out[i * chunks // len(valid)].append(Sent(topics["tx"], part(k), k, t.to_json(), "valid"))
    chunk_of = {t.transaction_id: i * chunks // len(valid) for i, t in enumerate(valid)}
    for j, (kind, key, value) in enumerate(hostile):
        k = (key or "k").encode() if isinstance(key, str) else key
        if j in origins:  # a duplicate comes after its original: a later chunk
            c = chunk_of[origins[j]]
            if c + 1 >= chunks:
                continue
            out[rng.randrange(c + 1, chunks)].append(Sent(topics["tx"], part(k), k, value, kind))
            continue
        out[rng.randrange(chunks)].append(Sent(topics["tx"], part(k), k, value, kind))
    for lb in labels:  # a chargeback comes after its transaction: one chunk later or more
        c = chunk_of[lb.transaction_id]
        if c + 1 >= chunks:
            continue
        k = lb.customer_id.encode()
        out[rng.randrange(c + 1, chunks)].append(Sent(topics["lb"], part(k), k, lb.to_json(), "label"))
    for kind, key, value in bad_labels:  # early: the ghosts must outlive the pending horizon in event time
        k = (key or "k").encode() if isinstance(key, str) else key
        out[rng.randrange(0, 2)].append(Sent(topics["lb"], part(k), k, value, "dead_label"))
    for c in out:
        # valid transactions keep their order (the stream's history is in time order); others are mixed in
        vs = [s for s in c if s.kind == "valid"]
        others = [s for s in c if s.kind != "valid"]
        merged = list(vs)
        for s in others:
            merged.insert(rng.randrange(len(merged) + 1), s)
        c[:] = merged
    return out


# --- the consumers -------------------------------------------------------------------------------

@dataclass
class Consumer:
    actor: Any
    name: str
    ref: Any = None
    pid: int | None = None
    stopping: bool = False
    stopped_pid: int | None = None  # SIGSTOPped until `resume_at`
    resume_at: float = 0.0
    restart_at: float = 0.0  # died: run() again once it answers, from this time on


class Fleet:
    """Consumer actors of one group; resubmits `run()` to an actor Ray restarted after a kill."""

    def __init__(self, settings, store_url: str, config: dict[str, Any], strategy: str | None = None,
                 logs: bool = False):
        self.settings, self.store_url, self.config, self.strategy = settings, store_url, config, strategy
        self.logs = logs
        self.consumers: list[Consumer] = []
        self.restarts = 0
        self.errors: list[str] = []
        self.results: list[dict] = []
        self._n = 0

    def add(self) -> Consumer:
        from services.fraud_stream_actor import FraudStreamActor, settings_data

        name = f"fraud-{self._n}"
        self._n += 1
        opts: dict[str, Any] = {"num_cpus": 0}
        if self.strategy:
            opts = {"num_cpus": 1, "scheduling_strategy": self.strategy}
        actor = FraudStreamActor.options(**opts).remote(settings_data(self.settings), self.store_url, name, None, None,
                                                       self.logs, self.config)
        c = Consumer(actor, name)
        c.ref = actor.run.remote(None, None)
        self.consumers.append(c)
        return c

    def live(self) -> list[Consumer]:
        return [c for c in self.consumers if not c.stopping]

    def pid(self, c: Consumer) -> int | None:
        import ray

        try:
            c.pid = ray.get(c.actor.pid.remote(), timeout=20)
        except Exception:  # noqa: BLE001 - restarting
            return None
        return c.pid

    def tick(self) -> None:
        import ray

        now = time.monotonic()
        for c in self.consumers:
            if c.stopped_pid and now >= c.resume_at:
                _signal(c.stopped_pid, signal.SIGCONT)
                c.stopped_pid = None
            if c.ref is None:
                continue
            ready, _ = ray.wait([c.ref], timeout=0)
            if not ready:
                continue
            try:
                self.results.append(ray.get(c.ref))
                c.ref = None
            except Exception as exc:  # noqa: BLE001 - the actor died (a kill): Ray restarts it; run it again
                self.errors.append(f"{c.name}: {type(exc).__name__}: {str(exc)[:300]}")
                if c.stopping:
                    c.ref = None
                    continue
                self.restarts += 1
                c.ref = None
                c.restart_at = time.monotonic() + 1.0
        for c in self.consumers:  # resubmit once the restarted actor answers
            if c.ref is None and not c.stopping and c.restart_at and time.monotonic() >= c.restart_at:
                try:
                    ray.get(c.actor.pid.remote(), timeout=0.5)
                except Exception:  # noqa: BLE001 - still restarting
                    c.restart_at = time.monotonic() + 1.0
                    continue
                c.restart_at = 0.0
                c.ref = c.actor.run.remote(None, None)

    def wake_all(self) -> None:
        for c in self.consumers:
            if c.stopped_pid:
                _signal(c.stopped_pid, signal.SIGCONT)
                c.stopped_pid = None

    def stop_all(self, timeout: float = 60.0) -> None:
        import ray

        self.wake_all()
        for c in self.consumers:
            c.stopping = True
            try:
                c.actor.stop.remote()
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + timeout
        for c in self.consumers:
            if c.ref is not None:
                try:
                    self.results.append(ray.get(c.ref, timeout=max(1.0, deadline - time.monotonic())))
                except Exception:  # noqa: BLE001
                    pass
            ray.kill(c.actor, no_restart=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- one schedule ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    schedule: int
    faults: list[str]
    records: int = 0
    hostile: int = 0
    scored: int = 0
    dead_letters: int = 0
    lost: int = 0
    duplicated: int = 0
    dlq_mismatch: int = 0
    score_mismatch: int = 0
    alert_mismatch: int = 0
    restarts: int = 0
    fenced: int = 0
    retries: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"schedule={self.schedule} faults={','.join(self.faults) or '-'} records={self.records} "
                f"hostile={self.hostile} scored={self.scored} dead_letters={self.dead_letters} lost={self.lost} "
                f"duplicated={self.duplicated} dlq_mismatch={self.dlq_mismatch} score_mismatch={self.score_mismatch} "
                f"alert_mismatch={self.alert_mismatch} restarts={self.restarts} fenced={self.fenced} "
                f"retries={self.retries} secs={self.seconds:.0f}")


FAULTS = ("kill", "zombie", "store", "broker", "add", "remove")


def plan(rng: random.Random, window: float, allow: tuple[str, ...]) -> list[tuple[float, str]]:
    if not allow:
        return []
    k = rng.randint(3, 5)
    kinds = [rng.choice(allow) for _ in range(k)]
    if not set(kinds) & {"kill", "zombie"}:
        kinds[0] = rng.choice([f for f in ("kill", "zombie") if f in allow] or list(allow))
    times = sorted(rng.uniform(2.0, window) for _ in kinds)
    return list(zip(times, kinds))


def run_schedule(index: int, args, settings_base, scorer, proxy: TcpProxy, workdir: Path, cluster=None) -> Outcome:
    import ray

    from pipelines.fraud_stream import FraudStreamJob, StreamConfig
    from pipelines.kafka_io import with_bootstrap
    from pipelines.metrics import StreamMetrics
    from pipelines.store import Store
    from pipelines.stream_positions import positions

    t0 = time.monotonic()
    rng = random.Random(args.seed * 100_003 + index)
    tag = f"c{args.seed}_{index}_{uuid.uuid4().hex[:6]}"
    broker = Broker(settings_base, args.partitions, workdir / tag)
    settings = with_bootstrap(settings_base, broker.bootstrap)
    topics = {"tx": f"{tag}.tx", "lb": f"{tag}.lb", "alerts": f"{tag}.alerts", "dlq": f"{tag}.dlq"}
    broker.create(list(topics.values()))
    schema, ref_schema = f"chaos_{tag}", f"chaos_ref_{tag}"
    with Store.from_url(PG_ADMIN) as admin, admin.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text(f"CREATE SCHEMA {schema}"))
        conn.execute(text(f"CREATE SCHEMA {ref_schema}"))
    direct_url = schema_url(PG_ADMIN, schema)
    chaos_url = schema_url(proxied(PG_ADMIN, proxy.port), schema)
    group = f"g-{tag}"
    config = dict(transactions_topic=topics["tx"], labels_topic=topics["lb"], alerts_topic=topics["alerts"],
                  dead_letter_topic=topics["dlq"], group=group, max_batch=200, snapshot_interval_s=1.0,
                  snapshot_min_records=50, pending_horizon_days=0.05, retry_initial_s=0.1, retry_max_s=1.0)
    Store.from_url(direct_url).create_schema()
    allow = tuple(f for f in FAULTS if f not in (args.no or "").split(","))
    if cluster is not None:
        allow = tuple(f for f in allow if f != "broker")
    faults = plan(rng, args.window, allow)
    if cluster is not None:  # the first kill of a cluster schedule removes that consumer's node: make sure one comes
        faults = sorted(faults + [(rng.uniform(0.3 * args.window, 0.7 * args.window), "kill")])
    out = Outcome(index, [])
    chunks = workload(rng, args.records, args.hostile_frac, index, args.seed, topics, args.partitions)
    out.records = sum(len(c) for c in chunks)
    out.hostile = sum(1 for c in chunks for s in c if s.kind in ("dead", "skip", "dead_label"))
    producer = Producer(settings, args.partitions)
    fleet = Fleet(settings, chaos_url, config, strategy="SPREAD" if cluster is not None else None, logs=args.verbose)
    node_killed = False
    try:
        for _ in range(args.consumers):
            fleet.add()
        chunk_times = [i * args.window / len(chunks) for i in range(len(chunks))]
        pending = sorted([(t, "chunk", i) for i, t in enumerate(chunk_times)] +
                         [(t, f, None) for t, f in faults], key=lambda e: e[0])
        store_back_at = None
        start = time.monotonic()
        while pending or store_back_at:
            now = time.monotonic() - start
            fleet.tick()
            if store_back_at is not None and time.monotonic() >= store_back_at:
                proxy.heal()
                store_back_at = None
            while pending and pending[0][0] <= now:
                _, what, arg = pending.pop(0)
                if what == "chunk":
                    producer.send(chunks[arg])
                    continue
                live = [c for c in fleet.live() if not c.stopped_pid]
                if what == "kill" and live:
                    c = rng.choice(live)
                    pid = fleet.pid(c)
                    if cluster is not None and not node_killed:
                        node = _node_of(cluster, c)
                        if node is not None:
                            cluster.remove_node(node)
                            node_killed = True
                            out.faults.append(f"node_kill@{now:.0f}")
                            continue
                    if pid:
                        _signal(pid, signal.SIGKILL)
                        out.faults.append(f"kill@{now:.0f}")
                elif what == "zombie" and live:
                    c = rng.choice(live)
                    pid = fleet.pid(c)
                    if pid:
                        _signal(pid, signal.SIGSTOP)
                        c.stopped_pid, c.resume_at = pid, time.monotonic() + settings.kafka.session_timeout_ms / 1000 + \
                            rng.uniform(2, 5)
                        out.faults.append(f"zombie@{now:.0f}")
                elif what == "store" and store_back_at is None:
                    proxy.outage()
                    down = rng.uniform(2, 6)
                    store_back_at = time.monotonic() + down
                    out.faults.append(f"store@{now:.0f}({down:.1f}s)")
                elif what == "broker":
                    broker.stop()
                    time.sleep(rng.uniform(0.5, 2.0))
                    broker.start()
                    producer.resend_all()
                    out.faults.append(f"broker@{now:.0f}")
                elif what == "add" and len(fleet.live()) < 3:
                    fleet.add()
                    out.faults.append(f"add@{now:.0f}")
                elif what == "remove" and len(fleet.live()) > 1:
                    c = rng.choice([c for c in fleet.live() if not c.stopped_pid] or fleet.live())
                    c.stopping = True
                    c.actor.stop.remote()
                    out.faults.append(f"remove@{now:.0f}")
            time.sleep(0.1)
        fleet.wake_all()
        if not fleet.live():
            fleet.add()
        # drain: the stored positions reach the end of every partition
        ends = _sent_ends(producer.sent)
        broker_ends = _end_offsets(settings, [topics["tx"], topics["lb"]], args.partitions)
        if any(broker_ends.get(k, 0) != e for k, e in ends.items()):
            out.details.append(f"broker end offsets {sorted(broker_ends.items())} != sent {sorted(ends.items())}")
        deadline = time.monotonic() + args.drain_timeout
        with Store.from_url(direct_url) as direct:
            while time.monotonic() < deadline:
                fleet.tick()
                pos = positions(direct, group)
                behind = {k: e for k, e in ends.items() if e > 0 and (pos.get(k) or 0) < e}
                if not behind:
                    break
                time.sleep(0.5)
            else:
                out.details.append(f"not drained: {behind}")
        time.sleep(1.0)
        fleet.stop_all()
        for r in fleet.results:
            out.fenced += r.get("fenced", 0)
            out.retries += r.get("store_retries", 0)
        out.restarts = fleet.restarts
        if args.verbose and fleet.errors:
            print("\n".join(fleet.errors[:5]), file=sys.stderr)

        # the fault-free reference over the same records
        ref_url = schema_url(PG_ADMIN, ref_schema)
        ref_config = StreamConfig.from_settings(settings, **{**config, "group": f"ref-{tag}"})
        ref_job = FraudStreamJob(settings, Store.from_url(ref_url), scorer, ref_config, StreamMetrics(), name="ref")
        ref_job.run(seconds=args.drain_timeout, idle_exit_s=3.0)
        compare(out, direct_url, ref_url, producer.sent, topics)
    finally:
        fleet.wake_all()
        try:
            fleet.stop_all(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        producer.close()
        if proxy.down:
            proxy.heal()
        broker.stop()
        if not args.keep:
            with Store.from_url(PG_ADMIN) as admin, admin.engine.begin() as conn:
                from sqlalchemy import text

                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                conn.execute(text(f"DROP SCHEMA IF EXISTS {ref_schema} CASCADE"))
    out.seconds = time.monotonic() - t0
    del ray
    return out


def _node_of(cluster, c: Consumer):
    import ray

    try:
        node_id = ray.get(c.actor.node_id.remote(), timeout=10)
    except Exception:  # noqa: BLE001
        return None
    for node in cluster.worker_nodes:
        if node.node_id == node_id:
            return node
    return None


def _sent_ends(sent: list[Sent]) -> dict[tuple[str, int], int]:
    """The end of every partition the producer wrote, from the offsets the broker acknowledged: what
    the drain waits for (a broker that has just restarted may answer an end-offsets query with less)."""
    ends: dict[tuple[str, int], int] = {}
    for s in sent:
        ends[(s.topic, s.partition)] = max(ends.get((s.topic, s.partition), 0), s.offset + 1)
    return ends


def _end_offsets(settings, topics: list[str], partitions: int) -> dict[tuple[str, int], int]:
    from kafka import TopicPartition

    from pipelines.kafka_io import make_consumer

    consumer = make_consumer(settings, None, None)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def compare(out: Outcome, url: str, ref_url: str, sent: list[Sent], topics: dict[str, str]) -> None:
    from sqlalchemy import text

    from pipelines.contracts import Transaction, decode

    from pipelines.store import Store

    def load(u: str):
        with Store.from_url(u) as s, s.engine.connect() as conn:
            scores = {r[0]: r[1] for r in conn.execute(text("SELECT transaction_id, score FROM fraud_scores"))}
            n_scores = conn.execute(text("SELECT count(*) FROM fraud_scores")).scalar_one()
            dl = conn.execute(text('SELECT source, "partition", "offset", reason, stage FROM dead_letters')).all()
            alerts = set(conn.execute(text("SELECT transaction_id FROM alerts")).scalars())
        return scores, n_scores, dl, alerts

    scores, n_scores, dl, alerts = load(url)
    ref_scores, _, ref_dl, _ = load(ref_url)
    expected_ids = {decode(Transaction, s.value).transaction_id for s in sent if s.kind == "valid"}
    dead_pos = {(s.topic, s.partition, s.offset) for s in sent if s.kind in ("dead", "dead_label")}
    got_pos = [(d[0], d[1], d[2]) for d in dl]
    out.scored, out.dead_letters = len(scores), len(dl)
    lost = expected_ids - set(scores)
    out.lost = len(lost)
    extra = set(scores) - expected_ids
    out.duplicated = (n_scores - len(scores)) + len(extra) + (len(got_pos) - len(set(got_pos)))
    ref_pos = {(d[0], d[1], d[2]) for d in ref_dl}
    no_reason = sum(1 for d in dl if not (d[3] or "").strip())
    out.dlq_mismatch = len(set(got_pos) ^ dead_pos) + len(set(got_pos) ^ ref_pos) + no_reason
    common = set(scores) & set(ref_scores)
    out.score_mismatch = sum(1 for k in common if abs(scores[k] - ref_scores[k]) > 1e-4) + len(set(ref_scores) ^ set(scores))
    high = {k for k, v in scores.items() if v >= THRESHOLD}
    out.alert_mismatch = len(alerts ^ high)
    if lost:
        out.details.append(f"lost e.g. {sorted(lost)[:5]}")
    if set(got_pos) ^ dead_pos:
        missing = sorted(dead_pos - set(got_pos))[:5]
        unexpected = sorted(set(got_pos) - dead_pos)[:5]
        out.details.append(f"dead letters missing {missing} unexpected {unexpected} "
                           f"(stages {[d[4] for d in dl if (d[0], d[1], d[2]) in set(unexpected)][:5]})")
    if set(got_pos) ^ ref_pos:
        out.details.append(f"dead letters vs reference: only here {sorted(set(got_pos) - ref_pos)[:5]}, "
                           f"only in the reference {sorted(ref_pos - set(got_pos))[:5]}")
    if out.score_mismatch:
        diffs = sorted(((abs(scores[k] - ref_scores[k]), k) for k in common), reverse=True)[:3]
        out.details.append(f"score diffs {diffs}; only in one run: {sorted(set(ref_scores) ^ set(scores))[:5]}")


# --- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--records", type=int, default=2000, help="valid transactions per schedule")
    ap.add_argument("--hostile-frac", type=float, default=0.1, help="hostile records per valid one")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--window", type=float, default=25.0, help="seconds over which records and faults come")
    ap.add_argument("--drain-timeout", type=float, default=240.0)
    ap.add_argument("--cluster", action="store_true", help="also schedules on a 2-node Ray cluster, one node killed in each")
    ap.add_argument("--cluster-schedules", type=int, default=1, help="how many cluster schedules with --cluster")
    ap.add_argument("--no", default="", help="comma-separated fault kinds to leave out")
    ap.add_argument("--json", type=Path, default=None, help="write the outcomes here")
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL schemas")
    ap.add_argument("--verbose", action="store_true", help="consumer logs on stderr")
    ap.add_argument("--only", type=int, default=None, help="run only this schedule index (to reproduce one)")
    args = ap.parse_args(argv)
    import logging

    argus_log = logging.getLogger("argus")
    old_level = argus_log.level
    argus_log.setLevel(logging.INFO if args.verbose else logging.ERROR)
    try:
        return _campaign(args)
    finally:
        argus_log.setLevel(old_level)  # run from a test, the process goes on


def _campaign(args) -> int:

    import ray

    from pipelines.fraud_stream import load_scorer
    from pipelines.settings import Settings
    from sqlalchemy.engine import make_url

    pg = make_url(PG_ADMIN)
    proxy = TcpProxy((pg.host or "127.0.0.1", pg.port or 5432))
    settings = Settings()
    scorer = load_scorer(None, threads=1)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    outcomes: list[Outcome] = []
    started_ray = False
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="rc", dir="/tmp"),
                 log_to_driver=args.verbose, configure_logging=False)
        started_ray = True
    try:
        for i in range(args.schedules):
            if args.only is not None and i != args.only:
                continue
            o = run_schedule(i, args, settings, scorer, proxy, workdir)
            outcomes.append(o)
            print(o.line() + ("" if not o.details else "  # " + " | ".join(o.details)), flush=True)
        if args.cluster:
            from ray.cluster_utils import Cluster

            if started_ray:
                ray.shutdown()
                started_ray = False
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0},
                              shutdown_at_exit=True)
            for _ in range(2):
                cluster.add_node(num_cpus=3)
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            try:
                for j in range(args.cluster_schedules):
                    o = run_schedule(args.schedules + j, args, settings, scorer, proxy, workdir, cluster=cluster)
                    o.faults.insert(0, "cluster")
                    outcomes.append(o)
                    print(o.line() + ("" if not o.details else "  # " + " | ".join(o.details)), flush=True)
                    if j + 1 < args.cluster_schedules:  # a fresh second node for the next one
                        cluster.add_node(num_cpus=3)
            finally:
                ray.shutdown()
                cluster.shutdown()
    finally:
        if started_ray:
            ray.shutdown()
    totals = {k: sum(getattr(o, k) for o in outcomes) for k in
              ("lost", "duplicated", "dlq_mismatch", "score_mismatch", "alert_mismatch", "hostile", "records",
               "restarts", "fenced")}
    print(f"schedules={len(outcomes)} lost={totals['lost']} duplicated={totals['duplicated']} "
          f"dlq_mismatch={totals['dlq_mismatch']} score_mismatch={totals['score_mismatch']} "
          f"alert_mismatch={totals['alert_mismatch']} hostile={totals['hostile']} records={totals['records']} "
          f"restarts={totals['restarts']} fenced={totals['fenced']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "totals": totals,
                                         "schedules": [o.__dict__ for o in outcomes]}, indent=1))
    bad = any(totals[k] for k in ("lost", "duplicated", "dlq_mismatch", "score_mismatch", "alert_mismatch"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
