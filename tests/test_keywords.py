"""Style keywords ("spells") from prompts: spellbook.text.keywords, checked on real prompts."""
from __future__ import annotations

import csv
import dataclasses
from collections import Counter

import pandas as pd
import pytest

from tests.conftest import DATA_DIR
from spellbook.text import keywords as kw
from spellbook.text.keywords import (
    ArtistVocabulary,
    Keyword,
    extract_many,
    keyword_key,
    normalise_weights,
    prompt_keywords,
    split_pieces,
)

DIFFUSIONDB_CSV = DATA_DIR / "prompts" / "diffusiondb_sample.csv"
IMAGEREWARD_DIR = DATA_DIR / "prompts" / "imagereward"


@pytest.fixture(scope="module")
def diffusiondb_prompts() -> list[str]:
    with open(DIFFUSIONDB_CSV, encoding="utf-8", newline="") as f:
        return [row["prompt"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def imagereward_prompts() -> list[str]:
    files = sorted(IMAGEREWARD_DIR.glob("*.parquet"))
    frames = [pd.read_parquet(p, columns=["Prompt"]) for p in files]
    return pd.concat(frames)["Prompt"].tolist()


def pairs(prompt: str, artists: ArtistVocabulary | None = None) -> list[tuple[str, str]]:
    """[(text, "a"|"m"), ...] for compact expectations."""
    return [(k.text, k.kind[0]) for k in prompt_keywords(prompt, artists)]


def artists_of(prompt: str, artists: ArtistVocabulary | None = None) -> list[str]:
    return [k.text for k in prompt_keywords(prompt, artists) if k.kind == "artist"]


def modifiers_of(prompt: str) -> list[str]:
    return [k.text for k in prompt_keywords(prompt) if k.kind == "modifier"]


# ---------------------------------------------------------------------------------------------
# Real DiffusionDB rows, exact keyword lists
# ---------------------------------------------------------------------------------------------

REAL_ROWS = {
    # no artist; "octane 8 k render" is one modifier
    1: ("3 d toy aztec gods as funco toy", [
        ("octane 8 k render", "m"), ("studio lighting", "m"), ("artstation", "m"),
    ]),
    # "by X, Y, Z": vocabulary names continue the list; "krenz cushart" (not in the vocabulary)
    # is taken because an artist follows it; "pixiv. cinematic" is a sentence break
    2: ("spanish golden oriole flying in avila green hay field", [
        ("summer mid day", "m"), ("4 k", "m"), ("concept art", "m"), ("wlop", "a"),
        ("ilya kuvshinov", "a"), ("artgerm", "a"), ("krenz cushart", "a"), ("greg rutkowski", "a"),
        ("pixiv", "m"), ("cinematic dramatic atmosphere", "m"), ("sharp focus", "m"),
        ("volumetric lighting", "m"), ("cinematic lighting", "m"), ("studio quality", "m"),
    ]),
    # "painted by rembrandt" inside the long subject; trailing "4 k." loses its period
    9: ("an accurate close - up portrait of alvar aalto painted by rembrandt", [
        ("rembrandt", "a"), ("oil painting", "m"), ("baroque painting", "m"),
        ("highly detailed", "m"), ("4 k", "m"),
    ]),
    # "photo taken by nikon" is a camera, not an artist
    15: ("young girl lies on a meadow", [
        ("young girl lies on a meadow", "m"), ("she wears leather jacket", "m"),
        ("jeans and black boots", "m"), ("sharp focus", "m"), ("photo taken by nikon", "m"),
        ("4 k", "m"),
    ]),
    # a name after "by" outside the vocabulary; DiffusionDB's " - " hyphen closed up
    721: ("john fahey in the red circle", [("jean-pierre melville", "a")]),
    # "in the style of X"; "chinese artist cai guo qiang" is not a name after by/style of
    746: ("extremely beautiful photograph of colored smoke cloud in the style of cai guo - qiang", [
        ("cai guo-qiang", "a"), ("the sky is gray", "m"), ("clear focus", "m"),
        ("sharp focus", "m"), ("landscape", "m"), ("chinese artist cai guo qiang", "m"),
        ("fireworks art", "m"), ("art", "m"), ("fine art", "m"), ("hd", "m"),
        ("very very beautiful", "m"),
    ]),
    # "in the style of a computer ..." is no artist; "szentpetery" gets the vocabulary's é back;
    # "a microscopic photo by X" keeps "a microscopic photo" as the modifier
    747: ("a small cute puppy in the style of a computer generated image", [
        ("a microscopic photo", "m"), ("adam szentpétery", "a"),
        ("shutterstock contest winner", "m"), ("kinetic pointillism", "m"), ("macro lens", "m"),
        ("macro photography", "m"), ("creative commons attribution", "m"),
    ]),
    # ( ( ( emphasis ) ) ) removed; "hr giger" is the vocabulary's "H. R. Giger"
    859: ("( ( ( head and shoulders portrait of a skeletal", [
        ("floating in the astral plane", "m"), ("dave mckean", "a"), ("h. r. giger", "a"),
        ("peter mohrbacher", "a"), ("d & d", "m"), ("fantasy", "m"), ("medieval", "m"),
    ]),
    # bare vocabulary names anywhere; a name outside it ("raqib shaw") not followed by an
    # artist is left as a modifier; "blue light by caravaggio" gives both
    922: ("vitalik buterin in the style of leonora carrington", [
        ("vitalik buterin", "m"), ("leonora carrington", "a"), ("gottfried helnwein", "a"),
        ("raqib shaw", "m"), ("chiaroscuro intricate composition", "m"), ("blue light", "m"),
        ("caravaggio", "a"), ("insanely quality", "m"), ("highly detailed", "m"),
        ("masterpiece", "m"), ("red light", "m"), ("artstation", "m"),
    ]),
}


@pytest.mark.parametrize("row", sorted(REAL_ROWS))
def test_real_diffusiondb_rows(diffusiondb_prompts, row):
    prefix, expected = REAL_ROWS[row]
    prompt = diffusiondb_prompts[row]
    assert prompt.startswith(prefix), "the sample file changed"
    assert pairs(prompt) == expected


def test_keyword_is_a_frozen_value():
    k = Keyword("greg rutkowski", "artist")
    assert k == Keyword("greg rutkowski", "artist")
    assert len({k, Keyword("greg rutkowski", "artist")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.text = "x"  # type: ignore[misc]


def test_the_example_from_the_brief():
    prompt = ("portrait of a knight, highly detailed, digital painting, artstation, concept art, "
              "sharp focus, illustration, art by greg rutkowski and alphonse mucha, "
              "(masterpiece:1.2), 8 k")
    assert pairs(prompt) == [
        ("portrait of a knight", "m"), ("highly detailed", "m"), ("digital painting", "m"),
        ("artstation", "m"), ("concept art", "m"), ("sharp focus", "m"), ("illustration", "m"),
        ("greg rutkowski", "a"), ("alphonse mucha", "a"), ("masterpiece", "m"), ("8 k", "m"),
    ]


# ---------------------------------------------------------------------------------------------
# Weights and splitting
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, expected", [
    ("(masterpiece:1.2)", ["masterpiece"]),
    ("(masterpiece: 1.2)", ["masterpiece"]),
    ("((best quality))", ["best quality"]),
    ("(((best quality)))", ["best quality"]),
    ("[ugly]", ["ugly"]),
    ("{ornate}", ["ornate"]),
    ("{{ornate}}", ["ornate"]),
    ("masterpiece:1.3", ["masterpiece"]),
    ("masterpiece:1.3, sharp focus:.8", ["masterpiece", "sharp focus"]),
    ("(intricate details:0.9), ( ( ( koi colors ) ) )", ["intricate details", "koi colors"]),
    ("[cat:dog:0.5]", ["cat dog"]),
    ("a [cat:dog:12] in a garden", ["a cat dog in a garden"]),
    ("<lora:add_detail:0.8>, cinematic", ["cinematic"]),
    ("cinematic <lora:add_detail:0.8> <hypernet:anime:1>", ["cinematic"]),
    ("masterpiece BREAK sharp focus", ["masterpiece", "sharp focus"]),
    ("flowers!!!!, short!! hair", ["flowers", "short hair"]),
    ("aspect 16:9", ["aspect 16:9"]),  # not a weight: a digit before the colon
    ("\\(cosplay\\)", ["cosplay"]),
])
def test_weight_syntax_is_removed(prompt, expected):
    assert modifiers_of(prompt) == expected


def test_weights_on_artists():
    assert pairs("(art by greg rutkowski:1.3), [alphonse mucha]") == [
        ("greg rutkowski", "a"), ("alphonse mucha", "a")]


def test_normalise_weights():
    assert normalise_weights("((Masterpiece)), (Knight:1.2), [cat:dog:0.5], <lora:x:0.8>") \
        == "masterpiece, knight, cat dog"
    assert normalise_weights("a BREAK b") == "a, b"  # upper-case BREAK only
    assert normalise_weights("break the ice") == "break the ice"


@pytest.mark.parametrize("prompt, expected", [
    ("a, b | c ; d\ne", ["a", "b", "c", "d", "e"]),
    ("pixiv. cinematic dramatic atmosphere", ["pixiv", "cinematic dramatic atmosphere"]),
    ("sharp focus . trending on artstation", ["sharp focus", "trending on artstation"]),
    ("detailed 8 k. trending", ["detailed 8 k", "trending"]),
    ("made in 1950. scary", ["made in 1950", "scary"]),
    ("f 2. 8 aperture", ["f 2. 8 aperture"]),  # a number, not a sentence end
    ("art by h. r. giger", ["art by h. r. giger"]),  # initials
    ("a.b. frost, dr. seuss, st. louis", ["a.b. frost", "dr. seuss", "st. louis"]),
    ("moody... dark", ["moody", "dark"]),
    ("  ,, , ", []),
    ("wide shot， 8k、hd", ["wide shot", "8k", "hd"]),
])
def test_split_pieces(prompt, expected):
    assert split_pieces(prompt) == expected


# ---------------------------------------------------------------------------------------------
# Artists: after "by" / "style of", and from the vocabulary anywhere
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, expected", [
    ("a castle by greg rutkowski", ["greg rutkowski"]),
    ("art by greg rutkowski and alphonse mucha", ["greg rutkowski", "alphonse mucha"]),
    ("art by artgerm & greg rutkowski & alphonse mucha",
     ["artgerm", "greg rutkowski", "alphonse mucha"]),
    ("by John Smith and Jane Doe", ["john smith", "jane doe"]),  # outside the vocabulary
    ("a cat in the style of Jane Doe", ["jane doe"]),
    ("a cat, style of jane doe", ["jane doe"]),
    ("a cat, inspired by jane doe", ["jane doe"]),
    # a list after "by": non-vocabulary names joined by "and", and names between artists
    ("by john smith, jane doe and bob jones, black and white",
     ["john smith", "jane doe", "bob jones"]),
    ("by wlop, krenz cushart, greg rutkowski", ["wlop", "krenz cushart", "greg rutkowski"]),
    ("by greg rutkowski, red and black, sun and moon", ["greg rutkowski"]),
    # trailing description words are not part of the name
    ("painting by john smith trending on artstation", ["john smith"]),
    ("by jane doe highly detailed 8 k", ["jane doe"]),
    ("portrait by jane doe with face and body clearly visible", ["jane doe"]),
    ("by Justin Sweet and Greg Rutkowski and Alphonse Mucha with face clearly visible",
     ["justin sweet", "greg rutkowski", "alphonse mucha"]),
    # a vocabulary name right after "by" ends the name
    ("by greg rutkowski sharp", ["greg rutkowski"]),
    ("painted by Greg Rutkowski, by Ross Tran, by Fenghua Zhong",
     ["greg rutkowski", "ross tran", "fenghua zhong"]),
    ("greg rutkowski's style", ["greg rutkowski"]),
])
def test_artists_after_by(prompt, expected):
    assert artists_of(prompt) == expected


