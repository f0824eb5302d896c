"""Clearly labelled synthetic data at scale: LAION-Aesthetics V2 rows and DiffusionDB-shaped prompt rows.

Why this exists: the real improved_aesthetics_6plus file (12,096,835 rows) and DiffusionDB 2M do not ship
with the repository, but ingest, search and the pages have to be tested and benchmarked at that scale.
These writers produce files with the exact published schemas whose distributions are learned, at
import-free run time, from the small real samples in data/ (10,000 LAION captions, 19,463 LAION image URLs,
9,460 DiffusionDB prompts, 1,000 DiffusionDB metadata rows, 5,265 artist names).

Nothing here can be mistaken for real data:
- the parquet schema metadata carries b"spellbook_synthetic" = b"true" (spellbook.ingest.readers.laion reads it), a
  description, the generator version and the seed;
- every LAION URL ends in the fragment #synthetic, its host is real but its path is
  randomised, so no URL points at a real image;
- DiffusionDB user names are sha256 hashes of "spellbook-synthetic-user:N".

Both writers stream: each row group (ROW_GROUP_ROWS rows) is drawn, written and dropped, so 12 million rows
never sit in memory. Row group i is drawn from its own generator seeded by (seed, stream, i), which keeps
the output deterministic for a seed. The work is vectorised with numpy and pyarrow.compute; Python loops
only touch the few percent of rows that get an artist name.

    synth_laion(out_path, rows, seed=0)
    synth_prompts(out_path, rows=2_000_000, seed=0)
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from spellbook.text.fold import fold, latin_spelling
from spellbook.text.keywords import DEFAULT_ARTISTS_FILE, NOT_NAMES

__all__ = [
    "DIFFUSIONDB_SCHEMA",
    "GENERATOR_VERSION",
    "LAION_V2_SCHEMA",
    "ROW_GROUP_ROWS",
    "SYNTHETIC_KEY",
    "URL_MARK",
    "find_artists",
    "load_artist_names",
    "synth_laion",
    "synth_prompts",
]

GENERATOR_VERSION = "3"  # 2: the #synthetic mark keeps real URL lengths; 3: the one NOT_NAMES list and the index's folding
ROW_GROUP_ROWS = 100_000
SYNTHETIC_KEY = b"spellbook_synthetic"
URL_MARK = "#synthetic"  # a fragment: never sent to the image host, and short (bytes/row stay realistic)
DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the checkout's real samples


def _require_samples() -> None:
    """The generator learns from the real samples in a checkout's data/; an installed package has none."""
    if not (DATA_DIR / "laion").is_dir():
        from spellbook.ingest.records import InputError

        raise InputError(DATA_DIR, "the synthetic generator learns its distributions from the real samples in a Spellbook checkout's data/ folder; run it from a checkout")

# The published schemas, spelled out so that writing needs none of the sample files
# (tests compare them with data/laion/..._SCHEMA_ONLY_0rows.parquet and data/prompts/..._schema.parquet).
LAION_V2_SCHEMA = pa.schema([
    ("URL", pa.string()),
    ("TEXT", pa.string()),
    ("WIDTH", pa.float64()),
    ("HEIGHT", pa.float64()),
    ("similarity", pa.float64()),
    ("punsafe", pa.float32()),
    ("pwatermark", pa.float32()),
    ("AESTHETIC_SCORE", pa.float32()),
    ("hash", pa.int64()),
    ("__index_level_0__", pa.int64()),
])
DIFFUSIONDB_SCHEMA = pa.schema([
    ("image_name", pa.string()),
    ("prompt", pa.string()),
    ("part_id", pa.uint16()),
    ("seed", pa.uint32()),
    ("step", pa.uint16()),
    ("cfg", pa.float32()),
    ("sampler", pa.uint8()),
    ("width", pa.uint16()),
    ("height", pa.uint16()),
    ("user_name", pa.string()),
    ("timestamp", pa.timestamp("ns", tz="UTC")),
    ("image_nsfw", pa.float32()),
    ("prompt_nsfw", pa.float32()),
])

# Independent random streams, so that changing one part of a generator does not shift the others.
_STREAM_LAION, _STREAM_PROMPTS, _STREAM_USERS = 1, 2, 3


# ---------------------------------------------------------------------------------------------------------
# 0. Small shared helpers
# ---------------------------------------------------------------------------------------------------------

def _rng(seed: int, stream: int, chunk: int) -> np.random.Generator:
    """One generator per (seed, stream, row group): deterministic and independent of the other row groups."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, stream, chunk]))


def _chunks(rows: int):
    """(row group index, first row, row count) for `rows` rows."""
    for index, start in enumerate(range(0, rows, ROW_GROUP_ROWS)):
        yield index, start, min(ROW_GROUP_ROWS, rows - start)


def _cumulative(weights) -> np.ndarray:
    """Cumulative weights, normalised to end at 1, for _draw."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    return cum / cum[-1]


