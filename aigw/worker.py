"""One proxy worker of `aigw up --workers N` (started by aigw/supervisor.py as `python -m aigw.cli worker …`):
a graceful drain on SIGTERM/SIGINT, and an exit when the supervisor is gone.

Draining: the proxy stops listening (mitmproxy's `server` option off: the listening sockets close, open
connections stay), flows in progress — relayed streams included: their `response` hook runs once the last byte is
sent — finish, then the master shuts down. After `grace` seconds it shuts down anyway; a second signal shuts down
at once. Without a supervisor a worker would serve forever: the parent is polled and its loss starts a drain.
"""

from __future__ import annotations

import asyncio
import logging
import os

from mitmproxy import http
from mitmproxy.master import Master

log = logging.getLogger("aigw.worker")

PARENT_POLL_S = 1.0


class Drain:
    """A mitmproxy addon counting the client flows in progress, and the drain that waits for them."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.active: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self._task: asyncio.Task | None = None

    # -- hooks ------------------------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.active.add(flow.id)
        self._idle.clear()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self.active.discard(flow.id)
        if not self.active:
            self._idle.set()

    # -- the drain --------------------------------------------------------------------------------------------
    def request_stop(self, master: Master) -> None:
        """First call: start draining; a second one: shut down now (signal handlers call this)."""
        if self.draining:
            log.warning("aigw: worker %d: second stop signal, shutting down now", os.getpid())
            master.shutdown()
            return
        self.draining = True
        self._task = asyncio.get_running_loop().create_task(self._drain(master), name="aigw-drain")

    async def _drain(self, master: Master) -> None:
        master.options.update(server=False)  # close the listening sockets; open connections stay
        if self.active:
            log.info("aigw: worker %d draining %d request(s), at most %.0f s", os.getpid(), len(self.active),
                     self.grace)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self.grace)
        except TimeoutError:
            log.warning("aigw: worker %d: %d request(s) still open after %.0f s; stopping", os.getpid(),
                        len(self.active), self.grace)
        master.shutdown()

    async def watch_parent(self, master: Master, parent: int) -> None:
        """Drain when the process that started this one is gone (its children are re-parented)."""
        while not self.draining:
            await asyncio.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                log.warning("aigw: worker %d: supervisor %d is gone; draining", os.getpid(), parent)
                self.request_stop(master)
