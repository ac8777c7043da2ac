"""
Time and the end of a session: the timeouts of RFC 5321 §4.5.3.2, the
minimum data rate, giving up (``421``), and graceful shutdown, as part of
:class:`~txsmtp.session.core.ServerSession`.  The session is told the time;
it never reads a clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.logger import Logger

from txsmtp.session.actions import Call, Cancel, Scope
from txsmtp.session.base import SessionBase
from txsmtp.session.table import State

__all__ = ["Timeouts"]

_log = Logger(namespace="txsmtp.server")

#: The owner of calls taken from a session that gave up on them.
_ENDED = Scope()
_ENDED.alive = False


class Timeouts(SessionBase):
    """The clock-driven part of a session."""

    if not TYPE_CHECKING:
        __slots__ = ()

    # -- time --------------------------------------------------------------------

    def checkTime(self, now: float) -> None:
        """
        Enforce the timeouts at ``now``: the command deadline, the data-block
        timeout and minimum rate, a hook that never answers, and a closing
        connection that lingers (the glue aborts it on a :class:`Close`
        when :attr:`closeOverdue`).
        """
        self._now = now
        state = self.state
        if state is State.CLOSED:
            return
        f = self.config
        t = self.transaction
        blocked = self._blocked
        if isinstance(blocked, Call) and blocked.method == "delay":
            return  # the AUTH failure delay: ours, and bounded
        if blocked is not None or (t is not None and t.slowWrites):
            # Waiting for the delivery (a hook, or back-pressure from the
            # receiver): the client is not to blame, but a hook that never
            # answers must not hold the connection for ever.
            if now >= self._blockedSince + f.commandTimeout:
                _log.error(
                    "{text}",
                    text=f"the delivery has not answered {self._blocked!r} for {f.commandTimeout:.0f}s; "
                    f"closing the connection from {self.connection.peerHost}",
                    peer=self.connection.peerHost,
                    session=self.connection.sessionId,
                )
                self.giveUp(f"{f.hostname} Local error: the delivery did not answer, closing connection",
                            "delivery timeout", "4.3.0")  # fmt: skip
            return
        if self._chunkLeft or (t is not None and t.decoder is not None and not t.chunked):
            if now >= self._dataSince + f.dataTimeout:
                self.giveUp(
                    f"{f.hostname} Timeout waiting for the client, closing connection", "timeout"
                )
            elif f.minDataRate:
                # RFC 5321 gives a data block 3 minutes; a client trickling a
                # few octets a minute could hold a session for days.  Ask for
                # an average rate once the first window has passed.
                elapsed = now - self._rateStart
                if elapsed >= f.dataRateWindow and self._rateBytes < f.minDataRate * elapsed:
                    self.giveUp(
                        f"{f.hostname} Data arriving too slowly, closing connection",
                        "data too slow",
                    )
            return
        if now >= self._commandSince + f.commandTimeout:
            self.giveUp(
                f"{f.hostname} Timeout waiting for the client, closing connection", "timeout"
            )

    def closeOverdue(self, now: float) -> bool:
        """Whether a closing connection has lingered past ``closeTimeout``."""
        return self.state is State.CLOSED and now - self._blockedSince >= self.config.closeTimeout

    def giveUp(self, text: str, why: str, enhanced: str = "4.4.2") -> None:
        """Abandon the session: ``421`` and close, whatever is under way."""
        _log.info("closing connection from {peer}: {why}", peer=self.connection.peerHost, why=why,
                  session=self.connection.sessionId)  # fmt: skip
        self._abandonTransaction(why, why)
        blocked, self._blocked = self._blocked, None
        # (The session is the Scope of its own calls.)
        if isinstance(blocked, Call) and blocked.owner is cast(object, self):
            # A session-level hook in flight (verify, login, a do_VERB): its
            # result, if it still comes, is only cleaned up.
            if self.calls:
                self.calls.pop(blocked, None)
            blocked.owner = _ENDED
            if blocked.cleanup is None:
                # (A result that must be cleaned up is waited for: see Scope.end.)
                self.emit(Cancel(blocked))
        self._out = None
        self.reply(421, enhanced, text)
        self.close(why.replace(" ", "-"))

    # -- shutdown ----------------------------------------------------------------

    def shutdown(self) -> None:
        """Close gracefully: now when idle, else once the transaction is answered."""
        self._shuttingDown = True
        if self.state in (State.INITIAL, State.READY, State.REFUSED) and self._blocked is None:
            self.reply(
                421, "4.3.2", f"{self.config.hostname} Service shutting down, closing connection"
            )
            self.close("shutdown")