def _draw(cum: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices drawn with the probabilities behind the cumulative array `cum` (vectorised inverse CDF)."""
    index = np.searchsorted(cum, rng.random(size), side="right")
    return np.minimum(index, len(cum) - 1)


def _zipf_cumulative(n: int, exponent: float, offset: float = 0.0) -> np.ndarray:
    """Zipf(-Mandelbrot) weights over ranks 1..n: a few items are frequent, most are rare; `offset`
    flattens the very top."""
    return _cumulative(1.0 / (np.arange(1, n + 1, dtype=np.float64) + offset) ** exponent)


def _empirical(sorted_values: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse of a real sample's empirical CDF, linearly interpolated (so values are not copied verbatim)."""
    return np.interp(u, np.linspace(0.0, 1.0, len(sorted_values)), sorted_values)


def _strings_from_bytes(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A pyarrow string array straight from a uint8 buffer and int32 offsets (no Python strings)."""
    return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))


def _metadata(kind: str, seed: int, rows: int, description: str) -> dict[bytes, bytes]:
    return {
        SYNTHETIC_KEY: b"true",
        b"spellbook_synthetic_kind": kind.encode(),
        b"spellbook_synthetic_description": description.encode(),
        b"spellbook_generator": f"ingest.synth/{GENERATOR_VERSION}".encode(),
        b"spellbook_seed": str(seed).encode(),
        b"spellbook_rows": str(rows).encode(),
    }


def _write(out_path, schema: pa.Schema, tables) -> None:
    """Stream tables into one parquet file, one row group each; the file appears only once complete."""
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with pq.ParquetWriter(partial, schema, compression="snappy") as writer:
            for table in tables:
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# 1. Artist names: loading, folding, finding
# ---------------------------------------------------------------------------------------------------------

_WORD_SPLIT = re.compile(r"[\W_]+")


def _fold(text: str) -> str:
    """Names as prompt writers type them: folded as the index folds ("Simon Stålenhag" -> "simon
    stalenhag"), with the letters the index keeps spelt in Latin ("zdzisław" -> "zdzislaw")."""
    return latin_spelling(fold(text))


def _name_key(text: str) -> tuple[str, ...]:
    """Case-, accent- and punctuation-blind word tuple: "H. R. Giger", "h.r. giger" -> ("h", "r", "giger")."""
    return tuple(word for word in _WORD_SPLIT.split(_fold(text)) if word)


@lru_cache(maxsize=None)
def load_artist_names() -> tuple[str, ...]:
    """The artist vocabulary (text/vocab/artists.txt), in file order, without word-like entries."""
    lines = DEFAULT_ARTISTS_FILE.read_text(encoding="utf-8").splitlines()
    names = dict.fromkeys(line.strip() for line in lines if line.strip())
    return tuple(name for name in names if name.lower() not in NOT_NAMES)


@lru_cache(maxsize=None)
def _artist_index() -> tuple[dict, frozenset, int]:
    """word tuple -> canonical name, first words, longest name.

    Where the vocabulary spells one name twice ("Simon Stalenhag", "Simon Stålenhag") the accented spelling
    is canonical: it is the name's own, and it keeps accents in the generated data for folding to matter.
    """
    index: dict[tuple[str, ...], str] = {}
    for name in load_artist_names():
        key = _name_key(name)
        if key and (key not in index or (index[key].isascii() and not name.isascii())):
            index[key] = name
    return index, frozenset(key[0] for key in index), max(len(key) for key in index)


def find_artists(text: str) -> list[str]:
    """Vocabulary artists named in `text`, longest match first, ignoring case, accents and punctuation.

    A word-tuple lookup rather than one regex over 5,265 alternatives: the regex takes seconds per
    10,000 texts, this takes a fraction of one.
    """
    index, first_words, longest = _artist_index()
    words = [word for word in _WORD_SPLIT.split(_fold(text)) if word]
    found, i = [], 0
    while i < len(words):
        step = 1
        if words[i] in first_words:
            for n in range(min(longest, len(words) - i), 0, -1):
                name = index.get(tuple(words[i:i + n]))
                if name is not None:
                    found.append(name)
                    step = n
                    break
        i += step
    return found


def _ranked_artists(head: list[str], seen: Counter) -> list[str]:
    """Artist ranking for Zipf sampling: a curated head, then names seen in the real sample by count,
    then every other name in a fixed pseudo-random order (the same for every seed)."""
    names = load_artist_names()
    known = set(names)
    ranked = list(dict.fromkeys([name for name in head if name in known] + [name for name, _ in seen.most_common()]))
    placed = set(ranked)
    rest = sorted((name for name in names if name not in placed), key=lambda name: hashlib.sha256(name.encode()).digest())
    return ranked + rest


# Frequent in LAION's art captions; the ones with diacritics make accent folding matter at scale.
_LAION_ARTIST_HEAD = [
    "Thomas Kinkade", "Claude Monet", "Vincent Van Gogh", "Alphonse Mucha", "Greg Rutkowski", "Gustav Klimt",
    "Pablo Picasso", "Salvador Dalí", "Andy Warhol", "Leonardo da Vinci", "Rembrandt", "Frida Kahlo",
    "Johannes Vermeer", "Pierre-Auguste Renoir", "Edward Hopper", "Norman Rockwell", "Hokusai", "Albrecht Dürer",
    "Simon Stålenhag", "Caspar David Friedrich", "Wassily Kandinsky", "J. M. W. Turner", "Bob Ross",
    "Albert Bierstadt", "Thomas Cole", "Ivan Aivazovsky", "John William Waterhouse", "Gustave Doré",
    "Paul Cézanne", "Édouard Manet", "Joan Miró", "Egon Schiele", "René Magritte", "Zdzisław Beksiński",
]


# ---------------------------------------------------------------------------------------------------------
# 2. LAION model, learned from the real samples
# ---------------------------------------------------------------------------------------------------------

_BACKOFF = 0.2           # share of caption words drawn from the unigram instead of the bigram (breaks verbatim runs)
_LAION_ARTIST_SHARE = 0.03
_LAION_ARTIST_ZIPF = 1.1
_LAION_ARTIST_TEMPLATES = [  # (template, weight): the phrasings of real captions ("... by NAME", "NAME - ...")
    ("{cap} by {name}", 0.40), ("{name} - {cap}", 0.15), ("{cap} - {name}", 0.12), ("{cap}, {name} painting", 0.10),
    ("{cap} art by {name}", 0.10), ("{name} painting {cap}", 0.08), ("Painting by {name}: {cap}", 0.05),
]
# URL byte classes: 0 keep, 1 digit, 2 lower-case letter, 3 upper-case letter, 4 lower-case hex digit.
_URL_LUT = np.stack([
    np.zeros(256, np.uint8),
    np.frombuffer(b"0123456789", np.uint8)[np.arange(256) % 10],
    np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)[np.arange(256) % 26],
    np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)[np.arange(256) % 26],
    np.frombuffer(b"0123456789abcdef", np.uint8)[np.arange(256) % 16],
])
_URL_HOST = re.compile(rb"^https?://[^/?#\s]+")
_URL_TOKEN = re.compile(rb"[A-Za-z0-9]+")
_HEX = re.compile(rb"[0-9a-f]{8,}")
_URL_MIN_RANDOM = 8  # random characters per URL at least (where the URL has them): 36^8 keeps URLs distinct
_EXTENSIONS = {b"jpg", b"jpeg", b"png", b"gif", b"webp", b"JPG", b"JPEG", b"PNG", b"html", b"php", b"aspx"}


@dataclass(frozen=True)
class _LaionModel:
    vocab: pa.Array              # caption words (whitespace tokens of the real captions)
    start_cum: np.ndarray        # first-word distribution
    unigram_cum: np.ndarray      # word distribution (Zipf-like, as learned)
    bigram_cum: np.ndarray       # cumulative counts of (previous, next) pairs, sorted by previous word
    bigram_next: np.ndarray
    segment_low: np.ndarray      # per previous word: cumulative count before its pairs, and its pair total
    segment_total: np.ndarray
    lengths: np.ndarray          # real caption lengths in words
    url_bytes: np.ndarray        # real URLs, concatenated, with the synthetic mark appended
    url_class: np.ndarray        # per byte: keep it, or which random class replaces it
    url_start: np.ndarray
    url_length: np.ndarray
    artists: list[str]
    artist_cum: np.ndarray


def _url_template(url: str, document_frequency: Counter) -> tuple[bytes, bytes] | None:
    """A real URL as bytes plus per-byte classes: the scheme and host stay, path tokens unique to this URL
    are randomised character by character (same length, same kind), so path lengths and shapes stay real."""
    raw = url.split("#", 1)[0].encode()
    host = _URL_HOST.match(raw)
    if host is None or any(ch in raw for ch in b" \t\r\n"):
        return None
    tokens = list(_URL_TOKEN.finditer(raw, host.end()))
    chosen = [t for t in tokens if document_frequency[t.group()] == 1]
    # Too few random characters would repeat URLs: add common tokens too, numbers first, longest first.
    spare = sorted((t for t in tokens if t not in chosen and t.group() not in _EXTENSIONS),
                   key=lambda t: (not t.group().isdigit(), -len(t.group())))
    while spare and sum(len(t.group()) for t in chosen) < _URL_MIN_RANDOM:
        chosen.append(spare.pop(0))
    if not chosen:
        return None
    classes = bytearray(len(raw))
    for token in chosen:
        text = token.group()
        if _HEX.fullmatch(text) and any(ch in b"0123456789" for ch in text):
            classes[token.start():token.end()] = bytes([4]) * len(text)
            continue
        for i in range(token.start(), token.end()):
            ch = raw[i]
            classes[i] = 1 if 48 <= ch <= 57 else 2 if 97 <= ch <= 122 else 3
    mark = URL_MARK.encode()
    # The mark takes the place of random path characters (never below _URL_MIN_RANDOM of them), so the
    # URLs keep the real samples' lengths and the bytes-per-row benchmark stays realistic.
    budget = min(len(mark), sum(len(t.group()) for t in chosen) - _URL_MIN_RANDOM)
    drops = []
    for token in sorted(chosen, key=lambda t: -len(t.group())):
        take = min(budget, len(token.group()) - 2)
        if take > 0:
            drops.append((token.end() - take, token.end()))
            budget -= take
        if budget <= 0:
            break
    kept, kept_classes, position = bytearray(), bytearray(), 0
    for start, end in sorted(drops):
        kept += raw[position:start]
        kept_classes += classes[position:start]
        position = end
    kept += raw[position:]
    kept_classes += classes[position:]
    return bytes(kept) + mark, bytes(kept_classes) + bytes(len(mark))


@lru_cache(maxsize=None)
def _laion_model() -> _LaionModel:
    real = pq.read_table(DATA_DIR / "laion" / "laion_url_text_10000.parquet", columns=["URL", "TEXT"])
    captions = [text for text in real.column("TEXT").to_pylist() if text and text.strip()]

    # 2a. Caption words: unigram, first-word and bigram counts over whitespace tokens.
    tokenised = [text.split() for text in captions]
    word_ids: dict[str, int] = {}
    encoded = [np.array([word_ids.setdefault(w, len(word_ids)) for w in words], dtype=np.int64) for words in tokenised]
    size = len(word_ids)
    flat = np.concatenate(encoded)
    unigram = np.bincount(flat, minlength=size)
    starts = np.bincount([ids[0] for ids in encoded], minlength=size)
    pairs = np.concatenate([ids[:-1] * size + ids[1:] for ids in encoded if len(ids) > 1])
    pair_keys, pair_counts = np.unique(pairs, return_counts=True)
    previous = pair_keys // size
    bigram_cum = np.cumsum(pair_counts).astype(np.float64)
    first = np.searchsorted(previous, np.arange(size), side="left")
    last = np.searchsorted(previous, np.arange(size), side="right")
    segment_low = np.where(first > 0, bigram_cum[np.maximum(first - 1, 0)], 0.0)
    segment_total = np.where(last > first, bigram_cum[np.maximum(last - 1, 0)] - segment_low, 0.0)

    # 2b. URL templates: both samples, so the host mix is the real one (heavy head, long tail).
    csv = pacsv.read_csv(DATA_DIR / "laion" / "laion_aesthetic_v1_sample_urls_by_score_bucket.csv",
                         convert_options=pacsv.ConvertOptions(include_columns=["url"]))
    urls = [u for u in real.column("URL").to_pylist() + csv.column("url").to_pylist() if u]
    frequency = Counter()
    for url in urls:
        host = _URL_HOST.match(url.encode())
        if host:
            frequency.update(set(_URL_TOKEN.findall(url.encode(), host.end())))
    templates = [t for t in (_url_template(url, frequency) for url in urls) if t is not None]
    url_length = np.array([len(b) for b, _ in templates], dtype=np.int32)
    url_start = np.concatenate([[0], np.cumsum(url_length)[:-1]]).astype(np.int32)

    # 2c. Artists: curated head, then the names real captions use, then a Zipf tail over the rest.
    seen = Counter(name for text in captions for name in set(find_artists(text)))
    artists = _ranked_artists(_LAION_ARTIST_HEAD, seen)

    return _LaionModel(
        vocab=pa.array(list(word_ids), pa.string()),
        start_cum=_cumulative(starts),
        unigram_cum=_cumulative(unigram),
        bigram_cum=bigram_cum,
        bigram_next=(pair_keys % size).astype(np.int32),
        segment_low=segment_low,
        segment_total=segment_total,
        lengths=np.array([len(words) for words in tokenised], dtype=np.int32),
        url_bytes=np.frombuffer(b"".join(b for b, _ in templates), np.uint8),
        url_class=np.frombuffer(b"".join(c for _, c in templates), np.uint8),
        url_start=url_start,
        url_length=url_length,
        artists=artists,
        artist_cum=_zipf_cumulative(len(artists), _LAION_ARTIST_ZIPF),
    )


# ---------------------------------------------------------------------------------------------------------
# 3. LAION row groups
# ---------------------------------------------------------------------------------------------------------

def _laion_captions(model: _LaionModel, n: int, rng: np.random.Generator) -> pa.Array:
    """n captions from the real length distribution and a bigram chain over the real words.

    Rows are sorted by length (longest first) so that, at word position k, the rows still writing are a
    prefix: each position is one vectorised step over those rows. The captions are joined by pyarrow and
    put back into random order at the end.
    """
    lengths = np.sort(model.lengths[rng.integers(0, len(model.lengths), n)])[::-1]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(offsets[-1], dtype=np.int32)
    word = _draw(model.start_cum, n, rng).astype(np.int32)
    tokens[offsets[:-1]] = word
    still_writing = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")  # rows with length > k
    for k in range(1, int(lengths[0])):
        m = still_writing[k]
        previous = word[:m]
        u = rng.random(m)
        total = model.segment_total[previous]
        backoff = (u < _BACKOFF) | (total == 0)
        u = (u - _BACKOFF) / (1.0 - _BACKOFF)
        pair = np.searchsorted(model.bigram_cum, model.segment_low[previous] + u * total, side="right")
        word = model.bigram_next[np.minimum(pair, len(model.bigram_next) - 1)]
        if backoff.any():
            word[backoff] = _draw(model.unigram_cum, int(backoff.sum()), rng)
        tokens[offsets[:m] + k] = word
    words = model.vocab.take(pa.array(tokens))
    captions = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), words), " ")
    return captions.take(pa.array(rng.permutation(n)))


