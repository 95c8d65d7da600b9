"""`reliability.probe`: a tap beside a graph's sinks that counts, per stream and per 0.1 s, good frames.

Good: a frame the graph could fully process, i.e. not covered for want of detections
(`frame.meta["redaction"] != "covered"`) and not degraded. Counts go into flat arrays
(2 bytes a bin), so an hour's soak adds well under a megabyte per stream.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Sequence

from pydantic import Field

from engine.frame import Frame, Item
from engine.registry import Operator, OperatorContext, register
from engine.spec import StrictModel

BIN_S = 0.1
PROBE_ID = "reliability_probe"
OP_NAME = "reliability.probe"


class ProbeConfig(StrictModel):
    """Where time 0 of the bins is."""

    origin_s: float = Field(0.0, description="time.monotonic() of bin 0 (the run's start).")


@register(OP_NAME)
class Probe(Operator[ProbeConfig]):
    """Counts the frames of the node it taps: per stream, per 0.1 s bin, good and not good."""

    Config = ProbeConfig

    def __init__(self, config: ProbeConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.good: dict[str, array[int]] = {}
        self.bad: dict[str, array[int]] = {}
        self.treatments: Counter[tuple[str, str]] = Counter()

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Frame):
            sid = item.stream_id
            treatment = str(item.meta.get("redaction", "none"))
            self.treatments[(sid, treatment)] += 1
            ok = treatment != "covered" and not item.degraded
            bins = (self.good if ok else self.bad).setdefault(sid, array("H"))
            k = int((time.monotonic() - self.config.origin_s) / BIN_S)
            if k >= len(bins):
                bins.extend([0] * (k + 1 - len(bins)))
            if k >= 0 and bins[k] < 65535:
                bins[k] += 1
        return ()

    def series(self, stream_id: str, good: bool = True) -> list[int]:
        """Frames per 0.1 s bin of one stream since the origin."""
        return list((self.good if good else self.bad).get(stream_id, array("H")))
