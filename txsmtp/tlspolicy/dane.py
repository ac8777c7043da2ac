"""
DANE for SMTP (RFC 7672): finding an MX host's TLSA records and checking a
server's certificate chain against them.

Theory of operation, in the order outbound delivery uses it:

1. **The MX host's addresses** (RFC 7672 §2.2.3, "TLSA Record Lookup";
   §2.2.1 lets the MX RRset itself be insecure): DANE applies to an MX
   host only when its address records are *secure*.
   :func:`hostAddresses` asks A and AAAA through a
   :class:`~txsmtp.tlspolicy.securedns.SecureResolver` and says whether
   both answers were validated; it also reports the name the addresses
   were found at (the end of a CNAME chain).
2. **The TLSA records** (RFC 7672 §2.2): :func:`tlsaRecords` asks TLSA at
   ``_25._tcp.<host>``.  Only a *secure* answer counts:

   - secure records: DANE applies, :class:`TLSASet` (TLS is then
     mandatory: a server without STARTTLS, or with a failed handshake, is a
     failed delivery attempt, RFC 7672 §2.2);
   - secure "no records" (NODATA, NXDOMAIN) or any *insecure* answer: DANE
     does not apply (``None``): the client goes on with what it does
     without DANE (opportunistic TLS);
   - *bogus* (the validating resolver answers SERVFAIL) or no answer at
     all: :class:`~txsmtp.mailauth.dnsquery.DNSTemporaryError`, and the
     delivery to this host is deferred (RFC 7672 §2.1.1: an attacker who
     can make the lookup fail must not be able to downgrade to plaintext).

   :func:`lookupDANE` puts 1 and 2 together, with the CNAME rule of RFC
   7672 §2.2.3.
3. **Usable records** (RFC 7672 §3.1, RFC 7671 §4): an SMTP client uses only
   DANE-TA(2) and DANE-EE(3); PKIX-TA(0) and PKIX-EE(1) are *unusable*
   (there is no agreed set of CAs between MTAs), as are unknown usages,
   selectors and matching types, and digests of the wrong length.  When a
   secure TLSA RRset holds only unusable records, DANE still applies, so
   TLS is still mandatory, but the certificate cannot be authenticated
   and is not checked (RFC 7672 §2.2, §3.1; RFC 6698 §4.1 lets an
   application decide what "unusable" means): :attr:`TLSASet.usable` is
   then empty and :attr:`TLSASet.authenticated` false.
4. **Matching** (RFC 6698 §2.1, RFC 7671 §5, RFC 7672 §3.1): a record
   selects either the whole certificate (selector 0) or its
   SubjectPublicKeyInfo (selector 1), both DER, and compares it exactly
   (matching type 0) or by SHA-256 (1) or SHA-512 (2).  :func:`verifyChain`
   accepts a chain when

   - a DANE-EE(3) record matches the leaf: nothing else is checked, neither
     names nor dates (RFC 7672 §3.1.1);
   - or a DANE-TA(2) record matches a certificate of the chain the server
     sent (or is itself a full certificate, ``2 0 0``, RFC 7671 §5.2.2), and
     the leaf verifies up to that trust anchor with the usual X.509 rules
     (:mod:`cryptography.x509.verification`, dates included) for one of the
     reference names: the TLSA base domain, that is the MX host name, or
     the names the caller adds (RFC 7672 §3.2.2).  Wildcards are those of
     RFC 6125 (a whole left-most label, RFC 7672 §3.2.3).

The pieces are pure except :func:`hostAddresses`, :func:`tlsaRecords` and
:func:`lookupDANE`, which ask the DNS.  The TLS side (a pyOpenSSL
connection creator that aborts the handshake on a mismatch) is
:mod:`txsmtp.tlspolicy.daneclient`.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from twisted.names import dns

from txsmtp.tlspolicy.securedns import SecureResolver

__all__ = [
    "DANEVerificationError",
    "HostAddresses",
    "MatchingType",
    "Selector",
    "TLSARecord",
    "TLSASet",
    "TLSA",
    "Usage",
    "hostAddresses",
    "lookupDANE",
    "tlsaName",
    "tlsaRecords",
    "verifyChain",
]

#: The TLSA resource record type (RFC 6698 §7.1).
TLSA = 52


class Usage(enum.IntEnum):
    """Certificate usages (RFC 6698 §2.1.1, names from RFC 7218)."""

    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(enum.IntEnum):
    """Which part of a certificate is matched (RFC 6698 §2.1.2)."""

    CERT = 0
    SPKI = 1


class MatchingType(enum.IntEnum):
    """How it is compared (RFC 6698 §2.1.3)."""

    FULL = 0
    SHA256 = 1
    SHA512 = 2


_DIGEST_SIZES: dict[int, int] = {MatchingType.SHA256: 32, MatchingType.SHA512: 64}


class DANEVerificationError(Exception):
    """A certificate chain matched none of the usable TLSA records."""


@dataclass(frozen=True)
class TLSARecord:
    """
    One TLSA record (RFC 6698 §2.1): its three one-octet fields and the
    certificate association data.
    """

    usage: int
    selector: int
    matchingType: int
    data: bytes

    @classmethod
    def fromRdata(cls, rdata: bytes) -> TLSARecord:
        """
        Parse the record's rdata (wire format, RFC 6698 §2.1).

        :raise ValueError: when it is shorter than its three fixed octets.
        """
        if len(rdata) < 3:
            raise ValueError(f"TLSA rdata of {len(rdata)} octets; at least 3 are needed")
        return cls(rdata[0], rdata[1], rdata[2], bytes(rdata[3:]))

    @property
    def usable(self) -> bool:
        """
        Whether an SMTP client may use it (RFC 7672 §3.1): DANE-TA(2) or
        DANE-EE(3), a known selector and matching type, and data of the
        size the matching type implies (RFC 7671 §4).
        """
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return False
        if self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.matchingType == MatchingType.FULL:
            return bool(self.data)
        size = _DIGEST_SIZES.get(self.matchingType)
        return size is not None and len(self.data) == size

    def matches(self, certificate: x509.Certificate) -> bool:
        """Whether the part of ``certificate`` this record selects matches its data."""
        if not self.usable:
            return False
        if self.selector == Selector.CERT:
            selected = certificate.public_bytes(serialization.Encoding.DER)
        else:
            selected = certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        if self.matchingType == MatchingType.SHA256:
            selected = hashlib.sha256(selected).digest()
        elif self.matchingType == MatchingType.SHA512:
            selected = hashlib.sha512(selected).digest()
        return hmac.compare_digest(selected, self.data)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matchingType} {self.data.hex()}"


@dataclass(frozen=True)
class TLSASet:
    """
    The secure TLSA records of one MX host: DANE applies to it.

    :ivar host: the TLSA base domain (the MX host name, or its secure CNAME
        expansion, RFC 7672 §2.2.3), lower case without the final dot: the
        first reference name for DANE-TA(2) (RFC 7672 §3.2.2).
    :ivar port: the port the records are for.
    :ivar records: every record of the RRset, usable or not.
    :ivar referenceNames: the names a DANE-TA(2) certificate may carry (the
        base domain first, then the MX host name when it differs).
    """

    host: str
    port: int
    records: tuple[TLSARecord, ...]
    referenceNames: tuple[str, ...] = ()

    @property
    def usable(self) -> tuple[TLSARecord, ...]:
        """The records an SMTP client uses (RFC 7672 §3.1)."""
        return tuple(r for r in self.records if r.usable)

    @property
    def authenticated(self) -> bool:
        """
        Whether the server must be authenticated: at least one usable
        record.  When false, TLS is still mandatory but not authenticated
        (RFC 7672 §2.2).
        """
        return bool(self.usable)

    def names(self) -> tuple[str, ...]:
        """The reference names, never empty (the base domain at least)."""
        return self.referenceNames or (self.host,)


@dataclass(frozen=True)
class HostAddresses:
    """
    An MX host's addresses and whether DANE may apply to it.

    :ivar addresses: IPv4 then IPv6 addresses, as text.
    :ivar secure: whether both the A and the AAAA answers were validated
        (RFC 7672 §2.2.3: only then are TLSA records looked up).
    :ivar canonicalName: where the addresses were found (the end of a CNAME
        chain, or the host name itself).
    """

    addresses: tuple[str, ...]
    secure: bool
    canonicalName: str


def _normal(name: str) -> str:
    return name.rstrip(".").lower()


def tlsaName(host: str, port: int = 25) -> str:
    """The owner name of the TLSA records of ``host`` (RFC 6698 §3, RFC 7672 §2.2)."""
    return f"_{port}._tcp.{_normal(host)}"


async def hostAddresses(resolver: SecureResolver, host: str) -> HostAddresses:
    """
    Ask A and AAAA for the MX host ``host``: give the integrator the rule of
    RFC 7672 §2.2.3 (TLSA records are looked up, and DANE applies, only when
    the address records are secure).

    :raise DNSTemporaryError: when either question gets no answer (SERVFAIL,
        which includes bogus data, or a timeout).
    """
    a = await resolver.query(host, dns.A)
    aaaa = await resolver.query(host, dns.AAAA)
    addresses = tuple(r.dottedQuad() for r in a.records) + tuple(
        _ipv6Text(r.address) for r in aaaa.records
    )
    canonical = a.canonicalName if a.records else aaaa.canonicalName if aaaa.records else _normal(host)
    return HostAddresses(addresses=addresses, secure=a.secure and aaaa.secure, canonicalName=canonical)


def _ipv6Text(packed: bytes) -> str:
    import socket

    return socket.inet_ntop(socket.AF_INET6, packed)


async def tlsaRecords(resolver: SecureResolver, host: str, port: int = 25) -> TLSASet | None:
    """
    The TLSA records of ``host`` for ``port`` (RFC 7672 §2.2).

    :return: a :class:`TLSASet` when the answer is secure and holds records
        (DANE applies, even when none is usable), ``None`` when DANE does
        not apply: no records, or an answer that is not secure.
    :raise DNSTemporaryError: bogus data (SERVFAIL from the validating
        resolver) or no answer: the delivery must be deferred (RFC 7672
        §2.1.1, §2.2).
    """
    answer = await resolver.query(tlsaName(host, port), TLSA)
    if not answer.secure or answer.nxdomain or not answer.records:
        return None
    records = []
    for payload in answer.records:
        try:
            records.append(TLSARecord.fromRdata(_rdata(payload)))
        except ValueError:
            # A malformed record is just unusable: keep it as such, so an
            # RRset of only malformed records still makes TLS mandatory.
            records.append(TLSARecord(-1, -1, -1, b""))
    return TLSASet(host=_normal(host), port=port, records=tuple(records), referenceNames=(_normal(host),))


def _rdata(payload: Any) -> bytes:
    data = getattr(payload, "data", payload)
    if not isinstance(data, bytes):
        raise ValueError(f"no raw rdata in {payload!r}")
    return data


async def lookupDANE(resolver: SecureResolver, host: str, port: int = 25) -> TLSASet | None:
    """
    Everything RFC 7672 §2.2 asks about one MX host: its addresses must be
    secure (§2.2.3), and then its TLSA records are looked up; when the host
    name is a CNAME whose expansion is secure, at the expanded name first,
    then at the host name (§2.2.3), and both names are reference names.

    :return: as :func:`tlsaRecords`; ``None`` also when the addresses are
        not secure.
    :raise DNSTemporaryError: as :func:`tlsaRecords` and
        :func:`hostAddresses`.
    """
    addresses = await hostAddresses(resolver, host)
    if not addresses.secure:
        return None
    original = _normal(host)
    bases = [addresses.canonicalName, original] if addresses.canonicalName != original else [original]
    for base in bases:
        found = await tlsaRecords(resolver, base, port)
        if found is not None:
            names = tuple(dict.fromkeys([base, original]))
            return TLSASet(host=found.host, port=port, records=found.records, referenceNames=names)
    return None


def verifyChain(
    records: Iterable[TLSARecord],
    chain: Sequence[x509.Certificate],
    referenceNames: Sequence[str],
    now: datetime.datetime | None = None,
) -> TLSARecord:
    """
    Check the chain a server presented (leaf first) against TLSA records.

    :param records: the TLSA records (the unusable ones are ignored).
    :param referenceNames: the names the leaf may carry for DANE-TA(2)
        (RFC 7672 §3.2.2), the TLSA base domain first.
    :param now: the time for DANE-TA(2) validity checks (default: now).
    :return: the record that matched.
    :raise DANEVerificationError: when no usable record matches (or there
        is no usable record at all, or no certificate).
    """
    usable = [r for r in records if r.usable]
    if not chain:
        raise DANEVerificationError("the server presented no certificate")
    if not usable:
        raise DANEVerificationError("no usable TLSA record")
    leaf = chain[0]
    # DANE-EE(3): the leaf itself, names and dates ignored (RFC 7672 §3.1.1).
    for record in usable:
        if record.usage == Usage.DANE_EE and record.matches(leaf):
            return record
    problems: list[str] = []
    for record in usable:
        if record.usage != Usage.DANE_TA:
            continue
        anchors = [c for c in chain if record.matches(c)]
        if not anchors and record.selector == Selector.CERT and record.matchingType == MatchingType.FULL:
            # A full certificate in the record is a trust anchor even when
            # the server does not send it (RFC 7671 §5.2.2).
            try:
                anchors = [x509.load_der_x509_certificate(record.data)]
            except ValueError:
                anchors = []
        for anchor in anchors:
            problem = _chainsTo(leaf, chain[1:], anchor, referenceNames, now)
            if problem is None:
                return record
            problems.append(problem)
    detail = "; ".join(dict.fromkeys(problems)) if problems else "no certificate matches"
    raise DANEVerificationError(f"no TLSA record matches the server's certificate chain ({detail})")


def _chainsTo(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchor: x509.Certificate,
    referenceNames: Sequence[str],
    now: datetime.datetime | None,
) -> str | None:
    builder = PolicyBuilder().store(Store([anchor]))
    if now is not None:
        builder = builder.time(now)
    problem = "no reference name"
    for name in referenceNames:
        try:
            verifier = builder.build_server_verifier(x509.DNSName(_normal(name)))
            verifier.verify(leaf, list(intermediates))
        except (VerificationError, ValueError) as e:
            problem = f"{name}: {e}"
            continue
        return None
    return problem
