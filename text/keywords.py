"""Style keywords ("spells") in AI image prompts: the artists and the modifiers people add.

    a portrait of a knight in shining armour riding through a misty forest, highly detailed,
    digital painting, artstation, concept art, art by greg rutkowski and alphonse mucha,
    (masterpiece:1.2), 8 k

gives the modifiers "highly detailed", "digital painting", "artstation", "concept art",
"masterpiece", "8 k" and the artists "greg rutkowski", "alphonse mucha". Each piece between
separators of at most six words is a modifier; the long subject sentence is not a keyword (a
short one, "portrait of a knight", is: the rules cannot tell it from "oil painting of a ruin").

Pure functions, no database: ``prompt_keywords(prompt)`` for one prompt, ``extract_many(prompts)``
for a batch. Artists are recognised two ways: any name after "by" / "style of" (in or out of the
vocabulary, with checks that reject "by the sea", "lit by candlelight", "rendered by octane"), and
any name of the artist vocabulary (text/vocab/artists.txt, from clip-interrogator, MIT) anywhere in
the prompt as a word n-gram, matched case- and diacritic-insensitively ("simon stalenhag" finds
"Simon Stålenhag"; "hr giger", "h.r. giger" and "h. r. giger" all find "H. R. (Hans Ruedi) Giger").
A vocabulary artist's keyword is its vocabulary spelling lower-cased, so spellings collapse into
one keyword.

Speed: most of a prompt is pieces that recur across prompts ("highly detailed", "art by greg
rutkowski"), so each distinct piece is analysed once per vocabulary and remembered (bounded);
whole prompts are also memoised. Per prompt that leaves a lower(), one regex split and dict
look-ups; nothing is proportional to the vocabulary size (n-grams are only tried at words that
begin some vocabulary name).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from spellbook.text.fold import fold, latin_spelling, token_class

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
DEFAULT_ARTISTS_FILE = VOCAB_DIR / "artists.txt"

ARTIST = "artist"
MODIFIER = "modifier"

MAX_MODIFIER_WORDS = 6
MAX_NAME_WORDS = 5


@dataclass(frozen=True, slots=True)
class Keyword:
    text: str
    kind: str  # "artist" or "modifier"


# --------------------------------------------------------------------------------------------
# Words of a name: the index's tokens and folding (spellbook.text.fold), typed as Latin letters
# --------------------------------------------------------------------------------------------

# A "word" for matching: a token as SQLite's tokenizer sees it, or "&" (so "X & Y" can be split).
# ASCII text, the common case, takes the short pattern: there the two agree.
_ASCII_TOKEN_RE = re.compile(r"[A-Za-z0-9]+|&")
_TOKEN_RE = re.compile(f"[{token_class()}]+|&")


def _token_re(text: str) -> re.Pattern:
    return _ASCII_TOKEN_RE if text.isascii() else _TOKEN_RE


@lru_cache(maxsize=200_000)
def _fold_token(token: str) -> str:
    """Folded as the index folds it, then spelt as typed: 'stålenhag' -> 'stalenhag',
    'mœbius' -> 'moebius', 'zdzisław' -> 'zdzislaw'."""
    return latin_spelling(fold(token))


def _key_tokens(text: str) -> list[str]:
    text = text.lower()
    if text.isascii():
        return _ASCII_TOKEN_RE.findall(text)
    text = unicodedata.normalize("NFC", text)
    return [folded for folded in (_fold_token(token) for token in _TOKEN_RE.findall(text)) if folded]


def keyword_key(text: str) -> str:
    """The key names are matched by: the words as the index splits and folds them (punctuation
    ".", "-", "'", quotes and brackets break words), each spelt in Latin letters, joined by spaces.

    'Simon Stålenhag' -> 'simon stalenhag'; 'H.R. Giger' -> 'h r giger';
    'William-Adolphe Bouguereau' and 'william - adolphe bouguereau' -> 'william adolphe bouguereau';
    'Zdzisław Beksiński' -> 'zdzislaw beksinski' (the index itself keeps the 'ł').
    """
    return " ".join(_key_tokens(text))


# --------------------------------------------------------------------------------------------
# Word lists (judgement calls; see module tests for the real prompts they were tuned on)
# --------------------------------------------------------------------------------------------

# First word after "by" that says it is not a name: "by the sea", "by night", "lit by candlelight".
_BY_STOPWORDS = frozenset("""
the a an this that these those its it itself his her their my your our one two some many
several all any each no every another other such own
me you him them us himself herself themselves myself yourself ourselves
night day daylight moonlight candlelight firelight sunlight starlight lamplight torchlight
twilight dawn dusk sunset sunrise moon sun stars light lights lighting neon lamps candles
hand hands far default chance accident design nature god gods side way itself
water sea ocean river lake pool fire flames rain snow fog mist clouds cloud smoke wind storm
lightning lava ice vines ivy plants flowers trees leaves grass moss roses petals
people crowd crowds monsters zombies robots soldiers animals birds wolves cats dogs
lasers darkness shadows shadow mirrors glass chains tentacles guards
huge giant giants big large small tiny little dark black white red blue green yellow orange
purple pink gold golden silver grey gray brown bright glowing colored coloured
using means way ai midjourney dalle dall stable diffusion computer
nikon canon sony leica hasselblad fujifilm fuji kodak olympus pentax panasonic iphone gopro
polaroid drone camera cameras phone
""".split())

# A word immediately before "by" that means the thing after it is not the author:
# "surrounded by flowers", "side by side", "rendered by octane".
_PRE_BY_DENY = frozenset("""
surrounded covered lit illuminated backlit powered driven pulled eaten attacked chased guarded
held framed flanked filled followed haunted possessed crushed blocked hit struck bitten
swallowed consumed overgrown overrun infested accompanied hugged kissed captured dominated
inhabited protected supported carried killed destroyed defeated stabbed stand standing sit
sitting sits stands passing passes walking hosted owned worn ridden controlled operated
piloted sponsored fed raised side one step little day bit piece frame row
rendered render renders generated powered sorted grouped lined bordered encircled engulfed
wrapped tied bound trapped caught lifted cut divided multiplied times dressed positioned
""".split())

# Words that end a name after "by" (and are never part of one), and words that show a piece is
# a description rather than a name. Used for both "by X" and the "by X, Y, Z" list.
_NAME_CUT = frozenset("""
by and in on with at from for while during circa as inspired style styled using via made vs
trending featured artstation deviantart pixiv behance cgsociety instagram
painted drawn art artwork illustration illustrated painting drawing photo photograph
photography render rendered octane unreal engine
highly very ultra hyper super extremely insanely detailed detail details intricate
beautiful elegant sharp focus smooth cinematic dramatic epic masterpiece quality
lighting light color colors colour colours background hd hdr uhd resolution realistic
photorealistic hyperrealistic k 4k 8k 16k digital concept matte oil canvas watercolor
portrait is are was were be being been has have had will can
""".split())
_CLAUSE_VERBS = frozenset("is are was were be being been has have had will can".split())

# Words that belong with the artist name before them: "greg rutkowski style", "by X art".
# ("s": what is left of a possessive, "greg rutkowski's style" -> greg, rutkowski, s, style)
_AFTER_NAME = frozenset("s art artwork artworks style styled inspired".split())
# Words between an artist and the rest of a piece: "art by X", "in the style of X", "X style".
_CONNECTORS = frozenset("by and & of in the style styled inspired after like from a la à".split())
# A piece that is only these plus artists is an artist piece, not a modifier ("art by X").
_AUTHORSHIP = frozenset("""
art artwork artworks painted drawn illustrated made created designed work works artist artists
photographed sculpted rendered inspired style styled done image picture pic by and & of in the
directed written filmed produced composed taken
""".split())

# Vocabulary entries that are ordinary words or studios rather than a person's name: recognised
# after "by"/"style of" only, never as a bare word ("bauhaus architecture", "a constant stream",
# "an artist", "pixar style"); left out of the artist counts (as phrases they match any caption)
# and never generated as artists by the synthetic data. The one list every part uses.
NOT_NAMES = frozenset({"artist", "constant", "bourgeois", "bauhaus", "chippy", "disney", "pixar", "ino", "hanna-barbera"})


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

_PAREN_RE = re.compile(r"\s*\(([^()]*)\)\s*")
_QUOTED_RE = re.compile(r"\s*[\"“”]([^\"“”]*)[\"“”]\s*")
_SUFFIX_RE = re.compile(r",\s*(?:jr|sr|ii|iii|iv)\.?\s*$", re.IGNORECASE)
_APOSTROPHE_RE = re.compile(r"(?<=\w)['’](?=\w)")


def _merge_initials(tokens: list[str]) -> list[str]:
    """['h', 'r', 'giger'] -> ['hr', 'giger']: runs of single letters become one word."""
    out: list[str] = []
    run = ""
    for t in tokens:
        if len(t) == 1 and t.isalpha():
            run += t
            continue
        if run:
            out.append(run)
            run = ""
        out.append(t)
    if run:
        out.append(run)
    return out


def _name_variants(name: str) -> list[tuple[str, bool]]:
    """(text, strong) spellings of one vocabulary name to index; a strong spelling identifies the
    artist (names sharing one are merged), a weak one is only used if no other name claims it."""
    out = [(name, True)]
    if "(" in name:  # "H. R. (Hans Ruedi) Giger" -> "H. R. Giger"
        out.append((_PAREN_RE.sub(" ", name), True))
    if '"' in name or "“" in name:  # 'Mike "Beeple" Winkelmann' -> "Mike Winkelmann"
        out.append((_QUOTED_RE.sub(" ", name), True))
    if "'" in name or "’" in name:  # "Georgia O'Keeffe" -> "Georgia OKeeffe"
        out.append((_APOSTROPHE_RE.sub("", name), True))
    bare = _SUFFIX_RE.sub("", name)  # "George Barret, Jr." -> "George Barret"
    if bare != name:
        out.append((bare, False))
    return out


def _canonical_rank(name: str, index: int) -> tuple:
    """Which spelling of an artist is canonical: most diacritics ("Simon Stålenhag" over
    "Simon Stalenhag"), then no brackets or quotes, then capitalised, then first in the file."""
    non_ascii = sum(1 for c in name if ord(c) > 127 and c.isalpha())
    odd = any(c in name for c in "()\"“”")
    return (-non_ascii, odd, not name[:1].isupper(), index)


class ArtistVocabulary:
    """Artist names for recognising artists anywhere in a prompt.

    Every name is indexed under normalised keys (``keyword_key``), plus variants: initials run
    together ("hr giger"), without a bracketed part or a quoted nickname, without ", Jr.", with
    apostrophes dropped ("okeeffe"). Look-up is by first word, then by key, so finding names in
    a prompt costs a few dict probes per word whatever the vocabulary size.
    """

    def __init__(self, names: Iterable[str], anywhere_deny: Iterable[str] = NOT_NAMES):
        self._deny = frozenset(keyword_key(w) for w in anywhere_deny)
        self.names: list[str] = []
        strong: list[set[str]] = []  # per name: keys that surely mean this artist
        weak: list[set[str]] = []  # per name: looser keys ("George Barret" for "..., Jr.")
        for raw in names:
            name = " ".join(raw.split())
            if not name or name.startswith("#"):
                continue
            self.names.append(name)
            s_keys: set[str] = set()
            w_keys: set[str] = set()
            for text, is_strong in _name_variants(name):
                tokens = _key_tokens(text)
                if tokens:
                    (s_keys if is_strong else w_keys).update(
                        (" ".join(tokens), " ".join(_merge_initials(tokens))))
            strong.append(s_keys)
            weak.append(w_keys - s_keys)

        # Names sharing a key are one artist ("H. R. Giger", "H.R. Giger", "hr giger",
        # "H. R. (Hans Ruedi) Giger"; "Simon Stalenhag", "Simon Stålenhag"): union-find.
        parent = list(range(len(self.names)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        owner_of: dict[str, int] = {}
        for i, keys in enumerate(strong):
            for key in keys:
                j = owner_of.setdefault(key, i)
                if j != i:
                    parent[root(i)] = root(j)
        groups: dict[int, list[int]] = {}
        for i in range(len(self.names)):
            groups.setdefault(root(i), []).append(i)
        canonical_of: dict[int, str] = {}
        for members in groups.values():
            best = min(members, key=lambda i: _canonical_rank(self.names[i], i))
            for i in members:
                canonical_of[i] = self.names[best].lower()

        self._canonical: dict[str, str] = {}  # key -> canonical (lower-cased vocabulary name)
        for key, i in owner_of.items():
            self._canonical[key] = canonical_of[root(i)]
        claims: dict[str, set[str]] = {}
        for i, keys in enumerate(weak):
            for key in keys:
                if key not in self._canonical:
                    claims.setdefault(key, set()).add(canonical_of[i])
        for key, who in claims.items():
            if len(who) == 1:  # "George Barret" is Jr. or Sr.: ambiguous, left out
                self._canonical[key] = next(iter(who))

        # first word -> (canonical if the word alone is a name, {second word: lengths of the
        # longer names starting with these two words, longest first}). Deny-listed keys are
        # left out: they are found after "by" only, through canonical().
        index: dict[str, tuple[str | None, dict[str, set[int]]]] = {}
        for key, canonical in self._canonical.items():
            if key in self._deny:
                continue
            words = key.split(" ")
            single, seconds = index.get(words[0], (None, {}))
            if len(words) == 1:
                single = canonical
            else:
                seconds.setdefault(words[1], set()).add(len(words))
            index[words[0]] = (single, seconds)
        self._index = {
            w: (single, {w2: tuple(sorted(n, reverse=True)) for w2, n in seconds.items()})
            for w, (single, seconds) in index.items()
        }
        self._piece_cache: dict[str, _Piece] = {}

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> "ArtistVocabulary":
        with open(path, encoding="utf-8") as f:
            return cls(f, **kwargs)

    @classmethod
    def default(cls) -> "ArtistVocabulary":
        """The bundled clip-interrogator artist list (text/vocab/artists.txt), loaded once."""
        return _default_vocabulary()

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.canonical(text) is not None

    def canonical(self, text: str) -> str | None:
        """The canonical (lower-cased vocabulary) name for any spelling of a vocabulary name."""
        tokens = _key_tokens(text)
        if not tokens:
            return None
        key = " ".join(tokens)
        found = self._canonical.get(key)
        if found is None:
            merged = _merge_initials(tokens)
            if len(merged) != len(tokens):
                found = self._canonical.get(" ".join(merged))
        return found

    def find_in(self, words: Sequence[str] | str) -> list[str]:
        """Vocabulary names occurring in a sequence of words (or a text), longest match first,
        non-overlapping, in order: ['a', 'castle', 'Greg', 'Rutkowski'] -> ['greg rutkowski']."""
        if isinstance(words, str):
            keys = _key_tokens(words)
        else:
            keys = _key_tokens(" ".join(words))
        return [canonical for _, _, canonical in self._scan(keys)]

    def _scan(self, keys: Sequence[str]) -> list[tuple[int, int, str]]:
        """(start, end, canonical) for every vocabulary name in keys, leftmost-longest. A word
        that starts no name costs one dict probe; one that does, a second probe on the next
        word before any n-gram is joined."""
        found = []
        index = self._index
        canonical_of = self._canonical
        i = 0
        n_keys = len(keys)
        while i < n_keys:
            entry = index.get(keys[i])
            if entry is None:
                i += 1
                continue
            single, seconds = entry
            if i + 1 < n_keys:
                lengths = seconds.get(keys[i + 1])
                if lengths is not None:
                    for n in lengths:
                        if i + n <= n_keys:
                            canonical = canonical_of.get(" ".join(keys[i:i + n]))
                            if canonical is not None:
                                found.append((i, i + n, canonical))
                                i += n
                                break
                    else:
                        lengths = None
                    if lengths is not None:
                        continue
            if single is not None:
                found.append((i, i + 1, single))
            i += 1
        return found


def vocabulary_names() -> list[str]:
    """The artist vocabulary (clip-interrogator's artists.txt, MIT), lower-cased, without NOT_NAMES."""
    names = {line.strip().lower() for line in DEFAULT_ARTISTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()}
    return sorted(names - NOT_NAMES)


@lru_cache(maxsize=1)
def _default_vocabulary() -> ArtistVocabulary:
    return ArtistVocabulary.from_file(DEFAULT_ARTISTS_FILE)


# --------------------------------------------------------------------------------------------
# Prompt normalisation and splitting
# --------------------------------------------------------------------------------------------

_BREAK_RE = re.compile(r"\bBREAK\b")
_ANGLE_RE = re.compile(r"<[^<>]*>")  # <lora:name:0.8>, <hypernet:x:1>, <embedding>
# A1111 prompt editing [from:to:0.5] / [from:to:10] -> "from to"; [add:0.5] is a plain weight.
_FROM_TO_RE = re.compile(r"\[([^\[\]:]*):([^\[\]:]*):\s*[\d.]+\s*\]")
# ":1.2" weights before a closing bracket or at the end of a piece; not "16:9" (digit before).
_WEIGHT_RE = re.compile(r"(?<![\d:])\s*:\s*-?(?:\d+\.?\d*|\.\d+)\s*(?=[)\]}>,|;\n]|$)")
_SYNTAX_RE = re.compile(r"[()\[\]{}!\\<:]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_BRACKETS = str.maketrans({c: " " for c in "()[]{}!\\"})

# Piece separators: , | ; newlines (and full-width forms), "..." and sentence-ending periods.
# A period ends a sentence after a word of 2+ letters ("pixiv. cinematic"), after "8 k" / "4k",
# or standing alone (" . "); not after a single-letter initial ("h. r. giger"), a number
# ("f 2. 8") or a short title ("dr. seuss", "st. louis").
_PERIOD = (
    r"\.(?:\.+|(?=\s|$)(?:"  # the conditions look back from just after the period
    r"(?<!\bmr\.)(?<!\bms\.)(?<!\bdr\.)(?<!\bst\.)(?<!\bmt\.)(?<!\bvs\.)(?<!\bjr\.)"
    r"(?<!\bsr\.)(?<!\bno\.)(?<!\bft\.)(?<!\bmrs\.)(?<=[^\W\d_]{2}\.)"
    r"|(?<=\d[^\W\d_]\.)|(?<=\d\s[^\W\d_]\.)|(?<=\d\d\.)(?=\s+[^\W\d_])|(?<!\S\.)))"
)
_SPLIT_RE = re.compile(r"[,|;\n\r\t，；、…。]+|" + _PERIOD)
# Faster equivalents for ASCII prompts, with and without a period (most have none).
_SPLIT_ASCII_RE = re.compile(r"[,|;\n\r\t]+|" + _PERIOD)
_SPLIT_SIMPLE_RE = re.compile(r"[,|;\n\r\t]+")


def _split(s: str) -> list[str]:
    if s.isascii():
        return (_SPLIT_ASCII_RE if "." in s else _SPLIT_SIMPLE_RE).split(s)
    return _SPLIT_RE.split(s)


_STRIP = " \t\r\n\"'“”‘’`´.,:;!?-–—_*#~^=+/\\|()[]{}<>"


def _prepare(prompt: str) -> str:
    """Prompt-level normalisation (cheap): BREAK to a separator, lower case, NFC."""
    if "BREAK" in prompt:
        prompt = _BREAK_RE.sub(",", prompt)
    s = prompt.lower()
    if not s.isascii():
        s = unicodedata.normalize("NFC", s)
    return s


def _normalise_text(s: str) -> str:
    """Weight syntax removed from lower-cased text. Done per distinct piece (and cached): a
    weight never spans a piece separator in practice ("(masterpiece:1.2)", "<lora:x:0.8>")."""
    if _SYNTAX_RE.search(s) is None:
        return " ".join(s.strip(_STRIP).split())
    if "<" in s:
        s = _ANGLE_RE.sub(" ", s)
    if ":" in s:
        if "[" in s:
            s = _FROM_TO_RE.sub(r" \1 \2 ", s)
        s = _WEIGHT_RE.sub("", s)
    return " ".join(s.translate(_BRACKETS).strip(_STRIP).split())


def normalise_weights(prompt: str) -> str:
    """The prompt lower-cased with weight syntax removed: '((Masterpiece)), (knight:1.2),
    [cat:dog:0.5], <lora:x:0.8>' -> 'masterpiece, knight, cat dog'."""
    return _SPACE_BEFORE_RE.sub(r"\1", _normalise_text(_prepare(prompt)))


_SPACE_BEFORE_RE = re.compile(r"\s+([,;|.])")


def split_pieces(prompt: str) -> list[str]:
    """The normalised, non-empty pieces of a prompt, as keywords are taken from them."""
    out = []
    for p in _split(_prepare(prompt)):
        p = _normalise_text(p)
        if p:
            out.append(p)
    return out


# --------------------------------------------------------------------------------------------
# Piece analysis (context-free, cached per vocabulary)
# --------------------------------------------------------------------------------------------

class _Piece:
    """What one piece contributes, on its own (internal; cached per distinct piece)."""

    __slots__ = ("keywords", "artist_only", "by_open", "list_names", "name", "items")

    def __init__(self, keywords: tuple[Keyword, ...], artist_only: bool = False,
                 by_open: bool = False, list_names: tuple[str, ...] = (),
                 name: str | None = None):
        self.keywords = keywords  # artists and modifier, in order
        self.artist_only = artist_only  # only names and connectors ("art by X and Y")
        self.by_open = by_open  # ends with a "by ..." list that may go on in the next pieces
        self.list_names = list_names  # as an item of such a list: "and X", "X and Y", "X & Y"
        self.name = name  # as an item of such a list, if an artist piece follows: "krenz cushart"
        # (dedupe key, keyword): merging str-keyed dicts is much faster than hashing Keywords
        self.items = tuple([(k.kind[0] + k.text, k) for k in keywords])


_EMPTY = _Piece(())


_HYPHEN_RE = re.compile(r"(?<=\w)\s*-\s*(?=\w)")  # "cai guo - qiang" -> "cai guo-qiang"


def _clean(text: str) -> str:
    return " ".join(text.strip(_STRIP).split())


def _is_name(keys: Sequence[str]) -> bool:
    """Could these words be a (non-vocabulary) name? 1-5 words, letters, not a description."""
    if not keys or len(keys) > MAX_NAME_WORDS:
        return False
    if keys[0] in _BY_STOPWORDS:
        return False
    for k in keys:
        if k in _NAME_CUT or not k.isalpha():
            return False
    return True


def _list_names(keys: list[str], vocab: ArtistVocabulary) -> tuple[str, ...]:
    """Names of a piece that goes on a "by" list: "and X", "X and Y", "X & Y". Names outside
    the vocabulary need 2+ words each (one word is too often "black and white", "sun and moon")."""
    leading_and = bool(keys) and keys[0] in ("and", "&")
    if leading_and:
        keys = keys[1:]
    parts: list[list[str]] = [[]]
    for k in keys:
        if k in ("and", "&"):
            parts.append([])
        else:
            parts[-1].append(k)
    if len(parts) < 2 and not leading_and:
        return ()
    out = []
    for part in parts:
        canonical = vocab._canonical.get(" ".join(part))
        if canonical is None and (len(part) < 2 or not _is_name(part)):
            return ()
        out.append(canonical or " ".join(part))
    return tuple(out)


def _intros(keys: list[str]):
    """(intro position, first name position) of each "by X" / "style of X" in a piece."""
    n = len(keys)
    for i, k in enumerate(keys):
        if k == "by":
            if i + 1 < n and not (i > 0 and keys[i - 1] in _PRE_BY_DENY):
                yield i, i + 1
        elif k == "style" and i + 2 < n and keys[i + 1] == "of":
            yield i, i + 2


def _modifier_piece(piece: str, keys: list[str], vocab: ArtistVocabulary) -> _Piece:
    """A piece with no artist: a modifier if it has at most MAX_MODIFIER_WORDS words."""
    if len(keys) > MAX_MODIFIER_WORDS:
        return _EMPTY
    text = piece
    if keys[0] in ("and", "&") and len(keys) > 1 and " " in piece:
        text = piece[piece.index(" ") + 1:]  # "..., and buzzing lights": a list's "and"
    return _Piece((Keyword(text, MODIFIER),), False, False,
                  _list_names(keys, vocab) if ("and" in keys or "&" in keys) else (),
                  piece if _is_name(keys) else None)


def _analyse(piece: str, vocab: ArtistVocabulary) -> _Piece:
    """Artists and modifier of one piece of a lower-cased prompt."""
    piece = _normalise_text(piece)
    if _LETTER_RE.search(piece) is None:
        return _EMPTY  # "1 9 7 6", "2 0 2 2": pure numbers, punctuation
    if piece.isascii():
        keys = _ASCII_TOKEN_RE.findall(piece)
    else:
        keys = [_fold_token(t) for t in _TOKEN_RE.findall(piece)]
    n = len(keys)
    matches = vocab._scan(keys)
    if not matches and "by" not in keys and "style" not in keys:
        # No artist (the common case): the piece is a modifier if short enough.
        return _modifier_piece(piece, keys, vocab)
    spans: list[tuple[int, int]] = []  # character spans of the words, made when needed

    def span_text(a: int, b: int) -> str:
        """The piece's text from word a to word b (inclusive), punctuation inside kept."""
        if not spans:
            spans.extend(m.span() for m in _token_re(piece).finditer(piece))
        return _clean(piece[spans[a][0]:spans[b][1]])

    # owner[j]: which vocabulary match word j belongs to (-1: none).
    owner = [-1] * n
    positioned: list[tuple[int, str, str]] = []  # (first word, text, kind)
    for start, end, canonical in matches:
        for j in range(start, end):
            owner[j] = len(positioned)
        positioned.append((start, canonical, ARTIST))

    # "by X", "art by X and Y", "in the style of X": names in or out of the vocabulary.
    clause = [False] * n  # words of a by-clause: intro, names, "and"
    by_open = False
    for intro, i in _intros(keys):
        if owner[i] < 0 and (keys[i] in _BY_STOPWORDS or keys[i] in _NAME_CUT
                             or not keys[i][0].isalpha()):
            continue  # "by the sea", "by night", "by 2 0 2 2", "by octane render"
        last = -1
        while i < n:
            j = i
            if owner[i] >= 0:
                while j < n and owner[j] == owner[i]:
                    j += 1
            else:
                while j < n and owner[j] < 0 and keys[j] not in _NAME_CUT and keys[j] != "&":
                    j += 1
                if not _is_name(keys[i:j]) or (j < n and keys[j] in _CLAUSE_VERBS):
                    break  # "in the style of pencils are omitted ..." is a clause, not a name
                text = _HYPHEN_RE.sub("-", span_text(i, j - 1))
                positioned.append((i, vocab.canonical(text) or text, ARTIST))
            last, i = j - 1, j
            if i + 1 < n and keys[i] in ("and", "&"):
                i += 1
                continue
            break
        if last >= 0:
            for j in range(intro, last + 1):
                clause[j] = True
            if all(k in _AUTHORSHIP for k in keys[last + 1:]):
                by_open = True

    if not positioned:
        return _modifier_piece(piece, keys, vocab)

    artistic = [owner[j] >= 0 or clause[j] for j in range(n)]
    for j in range(1, n):  # "greg rutkowski style", "by X art"
        if artistic[j - 1] and not artistic[j] and keys[j] in _AFTER_NAME:
            artistic[j] = True
    artist_only = all(artistic[j] or keys[j] in _AUTHORSHIP for j in range(n))

    # The words left when the artists (and connectors) are taken off the piece's ends:
    # "oil painting by greg rutkowski" -> "oil painting"; "greg rutkowski trending on artstation"
    # -> "trending on artstation". A piece with an artist in its middle gives no modifier.
    if not artist_only:
        lo, hi = 0, n - 1
        while lo <= hi and artistic[lo]:
            lo += 1
        while hi >= lo and artistic[hi]:
            hi -= 1
        if not any(artistic[lo:hi + 1]):
            if lo > 0:
                while lo <= hi and keys[lo] in _CONNECTORS:
                    lo += 1
            if hi < n - 1:
                while hi >= lo and keys[hi] in _CONNECTORS:
                    hi -= 1
            left = keys[lo:hi + 1]
            if (left and len(left) <= MAX_MODIFIER_WORDS
                    and not all(k in _AUTHORSHIP for k in left)):
                text = span_text(lo, hi)
                if any(c.isalpha() for c in text):
                    positioned.append((lo, text, MODIFIER))
    positioned.sort(key=lambda t: t[0])
    kws = dict.fromkeys(Keyword(text, kind) for _, text, kind in positioned)
    return _Piece(tuple(kws), artist_only, by_open, (), None)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

# Distinct pieces remembered per vocabulary, then all forgotten at once: about 100 MB at most.
_PIECE_CACHE_MAX = 200_000


@lru_cache(maxsize=50_000)
def _extract(prompt: str, vocab: ArtistVocabulary) -> tuple[Keyword, ...]:
    cache = vocab._piece_cache
    get = cache.get
    infos = []
    lists = False
    for p in _split(_prepare(prompt)):
        info = get(p)  # keyed on the raw piece: no strip() for the pieces seen before
        if info is None:
            if len(cache) >= _PIECE_CACHE_MAX:
                cache.clear()
            info = cache[p] = _analyse(p, vocab)
        infos.append(info)
        if info.by_open:
            lists = True
    out: dict[str, Keyword] = {}
    if not lists:
        for info in infos:
            out.update(info.items)  # a repeated key keeps its first position
        return tuple(out.values())
    infos = [i for i in infos if i is not _EMPTY]

    def known_list(piece, right_after_by: bool) -> bool:
        # "by john smith, jane doe and bob jones" goes on; but "..., fantasy, soft eyes and narrow
        # chin" further on has the same shape and no known name: it needs a vocabulary artist.
        if not piece.list_names:
            return False
        return right_after_by or any(vocab.canonical(name) for name in piece.list_names)

    in_list = False
    previous_open = False
    for i, info in enumerate(infos):
        right_after_by, previous_open = previous_open, info.by_open
        if in_list and not info.artist_only:
            # "by X, Y and Z" goes on with "and Z" / "Y and Z" / "Y & Z", and with a name
            # outside the vocabulary when artist pieces follow it ("by wlop, krenz cushart,
            # greg rutkowski").
            if known_list(info, right_after_by):
                for name in info.list_names:
                    out.setdefault("a" + name, Keyword(name, ARTIST))
                continue
            if info.name is not None:
                j = i + 1
                while j < len(infos) and infos[j].name is not None and not infos[j].list_names:
                    j += 1
                if j < len(infos) and (infos[j].artist_only or known_list(infos[j], False)):
                    out.setdefault("a" + info.name, Keyword(info.name, ARTIST))
                    continue
            in_list = False
        out.update(info.items)
        in_list = info.by_open or (in_list and info.artist_only)
    return tuple(out.values())


def prompt_keywords(prompt: str, artists: ArtistVocabulary | None = None) -> list[Keyword]:
    """The distinct keywords of one prompt, in order of first appearance.

    ``artists`` defaults to ``ArtistVocabulary.default()``; pass ``ArtistVocabulary([])`` for
    "by"-only artist detection.
    """
    if not prompt or not isinstance(prompt, str):
        return []  # None, "", NaN from a data frame
    return list(_extract(prompt, artists if artists is not None else _default_vocabulary()))


def extract_many(prompts: Iterable[str | None],
                 artists: ArtistVocabulary | None = None) -> list[list[Keyword]]:
    """prompt_keywords for each prompt (None, "" or NaN -> []), each distinct prompt worked out
    once; the lists are independent (safe to modify)."""
    vocab = artists if artists is not None else _default_vocabulary()
    memo: dict[str, tuple[Keyword, ...]] = {}
    out = []
    for p in prompts:
        if not p or not isinstance(p, str):
            out.append([])
            continue
        kws = memo.get(p)
        if kws is None:
            kws = memo[p] = _extract(p, vocab)
        out.append(list(kws))
    return out


def clear_caches(artists: ArtistVocabulary | None = None) -> None:
    """Forget memoised prompts and analysed pieces (for cold-start benchmarks)."""
    _extract.cache_clear()
    _fold_token.cache_clear()
    (artists if artists is not None else _default_vocabulary())._piece_cache.clear()
