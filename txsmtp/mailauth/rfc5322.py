"""
The lexical pieces of RFC 5322 (§3.2) that the mail authentication code
reads header fields with: comments and folding white space (CFWS, where
comments nest), and a tokenizer for address lists that needs neither the
stdlib's address parser (which recursed on deeply nested comments) nor
more than one pass over its input.
"""

from __future__ import annotations

__all__ = ["skipCFWS", "tokens"]


def skipCFWS(text: str, i: int) -> int | None:
    """The index after the CFWS at ``i`` (comments nest); ``None`` if a comment never ends."""
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < len(text):
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            else:
                return None
            i += 1
        else:
            break
    return i


_SPECIALS = '()<>[]:;@\\,."'


def tokens(text: str) -> list[tuple[str, str]] | None:
    """
    RFC 5322 lexical tokens, CFWS dropped: ``("atom", text)``,
    ``("quoted", content)``, ``("literal", "[...]")`` or ``("special", c)``;
    ``None`` for an unterminated comment, quoted string or literal.
    """
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n(":
            after = skipCFWS(text, i)
            if after is None:
                return None
            i = after
        elif c in '"[':
            close = '"' if c == '"' else "]"
            j, out = i + 1, []
            while j < n and text[j] != close:
                if text[j] == "\\":
                    j += 1
                if j < n:
                    out.append(text[j])
                j += 1
            if j >= n:
                return None
            tokens.append(("quoted", "".join(out)) if c == '"' else ("literal", text[i : j + 1]))
            i = j + 1
        elif c in _SPECIALS:
            tokens.append(("special", c))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and text[j] not in " \t\r\n":
                j += 1
            tokens.append(("atom", text[i:j]))
            i = j
    return tokens