def _laion_add_artists(model: _LaionModel, captions: pa.Array, rng: np.random.Generator) -> pa.Array:
    """About 3% of captions name an artist (Zipf over artists), in the phrasings real captions use."""
    n = len(captions)
    mask = rng.random(n) < _LAION_ARTIST_SHARE
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return captions
    names = _draw(model.artist_cum, rows.size, rng)
    templates = _draw(_cumulative([w for _, w in _LAION_ARTIST_TEMPLATES]), rows.size, rng)
    originals = captions.take(pa.array(rows)).to_pylist()
    rewritten = [
        _LAION_ARTIST_TEMPLATES[t][0].format(cap=cap, name=model.artists[a])
        for cap, a, t in zip(originals, names.tolist(), templates.tolist())
    ]
    return pc.replace_with_mask(captions, pa.array(mask), pa.array(rewritten, pa.string()))


def _laion_urls(model: _LaionModel, n: int, rng: np.random.Generator) -> pa.Array:
    """n URLs: a real URL template each (real host mix), randomised path bytes, synthetic mark, all in numpy."""
    template = rng.integers(0, len(model.url_length), n)
    lengths = model.url_length[template]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    source = np.repeat(model.url_start[template] - offsets[:-1].astype(np.int32), lengths)
    source += np.arange(offsets[-1], dtype=np.int32)
    data = model.url_bytes[source]
    classes = model.url_class[source]
    randomised = np.flatnonzero(classes)
    data[randomised] = _URL_LUT[classes[randomised], rng.integers(0, 256, randomised.size, dtype=np.uint8)]
    return _strings_from_bytes(data, offsets)


