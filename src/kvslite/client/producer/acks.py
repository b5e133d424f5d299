"""PutMedia acknowledgements: the JSON events the server streams back while the body goes up."""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field


@dataclass
class Ack:
    event_type: str                   # BUFFERING | RECEIVED | PERSISTED | ERROR | IDLE
    timecode: int | None = None       # FragmentTimecode: the cluster timecode
    fragment_number: str | None = None
    error_id: int | None = None
    error_code: str | None = None
    lag_ms: float | None = None       # cluster sent -> this ack (RECEIVED/PERSISTED)
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: dict) -> Ack:
        number = obj.get("FragmentNumber")
        code = obj.get("ErrorCode")
        return cls(event_type=str(obj.get("EventType", "")),
                   timecode=_int_or_none(obj.get("FragmentTimecode")),
                   fragment_number=str(number) if number is not None else None,
                   error_id=_int_or_none(obj.get("ErrorId")),
                   error_code=str(code) if code is not None else None, raw=obj)


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class AckParser:
    """Response body bytes -> Acks. Accepts one JSON object per line, or objects back to back."""

    def __init__(self):
        self.buf = ""  # decoded text not yet parsed
        # keeps a character split across reads; bad bytes become U+FFFD, not a stuck parser
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[Ack]:
        self.buf += self._utf8.decode(data)
        acks: list[Ack] = []
        while True:
            text = self.buf.lstrip()
            if not text:
                self.buf = ""
                return acks
            try:
                obj, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                if "\n" in text:  # a complete but malformed line: skip it
                    self.buf = text.split("\n", 1)[1]
                    continue
                self.buf = text  # an object cut short: wait for the rest
                return acks
            self.buf = text[end:]
            if isinstance(obj, dict):
                acks.append(Ack.from_json(obj))