@pytest.mark.parametrize("prompt", [
    "a knight by the sea",
    "a city by night",
    "a room lit by candlelight",
    "a girl surrounded by flowers",
    "a house by a river",
    "two men standing side by side",
    "rendered by octane",
    "photo taken by nikon",
    "painted by 2 0 2 2 standards",
    "by 3 5 mm lens",
    "a ruin covered by vines",
    "a forest by moonlight",
    "hand painted by hand",
    "full body dressed by black smoke",
    "in the style of pencils are omitted and the night sky is included",
    "made by ai",
    "by one two three four five six seven",  # stopword and too long
    "by alpha beta gamma delta epsilon zeta",  # more than five words
])
def test_non_names_after_by_are_rejected(prompt):
    assert artists_of(prompt) == []


def test_too_long_name_rejected_but_five_words_kept():
    assert artists_of("by alpha beta gamma delta epsilon zeta") == []
    assert artists_of("by alpha beta gamma delta epsilon") == ["alpha beta gamma delta epsilon"]


@pytest.mark.parametrize("prompt, expected", [
    ("a castle greg rutkowski", ["greg rutkowski"]),
    ("a castle, Greg Rutkowski, trending on artstation", ["greg rutkowski"]),
    ("landscape, simon stalenhag", ["simon stålenhag"]),  # no å typed
    ("landscape, Simon Stålenhag", ["simon stålenhag"]),
    ("landscape, SIMON STÅLENHAG", ["simon stålenhag"]),
    ("landscape, stalenhag", []),  # only full names
    ("zdzislaw beksinski, zdzisław beksiński", ["zdzisław beksiński"]),  # one artist
    ("salvador dali", ["salvador dalí"]),
    ("a portrait, wlop, beeple", ["wlop", "beeple"]),  # single-word names
    ("Beeple art", ["beeple"]),
    ("william - adolphe bouguereau", ["william-adolphe bouguereau"]),  # DiffusionDB hyphens
    ("william-adolphe bouguereau", ["william-adolphe bouguereau"]),
    ("georgia o'keeffe, georgia okeeffe, Georgia O’Keeffe", ["georgia o'keeffe"]),
    ("jeffrey smith and h.r. giger", ["jeffrey smith", "h. r. giger"]),
    ("a scientist at night, an artist, a constant stream", []),  # deny-listed words
])
def test_vocabulary_anywhere(prompt, expected):
    assert artists_of(prompt) == expected


