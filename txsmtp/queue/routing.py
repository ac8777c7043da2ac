"""
Where each recipient's mail goes next: :class:`Router`, and the parsers of
the options that configure it (:func:`parseRoute` for ``--route``,
:func:`parseRelayHost` for ``--relay-host``).

The order of the rules, as Postfix applies its transport map, relay host
and local domains::

    a --route for the recipient's domain      -> that route (smtp or lmtp)
    a local domain (or no domain at all)      -> NextHop("local", "")
    a --relay-host                            -> the smart host
    anything else                             -> NextHop("mx", domain)

Domains are compared without regard to case (RFC 5321 §2.4) and in their
IDNA (``xn--``) form, so ``Bücher.example``, ``bücher.example`` and
``xn--bcher-kva.example`` are one domain.  A trailing dot is ignored.

.. code-block:: python

    from txsmtp.queue.routing import Router, parseRelayHost, parseRoute

    domain, hop = parseRoute("example.com=lmtp:unix:/run/dovecot/lmtp")
    router = Router(
        localDomains=frozenset({"example.org"}),
        routes={domain: hop},
        relayHost=parseRelayHost("[smtp.example.net]:587"),
    )
    router.route("someone@example.com")   # NextHop("lmtp", "unix:/run/dovecot/lmtp", ...)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from txsmtp.queue.model import NextHop

__all__ = ["Router", "parseRoute", "parseRelayHost", "hostPort", "TLS_POLICIES"]

#: The values of a hop's ``tls`` option (see :class:`txsmtp.client.TLSPolicy`).
TLS_POLICIES = ("require", "verify", "opportunistic", "none")

#: The LMTP port (RFC 2033 §5 names none; 24 is the assigned one).
_LMTP_PORT = 24
_SMTP_PORT = 25


def _canonicalDomain(domain: str) -> str:
    """
    ``domain`` in the form rules are compared in: lowercase, IDNA-encoded,
    without a trailing dot.

    :raises ValueError: when it is empty or cannot be IDNA-encoded.
    """
    name = domain.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("the domain is empty")
    if name.startswith("[") or name.endswith("]"):
        # An address literal (RFC 5321 §4.1.3) is compared as written.
        return name.lower()
    if any(c.isspace() for c in name) or "@" in name:
        raise ValueError(f"{domain!r} is not a domain name")
    try:
        # Lowercase first: the idna codec refuses some upper-case
        # non-ASCII letters that are fine once folded.
        return name.lower().encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise ValueError(f"{domain!r} is not a valid domain name ({e})") from None


def _addressDomain(address: str) -> str:
    """The canonical domain of ``address`` (``""`` without one); never raises."""
    domain = address.rpartition("@")[2] if "@" in address else ""
    if not domain:
        return ""
    try:
        return _canonicalDomain(domain)
    except ValueError:
        # Not a name the rules could hold: compare it as text.
        return domain.lower().rstrip(".")


class Router:
    """
    Chooses the :class:`~txsmtp.queue.model.NextHop` of each recipient.

    :param localDomains: the domains this server is the final destination
        for (``--local-domains``); their mail goes to the ``local`` hop.
    :param routes: a hop per domain (``--route``): it wins over everything
        else, local domains included (that is how a local domain is handed
        to a mail store over LMTP).
    :param relayHost: the smart host every other domain's mail goes
        through (``--relay-host``), or ``None`` for delivery to each
        domain's mail exchangers.
    :raises ValueError: when a domain given is not a valid domain name.
    """

    def __init__(
        self,
        localDomains: Iterable[str] = frozenset(),
        routes: Mapping[str, NextHop] | None = None,
        relayHost: NextHop | None = None,
    ) -> None:
        if isinstance(localDomains, str):
            raise TypeError("localDomains is a collection of domains, not one string")
        self.localDomains = frozenset(_canonicalDomain(d) for d in localDomains)
        self.routes = {_canonicalDomain(d): hop for d, hop in (routes or {}).items()}
        self.relayHost = relayHost

    def route(self, address: str) -> NextHop:
        """
        The next hop for mail to ``address`` (a forward-path without angle
        brackets, e.g. ``"alice@example.com"``).  An address without a
        domain (the bare ``postmaster`` of RFC 5321 §4.5.1) is local.
        """
        domain = _addressDomain(address)
        hop = self.routes.get(domain)
        if hop is not None:
            return hop
        if not domain or domain in self.localDomains:
            return NextHop("local", "")
        if self.relayHost is not None:
            return self.relayHost
        return NextHop("mx", domain)

    def isLocal(self, domain: str) -> bool:
        """Whether ``domain`` is one of the local domains (a route does not change that)."""
        try:
            return _canonicalDomain(domain) in self.localDomains
        except ValueError:
            return False

    def hasRoute(self, domain: str) -> bool:
        """Whether a ``--route`` names ``domain``."""
        try:
            return _canonicalDomain(domain) in self.routes
        except ValueError:
            return False

    def __repr__(self) -> str:
        return f"Router(localDomains={sorted(self.localDomains)!r}, routes={self.routes!r}, relayHost={self.relayHost!r})"


# -- parsing options -----------------------------------------------------------------------


def _checkTLS(tls: str) -> str:
    value = tls.strip().lower()
    if value not in TLS_POLICIES:
        raise ValueError(f"unknown TLS policy {tls!r}: use one of {', '.join(TLS_POLICIES)}")
    return value


def _parseHost(text: str, what: str) -> str:
    """A host name or IP address as it goes in ``[host]:port`` (lowercase, IDNA)."""
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"{what}: {text!r} is not an IPv6 address") from None
    if not text:
        raise ValueError(f"{what}: the host name is empty")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    try:
        host = _canonicalDomain(text)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if host.startswith("["):
        raise ValueError(f"{what}: {text!r} is not a host name")
    return host


def _parseHostPort(text: str, defaultPort: int, what: str) -> tuple[str, int]:
    """
    ``[host]:port``, ``[host]``, ``host:port`` or ``host`` (the host an IPv4
    or IPv6 address, or a name) as ``(host, port)``.
    """
    text = text.strip()
    if not text:
        raise ValueError(f"{what}: no host given (write [HOST]:PORT)")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{what}: {text!r} lacks the closing ']' (write [HOST]:PORT)")
        host = _parseHost(text[1:end], what)
        rest = text[end + 1 :]
        if not rest:
            return host, defaultPort
        if not rest.startswith(":"):
            raise ValueError(f"{what}: unexpected {rest!r} after [{text[1:end]}] (write [HOST]:PORT)")
        portText = rest[1:]
    else:
        if text.count(":") > 1:
            raise ValueError(f"{what}: write an IPv6 address in brackets, as [{text}]:PORT")
        hostText, colon, portText = text.partition(":")
        host = _parseHost(hostText, what)
        if not colon:
            return host, defaultPort
    if not portText.isdigit() or not 0 < int(portText) < 65536:
        raise ValueError(f"{what}: {portText!r} is not a port number (1 to 65535)")
    return host, int(portText)


def _destination(host: str, port: int) -> str:
    return f"[{host}]:{port}"


def hostPort(destination: str) -> tuple[str, int]:
    """
    The host and port of a hop destination written ``[host]:port`` (as
    :func:`parseRoute` and :func:`parseRelayHost` write them).

    :raises ValueError: when ``destination`` is not of that form.
    """
    return _parseHostPort(destination, _SMTP_PORT, "next hop")


def parseRelayHost(text: str, tls: str = "require") -> NextHop:
    """
    Parse ``--relay-host``: ``[HOST]:PORT`` (``[HOST]`` means port 25; the
    brackets may be left out, and no MX lookup is made either way).

    The hop's options are ``tls`` (``require`` by default: the smart host
    must offer STARTTLS, or listen with implicit TLS on port 465, and its
    certificate must verify) and ``auth`` (``True``: the outbound delivery
    logs in with its relay credentials, when it has any).

    :param tls: ``require``, ``verify``, ``opportunistic`` or ``none``
        (``--relay-tls``).
    :raises ValueError: with a readable sentence, for bad input.
    """
    host, port = _parseHostPort(text, _SMTP_PORT, "relay host")
    return NextHop("smtp", _destination(host, port), options=(("tls", _checkTLS(tls)), ("auth", True)))


def parseRoute(text: str, tls: str | None = None) -> tuple[str, NextHop]:
    """
    Parse one ``--route``: ``DOMAIN=smtp:[HOST]:PORT``,
    ``DOMAIN=lmtp:unix:/PATH`` or ``DOMAIN=lmtp:[HOST]:PORT`` (the port
    defaults to 25 for smtp, 24 for lmtp).

    An smtp route uses opportunistic TLS by default (a route usually leads
    to a host inside the same network, whose certificate may not be one a
    public authority signed; ``tls`` says otherwise); an lmtp route uses no
    TLS by default.  Routes never get the relay credentials.

    :param tls: the route's TLS policy: ``require``, ``verify``,
        ``opportunistic`` or ``none``.
    :return: ``(domain, hop)``, the domain lowercase and IDNA-encoded.
    :raises ValueError: with a readable sentence, for bad input.
    """
    domainText, eq, target = text.partition("=")
    if not eq:
        raise ValueError(f"route {text!r}: write DOMAIN=smtp:[HOST]:PORT or DOMAIN=lmtp:unix:/PATH")
    try:
        domain = _canonicalDomain(domainText)
    except ValueError as e:
        raise ValueError(f"route {text!r}: {e}") from None
    kind, colon, rest = target.strip().partition(":")
    kind = kind.lower()
    what = f"route for {domain}"
    if not colon or kind not in ("smtp", "lmtp"):
        raise ValueError(f"route {text!r}: the next hop must start with smtp: or lmtp:")
    if kind == "smtp":
        host, port = _parseHostPort(rest, _SMTP_PORT, what)
        policy = _checkTLS(tls or "opportunistic")
        return domain, NextHop("smtp", _destination(host, port), options=(("tls", policy),))
    policy = _checkTLS(tls or "none")
    if rest.lower().startswith("unix:"):
        path = rest[5:]
        if not path.startswith("/"):
            raise ValueError(f"{what}: the LMTP socket must be an absolute path, not {path!r}")
        if "\0" in path:
            raise ValueError(f"{what}: the socket path contains a NUL character")
        return domain, NextHop("lmtp", "unix:" + path, options=(("tls", "none"),))
    host, port = _parseHostPort(rest, _LMTP_PORT, what)
    return domain, NextHop("lmtp", _destination(host, port), options=(("tls", policy),))
