"""
Test certificates, made at test time with ``cryptography`` (no private key
is ever committed).

:func:`certificates` builds, once per process, in a temporary directory
removed at exit:

- a root CA (the only thing clients trust: :attr:`Certs.ca`);
- an intermediate CA signed by the root;
- a server certificate for ``DNS:localhost`` and ``IP:127.0.0.1`` signed by
  the intermediate: :attr:`Certs.chain` holds the leaf *then* the
  intermediate, so a client that trusts only the root verifies it only if
  the server sends the whole chain; :attr:`Certs.leafOnly` holds the leaf
  alone;
- a second server certificate (other serial, CN ``other.localhost``), for
  reload tests;
- a key that matches none of the certificates, an expired server
  certificate, and a client certificate signed by the root.

:func:`serverCertificate` issues more server certificates, for the host
names a test needs (``mta-sts.example.com``...), signed by the same
intermediate, or by a CA no client trusts.

Keys are ECDSA P-256: fast to make, and every peer (OpenSSL, GnuTLS,
Net::SSLeay) speaks it.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certs", "certificates", "fingerprint", "copyServerFiles", "serverCertificate"]


@dataclass(frozen=True)
class Certs:
    """Paths of the PEM files (all in :attr:`directory`)."""

    directory: str
    #: the root CA certificate: the trust anchor for clients
    ca: str
    #: the intermediate CA certificate
    intermediate: str
    #: server leaf + intermediate
    chain: str
    #: the server leaf alone
    leafOnly: str
    #: the server's private key
    key: str
    #: leaf + key in one file (for ``--tls-cert`` without ``--tls-key``)
    combined: str
    #: a second server certificate chain and its key (CN other.localhost)
    otherChain: str
    otherKey: str
    #: a key that belongs to no certificate here
    wrongKey: str
    #: an expired server certificate (signed by the intermediate) + intermediate, and its key
    expiredChain: str
    expiredKey: str
    #: a client certificate signed by the root, and its key
    clientCert: str
    clientKey: str
    #: SHA-256 fingerprints (DER) of the server leaf certificates
    leafSHA256: str
    otherSHA256: str


_cached: Certs | None = None
# The intermediate CA and its key, for serverCertificate().
_issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
_issued = 0


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txsmtp tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certPEM(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _build(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuerKey: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
    names: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore or now - datetime.timedelta(days=1))
        .not_valid_after(notAfter or now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuerKey.public_key()),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(subject),
                        *(x509.DNSName(name) for name in names),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuerKey, hashes.SHA256())


def _write(directory: str, name: str, data: bytes, private: bool = False) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint (hex) of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


def certificates() -> Certs:
    """The test certificates (made on the first call, then reused)."""
    global _cached, _issuer
    if _cached is not None:
        return _cached
    directory = tempfile.mkdtemp(prefix="txsmtp-test-certs-")
    atexit.register(shutil.rmtree, directory, True)

    rootKey = _key()
    root = _build("txsmtp test root CA", rootKey, None, rootKey, ca=True)
    interKey = _key()
    inter = _build("txsmtp test intermediate CA", interKey, root, rootKey, ca=True)

    leafKey = _key()
    leaf = _build("localhost", leafKey, inter, interKey, server=True)
    otherKey = _key()
    other = _build("other.localhost", otherKey, inter, interKey, server=True)
    wrongKey = _key()
    expiredKey = _key()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=60)
    expired = _build(
        "localhost",
        expiredKey,
        inter,
        interKey,
        server=True,
        notBefore=past,
        notAfter=past + datetime.timedelta(days=30),
    )
    clientKey = _key()
    client = _build("client.localhost", clientKey, root, rootKey, client=True)

    interPEM = _certPEM(inter)
    _issuer = (inter, interKey)
    _cached = Certs(
        directory=directory,
        ca=_write(directory, "ca.pem", _certPEM(root)),
        intermediate=_write(directory, "intermediate.pem", interPEM),
        chain=_write(directory, "chain.pem", _certPEM(leaf) + interPEM),
        leafOnly=_write(directory, "leaf.pem", _certPEM(leaf)),
        key=_write(directory, "key.pem", _keyPEM(leafKey), private=True),
        combined=_write(
            directory, "combined.pem", _certPEM(leaf) + interPEM + _keyPEM(leafKey), private=True
        ),
        otherChain=_write(directory, "other-chain.pem", _certPEM(other) + interPEM),
        otherKey=_write(directory, "other-key.pem", _keyPEM(otherKey), private=True),
        wrongKey=_write(directory, "wrong-key.pem", _keyPEM(wrongKey), private=True),
        expiredChain=_write(directory, "expired-chain.pem", _certPEM(expired) + interPEM),
        expiredKey=_write(directory, "expired-key.pem", _keyPEM(expiredKey), private=True),
        clientCert=_write(directory, "client.pem", _certPEM(client)),
        clientKey=_write(directory, "client-key.pem", _keyPEM(clientKey), private=True),
        leafSHA256=_sha256(leaf),
        otherSHA256=_sha256(other),
    )
    return _cached


def copyServerFiles(directory: str, which: str = "main") -> tuple[str, str]:
    """
    Copy a server chain and key into ``directory`` as ``cert.pem`` and
    ``key.pem`` (replacing them: for reload tests) and return both paths.

    :param which: ``"main"`` (CN localhost) or ``"other"`` (CN other.localhost).
    """
    c = certificates()
    chain, key = (c.chain, c.key) if which == "main" else (c.otherChain, c.otherKey)
    certPath = os.path.join(directory, "cert.pem")
    keyPath = os.path.join(directory, "key.pem")
    # Write then rename, as a certificate renewal tool does.
    for source, target in ((chain, certPath), (key, keyPath)):
        tmp = target + ".new"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return certPath, keyPath


def serverCertificate(names: tuple[str, ...], trusted: bool = True) -> tuple[str, str]:
    """
    Issue a server certificate for the DNS names ``names`` (the first is
    also the CN; ``localhost`` and ``127.0.0.1`` are always added) and
    return the paths of its chain (leaf then intermediate) and key.

    :param trusted: ``True``: signed by the test intermediate, so clients
        trusting :attr:`Certs.ca` accept it; ``False``: signed by a CA made
        for the occasion, which no client trusts.
    """
    global _issued
    c = certificates()
    assert _issuer is not None
    inter, interKey = _issuer
    if not trusted:
        rogueKey = _key()
        inter = _build("txsmtp test rogue CA", rogueKey, None, rogueKey, ca=True)
        interKey = rogueKey
    key = _key()
    leaf = _build(names[0], key, inter, interKey, server=True, names=names[1:])
    _issued += 1
    stem = f"issued-{_issued}"
    chain = _write(c.directory, f"{stem}-chain.pem", _certPEM(leaf) + _certPEM(inter))
    keyPath = _write(c.directory, f"{stem}-key.pem", _keyPEM(key), private=True)
    return chain, keyPath