@pytest.mark.parametrize("spelling", ["H.R. Giger", "h r giger", "hr giger", "HR Giger",
                                      "H. R. Giger", "H. R. (Hans Ruedi) Giger", "h.r.giger"])
def test_initials_spellings_collapse(spelling):
    vocab = ArtistVocabulary.default()
    assert vocab.canonical(spelling) == "h. r. giger"
    assert artists_of(f"alien, {spelling}, dark") == ["h. r. giger"]


def test_longest_name_wins():
    assert artists_of("alphonse mucha, mucha") == ["alphonse mucha", "mucha"]
    assert artists_of("stanley artgerm lau") == ["stanley artgerm"]


def test_vocabulary_api(tmp_path):
    vocab = ArtistVocabulary.default()
    assert ArtistVocabulary.default() is vocab  # cached
    assert len(vocab) == 5265
    assert vocab.canonical("SIMON STALENHAG") == "simon stålenhag"
    assert vocab.canonical("greg rutkowski") == "greg rutkowski"
    # 'Mike "Beeple" Winkelmann' and "Mike Winkelmann" are one artist: the plain spelling wins
    assert vocab.canonical('mike "beeple" winkelmann') == "mike winkelmann"
    assert vocab.canonical("greg") is None
    assert "Greg Rutkowski" in vocab and "not a painter" not in vocab
    assert vocab.find_in(["a", "castle", "Greg", "Rutkowski", "and", "Simon", "Stalenhag"]) == [
        "greg rutkowski", "simon stålenhag"]
    assert vocab.find_in("art by wlop and beeple") == ["wlop", "beeple"]

    path = tmp_path / "artists.txt"
    path.write_text("Jane Doe\nJané Doe\n\nBob\n# comment\n", encoding="utf-8")
    custom = ArtistVocabulary.from_file(path, anywhere_deny={"bob"})
    assert len(custom) == 3
    assert custom.canonical("jane doe") == "jané doe"
    assert artists_of("a cat, jane doe, bob", custom) == ["jané doe"]  # "bob" not anywhere
    assert artists_of("a cat by bob", custom) == ["bob"]  # ... but after "by"
    assert artists_of("a cat, greg rutkowski", custom) == []