_RATIOS = np.array([1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 5 / 4, 4 / 5, 2.0, 1 / 2])
_RATIO_CUM = _cumulative([0.20, 0.12, 0.07, 0.13, 0.12, 0.06, 0.02, 0.03, 0.05, 0.01, 0.01])
_LONG_SIDES = np.array([500, 600, 640, 700, 736, 750, 800, 900, 1000, 1024, 1080, 1200, 1280, 1500, 1600, 1920, 2048])
_LONG_SIDE_CUM = _cumulative([8, 10, 7, 4, 8, 5, 9, 3, 8, 7, 4, 7, 4, 3, 3, 2, 1])


def _laion_sizes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Original image sizes: common aspect ratios (18% free-form), long side from common web sizes or a
    log-normal around 650 px; mostly 256-1500 px. About 0.5% unknown (NaN), as in the real files."""
    ratio = _RATIOS[_draw(_RATIO_CUM, n, rng)]
    free = rng.random(n) < 0.18
    ratio[free] = np.exp(rng.normal(0.0, 0.35, int(free.sum())))
    long_side = _LONG_SIDES[_draw(_LONG_SIDE_CUM, n, rng)].astype(np.float64)
    lognormal = rng.random(n) < 0.45
    long_side[lognormal] = np.clip(np.round(650 * np.exp(rng.normal(0.0, 0.5, int(lognormal.sum())))), 128, 6000)
    short_side = np.maximum(np.round(long_side / np.maximum(ratio, 1 / ratio)), 64)
    width = np.where(ratio >= 1, long_side, short_side)
    height = np.where(ratio >= 1, short_side, long_side)
    unknown = rng.random(n) < 0.005
    width[unknown] = np.nan
    height[unknown] = np.nan
    return width, height


def _reflect(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold values back into [low, high] (no pile-up on the bounds, unlike clipping)."""
    x = np.where(x < low, 2 * low - x, x)
    x = np.where(x > high, 2 * high - x, x)
    return np.clip(x, low, high)


