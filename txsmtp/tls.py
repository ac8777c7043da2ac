"""
TLS for the server: certificates from PEM files, reloadable without a
restart, and the facts of a TLS session.

:class:`ServerTLS` is what :class:`~txsmtp.server.SMTPFactory` takes as
``tls``: a Twisted context factory (it has ``getContext()``) built from a
certificate chain and a private key in PEM files, restricted to TLS 1.2 and
later with Twisted's modern cipher selection.  :meth:`ServerTLS.reload`
reads the files again (``twistd smtp`` calls it on SIGHUP); a bad file then
keeps the old certificate in service and says why in the log.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from txsmtp.envelope import TLSInfo

__all__ = ["ServerTLS", "TLSConfigurationError", "tlsInfo", "loadCertificateOptions"]

_log = Logger(namespace="txsmtp.tls")


class TLSConfigurationError(Exception):
    """A certificate or key file could not be used; the message says why."""


def _pemBlocks(data: bytes, marker: bytes) -> list[bytes]:
    blocks = []
    begin = b"-----BEGIN " + marker
    pos = 0
    while True:
        start = data.find(begin, pos)
        if start < 0:
            return blocks
        end = data.find(b"-----END ", start)
        end = data.find(b"-----", end + 9)
        if end < 0:
            return blocks
        blocks.append(data[start : end + 5] + b"\n")
        pos = end + 5


def loadCertificateOptions(certPath: str, keyPath: str | None = None) -> ssl.CertificateOptions:
    """
    Build server TLS options from PEM files.

    :param certPath: the certificate, followed by any intermediate
        certificates (the chain), in PEM.
    :param keyPath: the private key in PEM; default: the same file.
    :raise TLSConfigurationError: when a file is missing, unreadable, holds
        no certificate, or the key does not match the certificate.
    """
    try:
        with open(certPath, "rb") as f:
            certData = f.read()
        with open(keyPath or certPath, "rb") as f:
            keyData = f.read()
    except OSError as e:
        raise TLSConfigurationError(f"cannot read {e.filename}: {e.strerror}") from e
    blocks = _pemBlocks(certData, b"CERTIFICATE")
    if not blocks:
        raise TLSConfigurationError(f"{certPath} holds no PEM certificate")
    try:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    except crypto.Error as e:
        raise TLSConfigurationError(f"{certPath}: not a valid certificate ({e})") from e
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyData)
    except crypto.Error as e:
        raise TLSConfigurationError(f"{keyPath or certPath}: no usable PEM private key ({e})") from e
    try:
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=chain[0],
            extraCertChain=chain[1:],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        options.getContext()  # checks that key and certificate match
    except (SSL.Error, ValueError) as e:
        raise TLSConfigurationError(f"{certPath} and {keyPath or certPath} do not work together ({e})") from e
    return options


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """
    A reloadable server TLS configuration from PEM files.

    :param certPath: certificate chain (PEM).
    :param keyPath: private key (PEM); default: ``certPath``.
    :raise TLSConfigurationError: at construction, when the files are bad.
    """

    def __init__(self, certPath: str, keyPath: str | None = None) -> None:
        self.certPath = certPath
        self.keyPath = keyPath or certPath
        self._options = loadCertificateOptions(certPath, self.keyPath)

    def getContext(self) -> SSL.Context:
        """The OpenSSL context for a new connection (the current certificate)."""
        return self._options.getContext()

    @property
    def options(self) -> ssl.CertificateOptions:
        """The :class:`~twisted.internet.ssl.CertificateOptions` in use."""
        return self._options

    def reload(self) -> bool:
        """
        Read the files again.  New connections use the new certificate;
        established ones keep theirs.  On error the old certificate stays and
        the error is logged.

        :return: whether the new files were taken.
        """
        try:
            self._options = loadCertificateOptions(self.certPath, self.keyPath)
        except TLSConfigurationError as e:
            _log.error("TLS certificate reload failed, keeping the old one: {error}", error=str(e))
            return False
        _log.info("TLS certificate reloaded from {path}", path=self.certPath)
        return True


def tlsInfo(transport: Any) -> TLSInfo:
    """The :class:`~txsmtp.envelope.TLSInfo` of a transport that completed its handshake."""
    info = TLSInfo()
    try:
        handle = transport.getHandle()
        info.version = handle.get_protocol_version_name()
        info.cipher = handle.get_cipher_name()
        info.peerCertificate = handle.get_peer_certificate()
    except Exception:
        # A transport that cannot say (a test double) still counts as TLS.
        pass
    return info