def test_without_vocabulary_only_by_finds_artists():
    empty = ArtistVocabulary([])
    assert artists_of("a castle, greg rutkowski, by john smith", empty) == ["john smith"]
    assert pairs("a castle, greg rutkowski", empty) == [("a castle", "m"), ("greg rutkowski", "m")]


def test_keyword_key():
    assert keyword_key("Simon Stålenhag") == "simon stalenhag"
    assert keyword_key("H.R. Giger") == "h r giger"
    assert keyword_key("William-Adolphe  Bouguereau") == "william adolphe bouguereau"
    assert keyword_key("william - adolphe bouguereau") == "william adolphe bouguereau"
    assert keyword_key("Mœbius") == "moebius"
    assert keyword_key("Zdzisław Beksiński") == "zdzislaw beksinski"
    assert keyword_key("  (Trending on ArtStation!) ") == "trending on artstation"
    assert keyword_key("close - up") == keyword_key("close-up") == "close up"


# ---------------------------------------------------------------------------------------------
# Modifiers and dedupe
# ---------------------------------------------------------------------------------------------

def test_modifier_rules():
    prompt = ("a lone astronaut walking across a red desert at dusk under two moons, "
              "8 k, 4k, 1 9 7 6, 2022, octane render, by greg rutkowski, art by artgerm, "
              "oil painting by alphonse mucha, greg rutkowski style, trending on artstation, "
              "this piece has exactly seven words in it")
    assert pairs(prompt) == [
        ("8 k", "m"), ("4k", "m"), ("octane render", "m"), ("greg rutkowski", "a"),
        ("artgerm", "a"), ("oil painting", "m"), ("alphonse mucha", "a"),
        ("trending on artstation", "m"),
    ]