def _laion_scores(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # AESTHETIC_SCORE: the 6+ file is the upper tail of the predictor's scores, so a truncated exponential
    # from 6 to 8.5: scale 0.18 matches the published counts (about 25% >= 6.25, 5% >= 6.5), and 3% of rows
    # get a heavier tail (scale 0.6) so that 7+ and 8+ exist.
    scale = np.where(rng.random(n) < 0.03, 0.6, 0.18)
    u = rng.random(n)
    aesthetic = 6.0 - scale * np.log1p(-u * (1.0 - np.exp(-2.5 / scale)))
    # similarity: CLIP cosine, the dataset keeps >= 0.28; roughly normal around 0.325.
    similarity = _reflect(rng.normal(0.325, 0.03, n), 0.28, 0.45)
    # punsafe: mostly tiny (log-normal around 0.0025); 2.5% of rows are likely unsafe (0.5-1).
    punsafe = np.minimum(10.0 ** rng.normal(-2.6, 0.8, n), 0.4999)
    unsafe = rng.random(n) < 0.025
    punsafe[unsafe] = 0.5 + 0.5 * rng.beta(1.0, 1.5, int(unsafe.sum()))
    # pwatermark: 0-1, skewed low (mean about 0.18).
    pwatermark = rng.beta(0.9, 4.0, n)
    return {
        "similarity": similarity,
        "punsafe": punsafe.astype(np.float32),
        "pwatermark": pwatermark.astype(np.float32),
        "AESTHETIC_SCORE": aesthetic.astype(np.float32),
    }


def _laion_row_group(model: _LaionModel, seed: int, chunk: int, start: int, n: int) -> pa.Table:
    rng = _rng(seed, _STREAM_LAION, chunk)
    url = _laion_urls(model, n, rng)
    text = _laion_add_artists(model, _laion_captions(model, n, rng), rng)
    width, height = _laion_sizes(n, rng)
    scores = _laion_scores(n, rng)
    hashes = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64, endpoint=True)
    index = np.arange(start, start + n, dtype=np.int64)
    columns = [url, text, width, height, scores["similarity"], scores["punsafe"], scores["pwatermark"],
               scores["AESTHETIC_SCORE"], hashes, index]
    return pa.Table.from_arrays([pa.array(c) if isinstance(c, np.ndarray) else c for c in columns], schema=LAION_V2_SCHEMA)


def synth_laion(out_path, rows: int, seed: int = 0) -> None:
    """Write `rows` synthetic LAION-Aesthetics V2 (improved_aesthetics_6plus) rows to the parquet file `out_path`.

    Exact V2 schema and column order; distributions learned from data/laion/; labelled synthetic in the schema
    metadata and in every URL (#synthetic). Streams row groups of ROW_GROUP_ROWS rows.
    """
    if rows < 1:
        raise ValueError("rows must be at least 1")
    _require_samples()
    model = _laion_model()
    schema = LAION_V2_SCHEMA.with_metadata(_metadata(
        "laion-aesthetics-v2", seed, rows,
        "SYNTHETIC DATA written by spellbook (ingest/synth.py), not LAION: captions, URL paths and scores are "
        "drawn from distributions learned from small real samples; hosts are real, paths are random, and every "
        f"URL carries {URL_MARK}.",
    ))
    _write(out_path, schema, (_laion_row_group(model, seed, chunk, start, n) for chunk, start, n in _chunks(rows)))


# ---------------------------------------------------------------------------------------------------------
# 4. DiffusionDB prompt model, learned from real prompts and metadata
# ---------------------------------------------------------------------------------------------------------

_USERS = 10_000
_USER_ZIPF, _USER_OFFSET = 1.0, 2.7  # the most active user makes about 3% of the images
_USER_HABIT = 0.75            # share of a user's runs that use the user's usual settings
_PROMPT_ARTIST_ZIPF = 1.1     # fits the real head: "greg rutkowski" is about 14% of artist mentions
_MAX_ARTISTS = 3
_RECOMBINE = 0.5              # share of subjects made of one real subject's head and another's tail
_RECOMBINE_BARE = 0.95        # the same for prompts that are a bare subject (else they would repeat by chance)
_WEIGHTED = 0.01              # share of prompts with an A1111-style weight, "(masterpiece:1.2)"
_TRAILING_SPACE = 0.95        # DiffusionDB's tokeniser leaves "... , artstation " (99.9% in the sample)
_REPEATS = np.arange(1, 7)    # a prompt is re-run 1-6 times with new seeds (mean about 1.6)
_REPEAT_CUM = _cumulative([0.72, 0.12, 0.06, 0.05, 0.02, 0.03])
# DiffusionDB sampler codes (spellbook.text.samplers.DIFFUSIONDB_CODES); k_lms (8) was the Discord bot's default.
_SAMPLER_CODES = np.arange(1, 10, dtype=np.uint8)
_SAMPLER_CUM = _cumulative([0.030, 0.010, 0.020, 0.025, 0.010, 0.008, 0.007, 0.880, 0.010])
_FIRST_DAY = np.datetime64("2022-08-06T00:00", "m")
_DAYS = 26                    # 2022-08-06 .. 2022-08-31
_SUBJECT_SPLIT = re.compile(r" (?=(?:in|with|wearing|on|at|under|inside|holding|during) )")
_ARTIST_PREFIXES = ["by ", "art by ", "", "in the style of ", "artwork by ", "painting by ", "style of ", "illustration by "]
_ARTIST_PREFIX_CUM = _cumulative([0.35, 0.20, 0.25, 0.08, 0.04, 0.03, 0.03, 0.02])
_WEIGHTS = ["1.1", "1.2", "1.3", "1.4", "1.5", "0.8"]


