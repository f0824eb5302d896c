"""A user's words as a safe FTS5 query, and the query's words again for highlighting and counting."""
from __future__ import annotations

import re

from spellbook.text.fold import tokens

MAX_TERMS = 24  # words in one query: each is a doclist to walk
MIN_PREFIX = 3  # "a*" would merge the doclists of every word starting with "a"

_TOKEN = re.compile(r'"([^"]*)"|(\S+)')
_WORD = re.compile(r"\w+", re.UNICODE)
_PHRASE = re.compile(r'"([^"]*)"(\*?)')


class QueryError(ValueError):
    """Words that cannot be searched for within bounded work: too many, or too short a prefix."""


def fts_query(text: str) -> str | None:
    """A user's words as a safe FTS5 query: words are ANDed, "quoted phrases" stay phrases,
    a trailing * makes a prefix. FTS5 operators and punctuation in the input are plain text.

    Raises QueryError for more than MAX_TERMS words or a prefix shorter than MIN_PREFIX letters."""
    parts = []
    for phrase, word in _TOKEN.findall(text or ""):
        if phrase:
            words = _WORD.findall(phrase)
            if words:
                parts.append('"' + " ".join(words) + '"')
            continue
        prefix = word.endswith("*")
        words = _WORD.findall(word)
        if not words:
            continue
        if prefix and len(words[-1]) < MIN_PREFIX:
            raise QueryError(f"a prefix needs at least {MIN_PREFIX} letters before the *: {word!r}")
        if len(words) > 1:  # "mucha's" or "foo-bar": keep the words together as a phrase
            parts.append('"' + " ".join(words) + '"' + ("*" if prefix else ""))
        else:
            parts.append('"' + words[0] + '"' + ("*" if prefix else ""))
    if sum(len(_WORD.findall(part)) for part in parts) > MAX_TERMS:
        raise QueryError(f"at most {MAX_TERMS} words in one search")
    return " ".join(parts) or None


def phrases(match: str) -> list[tuple[str, bool]]:
    """(phrase text, is prefix) for each quoted part of an fts_query() result."""
    return [(phrase, bool(star)) for phrase, star in _PHRASE.findall(match)]


def match_terms(match: str | None) -> tuple[frozenset, tuple]:
    """The folded words of an FTS query, and its prefixes (for highlighting)."""
    if not match:
        return frozenset(), ()
    words, prefixes = set(), []
    for phrase, star in phrases(match):
        parts = tokens(phrase)
        if star and parts:
            prefixes.append(parts.pop())
        words.update(parts)
    return frozenset(words), tuple(prefixes)


def is_prefix(match: str) -> bool:
    return match.endswith("*") or "* " in match


def is_phrase(match: str) -> bool:
    return any(" " in phrase for phrase, _ in phrases(match))