def test_modifier_text_is_normalised():
    assert modifiers_of('  "Highly   Detailed" , —Concept Art—, (Sharp Focus) ') == [
        "highly detailed", "concept art", "sharp focus"]
    # diacritics kept in the text
    assert modifiers_of("Bokeh, Rendu à l'Aquarelle") == ["bokeh", "rendu à l'aquarelle"]
    assert modifiers_of("cats, and buzzing lights") == ["cats", "buzzing lights"]


def test_dedupe_keeps_first_position():
    prompt = ("highly detailed, by greg rutkowski, highly detailed, Greg Rutkowski, "
              "concept art, art by greg rutkowski, concept art")
    assert pairs(prompt) == [
        ("highly detailed", "m"), ("greg rutkowski", "a"), ("concept art", "m")]


def test_empty_and_junk():
    assert prompt_keywords("") == []
    assert prompt_keywords("   ") == []
    assert prompt_keywords(", , .. ;") == []
    assert prompt_keywords("1 2 3, 2 0 2 2") == []
    assert pairs("🎉🎊, hd") == [("hd", "m")]


def test_extract_many_matches_prompt_keywords(diffusiondb_prompts):
    prompts = diffusiondb_prompts[:200] + [None, ""] + diffusiondb_prompts[:50]
    results = extract_many(prompts)
    assert len(results) == len(prompts)
    for p, r in zip(prompts, results):
        assert r == (prompt_keywords(p) if p else [])
    # results are independent lists even for repeated prompts
    results[0].append(Keyword("x", "modifier"))
    assert results[202] == prompt_keywords(prompts[202])
    assert Keyword("x", "modifier") not in results[202]