@dataclass(frozen=True)
class _PromptModel:
    subjects: pa.Array            # real subject phrases (text before the first comma, artist-free)
    heads: pa.Array               # subject text before its first " in/with/on ..." (or the whole subject)
    tails: pa.Array               # " in/with/on ..." endings of the subjects that have one
    modifiers: pa.Array           # distinct real comma-separated modifiers (artist-free)
    modifier_list: list[str]
    modifier_cum: np.ndarray      # their real frequencies
    skeleton_modifiers: np.ndarray  # per real prompt: modifier count, artist count (capped), artist position
    skeleton_artists: np.ndarray
    skeleton_position: np.ndarray
    artists: list[str]            # Zipf-ranked: real prompt counts first
    artist_lower: list[str]
    artist_folded: list[str]
    artist_cum: np.ndarray
    steps: np.ndarray
    step_cum: np.ndarray
    cfgs: np.ndarray
    cfg_cum: np.ndarray
    sizes: np.ndarray             # (w, h) pairs, real joint frequencies
    size_cum: np.ndarray
    image_nsfw: np.ndarray        # sorted real values, for the empirical inverse CDF
    prompt_nsfw: np.ndarray
    minute_cum: np.ndarray        # activity over the minutes of 2022-08-06 .. 2022-08-31


def _real_prompts() -> list[str]:
    prompts = []
    for path in sorted((DATA_DIR / "prompts" / "imagereward").glob("*.parquet")):
        prompts += pq.read_table(path, columns=["Prompt"]).column("Prompt").to_pylist()
    sample = pacsv.read_csv(DATA_DIR / "prompts" / "diffusiondb_sample.csv", convert_options=pacsv.ConvertOptions(include_columns=["prompt"]))
    prompts += sample.column("prompt").to_pylist()
    return list(dict.fromkeys(p for p in prompts if p and p.strip()))


def _artist_free_subject(subject: str) -> str | None:
    """Cut a trailing "by NAME" / "in the style of NAME" from a subject; None if a name remains."""
    if find_artists(subject):
        cut = max(subject.rfind(" by "), subject.rfind(" in the style of "), subject.rfind(" art by "))
        subject = subject[:cut].strip() if cut > 0 else ""
        if not subject or find_artists(subject):
            return None
    return subject


