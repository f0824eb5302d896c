"""Folding text exactly as the full-text index does: SQLite FTS5's `unicode61 remove_diacritics 2`.

One function decides what a word is and how it is compared, and it is SQLite's: highlighting a
match, estimating a count from fts5vocab and matching artist names must all agree with the index,
or a search says one thing and its page another. Python's own rules differ in many places
(`str.lower` turns "İ" into two characters, NFKD splits "ﬁ" into "fi" and "²" into "2"; SQLite does
neither, and keeps "ø", "æ", "ß", "ł", "đ" as letters of their own), so the rules are not
re-derived here: `unicode61.json` records, codepoint by codepoint, what SQLite's tokenizer does
with each character, and `python -m spellbook.text.fold` writes it anew from the SQLite in use.
A test holds the table against that SQLite over every codepoint.

Separately, `latin_spelling` gives the ASCII spelling prompt writers type for the letters SQLite
keeps ("zdzisław" is typed "zdzislaw"). That is not folding: the index tells those spellings
apart, and only name matching (artist keywords) treats them as one.
"""
from __future__ import annotations

import json
import re
import sys
from functools import lru_cache
from importlib import resources
from typing import Iterator

TABLE_FILE = "unicode61.json"
TOKENIZER = "unicode61 remove_diacritics 2"


@lru_cache(maxsize=1)
def _table() -> tuple[re.Pattern, dict[int, str]]:
    data = json.loads(resources.files("spellbook.text").joinpath(TABLE_FILE).read_text(encoding="utf-8"))
    ranges = "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in data["token_ranges"])
    return re.compile(f"[{ranges}]+"), {int(cp): text for cp, text in data["fold"]}


def _class_char(codepoint: int) -> str:
    return f"\\U{codepoint:08x}"


def token_pattern() -> re.Pattern:
    """A run of the characters SQLite's tokenizer keeps in a token (letters, digits, private use
    and combining marks); everything else separates tokens."""
    return _table()[0]


def token_class() -> str:
    """The same characters as a regex character class body, to build other patterns from."""
    return token_pattern().pattern[1:-2]


@lru_cache(maxsize=1)
def _translation() -> dict[int, str | None]:
    return {cp: (text or None) for cp, text in _table()[1].items()}


def fold(text: str) -> str:
    """Each character as SQLite folds it: lower case, diacritics and combining marks removed.
    Characters that separate tokens are left as they are. "Stålenhag" -> "stalenhag", "Søren" ->
    "søren", "İstanbul" -> "istanbul", "ﬁle" -> "ﬁle"."""
    if text.isascii():
        return text.lower()
    return text.translate(_translation())


def tokens(text: str) -> list[str]:
    """The folded tokens of a text, as the index stores them: "Tales from the Loop" ->
    ["tales", "from", "the", "loop"]; "snake_case" -> ["snake", "case"]."""
    return [token for _, _, token in token_spans(text)]


_ASCII_TOKEN = re.compile(r"[A-Za-z0-9]+")  # what SQLite's tokenizer keeps of ASCII text


def token_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, folded token) for every token of text, for highlighting in place."""
    if text.isascii():
        for match in _ASCII_TOKEN.finditer(text):
            yield match.start(), match.end(), match.group().lower()
        return
    for match in token_pattern().finditer(text):
        folded = fold(match.group())
        if folded:  # a run of combining marks alone folds to nothing, and SQLite skips it
            yield match.start(), match.end(), folded


# Letters SQLite keeps as themselves (they have no decomposition) that prompt writers type as
# plain Latin letters. Only for matching names; see the module docstring.
_LATIN_SPELLINGS = str.maketrans({
    "ø": "o", "œ": "oe", "æ": "ae", "ł": "l", "ß": "ss", "đ": "d", "ð": "d", "þ": "th",
    "ı": "i", "ħ": "h", "ŧ": "t", "ŋ": "n", "ſ": "s",
})


def latin_spelling(folded: str) -> str:
    """A folded token as it is typed on a Latin keyboard: "zdzisław" -> "zdzislaw", "mœbius" ->
    "moebius". Input must already be folded (lower case)."""
    return folded if folded.isascii() else folded.translate(_LATIN_SPELLINGS)


# --- the table, written from the SQLite in use ----------------------------------------------------

MAX_CODEPOINT = 0x10FFFF


def _codepoints():
    return (cp for cp in range(MAX_CODEPOINT + 1) if not 0xD800 <= cp <= 0xDFFF)


def probe_sqlite(conn, codepoints=None) -> dict[int, str | None]:
    """What SQLite's tokenizer does with each codepoint: its folded form ("" when it is dropped),
    or None when it separates tokens. Each character is indexed between two "a"s: one term back
    means it is part of a token, two terms mean it separated them."""
    codepoints = list(_codepoints() if codepoints is None else codepoints)
    conn.execute(f"CREATE VIRTUAL TABLE temp.fold_probe USING fts5(t, tokenize='{TOKENIZER}', detail=none)")
    conn.execute("CREATE VIRTUAL TABLE temp.fold_probe_vocab USING fts5vocab(temp, fold_probe, 'instance')")
    try:
        conn.executemany("INSERT INTO temp.fold_probe(rowid, t) VALUES (?, ?)", ((cp, f"a{chr(cp)}a") for cp in codepoints))
        terms: dict[int, list[str]] = {}
        for doc, term in conn.execute("SELECT doc, term FROM temp.fold_probe_vocab"):
            terms.setdefault(doc, []).append(term)
    finally:
        conn.execute("DROP TABLE temp.fold_probe_vocab")
        conn.execute("DROP TABLE temp.fold_probe")
    result = {}
    for cp in codepoints:
        found = terms.get(cp, [])
        if len(found) == 1 and found[0].startswith("a") and found[0].endswith("a") and len(found[0]) >= 2:
            result[cp] = found[0][1:-1]
        else:
            result[cp] = None
    return result


def build_table(conn) -> dict:
    """The contents of unicode61.json for the SQLite behind conn."""
    probed = probe_sqlite(conn)
    ranges: list[list[int]] = []
    for cp in sorted(cp for cp, folded in probed.items() if folded is not None):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        elif ranges and ranges[-1][1] == 0xD7FF and cp == 0xE000:
            ranges[-1][1] = cp  # the surrogates between are never characters of a str we fold
        else:
            ranges.append([cp, cp])
    folds = [[cp, folded] for cp, folded in sorted(probed.items()) if folded is not None and folded != chr(cp)]
    version = conn.execute("SELECT sqlite_version()").fetchone()[0]
    return {"tokenizer": TOKENIZER, "sqlite_version": version, "token_ranges": ranges, "fold": folds}


def main(argv=None) -> None:
    from sqlite_utils.utils import sqlite3  # the module Datasette and spellbook.database use

    conn = sqlite3.connect(":memory:")
    table = build_table(conn)
    path = resources.files("spellbook.text").joinpath(TABLE_FILE)
    with open(str(path), "w", encoding="utf-8") as handle:
        json.dump(table, handle, ensure_ascii=True, separators=(",", ":"))
        handle.write("\n")
    print(f"wrote {path}: {len(table['token_ranges'])} token ranges, {len(table['fold'])} folds (SQLite {table['sqlite_version']})", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
