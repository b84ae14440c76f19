"""Hostile Kafka records, as hypothesis strategies: what a broken or malicious producer can send.

Each strategy yields `(kind, key, value)` where `kind` names what the stream must do with it:

    dead        a dead letter with a reason (decode, validate_input, deduplicate, decode_label, label_horizon,
                decode_disposition, disposition)
    skip        a same-payload duplicate of a valid transaction: skipped, scored once
    accept      valid although odd (unknown customer, out-of-order time): scored once

Used by the property tests of the contracts and the stream steps, and by the fault campaign
(`benchmarks/chaos_stream.py`), which draws them deterministically with `draw(...)`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from pipelines.contracts import Transaction

CONTROL = [chr(c) for c in (0, 1, 7, 8, 9, 10, 13, 27, 127, 0x85, 0x9F)] + ["\u2028", "\u2029"]

#: raw JSON tokens put in place of a number: not numbers JSON allows, or outside float range
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "0x10", "1_000", "01", "--1", "1.", ".5"]
bad_numbers = st.one_of(
    st.floats(max_value=-0.01, allow_nan=False, allow_infinity=False),  # negative
    st.floats(min_value=1e12 * 1.01, allow_nan=False, allow_infinity=False),  # absurd
    st.integers(min_value=10 ** 13, max_value=10 ** 400),  # huge integers (also past float range)
    st.sampled_from([True, False, None, "12.5", [], {}, [1.5], {"v": 1}]),  # wrong types
)

bad_times = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0000-01-01T00:00:00Z",
                     "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-13-01T00:00:00Z",
                     "", "yesterday", "2024-01-01T25:61:61Z", "1e400"]),
    st.integers(min_value=10 ** 12, max_value=10 ** 30),  # epoch numbers far out
    st.integers(max_value=-1),
    st.sampled_from([True, None, [], {}, 1.5e308]),
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def _with(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**base, **fields}


@st.composite
def nested(draw) -> bytes:
    depth = draw(st.integers(min_value=200, max_value=50_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    field = draw(st.sampled_from(["amount", "transaction_id", "merchant_category", None]))
    body = opener * depth + "1" + closer * depth
    if field is None:
        return body.encode()
    return ('{"transaction_id":"n","timestamp":"2024-01-01T00:00:00Z","customer_id":"c","terminal_id":"t",'
            f'"amount":1,"{field}":' + body + "}").encode() if field != "amount" else (
        '{"transaction_id":"n","timestamp":"2024-01-01T00:00:00Z","customer_id":"c","terminal_id":"t","amount":'
        + body + "}").encode()


def hostile_transactions(valid: list[Transaction], max_oversize: int = 1_100_000) -> st.SearchStrategy:
    """(kind, key, value) hostile records around a list of valid transactions (ids are made unique
    per draw by the caller: `draw` suffixes them)."""
    base = valid[0].model_dump(mode="json")
    ident = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
    with_control = st.builds(lambda a, c, b: a + c + b, st.text(max_size=8), st.sampled_from(CONTROL), st.text(max_size=8))
    too_long = st.text(min_size=129, max_size=2000)
    field = st.sampled_from(["transaction_id", "customer_id", "terminal_id"])
    return st.one_of(
        st.binary(min_size=0, max_size=2000).map(lambda b: ("dead", "k", b)),
        st.text(max_size=200).map(lambda t: ("dead", "k", t.encode("utf-8", "surrogatepass"))),
        nested().map(lambda b: ("dead", "k", b)),
        bad_numbers.map(lambda v: ("dead", base["customer_id"], _dumps(_with(base, amount=v)))),
        st.sampled_from(RAW_NUMBERS).map(lambda v: ("dead", base["customer_id"], _dumps(base).replace(
            b'"amount": ' + json.dumps(base["amount"]).encode(), b'"amount": ' + v.encode()))),
        bad_times.map(lambda v: ("dead", base["customer_id"], _dumps(_with(base, timestamp=v)))),
        st.tuples(field, with_control).map(lambda fv: ("dead", "k", _dumps(_with(base, **{fv[0]: fv[1]})))),
        st.tuples(field, too_long).map(lambda fv: ("dead", "k", _dumps(_with(base, **{fv[0]: fv[1]})))),
        st.tuples(field, st.sampled_from([1, 1.5, True, None, [], {}, ""])).map(
            lambda fv: ("dead", "k", _dumps(_with(base, **{fv[0]: fv[1]})))),
        st.dictionaries(st.text(max_size=10).filter(lambda k: k not in base), st.integers(), min_size=1, max_size=3).map(
            lambda extra: ("dead", "k", _dumps({**base, **extra}))),
        st.integers(min_value=1_048_577, max_value=max_oversize).map(
            lambda n: ("dead", "k", _dumps(_with(base, merchant_category="x" * n)))),
        st.sampled_from([2, 0, -1, "1", None]).map(lambda v: ("dead", "k", _dumps(_with(base, schema_version=v)))),
        ident.map(lambda _: ("dup_same", None, None)),  # filled in by the caller (a copy of a valid record)
        ident.map(lambda _: ("dup_other", None, None)),
    )


def hostile_labels() -> st.SearchStrategy:
    """(kind, key, value) hostile labels: malformed ones and labels for transactions never seen."""
    good_time = "2024-03-01T00:00:00Z"
    return st.one_of(
        st.binary(max_size=300).map(lambda b: ("dead_label", "k", b)),
        bad_times.map(lambda v: ("dead_label", "k", _dumps({"transaction_id": "x", "is_fraud": True, "reported_at": v}))),
        st.sampled_from([1, "yes", None, [], 0.5]).map(
            lambda v: ("dead_label", "k", _dumps({"transaction_id": "x", "is_fraud": v, "reported_at": good_time}))),
        st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\u2028\u2029"),
                min_size=1, max_size=40).map(
            lambda t: ("unknown_label", None, _dumps({"transaction_id": "ghost-" + t, "is_fraud": True,
                                                      "reported_at": good_time}))),
    )


def hostile_dispositions() -> st.SearchStrategy:
    """(kind, key, value) hostile investigators' dispositions: malformed ones (`dead_disposition`: not
    JSON, wrong or missing fields, an unknown kind, bad or non-finite times, control characters, huge or
    deep values) and well-formed ones about a transaction nobody knows (`unknown_disposition`: no
    customer or terminal to update)."""
    good = {"transaction_id": "x", "disposition": "fraud", "disposed_by": "analyst", "disposed_at": "2024-03-01T00:00:00Z",
            "customer_id": "C0001"}
    dead = lambda v: ("dead_disposition", "k", v)  # noqa: E731
    return st.one_of(
        st.binary(max_size=300).map(dead),
        nested().map(dead),
        bad_times.map(lambda v: dead(_dumps(_with(good, disposed_at=v)))),
        st.sampled_from(RAW_NUMBERS).map(lambda v: dead(_dumps(good).replace(b'"2024-03-01T00:00:00Z"', v.encode()))),
        st.one_of(st.text(max_size=20).filter(lambda k: k not in ("fraud", "legitimate", "unsure")),
                  st.sampled_from([1, 2, True, None, [], {}, "FRAUD", "fraud "])).map(
            lambda v: dead(_dumps(_with(good, disposition=v)))),
        st.sampled_from(["transaction_id", "disposition", "disposed_by", "disposed_at"]).map(
            lambda f: dead(_dumps({k: v for k, v in good.items() if k != f}))),
        st.tuples(st.sampled_from(["transaction_id", "disposed_by", "customer_id", "note"]),
                  st.builds(lambda a, c, b: a + c + b, st.text(max_size=8), st.sampled_from(CONTROL), st.text(max_size=8))
                  ).map(lambda fv: dead(_dumps(_with(good, **{fv[0]: fv[1]})))),
        st.integers(min_value=1001, max_value=1_100_000).map(lambda n: dead(_dumps(_with(good, note="x" * n)))),
        st.dictionaries(st.text(max_size=10).filter(lambda k: k not in good and k not in ("note", "terminal_id", "schema_version")),
                        st.integers(), min_size=1, max_size=3).map(lambda extra: dead(_dumps({**good, **extra}))),
        st.sampled_from([2, 0, "1", None]).map(lambda v: dead(_dumps(_with(good, schema_version=v)))),
        st.sampled_from(["fraud", "legitimate", "unsure"]).map(
            lambda k: ("unknown_disposition", None, _dumps({**{f: v for f, v in good.items() if f != "customer_id"},
                                                            "disposition": k}))),
    )


def draw(strategy: st.SearchStrategy, n: int, at_seed: int) -> list[Any]:
    """n examples of a strategy, the same ones for the same seed (hypothesis' own generator)."""
    out: list[Any] = []

    @seed(at_seed)
    @settings(max_examples=n, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[__import__("hypothesis").Phase.generate])
    @given(strategy)
    def collect(example):
        out.append(example)

    collect()
    return out[:n]


def realise(examples: list[tuple[str, Any, Any]], valid: list[Transaction], prefix: str,
            origins: dict[int, str] | None = None) -> list[tuple[str, Any, bytes]]:
    """Concrete (kind, key, value) records: duplicates copied from valid ones, ghost label ids made
    unique. A duplicate must come after its original; `origins` (if given) gets index -> original id."""
    out = []
    for i, (kind, key, value) in enumerate(examples):
        if kind == "dup_same":
            t = valid[(i * 7919) % len(valid)]
            out.append(("skip", t.customer_id, t.to_json()))
            if origins is not None:
                origins[len(out) - 1] = t.transaction_id
        elif kind == "dup_other":
            t = valid[(i * 104729) % len(valid)]
            other = t.model_copy(update={"amount": round(t.amount + 1.25, 2)})
            out.append(("dead", t.customer_id, other.to_json()))
            if origins is not None:
                origins[len(out) - 1] = t.transaction_id
        elif kind == "unknown_label":
            data = json.loads(value)
            data["transaction_id"] = f"{prefix}-ghost-{i}"
            out.append(("dead", data["transaction_id"], json.dumps(data).encode()))
        elif kind == "unknown_disposition":
            data = json.loads(value)
            data["transaction_id"] = f"{prefix}-ghost-disposition-{i}"
            out.append(("dead", data["transaction_id"], json.dumps(data).encode()))
        elif kind in ("dead_label", "dead_disposition"):
            out.append(("dead", key, value))
        else:
            out.append((kind, key, value))
    return out


def late_time(t: Transaction, days: float) -> Transaction:
    return t.model_copy(update={"timestamp": t.timestamp - timedelta(days=days)})
