"""What text from a client may contain: the one place control characters are judged.

PostgreSQL refuses NUL in text, a log line or a page would render the others; no class name, note
or file name needs any.
"""

from __future__ import annotations

import unicodedata

# Control characters and lone surrogates (half a UTF-16 pair is not text: no UTF-8 holds it, and
# SQLite stored one that every later read then failed on); with FORMATTING, also format
# characters (bidi overrides, zero-width joiners: invisible, and able to make a page show other
# text than is stored; a name must not hold them, a free-text note may, for emoji sequences).
CONTROL = frozenset({"Cc", "Cs"})
FORMATTING = frozenset({"Cc", "Cf", "Cs"})


def unsafe(character: str, categories: frozenset[str] = CONTROL, allow: str = "") -> bool:
    return character not in allow and unicodedata.category(character) in categories


def has_control_characters(text: str, allow: str = "") -> bool:
    """Whether `text` holds a control character other than those in `allow` (e.g. newlines)."""
    return any(unsafe(c, CONTROL, allow) for c in text)


def has_invisible_characters(text: str) -> bool:
    """Whether `text` holds a control, format or lone surrogate character: what a name (a class,
    shown in a page and in every answer) may not hold."""
    return any(unsafe(c, FORMATTING) for c in text)


def printable(text: str) -> str:
    """`text` without control and format characters (for a name that is kept, not refused)."""
    return "".join(c for c in text if not unsafe(c, FORMATTING))
