"""One folding function, and it is SQLite's: spellbook.text.fold against FTS5's own unicode61
remove_diacritics 2 tokenizer, on hard characters and on every codepoint."""
from __future__ import annotations

import pytest

from spellbook.database.connect import sqlite3
from spellbook.text import fold as folding
from spellbook.text.fts import match_terms
from spellbook.text.keywords import keyword_key
from spellbook.text.markup import highlighted

HARD = [
    "Søren Kierkegaard", "ØRSTED", "Æsir", "Straße", "STRASSE", "ẞ", "Łódź", "Đorđe", "Ðóra", "Þór",
    "İstanbul", "ıspanak", "DİYARBAKIR", "ﬁne ﬂour", "ﬀ", "Ĳssel", "œuvre", "Mœbius",
    "e\u0301te\u0301", "n\u0303o", "a\u0308\u0301b", "\u0301\u0301 alone", "Stålenhag", "Beksiński", "Zdzisław",
    "ΣΊΣΥΦΟΣ ς", "Ǆemal ǅ", "Ⅻ ⅻ", "① ②", "ｆｕｌｌ ｗｉｄｔｈ", "x² H₂O", "µ", "ª º",
    "١٢٣ ۴", "中文字", "日本語のテキスト", "한국어", "Ꭰ ꭰ", "𐐀𐐨", "snake_case", "kebab-case", "it's",
    "tab\there", "emoji🙂mid", "\u200bzero\u200dwidth", "a\u00adsoft", "ＡＢＣ", "ǈ ǉ",
]


@pytest.fixture(scope="module")
def conn():
    connection = sqlite3.connect(":memory:")
    connection.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{folding.TOKENIZER}')")
    connection.execute("CREATE VIRTUAL TABLE t_vocab USING fts5vocab(t, 'instance')")
    return connection


def sqlite_tokens(conn, text: str) -> list[str]:
    """The terms SQLite's tokenizer makes of text, in order."""
    conn.execute("DELETE FROM t")
    conn.execute("INSERT INTO t(rowid, x) VALUES (1, ?)", (text,))
    return [term for (term,) in conn.execute("SELECT term FROM t_vocab ORDER BY offset")]


@pytest.mark.parametrize("text", HARD)
def test_tokens_match_sqlite_on_hard_characters(conn, text):
    assert folding.tokens(text) == sqlite_tokens(conn, text)


def test_letters_sqlite_keeps_are_kept():
    # Python's own rules would fold these (NFKD, str.lower); SQLite's tokenizer does not.
    assert folding.tokens("Søren Æsir Straße Łódź Đorđe ﬁne İı") == ["søren", "æsir", "straße", "łodz", "đorđe", "ﬁne", "iı"]
    assert folding.fold("Stålenhag") == "stalenhag" and folding.fold("e\u0301") == "e"


def test_every_codepoint_matches_sqlite(conn):
    """The whole table, held against the SQLite in use (a new SQLite with new Unicode tables would
    show here: regenerate with `python -m spellbook.text.fold`)."""
    probed = folding.probe_sqlite(conn)
    pattern = folding.token_pattern()
    wrong = []
    for codepoint, expected in probed.items():
        char = chr(codepoint)
        is_token = pattern.fullmatch(char) is not None
        got = folding.fold(char) if is_token else None
        if got != expected:
            wrong.append((hex(codepoint), expected, got))
    assert not wrong, f"{len(wrong)} codepoints differ from SQLite, e.g. {wrong[:10]}"


def test_highlight_marks_what_the_index_matched(conn):
    text = "Søren and Soren, Straße and strasse, ﬁne and fine"
    for query in ("søren", "straße", "ﬁne"):
        marked = str(highlighted(text, match_terms(f'"{query}"')))
        found = set(sqlite_tokens(conn, text)) & {query}
        assert found and marked.count("<mark>") == 1, (query, marked)


def test_name_keys_are_the_index_tokens_spelt_in_latin():
    assert keyword_key("Zdzisław Beksiński") == "zdzislaw beksinski"
    assert keyword_key("Søren") == "soren" and keyword_key("Mœbius") == "moebius"
    assert keyword_key("İstanbul ﬁne") == "istanbul ﬁne"  # otherwise exactly the index's tokens
    assert folding.latin_spelling(folding.fold("Þór")) == "thor"
