"""
What a :class:`~txsmtp.session.core.ServerSession` asks of the code that
runs it.  The session does no I/O: replies accumulate as bytes
(:meth:`~txsmtp.session.core.ServerSession.takeOutput`), and everything
else it needs done comes out of
:meth:`~txsmtp.session.core.ServerSession.nextAction` as one of these.

- :class:`Call`: call a hook (a delivery session's ``checkSender``, a
  receiver's ``write``, the portal's ``login``...) and hand the result back
  with ``hookDone`` or ``hookFailed``.  While a *blocking* call is
  outstanding the session reads no further input, which is what keeps
  pipelined replies in order.
- :class:`Notify`: call a clean-up hook whose result does not matter
  (``abort``, ``reset``, ``close``, a logout).  Exceptions are logged.
- :class:`Cancel`: a call's owner has ended; cancel its Deferred, if any.
- :class:`StartTLS`: write the pending output, then start TLS.
- :class:`Close`: write the pending output, then close the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Action", "Call", "Cancel", "Close", "Notify", "Scope", "StartTLS"]


class Scope:
    """
    An owner of hook calls: a session's lifetime, or one transaction's.

    Ending a scope makes every result that arrives for its calls a stale
    one: it is cleaned up (a receiver aborted, a session closed, an avatar
    logged out), never acted on.
    """

    __slots__ = ("alive", "calls")

    def __init__(self) -> None:
        self.alive = True
        #: Calls whose result comes later, not answered yet (a dict used as
        #: an ordered set: an empty one is a quarter the size of a set).
        self.calls: dict[Call, None] | None = None

    def end(self) -> list[Action]:
        """
        End the scope; the :class:`Cancel` actions for what is in flight.

        A call whose result holds something to release (it has a
        ``cleanup``: a delivery session, a receiver, an avatar) is not
        cancelled: a cancelled Deferred would drop that result unseen.  It
        is waited for, and its result released when it comes.
        """
        self.alive = False
        calls = self.calls
        if not calls:
            return []
        cancelled = [c for c in calls if c.cleanup is None]
        for c in cancelled:
            del calls[c]
        return [Cancel(c) for c in cancelled]


class Call:
    """
    Call ``target.method(*args)`` (``target`` ``None``: a service of the
    glue itself, such as a delay or a subclass's ``do_VERB``).

    :ivar blocking: the session waits for this result before it reads more
        input; receivers' ``write`` calls do not block (back-pressure
        pauses reading instead).
    :ivar pending: free for the glue (the Deferred it waits on), so that a
        :class:`Cancel` can reach it.
    """

    __slots__ = (
        "target",
        "method",
        "args",
        "owner",
        "then",
        "cleanup",
        "blocking",
        "what",
        "pending",
        "late",
    )

    def __init__(
        self,
        target: Any,
        method: str,
        args: tuple[Any, ...],
        owner: Scope,
        then: Callable[[Any, Any], None] | None,
        blocking: bool = True,
        cleanup: Callable[[Any], Action | None] | None = None,
        what: str | None = None,
    ) -> None:
        self.target = target
        self.method = method
        self.args = args
        self.owner = owner
        self.then = then
        self.cleanup = cleanup
        self.blocking = blocking
        self.what = what
        self.pending: Any = None
        #: The result comes later (the glue said so with ``hookPending``).
        self.late = False

    @property
    def name(self) -> str:
        """What the call is, for logs."""
        return self.what or self.method

    def __repr__(self) -> str:
        return f"<Call {self.name}{' (blocking)' if self.blocking else ''}>"


class Notify:
    """Call ``target.method(*args)``; log what it raises, ignore what it returns."""

    __slots__ = ("target", "method", "args", "what")

    def __init__(
        self, target: Any, method: str, args: tuple[Any, ...] = (), what: str | None = None
    ) -> None:
        self.target = target
        self.method = method
        self.args = args
        self.what = what or method

    def __repr__(self) -> str:
        return f"<Notify {self.what}>"


class Cancel:
    """The owner of ``call`` has ended: cancel whatever the glue waits on."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def __repr__(self) -> str:
        return f"<Cancel {self.call!r}>"


class StartTLS:
    """Write the pending output, then start the TLS handshake."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<StartTLS>"


class Close:
    """Write the pending output, then close the connection."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<Close>"


Action = Call | Notify | Cancel | StartTLS | Close
