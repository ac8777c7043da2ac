"""
The queue's small interfaces: a store (:class:`IQueueStore`) with its
writer (:class:`IQueueWriter`), and an outbound delivery
(:class:`IOutbound`).

A store keeps messages and the state of each recipient durably.  Every
store passes the same conformance tests (``tests/queue_conformance.py``);
:class:`txsmtp.queue.sqlite.SQLiteStore` is the one for one machine.  The
life of a message in a store::

    writer = store.newMessage()
    writer.write(chunk) ...                 the body, streamed
    queueId = await writer.commit(sender, recipients, envelope)
                                            durable when it fires: only then 250
    leases = await store.claim("node1", 100, 600)   due recipients, leased
    body = await store.openBody(lease.message.id)
    ... deliver ...
    await store.record(lease, outcomes)     False if the lease was lost

Every method that touches storage returns a Deferred and does its blocking
work off the reactor thread.  Times come from the store's clock
(``clock.seconds()``, the reactor by default).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IQueueStore", "IQueueWriter", "IOutbound"]


class IQueueWriter(Interface):
    """One message being written into a store."""

    def write(chunk):
        """
        Append ``chunk`` (bytes) to the body.

        :return: ``None``, or a Deferred asking the caller to wait before
            the next write (back-pressure).
        """

    def commit(sender, recipients, envelope, arrival=None):
        """
        Make the message durable and visible to :meth:`IQueueStore.claim`.

        The body is on disk (``fsync``) before the row that makes it
        visible is committed, and the returned Deferred fires only after
        that commit: a server answers ``250`` then, never before.

        :param sender: the reverse-path, ``""`` for ``<>``.
        :param recipients: a list of
            :class:`~txsmtp.queue.model.QueuedRecipient` (their ``index``
            is set by the store, in list order, from 0).
        :param envelope: the rest of the envelope, as
            :meth:`txsmtp.envelope.Envelope.toDict` gives it.
        :param arrival: when the message arrived (a timestamp; default: now).
        :return: a Deferred firing with the message's id, or failing with
            :class:`~txsmtp.queue.errors.QueueFullError` (no space) or
            :class:`~txsmtp.queue.errors.QueueError`; nothing is left
            behind after a failure.
        """

    def abort():
        """Drop the message: nothing of it stays in the store."""


class IQueueStore(Interface):
    """Where queued mail lives between the server and the scheduler."""

    clock = Attribute("The IReactorTime whose seconds() the store uses as now.")

    def open():
        """
        Take ownership (a store that one process owns takes its lock),
        create or migrate the schema, and end every lease left by a
        previous run.  :return: a Deferred.  Fails with
        :class:`~txsmtp.queue.errors.QueueLockedError` when another
        process owns the store.
        """

    def close():
        """Release everything.  :return: a Deferred."""

    def newMessage():
        """:return: an :class:`IQueueWriter` for a new message."""

    def claim(owner, limit, leaseSeconds):
        """
        Lease up to ``limit`` due recipients: state queued or deferred, next
        attempt not after now, not held, not under another live lease.

        :return: a Deferred firing with a list of
            :class:`~txsmtp.queue.model.Lease`, one per message (with the
            claimed recipients of that message), oldest due first.
        """

    def renew(lease, leaseSeconds):
        """
        Extend a lease still held.  :return: a Deferred firing with
        ``True``, or ``False`` when the token no longer holds.
        """

    def record(lease, outcomes):
        """
        Record a :class:`~txsmtp.queue.model.RecipientOutcome` for each of
        some (or all) of the lease's recipients, and end the lease on them.
        Recipients with a final result leave the queue; a message leaves it
        (body included) with its last recipient.

        :return: a Deferred firing with ``True``, or ``False`` (and nothing
            recorded) when the lease's token no longer holds.
        """

    def openBody(messageId):
        """
        :return: a Deferred firing with a binary file (readable, seekable)
            holding the body; the caller closes it.  Fails with
            :class:`KeyError` for an unknown id.
        """

    def nextDue():
        """
        :return: a Deferred firing with the earliest ``nextAttempt`` of a
            recipient that could be claimed (not held, not leased), or
            ``None`` when there is none.
        """

    def list():
        """:return: a Deferred firing with every :class:`~txsmtp.queue.model.QueuedMessage`, oldest first."""

    def stats():
        """
        :return: a Deferred firing with a dict: ``recipients`` (how many
            recipients are in each :class:`~txsmtp.queue.model.RecipientState`,
            by its value), ``messages`` (how many messages) and
            ``oldestArrival`` (the earliest arrival, ``None`` when empty),
            counted by the store without reading the messages (for metrics).
        """

    def show(messageId):
        """:return: a Deferred firing with the :class:`~txsmtp.queue.model.QueuedMessage` or ``None``."""

    def hold(messageId):
        """Hold every recipient of a message.  :return: Deferred[bool] (``False``: no such message)."""

    def release(messageId):
        """Release a held message: its recipients are due now.  :return: Deferred[bool]."""

    def delete(messageId):
        """Remove a message, body and all, without any report.  :return: Deferred[bool]."""

    def flush(messageId=None):
        """
        Make deferred recipients (of one message, or of all) due now; held
        ones stay held.  Wakes the listeners.

        :return: a Deferred firing with how many recipients were made due
            (``0`` with an unknown id).
        """

    def addWakeListener(listener):
        """
        Call ``listener()`` (on the reactor thread) whenever new work may be
        due: after a commit, a flush or a release.
        """

    def removeWakeListener(listener):
        """Stop calling ``listener``."""


class IOutbound(Interface):
    """Makes delivery attempts for the scheduler."""

    def deliver(hop, message, recipients, body):
        """
        Try once to deliver ``message`` to ``recipients`` through ``hop``.

        :param hop: a :class:`~txsmtp.queue.model.NextHop`.
        :param message: the :class:`~txsmtp.queue.model.QueuedMessage`.
        :param recipients: the :class:`~txsmtp.queue.model.QueuedRecipient`
            objects to try (at most the per-transaction limit, all routed to
            ``hop``).
        :param body: the body, a binary file positioned at 0.
        :return: a Deferred firing with a list of
            :class:`~txsmtp.queue.model.AttemptResult`, one per recipient in
            order.  It never fails: connection errors, timeouts and
            exceptions become ``DEFERRED`` results.
        """
