"""
DKIM verification (RFC 6376 §6), with RSA-SHA256 and Ed25519-SHA256
(RFC 8463), and the restrictions of RFC 8301 (no SHA-1, RSA keys of 1024
bits at least).

Theory of operation
-------------------

:class:`DKIMVerifier` takes the message as it streams (:meth:`~DKIMVerifier.feed`,
chunks cut anywhere, CRLF line ends), in two parts:

- the header section is kept, up to a bound (64 KiB by default).  When it
  ends, the ``DKIM-Signature`` fields are parsed (the first
  ``maxSignatures`` of them, from the top; any further ones are ignored,
  counted in :attr:`~DKIMVerifier.ignoredSignatures`).  A header section
  longer than the bound is not kept: every signature found in its first
  bytes is then ``permerror`` ("header too long"), and the rest of the
  message is ignored;
- the body is only hashed, line by line, by one
  :class:`~txsmtp.mailauth.dkimcanon.BodyHasher` per distinct body
  canonicalization, hash and ``l=`` among the signatures: two signatures
  that hash the body alike share one pass over it.

Then :meth:`~DKIMVerifier.verify` asks the DNS for the keys
(``<s>._domainkey.<d>`` TXT, RFC 6376 §3.6.2, the lookups running
together, each name once) and checks each signature: the key record, the
body hash, then the signature of the header fields (§6.1).  That is the
only part that does I/O.

Each signature checked gives one :class:`~txsmtp.mailauth.results.MethodResult`
with ``method="dkim"``, in the order of the fields, with the properties
``header.d``, ``header.i`` (when the signature has ``i=``), ``header.s``,
``header.a`` and ``header.b`` (the first 8 characters of ``b=``, RFC 8601
§2.7.1), those the field has.  The results:

``pass``
    the signature verified;
``fail``
    the body hash or the signature does not match (the message changed);
``neutral``
    it would be ``fail``, but the key says the domain is testing DKIM
    (``t=y``: such a failure must not count against the message, RFC 6376
    §3.6.1);
``temperror``
    the key could not be fetched (no DNS answer, SERVFAIL);
``permerror``
    anything else that makes the signature unusable: bad syntax, a
    missing tag, ``h=`` without From, ``i=`` outside ``d=``, an unknown or
    forbidden algorithm (``rsa-sha1``, RFC 8301 §3.1), no key, a bad or
    revoked key, a key of the wrong type or for other uses, an RSA key
    under 1024 bits (RFC 8301 §3.2) or over 8192, an expired signature
    (``x=``, when the verifier was given ``now``), a header too long.

A message without signatures gives no result (an empty list): the caller
writes ``dkim=none``.  The domains whose signature passed (DMARC's
"aligned identifiers" are taken from them) are :func:`passingDomains`.

.. code-block:: python

    verifier = DKIMVerifier(now=int(reactor.seconds()))
    for chunk in chunks:
        verifier.feed(chunk)
    results = await verifier.verify(resolver)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import dns

from txsmtp.mailauth.dkimcanon import (
    BodyHasher,
    HeaderReader,
    HeaderSectionTooLong,
    canonHeader,
    fieldName,
    parseCanonicalization,
    selectFields,
    splitFields,
)
from txsmtp.mailauth.dnsquery import DEFAULT_TIMEOUT, DNSTemporaryError, query, txtStrings
from txsmtp.mailauth.results import MethodResult

__all__ = [
    "DKIMVerifier",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "parseTagList",
    "passingDomains",
    "signedHeaderData",
    "verifyMessage",
]

_log = Logger(namespace="txsmtp.mailauth.dkimverify")

#: RSA keys shorter than this are not accepted (RFC 8301 §3.2).
MIN_RSA_BITS = 1024
#: Nor longer than this: verifying with them costs too much.
MAX_RSA_BITS = 8192

_ALGORITHMS = {"rsa-sha256": ("rsa", "sha256"), "ed25519-sha256": ("ed25519", "sha256")}
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_FWS = re.compile(r"[ \t\r\n]+")
_DIGITS = re.compile(r"[0-9]{1,76}\Z")
# A domain or selector: labels of letters, digits, '-' and '_' (or non-ASCII,
# RFC 8616), separated by dots.
_LABELS = re.compile(r"(?:[A-Za-z0-9_\-\u0080-\U0010ffff]+\.)*[A-Za-z0-9_\-\u0080-\U0010ffff]+\Z")
# In the raw field: the value of b= (not bh=), which the signature leaves
# out of what it signs (RFC 6376 §3.7).
_B_VALUE = re.compile(rb"((?:^|;)[ \t\r\n]*b[ \t\r\n]*=)[^;]*")


class _PermError(Exception):
    """A reason for ``permerror``."""


def parseTagList(text: str) -> dict[str, str]:
    """
    Read a tag list (RFC 6376 §3.2): ``name=value`` pairs separated by
    ``;``, with folding white space around names and values (kept inside
    values, where only ``b=``, ``bh=`` and ``p=`` remove it).

    :raise ValueError: for bad syntax or a tag given twice (the whole
        list is then invalid).
    """
    tags: dict[str, str] = {}
    specs = text.split(";")
    if specs and not specs[-1].strip(" \t\r\n"):
        specs.pop()  # a final ";" is allowed
    for spec in specs:
        name, equals, value = spec.partition("=")
        name = name.strip(" \t\r\n")
        if not equals or not _TAG_NAME.match(name):
            raise ValueError(f"bad tag {spec.strip()!r}")
        if name in tags:
            raise ValueError(f"tag {name}= given twice")
        tags[name] = value.strip(" \t\r\n")
    return tags


def _base64(value: str, tag: str) -> bytes:
    try:
        return base64.b64decode(_FWS.sub("", value), validate=True)
    except (binascii.Error, ValueError):
        raise _PermError(f"{tag}= is not base64") from None


@dataclass
class _Signature:
    """One DKIM-Signature field and what parsing it found."""

    raw: bytes
    properties: tuple[tuple[str, str], ...] = ()
    error: str | None = None
    keyType: str = ""
    hashName: str = ""
    headerCanon: str = "simple"
    bodyCanon: str = "simple"
    limit: int | None = None
    domain: str = ""
    selector: str = ""
    identity: str | None = None
    names: list[str] = field(default_factory=list)
    bodyHash: bytes = b""
    signature: bytes = b""

    @property
    def bodyKey(self) -> tuple[str, str, int | None]:
        return (self.bodyCanon, self.hashName, self.limit)

    @property
    def keyName(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def result(self, result: str, reason: str | None = None) -> MethodResult:
        return MethodResult("dkim", result, reason, self.properties)


def _parseSignature(raw: bytes, now: float | None) -> _Signature:
    """
    Parse a DKIM-Signature field (RFC 6376 §3.5, the checks of §6.1.1); a
    signature that cannot be used has :attr:`_Signature.error` set.
    """
    sig = _Signature(raw)
    try:
        text = raw.partition(b":")[2].decode("utf-8")
    except UnicodeDecodeError:
        sig.error = "DKIM-Signature is not UTF-8"
        return sig
    try:
        tags = parseTagList(text)
    except ValueError as e:
        sig.error = f"DKIM-Signature syntax error: {e}"
        return sig
    properties = [("header.d", tags.get("d")), ("header.i", tags.get("i")), ("header.s", tags.get("s")),
                  ("header.a", tags.get("a")), ("header.b", _FWS.sub("", tags.get("b", ""))[:8] or None)]
    sig.properties = tuple((k, v) for k, v in properties if v is not None)
    try:
        _checkTags(sig, tags, now)
    except _PermError as e:
        sig.error = str(e)
    return sig


def _checkTags(sig: _Signature, tags: dict[str, str], now: float | None) -> None:
    missing = [t for t in ("v", "a", "b", "bh", "d", "h", "s") if t not in tags]
    if missing:
        raise _PermError("missing tags: " + ", ".join(f"{t}=" for t in missing))
    if tags["v"] != "1":
        raise _PermError(f"unsupported version v={tags['v']}")
    algorithm = tags["a"].lower()
    if algorithm == "rsa-sha1":
        # RFC 8301 §3.1: verifiers must not consider rsa-sha1 signatures valid.
        raise _PermError("rsa-sha1 is not accepted (RFC 8301)")
    if algorithm not in _ALGORITHMS:
        raise _PermError(f"unknown algorithm a={tags['a']}")
    sig.keyType, sig.hashName = _ALGORITHMS[algorithm]
    try:
        sig.headerCanon, sig.bodyCanon = parseCanonicalization(tags.get("c", "simple/simple"))
    except ValueError:
        raise _PermError(f"unknown canonicalization c={tags['c']}") from None
    sig.domain = tags["d"].lower().rstrip(".")
    sig.selector = tags["s"].lower()
    if not _LABELS.match(sig.domain) or not _LABELS.match(sig.selector) or len(sig.keyName) > 253:
        raise _PermError("bad d= or s=")
    sig.names = [_FWS.sub("", name) for name in tags["h"].split(":")]
    if "from" not in (name.lower() for name in sig.names):
        raise _PermError("h= does not include From")
    if "i" in tags:
        # §6.1.1: i= must be d= or a subdomain of it.
        sig.identity = tags["i"]
        _, at, idDomain = sig.identity.rpartition("@")
        idDomain = idDomain.lower().rstrip(".")
        if not at or (idDomain != sig.domain and not idDomain.endswith("." + sig.domain)):
            raise _PermError("i= is not within d=")
    if "l" in tags:
        if not _DIGITS.match(tags["l"]):
            raise _PermError(f"bad l={tags['l']}")
        sig.limit = int(tags["l"])
    if "q" in tags and "dns/txt" not in [_FWS.sub("", q).lower() for q in tags["q"].split(":")]:
        raise _PermError(f"unsupported query method q={tags['q']}")
    times = {}
    for name in ("t", "x"):
        if name in tags:
            if not _DIGITS.match(tags[name]):
                raise _PermError(f"bad {name}={tags[name]}")
            times[name] = int(tags[name])
    if "x" in times:
        if "t" in times and times["x"] < times["t"]:
            raise _PermError("x= is before t=")
        if now is not None and now > times["x"]:
            raise _PermError("signature expired (x=)")
    sig.bodyHash = _base64(tags["bh"], "bh")
    sig.signature = _base64(tags["b"], "b")
    if not sig.signature:
        raise _PermError("empty b=")


def signedHeaderData(signatureField: bytes, fields: Sequence[bytes], names: Sequence[str], canonicalization: str) -> bytes:
    """
    What a DKIM signature signs (RFC 6376 §3.7): the header ``fields``
    that ``names`` (its ``h=``) selects (:func:`~txsmtp.mailauth.dkimcanon.selectFields`),
    canonicalized, then ``signatureField`` itself with the value of ``b=``
    removed, canonicalized, without its final CRLF.  The signature field
    is not a candidate for selection (found by identity in ``fields``).

    :param canonicalization: the header canonicalization,
        ``"simple"`` or ``"relaxed"``.
    """
    others = [f for f in fields if f is not signatureField]
    data = b"".join(canonHeader(f, canonicalization) for f in selectFields(others, names))
    name, colon, value = signatureField.partition(b":")
    unsigned = name + colon + _B_VALUE.sub(rb"\1", value, count=1)
    return data + canonHeader(unsigned, canonicalization)[:-2]


@dataclass
class _Key:
    """A public key record, checked against one signature."""

    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    testing: bool


def _parseKey(sig: _Signature, record: bytes) -> _Key:
    """
    Read a key record (RFC 6376 §3.6.1; RFC 8463 §4 for Ed25519) for
    ``sig``.

    :raise _PermError: for a record that cannot serve this signature.
    """
    try:
        tags = parseTagList(record.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _PermError(f"key record syntax error: {e}") from None
    if "v" in tags and (tags["v"] != "DKIM1" or next(iter(tags)) != "v"):
        raise _PermError(f"key record of version v={tags['v']}")
    if "h" in tags and sig.hashName not in [_FWS.sub("", h).lower() for h in tags["h"].split(":")]:
        raise _PermError(f"key does not allow {sig.hashName} (h={tags['h']})")
    keyType = tags.get("k", "rsa").lower()
    if keyType not in ("rsa", "ed25519"):
        raise _PermError(f"unknown key type k={keyType}")
    if keyType != sig.keyType:
        raise _PermError(f"key type {keyType} does not match the algorithm")
    services = [_FWS.sub("", s).lower() for s in tags.get("s", "*").split(":")]
    if "*" not in services and "email" not in services:
        raise _PermError("key not for email (s=)")
    flags = [_FWS.sub("", t).lower() for t in tags.get("t", "").split(":")]
    if "s" in flags and sig.identity is not None:
        # t=s: i= must be d= exactly, no subdomain.
        if sig.identity.rpartition("@")[2].lower().rstrip(".") != sig.domain:
            raise _PermError("key forbids subdomains in i= (t=s)")
    if "p" not in tags:
        raise _PermError("key record has no p=")
    data = _base64(tags["p"], "p")
    if not data:
        raise _PermError("key revoked (empty p=)")
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    if keyType == "ed25519":
        if len(data) != 32:
            raise _PermError("bad Ed25519 key (not 32 bytes)")
        key = ed25519.Ed25519PublicKey.from_public_bytes(data)
    else:
        try:
            loaded = serialization.load_der_public_key(data)
        except (ValueError, TypeError):
            raise _PermError("bad RSA key") from None
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise _PermError("bad RSA key (not RSA)")
        if loaded.key_size < MIN_RSA_BITS:
            raise _PermError(f"RSA key too short ({loaded.key_size} bits, RFC 8301)")
        if loaded.key_size > MAX_RSA_BITS:
            raise _PermError(f"RSA key too long ({loaded.key_size} bits)")
        key = loaded
    return _Key(key, "y" in flags)


def _verifySignature(key: _Key, sig: _Signature, data: bytes) -> bool:
    try:
        if isinstance(key.key, rsa.RSAPublicKey):
            key.key.verify(sig.signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
            key.key.verify(sig.signature, hashlib.sha256(data).digest())
    except InvalidSignature:
        return False
    return True


@dataclass
class _Lookup:
    """What the DNS said about one key name."""

    records: list[bytes] = field(default_factory=list)
    temporary: str | None = None


class DKIMVerifier:
    """
    Verify the DKIM signatures of one message: :meth:`feed` it the message
    as received (header fields, an empty line, the body, CRLF line ends),
    then await :meth:`verify`.

    Only the first ``maxSignatures`` DKIM-Signature fields (from the top
    of the header) are checked; the others are ignored (no result), and
    counted in :attr:`ignoredSignatures`.

    :param maxSignatures: how many signatures to check at most.
    :param now: the time (seconds since the epoch, from the caller's
        clock) to check ``x=`` against; ``None`` does not check it.
    :param maxHeaderBytes: the bound on the header section kept.
    """

    def __init__(self, maxSignatures: int = 5, now: float | None = None, maxHeaderBytes: int = 65536) -> None:
        self.maxSignatures = maxSignatures
        self.now = now
        self._reader = HeaderReader(maxHeaderBytes)
        self._fields: list[bytes] = []
        self._signatures: list[_Signature] = []
        self._hashers: dict[tuple[str, str, int | None], BodyHasher] = {}
        self._tooLong = False
        self._finished = False
        #: How many DKIM-Signature fields past ``maxSignatures`` were ignored.
        self.ignoredSignatures = 0

    def feed(self, data: bytes) -> None:
        """
        Take the next part of the message; parts may be cut anywhere.

        :raise ValueError: after :meth:`verify`.
        """
        if self._finished:
            raise ValueError("the message was already verified")
        if self._tooLong:
            return
        if self._reader.done:
            for hasher in self._hashers.values():
                hasher.update(data)
            return
        try:
            rest = self._reader.feed(data)
        except HeaderSectionTooLong as e:
            self._headerTooLong(e)
            return
        if rest is not None:
            self._headerEnded()
            self.feed(rest)

    def _headerTooLong(self, error: HeaderSectionTooLong) -> None:
        """
        The header section passed the bound: the signatures among the
        complete fields of its first bytes are reported as ``permerror``
        (or one ``permerror`` with no properties if there are none), and
        the rest of the message is ignored.
        """
        self._tooLong = True
        # The last field before the cut may go on after it: left out.
        partial = error.partial
        cut = partial.rfind(b"\r\n")
        self._findSignatures(splitFields(partial[:cut])[:-1] if cut > 0 else [])
        reason = f"header too long (over {self._reader.maxBytes} bytes)"
        for sig in self._signatures:
            sig.error = reason
        if not self._signatures:
            self._signatures.append(_Signature(b"", error=reason))

    def _findSignatures(self, fields: list[bytes]) -> None:
        count = 0
        for raw in fields:
            if fieldName(raw) != "dkim-signature":
                continue
            count += 1
            if count > self.maxSignatures:
                self.ignoredSignatures += 1
                continue
            self._signatures.append(_parseSignature(raw, self.now))

    def _headerEnded(self) -> None:
        self._fields = splitFields(self._reader.block)
        self._reader.block = b""  # one copy of the header is enough
        self._findSignatures(self._fields)
        for sig in self._signatures:
            if sig.error is None and sig.bodyKey not in self._hashers:
                self._hashers[sig.bodyKey] = BodyHasher(sig.bodyCanon, sig.hashName, sig.limit)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if not self._tooLong and not self._reader.done:
            try:
                self._reader.finish()
            except HeaderSectionTooLong as e:
                self._headerTooLong(e)
                return
            self._headerEnded()

    async def verify(self, resolver: IResolver, timeout: tuple[int, ...] = DEFAULT_TIMEOUT) -> list[MethodResult]:
        """
        Finish the message, fetch the keys through ``resolver`` and check
        every signature.

        :param timeout: the DNS timeouts of each lookup
            (:func:`txsmtp.mailauth.dnsquery.query`).
        :return: one result per signature checked, in the order of the
            fields; an empty list when the message has none.
        """
        self._finish()
        usable = [sig for sig in self._signatures if sig.error is None]
        names = sorted({sig.keyName for sig in usable})
        found = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(_lookup(resolver, name, timeout)) for name in names],
            consumeErrors=True,
        )
        lookups = dict(zip(names, found, strict=True))
        return [self._check(sig, lookups) for sig in self._signatures]

    def _check(self, sig: _Signature, lookups: dict[str, _Lookup]) -> MethodResult:
        """The result of one signature, its key record fetched (RFC 6376 §6.1.2-6.1.3)."""
        if sig.error is not None:
            return sig.result("permerror", sig.error)
        lookup = lookups[sig.keyName]
        if lookup.temporary is not None:
            return sig.result("temperror", f"key {sig.keyName}: {lookup.temporary}")
        if not lookup.records:
            return sig.result("permerror", f"no key at {sig.keyName}")
        if len(lookup.records) > 1:
            # §3.6.2.2: several records make the result undefined.
            return sig.result("permerror", f"{len(lookup.records)} key records at {sig.keyName}")
        try:
            key = _parseKey(sig, lookup.records[0])
        except _PermError as e:
            return sig.result("permerror", str(e))
        hasher = self._hashers[sig.bodyKey]
        if not hmac.compare_digest(hasher.digest(), sig.bodyHash):
            reason = "body hash did not verify"
        elif sig.limit is not None and hasher.length < sig.limit:
            reason = "body shorter than l="
        elif not _verifySignature(key, sig, signedHeaderData(sig.raw, self._fields, sig.names, sig.headerCanon)):
            reason = "signature did not verify"
        else:
            return sig.result("pass")
        if key.testing:
            return sig.result("neutral", f"{reason} (key in testing mode, t=y)")
        return sig.result("fail", reason)


async def _lookup(resolver: IResolver, name: str, timeout: tuple[int, ...]) -> _Lookup:
    try:
        answer = await query(resolver, name, dns.TXT, timeout)
    except DNSTemporaryError as e:
        _log.debug("DKIM key {name}: {error}", name=name, error=str(e))
        return _Lookup(temporary=str(e))
    return _Lookup(records=[txtStrings(record) for record in answer.records])


async def verifyMessage(
    resolver: IResolver,
    message: bytes,
    maxSignatures: int = 5,
    now: float | None = None,
    timeout: tuple[int, ...] = DEFAULT_TIMEOUT,
) -> list[MethodResult]:
    """
    Verify the DKIM signatures of a whole ``message`` (see :class:`DKIMVerifier`).
    """
    verifier = DKIMVerifier(maxSignatures, now)
    verifier.feed(message)
    return await verifier.verify(resolver, timeout)


def passingDomains(results: Sequence[MethodResult]) -> list[str]:
    """
    The signing domains (``header.d``, in lower case, each once, in
    order) of the DKIM results that passed: what DMARC compares with the
    From domain (RFC 7489 §3.1.1).
    """
    domains: list[str] = []
    for result in results:
        domain = result.get("header.d")
        if result.method == "dkim" and result.result == "pass" and domain:
            domain = domain.lower().rstrip(".")
            if domain not in domains:
                domains.append(domain)
    return domains
