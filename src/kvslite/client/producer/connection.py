"""The PutMedia HTTP exchange: one chunked POST whose acks stream back while it is sent.

The server answers 200 at once and then writes JSON acks (BUFFERING, RECEIVED, PERSISTED,
ERROR, IDLE) while the body is still going up, so the body is sent and the acks are read
concurrently on one h11 connection. The upload ends when every fragment has its final ack
(PERSISTED, or RECEIVED for a stream that keeps no data); an ERROR ack raises AckError.
A fragment left without any ack for `ack_timeout` seconds means the connection is lost (a
frozen node still takes bytes into its socket buffers): ProducerError, and a failover.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import h11

from .acks import Ack, AckParser
from .errors import AckError, ProducerError, SourceError, http_error
from .failover import FragmentFeed
from .clusters import USER_AGENT, BodyChunk
from .summary import PutSummary


def putmedia_headers(url: str, *, stream_name: str | None = None, stream_arn: str | None = None,
                     producer_start_ms: int, credentials=None, region: str = "us-east-1",
                     user_agent: str = USER_AGENT) -> list[tuple[str, str]]:
    """The PutMedia request headers, SigV4-signed when `credentials` are given.

    The payload hash is that of the empty string: the body streams and is not signed,
    exactly as the KVS producer SDK does.
    """
    if (stream_name is None) == (stream_arn is None):
        raise ValueError("give exactly one of stream_name and stream_arn")
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    seconds, millis = divmod(int(producer_start_ms), 1000)
    headers = {"host": netloc, "user-agent": user_agent,
               "x-amzn-fragment-acknowledgment-required": "1",
               "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amzn-producer-start-timestamp": f"{seconds}.{millis:03d}",
               "transfer-encoding": "chunked"}
    if stream_arn is not None:
        headers["x-amzn-stream-arn"] = stream_arn
    elif stream_name is not None:
        headers["x-amzn-stream-name"] = stream_name
    if credentials is not None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, headers=dict(headers), data=b"")
        frozen = credentials.get_frozen_credentials() \
            if hasattr(credentials, "get_frozen_credentials") else credentials
        SigV4Auth(frozen, "kinesisvideo", region).add_auth(request)
        for name, value in request.headers.items():
            headers[name.lower()] = value
    return list(headers.items())


class PutMediaUpload:
    """One PutMedia request: the chunked body goes up while the acks come down.

    The body comes from a FragmentFeed, which outlives the connection: a failed upload's
    unacknowledged fragments are sent again first by the next one.
    """

    def __init__(self, url: str, headers: list[tuple[str, str]], summary: PutSummary, *,
                 realtime: bool = False, connect_timeout: float = 10.0, ack_timeout: float = 30.0,
                 on_ack: Callable[[Ack, PutSummary], None] | None = None,
                 on_sent: Callable[[int, PutSummary], None] | None = None,
                 stop: threading.Event | None = None):
        self.url, self.headers, self.summary = url, headers, summary
        self.realtime, self.stop = realtime, stop
        self.connect_timeout, self.ack_timeout = connect_timeout, ack_timeout
        self.on_ack, self.on_sent = on_ack, on_sent
        self.final_event = summary.final_event  # as known at the start; acks don't change it
        self.sent_at: dict[int, float] = {}   # cluster timecode -> when it was written
        self.outstanding: set[int] = set()    # timecodes without their final ack
        self.received: set[int] = set()       # timecodes with a RECEIVED ack
        self.body_done = False
        self.all_acked = asyncio.Event()      # body done and nothing outstanding
        self.last_ack_at = time.monotonic()  # for ack_timeout: the last ack but IDLE
        self.source_error: BaseException | None = None  # raised once the body is closed
        self.writer: asyncio.StreamWriter | None = None
        self.feed: FragmentFeed | None = None
        self.acked_any = False  # a fragment got its final ack on this connection

    async def run(self, feed: FragmentFeed) -> None:
        """Send the feed's chunks and wait for the final acks of its clusters."""
        self.feed = feed
        tasks: list[asyncio.Task] = []
        try:
            await self._connect()
            tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._send())]
            await self._supervise(send=tasks[1], receive=tasks[0])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.writer is not None:
                await self._disconnect(self.writer)
        if self.source_error is not None:
            raise self.source_error

    # -------------------------------------------------------------------------- connection

    async def _connect(self) -> None:
        """Open the connection and send the request head."""
        parts = urlsplit(self.url)
        https = parts.scheme == "https"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProducerError(f"not an http(s) URL: {self.url!r}")
        port = parts.port or (443 if https else 80)
        try:
            self.reader, writer = await asyncio.wait_for(asyncio.open_connection(
                parts.hostname, port, ssl=ssl.create_default_context() if https else None,
                limit=1 << 20), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ProducerError(f"cannot connect to {parts.netloc}: {e or 'timed out'}") from None
        self.conn = h11.Connection(h11.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        writer.write(self.conn.send(h11.Request(method="POST", target=target,
                                                headers=self.headers)))
        self.writer = writer

    async def _disconnect(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass

    async def _supervise(self, send: asyncio.Task, receive: asyncio.Task) -> None:
        """Wait for the body to go up, then for the final acks; raise the first failure."""
        watchdog = asyncio.create_task(self._watch_acks())
        try:
            await self._supervise_with(send, receive, watchdog)
        finally:
            watchdog.cancel()

    async def _supervise_with(self, send: asyncio.Task, receive: asyncio.Task,
                              watchdog: asyncio.Task) -> None:
        done, _ = await asyncio.wait({send, receive, watchdog},
                                     return_when=asyncio.FIRST_COMPLETED)
        if watchdog in done:
            watchdog.result()  # raises: no ack in time
        if receive in done:
            receive.result()  # raises HttpError / AckError / connection errors
            if not send.done():
                raise ProducerError("the server ended the PutMedia response before the upload "
                                    "finished")
        error = send.exception()
        if error is not None:
            await self._raise_send_error(error, receive)
        await self._wait_for_final_acks(receive, watchdog)

    async def _watch_acks(self) -> None:
        """Raise ProducerError once a fragment has waited `ack_timeout` seconds with no ack
        at all coming back meanwhile: the node froze or the network dropped the
        connection, whether or not the body is still going up."""
        while True:
            await asyncio.sleep(min(1.0, self.ack_timeout / 4))
            if not self.outstanding:
                continue
            oldest_sent = min(self.sent_at[tc] for tc in self.outstanding)
            waited = time.monotonic() - max(oldest_sent, self.last_ack_at)
            if waited > self.ack_timeout:
                raise ProducerError(f"no acknowledgement for {waited:.1f} s (ack timeout "
                                    f"{self.ack_timeout:g} s); {len(self.outstanding)} "
                                    f"fragment(s) not {self.final_event.lower()}: the "
                                    f"connection is treated as lost")

    async def _raise_send_error(self, error: BaseException, receive: asyncio.Task) -> None:
        if isinstance(error, (OSError, h11.LocalProtocolError)):
            # The server may have answered (404, 403, ...) and closed: prefer its reason.
            try:
                await asyncio.wait_for(asyncio.shield(receive), 5)
            except ProducerError:
                raise
            except Exception:  # noqa: BLE001
                pass
            raise ProducerError(f"connection lost while sending: {error!r}") from error
        raise error

    async def _wait_for_final_acks(self, receive: asyncio.Task, watchdog: asyncio.Task
                                   ) -> None:
        while not self.all_acked.is_set():
            if receive.done():
                receive.result()
                self._response_ended()
                return
            if watchdog.done():
                watchdog.result()  # raises: no ack in time
            waiter = asyncio.create_task(self.all_acked.wait())
            await asyncio.wait({receive, waiter, watchdog},
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        # Everything is acknowledged; let the server end the response cleanly.
        try:
            await asyncio.wait_for(asyncio.shield(receive), 2)
        except (asyncio.TimeoutError, ProducerError):
            pass

    def _response_ended(self) -> None:
        """The server ended the response after the body: accept it if nothing is missing."""
        if not self.outstanding:
            return
        if self.final_event == "PERSISTED" and self.outstanding <= self.received and \
                self.summary.fragments_persisted == 0:
            self.summary.data_retained = False  # RECEIVED was final: retention 0
            return
        raise ProducerError(f"the server ended the PutMedia response with "
                            f"{len(self.outstanding)} fragment(s) not "
                            f"{self.final_event.lower()}")

    # -------------------------------------------------------------------------- the body

    async def _send(self) -> None:
        feed, writer = self.feed, self.writer
        assert feed is not None and writer is not None  # run() connected with its feed
        while (next_chunk := await self._next_chunk()) is not None:
            chunk, resent = next_chunk
            is_cluster = chunk.timecode is not None
            if is_cluster and self.realtime and not resent:
                # send each GOP once its last frame "happened", as a live camera would
                if feed.pace_start is None:
                    feed.pace_start = time.monotonic()
                await self._sleep_until(feed.pace_start + chunk.media_end_ms / 1000)
            if is_cluster and not resent and self._stopping():
                break  # asked to stop: end the body after the fragments already sent
            data = self.conn.send(h11.Data(data=chunk.data))
            if chunk.timecode is not None:
                self._record_sent(chunk.timecode, chunk, resent)
            writer.write(data)
            self.summary.bytes_sent += len(chunk.data)
            await writer.drain()
            if is_cluster and self.on_sent is not None:
                self.on_sent(len(chunk.data), self.summary)
        writer.write(self.conn.send(h11.EndOfMessage()))
        await writer.drain()
        self.body_done = True
        if not self.outstanding:
            self.all_acked.set()

    async def _next_chunk(self) -> tuple[BodyChunk, bool] | None:
        """The next chunk and whether it is a resend; None at the end, or if the source
        failed (the body then ends cleanly and run() raises it as a SourceError)."""
        assert self.feed is not None  # set by run()
        try:
            return await self.feed.next()
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, ProducerError):
                wrapped = SourceError(f"reading the video failed: {e!r}")
                wrapped.__cause__ = e
                e = wrapped
            self.source_error = e
            return None

    async def _sleep_until(self, due: float) -> None:
        """Sleep until monotonic time `due`, or until asked to stop."""
        while not self._stopping():
            delay = due - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(min(delay, 0.1))

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _record_sent(self, tc: int, chunk: BodyChunk, resent: bool) -> None:
        s = self.summary
        self.sent_at[tc] = time.monotonic()
        self.outstanding.add(tc)
        if resent:
            s.fragments_resent += 1
            return
        s.fragments_sent += 1
        s.frames_sent += chunk.frames
        if chunk.event is not None:
            s.fragments_marked += 1
        if s.first_timecode is None:
            s.first_timecode = tc
        s.last_timecode = tc

    # -------------------------------------------------------------------------- the acks

    async def _receive(self) -> None:
        response = await self._response()
        if response.status_code != 200:
            await self._raise_http_error(response)
        parser = AckParser()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                for ack in parser.feed(bytes(event.data)):
                    self._handle_ack(ack)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    async def _response(self) -> h11.Response:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue
            if isinstance(event, h11.ConnectionClosed):
                raise ProducerError("the server closed the connection without a response")
            return event

    async def _next_event(self):
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise ProducerError(f"the server closed the connection or sent bad HTTP: "
                                    f"{e}") from None
            if event is not h11.NEED_DATA:
                return event
            await self._read_more()

    async def _read_more(self) -> None:
        try:
            data = await self.reader.read(65536)
        except (OSError, ssl.SSLError) as e:
            raise ProducerError(f"connection lost while reading acks: {e!r}") from None
        try:
            self.conn.receive_data(data)
        except h11.RemoteProtocolError as e:
            raise ProducerError(f"bad HTTP response from the server: {e}") from None

    async def _raise_http_error(self, response: h11.Response) -> None:
        body = bytearray()
        try:
            while len(body) <= 1 << 16:
                event = await asyncio.wait_for(self._next_event(), 5)
                if not isinstance(event, h11.Data):
                    break
                body += event.data
        except (ProducerError, asyncio.TimeoutError):
            pass
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in response.headers}
        raise http_error(response.status_code, headers, bytes(body))

    def _handle_ack(self, ack: Ack) -> None:
        s, now, tc = self.summary, time.monotonic(), ack.timecode
        if ack.event_type != "IDLE":
            self.last_ack_at = now
        if ack.event_type == "ERROR":
            raise AckError(ack)
        if ack.event_type in ("RECEIVED", "PERSISTED") and tc in self.sent_at:
            ack.lag_ms = (now - self.sent_at[tc]) * 1000
        if ack.event_type == "RECEIVED":
            s.fragments_received += 1
            if tc is not None:
                self.received.add(tc)
        elif ack.event_type == "PERSISTED":
            s.fragments_persisted += 1
            s.data_retained = True
            self._record_number(ack)
        if ack.event_type == self.final_event and tc is not None and tc in self.outstanding:
            self._fragment_done(ack, tc)
        if self.on_ack is not None:
            self.on_ack(ack, s)

    def _fragment_done(self, ack: Ack, tc: int) -> None:
        assert self.feed is not None  # set by run()
        self.outstanding.discard(tc)
        self.feed.acked(tc)
        self.acked_any = True
        if ack.lag_ms is not None:
            self.summary.ack_latency_ms.append(ack.lag_ms)
        if self.final_event == "RECEIVED":  # no PERSISTED ack will carry the number
            self._record_number(ack)
        if self.body_done and not self.outstanding:
            self.all_acked.set()

    def _record_number(self, ack: Ack) -> None:
        if ack.fragment_number is not None and ack.timecode is not None:
            self.summary.fragment_numbers.append(ack.fragment_number)
            self.summary.fragment_timecodes.append(ack.timecode)