@lru_cache(maxsize=None)
def _prompt_model() -> _PromptModel:
    # 4a. Prompt structure: subject, comma-separated modifiers, artist segments and where they sit.
    subjects, modifiers = [], Counter()
    skeleton_modifiers, skeleton_artists, skeleton_position = [], [], []
    artist_counts = Counter()
    for prompt in _real_prompts():
        segments = [s.strip() for s in prompt.split(",")]
        names = set(find_artists(prompt))
        artist_counts.update(names)
        subject = _artist_free_subject(segments[0])
        if subject:
            subjects.append(subject)
        kept, position = [], None
        for segment in segments[1:]:
            if not segment:
                continue
            if find_artists(segment):
                position = len(kept) if position is None else position
            else:
                kept.append(segment)
        modifiers.update(kept)
        skeleton_modifiers.append(len(kept))
        skeleton_artists.append(min(len(names), _MAX_ARTISTS))
        skeleton_position.append(len(kept) if position is None else position)
    heads, tails = [], []
    for subject in subjects:
        parts = _SUBJECT_SPLIT.split(subject, maxsplit=1)
        heads.append(parts[0])
        if len(parts) == 2:
            tails.append(" " + parts[1])
    modifier_list = list(modifiers)

    # 4b. Artists ranked by how often real prompts name them; writers type them lower-case, often unaccented.
    artists = _ranked_artists([], artist_counts)

    # 4c. Settings and scores from the 1,000 real metadata rows; a little extra spread where the sample is
    # too small to show the rare values DiffusionDB has (steps 20-150, cfg 1-20 and a few above).
    meta = pq.read_table(DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet")
    step_values, step_counts = np.unique(meta.column("step").to_numpy(), return_counts=True)
    spread_steps = np.array([10, 15, 20, 25, 30, 40, 60, 70, 75, 80, 100, 120, 125, 150])
    steps = np.concatenate([step_values, spread_steps])
    step_weights = np.concatenate([0.92 * step_counts / step_counts.sum(), np.full(len(spread_steps), 0.08 / len(spread_steps))])
    cfg_values, cfg_counts = np.unique(meta.column("cfg").to_numpy(), return_counts=True)
    spread_cfg = np.concatenate([np.arange(1.0, 21.0), np.arange(21.0, 31.0)])
    cfgs = np.concatenate([cfg_values, spread_cfg])
    cfg_weights = np.concatenate([0.93 * cfg_counts / cfg_counts.sum(), np.full(20, 0.065 / 20), np.full(10, 0.005 / 10)])
    pairs = np.stack([meta.column("width").to_numpy(), meta.column("height").to_numpy()], axis=1)
    pairs = pairs[(pairs <= 1024).all(axis=1)]  # the sample's few 1088-1600 px widths are left out: up to 1024
    size_values, size_counts = np.unique(pairs, axis=0, return_counts=True)
    grid = np.arange(256, 1025, 64)
    spread_sizes = np.array([(w, h) for w in grid for h in grid])
    sizes = np.concatenate([size_values, spread_sizes])
    size_weights = np.concatenate([0.9 * size_counts / size_counts.sum(), np.full(len(spread_sizes), 0.1 / len(spread_sizes))])

    # 4d. Activity: daily volume rises through the month (the bot's user base grew), with a daily cycle that
    # peaks around 02:00 UTC (evening in the Americas).
    minute = np.arange(_DAYS * 1440)
    day, hour = minute // 1440, (minute % 1440) / 60.0
    activity = (0.3 + day / (_DAYS - 1)) * (1.0 + 0.45 * np.cos(2 * np.pi * (hour - 2.0) / 24.0))

    return _PromptModel(
        subjects=pa.array(subjects, pa.string()),
        heads=pa.array(heads, pa.string()),
        tails=pa.array(tails, pa.string()),
        modifiers=pa.array(modifier_list, pa.string()),
        modifier_list=modifier_list,
        modifier_cum=_cumulative([modifiers[m] for m in modifier_list]),
        skeleton_modifiers=np.array(skeleton_modifiers, dtype=np.int64),
        skeleton_artists=np.array(skeleton_artists, dtype=np.int64),
        skeleton_position=np.array(skeleton_position, dtype=np.int64),
        artists=artists,
        artist_lower=[name.lower() for name in artists],
        artist_folded=[_fold(name) for name in artists],
        artist_cum=_zipf_cumulative(len(artists), _PROMPT_ARTIST_ZIPF),
        steps=steps,
        step_cum=_cumulative(step_weights),
        cfgs=cfgs,
        cfg_cum=_cumulative(cfg_weights),
        sizes=sizes,
        size_cum=_cumulative(size_weights),
        image_nsfw=np.sort(meta.column("image_nsfw").to_numpy().astype(np.float64)),
        prompt_nsfw=np.sort(meta.column("prompt_nsfw").to_numpy().astype(np.float64)),
        minute_cum=_cumulative(activity),
    )


@dataclass(frozen=True)
class _Users:
    names: pa.Array
    cum: np.ndarray
    step: np.ndarray       # each user's usual settings
    cfg: np.ndarray
    sampler: np.ndarray
    width: np.ndarray
    height: np.ndarray


def _users(model: _PromptModel, seed: int) -> _Users:
    """~10k synthetic users: hashed names, Zipf activity, and habits (a usual step/cfg/sampler/size)."""
    rng = _rng(seed, _STREAM_USERS, 0)
    names = [hashlib.sha256(f"spellbook-synthetic-user:{seed}:{i}".encode()).hexdigest() for i in range(_USERS)]
    settings = _settings(model, _USERS, rng)
    return _Users(pa.array(names, pa.string()), _zipf_cumulative(_USERS, _USER_ZIPF, _USER_OFFSET), *settings)


def _settings(model: _PromptModel, n: int, rng: np.random.Generator):
    size = model.sizes[_draw(model.size_cum, n, rng)]
    return (model.steps[_draw(model.step_cum, n, rng)], model.cfgs[_draw(model.cfg_cum, n, rng)],
            _SAMPLER_CODES[_draw(_SAMPLER_CUM, n, rng)], size[:, 0], size[:, 1])


# ---------------------------------------------------------------------------------------------------------
# 5. DiffusionDB row groups
# ---------------------------------------------------------------------------------------------------------

def _artist_phrases(model: _PromptModel, counts: np.ndarray, rng: np.random.Generator) -> list[str]:
    """One phrase per prompt with artists: "by greg rutkowski and alphonse mucha", "art by wlop", ..."""
    r = counts.size
    names = _draw(model.artist_cum, r * _MAX_ARTISTS, rng).reshape(r, _MAX_ARTISTS).tolist()
    prefixes = _draw(_ARTIST_PREFIX_CUM, r, rng).tolist()
    style = rng.random((r, 3)).tolist()  # lower-case?, accents dropped?, joined with " and " or ", "?
    phrases = []
    for count, picked, prefix, (lower, folded, joiner) in zip(counts.tolist(), names, prefixes, style):
        spelled = model.artist_folded if lower < 0.75 and folded < 0.5 else model.artist_lower if lower < 0.75 else model.artists
        chosen = list(dict.fromkeys(spelled[a] for a in picked[:count]))
        if len(chosen) == 1:
            text = chosen[0]
        elif joiner < 0.6:
            text = " and ".join(chosen)
        else:
            text = ", ".join(chosen[:-1]) + " and " + chosen[-1]
        phrases.append(_ARTIST_PREFIXES[prefix] + text)
    return phrases


def _prompts(model: _PromptModel, runs: int, rng: np.random.Generator) -> tuple[pa.Array, np.ndarray]:
    """`runs` distinct prompts: a real prompt's skeleton (how many modifiers, how many artists and where),
    a real or recombined subject, real modifiers by their real frequency, generated artist phrases."""
    # 5a. Skeletons and subjects.
    skeleton = rng.integers(0, len(model.skeleton_modifiers), runs)
    m = model.skeleton_modifiers[skeleton]
    artist_count = model.skeleton_artists[skeleton]
    position = np.minimum(model.skeleton_position[skeleton], m)
    subjects = model.subjects.take(pa.array(rng.integers(0, len(model.subjects), runs)))
    bare = (m == 0) & (artist_count == 0)
    recombine = rng.random(runs) < np.where(bare, _RECOMBINE_BARE, _RECOMBINE)
    mixed = pc.binary_join_element_wise(
        model.heads.take(pa.array(rng.integers(0, len(model.heads), runs))),
        model.tails.take(pa.array(rng.integers(0, len(model.tails), runs))), "")
    subjects = pc.if_else(pa.array(recombine), mixed, subjects)

    # 5b. Artist phrases and rare A1111 weights, as extra values after subjects and the modifier pool.
    has_artist = artist_count > 0
    phrases = _artist_phrases(model, artist_count[has_artist], rng)
    weighted = rng.random(runs) < _WEIGHTED
    weight_text = [f"({model.modifier_list[i]}:{_WEIGHTS[w]})" for i, w in zip(
        _draw(model.modifier_cum, int(weighted.sum()), rng).tolist(), rng.integers(0, len(_WEIGHTS), int(weighted.sum())).tolist())]
    values = pa.concat_arrays([subjects, model.modifiers, pa.array(phrases, pa.string()), pa.array(weight_text, pa.string())])
    phrase_base = runs + len(model.modifiers)
    weight_base = phrase_base + len(phrases)
    phrase_of_run = np.cumsum(has_artist) - 1
    weight_of_run = np.cumsum(weighted) - 1

    # 5c. Element layout per prompt: subject, modifiers with the artist phrase at its real position, weight last.
    count = 1 + m + has_artist + weighted
    offsets = np.zeros(runs + 1, dtype=np.int64)
    np.cumsum(count, out=offsets[1:])
    run = np.repeat(np.arange(runs), count)
    p = np.arange(offsets[-1]) - offsets[run]
    k = p - 1
    is_weight = weighted[run] & (p == count[run] - 1)
    is_artist = has_artist[run] & (k == position[run]) & (p > 0) & ~is_weight
    is_modifier = (p > 0) & ~is_weight & ~is_artist
    modifier_ids = np.append(_draw(model.modifier_cum, int(m.sum()), rng), 0)  # + a spare, never empty
    ordinal = k - (has_artist[run] & (k > position[run]))  # the artist phrase shifts later modifiers by one
    slot = np.where(is_modifier, (np.cumsum(m) - m)[run] + ordinal, len(modifier_ids) - 1)
    index = np.select(
        [p == 0, is_modifier, is_artist, is_weight],
        [run, runs + modifier_ids[slot], phrase_base + phrase_of_run[run], weight_base + weight_of_run[run]])
    lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values.take(pa.array(index)))
    prompts = pc.binary_join(lists, ", ")
    trailing = np.where(rng.random(runs) < _TRAILING_SPACE, " ", "")
    prompts = pc.binary_join_element_wise(prompts, pa.array(trailing, pa.string()), "")
    prompt_nsfw = _empirical(model.prompt_nsfw, rng.random(runs))  # a property of the prompt: same for re-runs
    return prompts, prompt_nsfw


