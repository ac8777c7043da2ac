"""
Anchor server: twisted.mail.smtp's ESMTP server, discarding every message.

This is the reference point txsmtp is compared against.  It is the stock
``twisted.mail.smtp.ESMTP`` protocol with the smallest possible
``IMessageDelivery``: every sender and recipient is accepted and every
message line is dropped as it arrives.

Only the benchmarks import twisted.mail; the txsmtp library itself must not.

With ``--tls-cert`` (and ``--tls-key``) it offers STARTTLS: ``ESMTP``
takes a context factory as its ``ctx`` attribute (here a
``twisted.internet.ssl.CertificateOptions`` limited to TLS 1.2 and later,
like txsmtp's) and advertises STARTTLS when the transport can start TLS.

Usage::

    python3 twisted_mail_server.py --port 0 [--logfile FILE] [--tls-cert cert.pem --tls-key key.pem]

Once the port is listening, ``LISTENING <port>`` is printed on stdout.
"""

import argparse
import sys

from OpenSSL import crypto
from twisted.internet import defer, ssl
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.mail import smtp
from zope.interface import implementer


@implementer(smtp.IMessage)
class DiscardMessage:
    """A message body sink: each line is dropped on arrival."""

    def lineReceived(self, line):
        """Drop one line of the message."""

    def eomReceived(self):
        """Accept the message once its final dot has arrived."""
        return defer.succeed(None)

    def connectionLost(self):
        """Nothing to clean up when the transaction is aborted."""


@implementer(smtp.IMessageDelivery)
class DiscardDelivery:
    """Accept any sender and any recipient; deliver into L{DiscardMessage}."""

    def receivedHeader(self, helo, origin, recipients):
        """Add no ``Received:`` header: the message is dropped anyway."""
        return None

    def validateFrom(self, helo, origin):
        """Accept every sender."""
        return origin

    def validateTo(self, user):
        """Accept every recipient; each message gets a fresh sink."""
        return DiscardMessage


class DiscardESMTPFactory(smtp.SMTPFactory):
    """An ESMTP server factory whose protocols all share one delivery."""

    protocol = smtp.ESMTP
    domain = b"twisted-mail.bench.invalid"

    def __init__(self, contextFactory=None):
        super().__init__()
        self.delivery = DiscardDelivery()
        self.contextFactory = contextFactory

    def buildProtocol(self, addr):
        """Build an ESMTP protocol wired to the discarding delivery."""
        proto = super().buildProtocol(addr)
        proto.delivery = self.delivery
        # ESMTP offers STARTTLS when ctx is set before connectionMade.
        proto.ctx = self.contextFactory
        return proto


def loadContextFactory(certPath, keyPath):
    """Twisted server TLS options from PEM files (TLS 1.2 and later)."""
    with open(certPath, "rb") as f:
        certData = f.read()
    with open(keyPath, "rb") as f:
        keyData = f.read()
    return ssl.CertificateOptions(
        privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, keyData),
        certificate=crypto.load_certificate(crypto.FILETYPE_PEM, certData),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def main(argv=None):
    """Parse the command line, listen on 127.0.0.1 and run the reactor."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument(
        "--logfile",
        help="write Twisted's log here (as twistd would); default: discard it",
    )
    parser.add_argument("--backlog", type=int, default=1024, help="listen(2) backlog")
    parser.add_argument("--tls-cert", help="PEM certificate: offer STARTTLS")
    parser.add_argument("--tls-key", help="PEM private key (default: the --tls-cert file)")
    args = parser.parse_args(argv)
    contextFactory = None
    if args.tls_cert:
        contextFactory = loadContextFactory(args.tls_cert, args.tls_key or args.tls_cert)
    elif args.tls_key:
        parser.error("--tls-key needs --tls-cert")

    if args.logfile:
        logFile = open(args.logfile, "a", encoding="utf-8")
        observers = [textFileLogObserver(logFile)]
    else:
        observers = [lambda event: None]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)

    from twisted.internet import reactor

    port = reactor.listenTCP(
        args.port, DiscardESMTPFactory(contextFactory), backlog=args.backlog, interface="127.0.0.1"
    )
    sys.stdout.write(f"LISTENING {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
