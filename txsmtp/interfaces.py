"""
The interfaces between the server and the code that decides and stores.

The model (one factory, one session per connection, one receiver per
message) is::

    IDelivery.openSession(connection)      -> IDeliverySession   (per connection)
        .checkSender(sender, parameters)                          (MAIL)
        .checkRecipient(recipient, envelope)                      (RCPT)
        .openMessage(envelope)              -> IMessageReceiver   (DATA, before 354)
            .write(chunk)       many times, in order, as the body arrives
            .finish()           after the final dot; its Deferred decides the reply
            .abort(reason)      instead of finish() when the message is dropped
        .verify(address)                                          (VRFY)
        .reset()                                                  (RSET, EHLO, end of transaction)
        .close()                                                  (connection gone)

Every hook may return a plain value, a :class:`~twisted.internet.defer.Deferred`
or a coroutine (``async def``).  A refusal is an
:class:`~txsmtp.errors.SMTPError` raised (or failed with); it becomes the
reply.  Any other exception is logged with its traceback and answered
``451 4.3.0``: the client sees a transient failure, never a traceback.

Base classes with sensible defaults live in :mod:`txsmtp.delivery`.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IDelivery", "IDeliverySession", "IMessageReceiver", "IDeliveryFactory"]


class IDelivery(Interface):
    """
    Where a server's mail goes.  One provider serves every connection of a
    factory; it opens a session per connection.
    """

    def openSession(connection):
        """
        Start a session for a new connection.

        :param connection: the :class:`~txsmtp.envelope.ConnectionInfo`; it
            stays live (HELO name, TLS and authentication are filled in as
            the session goes on).
        :return: an :class:`IDeliverySession`, or a Deferred that fires with
            one.  Raising :class:`~txsmtp.errors.SMTPError` refuses the
            connection: the client is greeted with that reply (use 554) and
            every command but QUIT is answered 503.
        """


class IDeliverySession(Interface):
    """The per-connection policy and the door to storage."""

    def checkSender(sender, parameters):
        """
        Decide about the sender of a MAIL command.

        :param sender: an :class:`~txsmtp.wire.address.Address`, or ``None``
            for the null reverse-path ``<>``.
        :param parameters: the :class:`~txsmtp.wire.params.MailParameters`.
        :return: ``None`` (or a Deferred firing with anything) to accept;
            raise :class:`~txsmtp.errors.SMTPError` to refuse.
        """

    def checkRecipient(recipient, envelope):
        """
        Decide about one recipient.

        :param recipient: the :class:`~txsmtp.envelope.Recipient` (its
            ``data`` attribute may be set here for later use).
        :param envelope: the :class:`~txsmtp.envelope.Envelope` so far
            (recipients accepted before this one are in it).
        :return: ``None`` (or a Deferred) to accept; raise
            :class:`~txsmtp.errors.SMTPError` to refuse.
        """

    def openMessage(envelope):
        """
        Open the store for a message; called on DATA, before ``354``.

        :param envelope: the complete :class:`~txsmtp.envelope.Envelope`.
        :return: an :class:`IMessageReceiver` (or a Deferred firing with
            one); raise :class:`~txsmtp.errors.SMTPError` to refuse the DATA
            command.
        """

    def verify(address):
        """
        Answer VRFY.

        :param address: the argument of VRFY, as text.
        :return: ``None`` to give the privacy answer ``252`` (the default
            everywhere; RFC 5321 §7.3), a string for a ``250`` answer, or
            raise :class:`~txsmtp.errors.SMTPError` (for example ``550``).
        """

    def reset():
        """Forget the current transaction (RSET, EHLO, or a transaction ended)."""

    def close():
        """The connection is gone; release what the session holds."""


class IMessageReceiver(Interface):
    """
    Receives one message as it streams in.

    The first chunk written is the server's ``Received:`` header.  Chunks
    are never re-assembled by the server: a receiver that writes them to
    disk as they come holds almost nothing in memory.

    Optionally, a receiver may set ``storedAt`` (a string, or a list of
    them: file paths, queue ids) once ``finish`` has stored the message;
    the server's transaction log line then names it (``stored=``).
    """

    def write(chunk):
        """
        Take the next piece of the message (bytes with CRLF line ends,
        dot-stuffing removed).

        :return: ``None``, or a Deferred to ask the server to stop reading
            from the client until it fires (back-pressure).
        """

    def finish():
        """
        The whole message has arrived.  Store it durably; only then fire.

        :return: a Deferred (or a plain value) firing with ``None`` when the
            message is stored for every recipient, or with a list holding,
            for each recipient of the envelope in order, ``None`` (stored)
            or an :class:`~txsmtp.errors.SMTPError` (LMTP reports each one;
            SMTP answers 250 if any recipient succeeded).  Failing with
            :class:`~txsmtp.errors.SMTPError` refuses the message.
        """

    def abort(reason):
        """
        The message will not be finished (client vanished, size limit, bare
        line ends, timeout).  Remove anything partly stored.

        :param reason: a short text saying why, for logs.
        """


class IDeliveryFactory(Interface):
    """
    A Twisted plugin that makes a delivery from a ``--deliver TYPE:ARGS``
    option of ``twistd smtp``.  Install one by putting a module that
    provides it in a ``twisted/plugins/`` directory.
    """

    deliveryType = Attribute("The TYPE word of ``--deliver TYPE:ARGS``, e.g. ``maildir``.")
    description = Attribute("One line saying what the delivery does.")
    argumentHelp = Attribute("What ARGS means, for ``--help-deliver``.")

    def makeDelivery(argument):
        """
        :param argument: the text after ``TYPE:`` (empty when none).
        :return: an :class:`IDelivery` provider.
        :raise ValueError: with a readable message when ``argument`` is bad.
        """
