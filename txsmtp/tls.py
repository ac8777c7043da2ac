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

from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from txsmtp.envelope import TLSInfo

__all__ = ["ServerTLS", "TLSConfigurationError", "tlsInfo", "loadCertificateOptions", "CIPHERS"]

_log = Logger(namespace="txsmtp.tls")


class TLSConfigurationError(Exception):
    """A certificate or key file could not be used; the message says why."""


#: TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are
#: all of that already).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def loadCertificateOptions(certPath: str, keyPath: str | None = None) -> ssl.CertificateOptions:
    """
    Build server TLS options from PEM files: TLS 1.2 or later, forward
    secret AEAD cipher suites only.

    :param certPath: the certificate, followed by any intermediate
        certificates (the chain), in PEM.
    :param keyPath: the private key in PEM; default: the same file.
    :raise TLSConfigurationError: when a file is missing, unreadable, holds
        no certificate, or the key does not match the certificate.
    """
    keyPath = keyPath or certPath
    try:
        with open(certPath, "rb") as f:
            certData = f.read()
        with open(keyPath, "rb") as f:
            keyData = f.read()
    except OSError as e:
        raise TLSConfigurationError(f"cannot read {e.filename}: {e.strerror}") from e
    if b"-----BEGIN CERTIFICATE-----" not in certData:
        raise TLSConfigurationError(f"{certPath} holds no PEM certificate")
    try:
        chain = x509.load_pem_x509_certificates(certData)
    except ValueError as e:
        raise TLSConfigurationError(f"{certPath}: a PEM certificate in it is damaged") from e
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigurationError(f"{keyPath}: no usable PEM private key (it must not be encrypted)") from e
    notAfter = chain[0].not_valid_after_utc
    if notAfter < datetime.now(timezone.utc):
        _log.warn(
            "TLS certificate {path} expired on {date}; clients that verify will refuse it",
            path=certPath,
            date=notAfter.isoformat(),
        )
    try:
        # Twisted annotates these as pyOpenSSL's PKey and X509; pyOpenSSL
        # takes the cryptography objects as they are.
        options = ssl.CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=chain[0],  # type: ignore[arg-type]
            extraCertChain=chain[1:],  # type: ignore[arg-type]
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        )
        options.getContext()  # checks that key and certificate match
    except (SSL.Error, ValueError, TypeError) as e:
        raise TLSConfigurationError(f"{certPath} and {keyPath} do not work together ({e})") from e
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
