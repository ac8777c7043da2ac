"""
Exceptions that carry an SMTP reply.

Every refusal in txsmtp is an :class:`SMTPError`: a reply code, an enhanced
status code (RFC 3463) and a human sentence.  Deliveries raise it (or fail
their Deferred with it) to refuse a sender, a recipient or a message; the
server protocol turns it into exactly one reply and carries on with the
session.
"""

from __future__ import annotations

__all__ = ["SMTPError", "SMTPSyntaxError", "SMTPProtocolError"]


class SMTPError(Exception):
    """
    A refusal, expressed as the SMTP reply the peer should see.

    :param code: the three-digit reply code, e.g. ``550``.
    :param enhanced: the enhanced status code (RFC 3463), e.g. ``"5.1.1"``,
        or ``None``; when ``None`` the server fills in a generic one
        (``X.0.0``) if it advertised ENHANCEDSTATUSCODES.
    :param text: the human-readable sentence.  May contain newlines, which
        become a multi-line reply.
    """

    def __init__(self, code: int, enhanced: str | None = None, text: str = "") -> None:
        if not 200 <= code <= 599:
            raise ValueError(f"not an SMTP reply code: {code!r}")
        super().__init__(code, enhanced, text)
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def permanent(self) -> bool:
        """``True`` for a 5xx reply."""
        return self.code >= 500

    @property
    def transient(self) -> bool:
        """``True`` for a 4xx reply."""
        return 400 <= self.code < 500

    def __str__(self) -> str:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}"
        return f"{self.code} {self.text}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.enhanced!r}, {self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SMTPError):
            return NotImplemented
        return (self.code, self.enhanced, self.text) == (other.code, other.enhanced, other.text)

    def __hash__(self) -> int:
        return hash((self.code, self.enhanced, self.text))


class SMTPSyntaxError(SMTPError):
    """
    The wire layer could not parse something the peer sent.

    Parsers in :mod:`txsmtp.wire` raise only this exception for bad input;
    it already carries the reply to send (501 or 555, usually).
    """

    def __init__(self, code: int = 501, enhanced: str | None = "5.5.4", text: str = "Syntax error") -> None:
        super().__init__(code, enhanced, text)


class SMTPProtocolError(Exception):
    """
    The peer broke the protocol in a way no reply can mend (for example a
    reply the client cannot parse).  Raised by the client side.
    """
