"""
Which sender addresses an authenticated user may use in ``MAIL FROM``
(Postfix's ``smtpd_sender_login_maps``): :class:`SenderLoginMap`, read
from the file of ``twistd smtp --sender-login-map FILE``.

The file has one user per line::

    # user: the addresses it owns, and @domain for a whole domain
    alice: alice@example.com, a.liddell@example.com
    bob@example.org: bob@example.org, @lists.example.org

Blank lines and lines starting with ``#`` are ignored; a user named on
several lines owns what each gives.  User names, local parts and domains
are compared without regard to case, a domain's trailing dot is
ignored, and internationalized domains match in either form.  A user not in the file owns no address: with a map, the map is
the whole truth (see :meth:`txsmtp.queue.relay.RelayDelivery.senderAllowed`
for what applies without one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

__all__ = ["SenderLoginMap", "normalizeAddress", "normalizeDomain"]


def normalizeDomain(domain: str) -> str:
    """
    ``domain`` as compared: lower case, without a trailing dot, and an
    internationalized name in its ``xn--`` form (as the router compares
    domains), so that ``Bücher.example`` and ``xn--bcher-kva.example`` are
    one domain.
    """
    name = domain.lower().rstrip(".")
    if name.isascii() or name.startswith("["):
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def normalizeAddress(address: str) -> str:
    """
    ``address`` as compared: the domain after the last ``@`` normalized as
    :func:`normalizeDomain` does, the local part in lower case.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    return f"{local.lower()}@{normalizeDomain(domain)}"


class SenderLoginMap:
    """
    The addresses each user owns.

    :param owners: maps a user name to what it owns: addresses
        (``alice@example.com``) and whole domains (``@example.com``).
    """

    def __init__(self, owners: Mapping[str, Iterable[str]]) -> None:
        self._addresses: dict[str, set[str]] = {}
        self._domains: dict[str, set[str]] = {}
        for user, owned in owners.items():
            self.add(user, owned)

    def add(self, user: str, owned: Iterable[str]) -> None:
        """Give ``user`` the addresses and ``@domain`` entries of ``owned``."""
        key = user.casefold()
        addresses = self._addresses.setdefault(key, set())
        domains = self._domains.setdefault(key, set())
        for entry in owned:
            if entry.startswith("@"):
                domains.add(normalizeDomain(entry[1:]))
            else:
                addresses.add(normalizeAddress(entry))

    @classmethod
    def fromFile(cls, path: str) -> SenderLoginMap:
        """
        Read a map file (see the module's description).

        :raise ValueError: with the file name, the line number and what is
            wrong, for a file that cannot be read or a bad line.
        """
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or str(e)
            raise ValueError(f"cannot read the sender login map {path}: {why}") from None
        result = cls({})
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, rest = line.partition(":")
            user = user.strip()
            where = f"{os.path.basename(path)} line {number}"
            if not colon or not user or any(c.isspace() for c in user):
                raise ValueError(
                    f"{where}: expected 'user: address, address, @domain', not {raw.strip()!r}"
                )
            entries = [e.strip() for e in rest.split(",")]
            entries = [e for e in entries if e]
            if not entries:
                raise ValueError(f"{where}: user {user!r} is given no address")
            for entry in entries:
                problem = _entryProblem(entry)
                if problem:
                    raise ValueError(f"{where}: {entry!r} {problem}")
            result.add(user, entries)
        return result

    def users(self) -> list[str]:
        """The users named (in lower case), sorted."""
        return sorted(self._addresses)

    def allows(self, user: str, address: str) -> bool:
        """
        Whether ``user`` owns ``address`` (an address as text, without
        angle brackets): listed itself, or in a listed ``@domain``.
        """
        key = user.casefold()
        if normalizeAddress(address) in self._addresses.get(key, ()):
            return True
        local, at, domain = address.rpartition("@")
        return bool(at) and normalizeDomain(domain) in self._domains.get(key, ())

    def __repr__(self) -> str:
        return f"SenderLoginMap({len(self._addresses)} users)"


def _entryProblem(entry: str) -> str | None:
    """What is wrong with one owned entry of a map file, or ``None``."""
    if any(c.isspace() for c in entry):
        return "holds a space (separate entries with commas)"
    if entry.startswith("@"):
        if len(entry) == 1 or "@" in entry[1:]:
            return "is not a domain (write @example.com)"
        return None
    local, at, domain = entry.rpartition("@")
    if not at or not local or not domain:
        return "is not an address (write user@example.com, or @example.com for a domain)"
    return None