def test_caches_do_not_change_results(imagereward_prompts):
    sample = imagereward_prompts[::7]
    warm = [prompt_keywords(p) for p in sample]
    kw.clear_caches()
    cold = [prompt_keywords(p) for p in sample]
    assert cold == warm


# ---------------------------------------------------------------------------------------------
# Corpus-level checks and speed
# ---------------------------------------------------------------------------------------------

def count_keywords(prompts):
    artists, modifiers = Counter(), Counter()
    for kws in extract_many(prompts):
        for k in kws:
            (artists if k.kind == "artist" else modifiers)[k.text] += 1
    return artists, modifiers


def test_diffusiondb_corpus_counts(diffusiondb_prompts):
    assert len(diffusiondb_prompts) == 1000
    artists, modifiers = count_keywords(diffusiondb_prompts)
    top_modifiers = [m for m, _ in modifiers.most_common(20)]
    top_artists = [a for a, _ in artists.most_common(5)]
    print("\nDiffusionDB top modifiers:", modifiers.most_common(15))
    print("DiffusionDB top artists:", artists.most_common(10))
    for m in ("highly detailed", "concept art", "sharp focus", "trending on artstation",
              "octane render", "digital painting", "intricate", "8 k", "4 k"):
        assert m in top_modifiers, m
    assert top_artists[:2] == ["artgerm", "greg rutkowski"]
    assert 150 <= artists["greg rutkowski"] <= 250
    assert artists["greg rutkowski"] == sum("rutkowski" in p for p in diffusiondb_prompts)
    assert modifiers["sharp focus"] >= 150
    # vocabulary names never end up as modifiers; prompts nearly all yield keywords
    vocab = ArtistVocabulary.default()
    assert [m for m, _ in modifiers.most_common(200) if vocab.canonical(m)] == []
    with_keywords = sum(bool(k) for k in extract_many(diffusiondb_prompts))
    assert with_keywords >= 850


def test_imagereward_corpus_counts(imagereward_prompts):
    assert len(imagereward_prompts) == 8878
    artists, modifiers = count_keywords(imagereward_prompts)
    print("\nImageReward top modifiers:", modifiers.most_common(15))
    print("ImageReward top artists:", artists.most_common(10))
    assert [a for a, _ in artists.most_common(3)] == ["greg rutkowski", "artgerm", "alphonse mucha"]
    assert artists["greg rutkowski"] > 1200
    assert [m for m, _ in modifiers.most_common(5)] == [
        "highly detailed", "artstation", "concept art", "sharp focus", "trending on artstation"]
    # "8k" and "8 k" are both real, popular spellings, kept apart
    assert modifiers["8 k"] > 400 and modifiers["8k"] > 150


def test_a_by_list_does_not_swallow_the_modifiers_after_it():
    # From the synthetic corpus: "soft eyes and narrow chin" has the shape of "X and Y" names.
    prompt = ("wide shot from the surface of the planet, dusk, by simon stalenhag and vincent di fate and hieronymus bosch, "
              "fantasy, soft eyes and narrow chin, cinematic lighting, trending on artstation")
    keywords = prompt_keywords(prompt)
    artists = [k.text for k in keywords if k.kind == "artist"]
    assert artists == ["simon stålenhag", "vincent di fate", "hieronymus bosch"]
    modifiers = [k.text for k in keywords if k.kind == "modifier"]
    assert "fantasy" in modifiers and "cinematic lighting" in modifiers
