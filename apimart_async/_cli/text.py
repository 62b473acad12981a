"""Text from a server, made safe for a terminal."""

from __future__ import annotations

__all__ = ["shown"]


def shown(text: str) -> str:
    """Server text for the terminal: control characters (escape sequences, a carriage
    return forging a line) and what is not Unicode text written as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape",
                                                          "backslashreplace").decode()
                   for c in text)
