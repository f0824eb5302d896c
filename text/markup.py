"""Untrusted text (scraped captions, typed prompts, URLs) made safe for a page."""
from __future__ import annotations

import re

from markupsafe import Markup, escape

from spellbook.text.fold import token_spans


def highlighted(text: str | None, terms: tuple[frozenset, tuple] = (frozenset(), ())) -> Markup:
    """The text, escaped, with every word of the query in <mark>.

    Done here rather than with FTS5's highlight(): under ORDER BY rank SQLite evaluates highlight()
    for every match before sorting (160 ms for 2,000 matches of a common phrase), and only the
    shown rows need it. Words are matched folded, as the index matched them.
    """
    if text is None:
        return Markup("")
    words, prefixes = terms
    if not words and not prefixes:
        return Markup(escape(text))
    parts, position = [], 0
    for start, end, folded in token_spans(text):
        if folded in words or any(folded.startswith(prefix) for prefix in prefixes):
            parts.append(escape(text[position:start]))
            parts.append(Markup("<mark>%s</mark>") % text[start:end])
            position = end
    parts.append(escape(text[position:]))
    return Markup("").join(parts)


def safe_url(url: str | None) -> str | None:
    """The URL if it is http(s), else None: only these may become links or images."""
    if url and re.match(r"(?i)^https?://[^\s/]", url) and not any(c in url for c in "\r\n\t"):
        return url
    return None
