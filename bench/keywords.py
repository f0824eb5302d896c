"""Keyword extraction speed on real prompts (DiffusionDB's 1,000 and ImageReward's 8,878 from data/):
prompts per second cold (every cache cleared), with the pieces seen before, and with the prompts
seen before; the baseline in the same run is the floor any extractor pays, a plain split on commas.

    .venv/bin/python bench/keywords.py
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pandas as pd

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)
from spellbook.text import keywords as kw  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data" / "prompts"


def corpora() -> dict[str, list[str]]:
    with open(DATA / "diffusiondb_sample.csv", encoding="utf-8", newline="") as handle:
        diffusiondb = [row["prompt"] for row in csv.DictReader(handle)]
    imagereward = pd.concat(pd.read_parquet(p, columns=["Prompt"]) for p in sorted((DATA / "imagereward").glob("*.parquet")))["Prompt"].tolist()
    return {"diffusiondb": diffusiondb, "imagereward": imagereward}


def rate(function, prompts: list[str], repeat: int = 3, before=None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if before:
            before()
        started = time.perf_counter()
        for prompt in prompts:
            function(prompt)
        best = min(best, time.perf_counter() - started)
    return len(prompts) / best


def main():
    vocab = kw.ArtistVocabulary.default()
    figures = {}
    for name, prompts in corpora().items():
        cold = rate(kw.prompt_keywords, prompts, before=kw.clear_caches)
        kw.clear_caches()
        for prompt in prompts:  # warm the piece cache, then time without the prompt memo
            kw._extract.__wrapped__(prompt, vocab)
        warm = rate(lambda p: kw._extract.__wrapped__(p, vocab), prompts)
        memo = rate(kw.prompt_keywords, prompts)
        floor = rate(lambda p: p.lower().split(","), prompts)
        print(f"{name} ({len(prompts):,}): cold {cold:,.0f} prompts/s; pieces seen before {warm:,.0f}; prompts seen before {memo:,.0f}; comma split {floor:,.0f}")
        figures.update({f"{name}_cold_per_s": cold, f"{name}_warm_per_s": warm, f"{name}_memo_per_s": memo, f"{name}_cold_vs_split": floor / cold})
    print(_common.result_line(**figures))


if __name__ == "__main__":
    main()
