"""ReadAhead: a blocking iterator (a demuxer, a live camera) run in a thread, so that the
event loop keeps reading acks while the next packets are being read."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable


class ReadAhead:
    """Iterates `iterable` in a daemon thread, handing at most `maxsize` items ahead to the
    running event loop. Starts at once; `close()` makes the thread stop and close it."""

    def __init__(self, iterable: Iterable, maxsize: int = 16):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.slots = threading.Semaphore(maxsize)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(iterable,), daemon=True,
                                       name="kvslite-producer-source")
        self.thread.start()

    async def get(self):
        """The next item, None at the end; raises what the iterator raised."""
        kind, value = await self.queue.get()
        self.slots.release()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self.stop.set()

    def _run(self, iterable: Iterable) -> None:
        it = None
        try:
            it = iter(iterable)
            for item in it:
                if not self._push(("item", item)):
                    return
            self._push(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the loop and re-raised there
            self._push(("error", e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass

    def _push(self, message: tuple) -> bool:
        """Queue `message` once a slot is free; False if closed (or the loop is gone)."""
        while not self.slots.acquire(timeout=0.2):  # wake up now and then to notice close()
            if self.stop.is_set():
                return False
        if self.stop.is_set():
            return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
        except RuntimeError:  # the loop is gone
            return False
        return True