def _uuid4_names(n: int, rng: np.random.Generator) -> pa.Array:
    """"<uuid4>.png" from the generator's bytes (version and variant bits set), built as bytes in numpy."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hex_digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    digits = np.stack([hex_digits[raw >> 4], hex_digits[raw & 0x0F]], axis=2).reshape(n, 32)
    out = np.empty((n, 40), dtype=np.uint8)
    out[:, [8, 13, 18, 23]] = ord("-")
    out[:, [i for i in range(36) if i not in (8, 13, 18, 23)]] = digits
    out[:, 36:] = np.frombuffer(b".png", np.uint8)
    return _strings_from_bytes(out.reshape(-1), np.arange(0, 40 * n + 1, 40, dtype=np.int64))


def _prompt_row_group(model: _PromptModel, users: _Users, seed: int, chunk: int, start: int, n: int, rows: int) -> pa.Table:
    rng = _rng(seed, _STREAM_PROMPTS, chunk)

    # 5d. Runs: one prompt by one user with one set of settings, re-run 1-6 times (the last run of a row
    # group is cut at its end).
    repeats = _REPEATS[_draw(_REPEAT_CUM, n, rng)]
    run_ends = np.cumsum(repeats)
    runs = int(np.searchsorted(run_ends, n, side="left")) + 1
    repeats = repeats[:runs].copy()
    repeats[-1] -= run_ends[runs - 1] - n
    run = np.repeat(np.arange(runs), repeats)
    first_row = np.concatenate([[0], np.cumsum(repeats)[:-1]])

    prompts, prompt_nsfw = _prompts(model, runs, rng)
    user = _draw(users.cum, runs, rng)
    fresh = _settings(model, runs, rng)
    habit = rng.random(runs) < _USER_HABIT
    step, cfg, sampler, width, height = (np.where(habit, usual[user], new)[run] for usual, new in zip(
        (users.step, users.cfg, users.sampler, users.width, users.height), fresh))

    # 5e. Time: rows run through the month in order (parts are time slices, as in DiffusionDB), at minute
    # resolution; re-runs follow their first image by 0-2 minutes each.
    u = (start + first_row + rng.random(runs) * repeats) / rows
    minute = np.searchsorted(model.minute_cum, u, side="right")
    delay = np.where(np.arange(n) > first_row[run], rng.integers(0, 3, n), 0)
    elapsed = np.cumsum(delay)
    within = elapsed - elapsed[first_row][run]  # minutes since the run's first image
    minute = np.minimum(minute[run] + within, _DAYS * 1440 - 1)
    nanoseconds = (_FIRST_DAY + minute.astype("timedelta64[m]")).astype("datetime64[ns]").astype(np.int64)

    global_row = np.arange(start, start + n, dtype=np.int64)
    columns = [
        _uuid4_names(n, rng),
        prompts.take(pa.array(run)),
        pa.array((1 + global_row * 2000 // rows).astype(np.uint16)),
        pa.array(rng.integers(0, 2**32, n, dtype=np.uint32)),
        pa.array(step.astype(np.uint16)),
        pa.array(cfg.astype(np.float32)),
        pa.array(sampler.astype(np.uint8)),
        pa.array(width.astype(np.uint16)),
        pa.array(height.astype(np.uint16)),
        users.names.take(pa.array(user[run])),
        pa.array(nanoseconds, pa.timestamp("ns", tz="UTC")),
        pa.array(_empirical(model.image_nsfw, rng.random(n)).astype(np.float32)),
        pa.array(prompt_nsfw[run].astype(np.float32)),
    ]
    return pa.Table.from_arrays(columns, schema=DIFFUSIONDB_SCHEMA)


def synth_prompts(out_path, rows: int = 2_000_000, seed: int = 0) -> None:
    """Write `rows` synthetic DiffusionDB metadata.parquet-shaped rows to the parquet file `out_path`.

    Exact DiffusionDB dtypes and column order; prompts built from real prompt structure; labelled synthetic
    in the schema metadata. Streams row groups of ROW_GROUP_ROWS rows.
    """
    _require_samples()
    if rows < 1:
        raise ValueError("rows must be at least 1")
    model = _prompt_model()
    users = _users(model, seed)
    schema = DIFFUSIONDB_SCHEMA.with_metadata(_metadata(
        "diffusiondb-metadata", seed, rows,
        "SYNTHETIC DATA written by spellbook (ingest/synth.py), not DiffusionDB: prompts recombine subjects and "
        "modifiers of real prompts with generated artist phrases; users, seeds, settings, times and scores are "
        "drawn from distributions learned from a 1,000-row real sample.",
    ))
    _write(out_path, schema, (_prompt_row_group(model, users, seed, chunk, start, n, rows) for chunk, start, n in _chunks(rows)))
