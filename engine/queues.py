"""Bounded edge queues with declared overflow policies, and a node's fan-in inbox."""

from __future__ import annotations

import asyncio
from collections import deque

from engine.frame import Control, Message, Packet, now_ns
from engine.metrics import NodeMetrics
from engine.spec import QueueSpec


class Inbox:
    """The input side of a node: takes from its edges in turn, ends when all are closed."""

    def __init__(self) -> None:
        self.edges: list[EdgeQueue] = []
        self._ready = asyncio.Event()
        self._next = 0

    def notify(self) -> None:
        self._ready.set()

    def _pop_any(self) -> Message | None:
        n = len(self.edges)
        for k in range(n):
            index = (self._next + k) % n
            msg = self.edges[index].pop()
            if msg is not None:
                self._next = index + 1
                return msg
        return None

    @property
    def exhausted(self) -> bool:
        return all(e.closed and not e.items for e in self.edges)

    async def get(self, timeout_s: float | None = None) -> Message | None:
        """Next message; None when every edge is closed and empty, or on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            msg = self._pop_any()
            if msg is not None:
                return msg
            if self.exhausted:
                return None
            self._ready.clear()
            if deadline is None:
                await self._ready.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                return None


class EdgeQueue:
    """One graph edge: a bounded queue whose policy decides what happens when it is full.

    Control messages (stream start/end) are never dropped and do not count towards `size`.
    Every dropped item is counted on the consumer node by stream and reason.

    Compressed packets depend on the ones before them: once a packet of a stream is dropped,
    the stream's packets are dropped up to its next keyframe (reason `awaiting_keyframe`),
    so a decoder never sees a broken reference chain.
    """

    def __init__(self, src: str, dst: str, spec: QueueSpec, inbox: Inbox, consumer: NodeMetrics):
        self.src = src
        self.dst = dst
        self.spec = spec
        self.items: deque[Message] = deque()
        self.closed = False
        self._data = 0
        self._inbox = inbox
        self._consumer = consumer
        self._space = asyncio.Event()
        self._space.set()
        self._await_key: set[str] = set()  # streams whose packets wait for a keyframe
        inbox.edges.append(self)

    def __len__(self) -> int:
        return self._data

    async def put(self, msg: Message) -> None:
        if isinstance(msg, Control):
            self.items.append(msg)
            self._inbox.notify()
            return
        if self._broken_chain(msg):
            return
        policy = self.spec.policy
        while self._data >= self.spec.size:
            if policy == "block":
                self._space.clear()
                await self._space.wait()
            elif policy == "drop_newest":
                self._consumer.drop(msg.stream_id, "queue_full_drop_newest")
                if isinstance(msg, Packet):
                    self._await_key.add(msg.stream_id)
                return
            else:  # drop_oldest, latency
                self._drop_oldest("queue_full_drop_oldest")
                if self._broken_chain(msg):  # the drop may have cut this packet's references
                    return
        self.items.append(msg)
        self._data += 1
        self._inbox.notify()

    def _broken_chain(self, msg: Message) -> bool:
        """True (and counted) for a packet that waits for its stream's next keyframe."""
        if not isinstance(msg, Packet) or msg.stream_id not in self._await_key:
            return False
        if msg.keyframe:
            self._await_key.discard(msg.stream_id)
            return False
        self._consumer.drop(msg.stream_id, "awaiting_keyframe")
        return True

    def _drop_oldest(self, reason: str) -> None:
        for i, old in enumerate(self.items):
            if not isinstance(old, Control):
                del self.items[i]
                self._data -= 1
                self._consumer.drop(old.stream_id, reason)
                if isinstance(old, Packet):
                    self._drop_dependents(old.stream_id)
                return

    def _drop_dependents(self, stream_id: str) -> None:
        """After a dropped packet: drop the stream's queued packets up to its next keyframe."""
        kept: deque[Message] = deque()
        waiting = True
        for msg in self.items:
            if waiting and isinstance(msg, Packet) and msg.stream_id == stream_id:
                if msg.keyframe:
                    waiting = False
                else:
                    self._data -= 1
                    self._consumer.drop(stream_id, "awaiting_keyframe")
                    continue
            kept.append(msg)
        self.items = kept
        if waiting:
            self._await_key.add(stream_id)

    def pop(self) -> Message | None:
        budget_ns = None if self.spec.budget_ms is None else int(self.spec.budget_ms * 1e6)
        while self.items:
            msg = self.items.popleft()
            if isinstance(msg, Control):
                return msg
            self._data -= 1
            self._space.set()
            if budget_ns is not None and now_ns() - msg.capture_ns > budget_ns:
                self._consumer.drop(msg.stream_id, "deadline")
                if isinstance(msg, Packet):
                    self._drop_dependents(msg.stream_id)
                continue
            return msg
        return None

    def close(self) -> None:
        self.closed = True
        self._inbox.notify()
