"""
Deliveries: where accepted mail goes.

- :class:`BaseDelivery` / :class:`BaseDeliverySession`: convenient bases
  for your own delivery (override what you need).
- :class:`~txsmtp.maildir.MaildirDelivery`: every message into one Maildir
  (``maildir:DIR``), and :class:`~txsmtp.maildir.VirtualMaildirDelivery`:
  ``DIR/<domain>/<local part>/`` Maildirs (``virtual:DIR``), in
  :mod:`txsmtp.maildir` (also importable from here).
- :class:`DiscardDelivery`: accept and drop (``discard``).

Maildir writes follow the Maildir convention: a file is written in
``tmp/``, flushed and ``fsync``\\ ed, renamed into ``new/``, and the
directory is ``fsync``\\ ed; only then does the server answer 250.  A disk
error answers ``451 4.3.0`` and leaves nothing behind in ``tmp/`` or
``new/``.  Directories made on the way (a new mailbox's ``tmp``, ``new``
and ``cur``) are durable too: the directories that got them are
``fsync``\\ ed when they are made.

That end of a message (flush, ``fsync``, rename, ``fsync``) waits for the
disk, for milliseconds: the Maildir deliveries run it in a thread pool of
their own (:class:`~txsmtp.maildir.CommitRunner`), so that the other sessions go on
meanwhile, and :meth:`~txsmtp.maildir.MaildirReceiver.finish` returns a Deferred.  The
pool's threads start with the first message; ``delivery.stop()`` ends them
(``twistd smtp`` does, after the last session), and so does reactor
shutdown.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from txsmtp.envelope import ConnectionInfo, Envelope, Recipient
from txsmtp.interfaces import IDelivery, IDeliverySession, IMessageReceiver
from txsmtp.wire.address import Address
from txsmtp.wire.params import MailParameters

__all__ = [
    "CommitRunner",
    "BaseDelivery",
    "BaseDeliverySession",
    "DiscardDelivery",
    "DiscardReceiver",
    "Maildir",
    "MaildirDelivery",
    "MaildirReceiver",
    "VirtualMaildirDelivery",
]

_log = Logger(namespace="txsmtp.delivery")


@implementer(IDeliverySession)
class BaseDeliverySession:
    """
    A session that accepts every sender and recipient; subclasses override
    the hooks they care about and must implement :meth:`openMessage`.

    :ivar connection: the :class:`~txsmtp.envelope.ConnectionInfo`.
    :ivar delivery: the delivery that opened this session.
    """

    def __init__(self, delivery: Any, connection: ConnectionInfo) -> None:
        self.delivery = delivery
        self.connection = connection

    def checkSender(self, sender: Address | None, parameters: MailParameters) -> Any:
        return None

    def checkRecipient(self, recipient: Recipient, envelope: Envelope) -> Any:
        return None

    def openMessage(self, envelope: Envelope) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement openMessage")

    def verify(self, address: str) -> Any:
        return None

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


@implementer(IDelivery)
class BaseDelivery:
    """
    A delivery whose sessions are instances of :attr:`sessionFactory`,
    called with ``(delivery, connection)``.
    """

    sessionFactory: Any = BaseDeliverySession

    def openSession(self, connection: ConnectionInfo) -> Any:
        return self.sessionFactory(self, connection)


# -- discard --------------------------------------------------------------------


@implementer(IMessageReceiver)
class DiscardReceiver:
    """Takes a message and forgets it."""

    __slots__ = ()

    def write(self, chunk: bytes) -> None:
        return None

    def finish(self) -> None:
        return None

    def abort(self, reason: str) -> None:
        return None


_DISCARD = DiscardReceiver()


class _DiscardSession(BaseDeliverySession):
    def openMessage(self, envelope: Envelope) -> DiscardReceiver:
        return _DISCARD


class DiscardDelivery(BaseDelivery):
    """
    Accepts every message and drops it: a sink for tests and benchmarks.
    Its sessions hold no state, so every connection shares one.
    """

    sessionFactory = _DiscardSession

    def __init__(self) -> None:
        self._session = _DiscardSession(self, None)  # type: ignore[arg-type]

    def openSession(self, connection: ConnectionInfo) -> _DiscardSession:
        return self._session


# The Maildir deliveries live in txsmtp.maildir; these names stay importable
# from here.
from txsmtp.maildir import (  # noqa: E402
    CommitRunner,
    Maildir,
    MaildirDelivery,
    MaildirReceiver,
    VirtualMaildirDelivery,
)
