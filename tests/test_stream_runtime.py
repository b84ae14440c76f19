"""The consumer runtime's idle exit (`run(idle_exit_s=...)`, `argus stream ... --idle-exit`): a consumer
leaves only when the group is settled and everything it owns is read to the end, never mid-rebalance."""

from __future__ import annotations

import threading

import pytest
from kafka import TopicPartition
from kafka.structs import MemberState

from pipelines.stream_runtime import StreamRuntime

P0, P1 = TopicPartition("tx", 0), TopicPartition("tx", 1)


class _Coordinator:
    def __init__(self, state):
        self.state = state


class _Consumer:
    def __init__(self, assignment, highwater, state=MemberState.STABLE):
        self._assignment, self._hw = set(assignment), dict(highwater)
        self._coordinator = _Coordinator(state)

    def assignment(self):
        return set(self._assignment)

    def highwater(self, tp):
        return self._hw.get(tp)


def _runtime(consumer, ready, cursor, assigned_event=False) -> StreamRuntime:
    rt = StreamRuntime.__new__(StreamRuntime)  # the idle check only: no broker, no store
    rt.consumer = consumer
    rt._ready = dict.fromkeys(ready, 1)
    rt._cursor = dict(cursor)
    rt._assigned_event = threading.Event()
    if assigned_event:
        rt._assigned_event.set()
    return rt


def test_drained_when_settled_and_every_owned_partition_is_at_its_end():
    rt = _runtime(_Consumer({P0, P1}, {P0: 10, P1: 5}), {P0, P1}, {P0: 10, P1: 5})
    assert rt.drained()


@pytest.mark.parametrize("case", ["mid_rebalance_empty_assignment", "rebalancing_state", "new_assignment_pending",
                                  "assigned_but_not_restored", "records_left", "highwater_unknown", "owns_nothing"])
def test_not_drained(case):
    consumer, ready, cursor, event = _Consumer({P0, P1}, {P0: 10, P1: 5}), {P0, P1}, {P0: 10, P1: 5}, False
    if case == "mid_rebalance_empty_assignment":  # kafka-python clears the assignment while the group rebalances
        consumer = _Consumer(set(), {})
    elif case == "rebalancing_state":
        consumer = _Consumer({P0, P1}, {P0: 10, P1: 5}, state=MemberState.REBALANCING)
    elif case == "new_assignment_pending":
        event = True
    elif case == "assigned_but_not_restored":
        ready = {P0}
    elif case == "records_left":
        cursor = {P0: 10, P1: 4}
    elif case == "highwater_unknown":
        consumer = _Consumer({P0, P1}, {P0: 10})
    elif case == "owns_nothing":
        consumer, ready, cursor = _Consumer(set(), {}), set(), {}
    assert not _runtime(consumer, ready, cursor, event).drained()
