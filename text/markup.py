"""Untrusted text (scraped captions, typed prompts, URLs) made safe for a page."""
from __future__ import annotations

import re

from markupsafe import Markup, escape

from spellbook.text.fold import token_spans

# Marks placed around matched words before the text is escaped in one pass, then turned into tags.
# A text that itself holds a NUL could forge them: such text takes the slower, segment-wise path.
_MARK, _END = "\x00\x01", "\x00\x02"


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
    if "\x00" in text:
        return _highlighted_in_segments(text, words, prefixes)
    parts, position = [], 0
    for start, end, folded in token_spans(text):
        if folded in words or (prefixes and any(folded.startswith(prefix) for prefix in prefixes)):
            parts.append(text[position:start])
            parts.append(_MARK)  # a marker no text holds, for the tags once the text is escaped
            parts.append(text[start:end])
            parts.append(_END)
            position = end
    if not parts:
        return Markup(escape(text))
    parts.append(text[position:])
    return Markup(str(escape("".join(parts))).replace(_MARK, "<mark>").replace(_END, "</mark>"))


def _highlighted_in_segments(text: str, words, prefixes) -> Markup:
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
