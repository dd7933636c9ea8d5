"""Flow control: reading one side paused for any of several reasons, resumed when none is left.

The one backpressure helper of the HTTP and TCP paths. Each side of a relay reads only while the
other side keeps up: when a transport's write buffer passes the high-water mark its protocol gets
``pause_writing`` and pauses *reading on the other side* with a reason; ``resume_writing`` removes
that reason. Other reasons (HTTP: a pipelined request waiting for the response in progress; bytes
queued before an upstream is attached) combine with it: reading resumes only when every reason is gone.
"""

from __future__ import annotations

import asyncio

# Reasons (bits).
PEER_FULL = 1  # the other side's write buffer is over the high-water mark
PIPELINE = 2  # HTTP: a pipelined request waits for the current response
QUEUED = 4  # bytes queued for a connection still being opened passed the high-water mark


class ReadPauses:
    __slots__ = ("closed", "reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0
        self.closed = False  # the connection is closing: nothing to pause or resume any more

    def pause(self, reason: int) -> None:
        if not self.reasons and not self.closed:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.closed:
                self.transport.resume_reading()

    def __contains__(self, reason: int) -> bool:
        return bool(self.reasons & reason)
