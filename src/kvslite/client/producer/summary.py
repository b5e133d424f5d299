"""PutSummary: what an upload sent and what the server acknowledged."""

from __future__ import annotations

from dataclasses import dataclass, field

from .timestamps import format_timestamp


@dataclass
class PutSummary:
    stream: str
    fragments_sent: int = 0
    fragments_received: int = 0
    fragments_persisted: int = 0
    fragment_numbers: list[str] = field(default_factory=list)     # in ack order
    fragment_timecodes: list[int] = field(default_factory=list)   # of those numbers
    frames_sent: int = 0
    bytes_sent: int = 0
    retries: int = 0          # reconnects after a failed connection (failover)
    fragments_resent: int = 0  # sent again on a new connection, not yet acknowledged before
    fragments_marked: int = 0  # sent with event tags (image generation, notification)
    ack_latency_ms: list[float] = field(default_factory=list)     # cluster sent -> final ack
    elapsed_s: float = 0.0
    data_retained: bool | None = None  # False: the stream keeps no data (RECEIVED is final)
    first_timecode: int | None = None
    last_timecode: int | None = None

    @property
    def final_event(self) -> str:
        """The ack that completes a fragment: PERSISTED, or RECEIVED for a stream without data."""
        return "RECEIVED" if self.data_retained is False else "PERSISTED"

    @property
    def fragments_acked(self) -> int:
        return self.fragments_received if self.data_retained is False else self.fragments_persisted

    @property
    def mean_ack_latency_ms(self) -> float | None:
        lat = self.ack_latency_ms
        return sum(lat) / len(lat) if lat else None

    @property
    def max_ack_latency_ms(self) -> float | None:
        return max(self.ack_latency_ms) if self.ack_latency_ms else None

    def line(self) -> str:
        what = ("received (the stream keeps no data)" if self.data_retained is False
                else "persisted")
        text = (f"{self.stream}: {self.fragments_acked} fragments {what}, "
                f"{self.frames_sent} frames, {self.bytes_sent / 1e6:.2f} MB in "
                f"{self.elapsed_s:.2f} s")
        if marked := self.fragments_marked:
            text += f", {marked} fragment{'s' if marked > 1 else ''} marked for events"
        if self.retries:
            text += (f", {self.retries} reconnect{'s' if self.retries > 1 else ''} "
                     f"({self.fragments_resent} fragments resent)")
        if self.ack_latency_ms:
            text += (f", ack lag avg {self.mean_ack_latency_ms:.0f} ms, "
                     f"max {self.max_ack_latency_ms:.0f} ms")
        if self.first_timecode is not None and self.last_timecode is not None:
            text += (f", producer time {format_timestamp(self.first_timecode)} .. "
                     f"{format_timestamp(self.last_timecode)}")
        return text
