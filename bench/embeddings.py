"""Embedding throughput with the real architectures (random weights: the same cost as the real ones):
texts/s and images/s of spellbook.embeddings.models.OpenClipModel against a plain loop over
open_clip (one text or image at a time, as a first script would) in the same run; and the time to
encode one short text query, which a similarity page pays.

    .venv/bin/python bench/embeddings.py                       # ViT-B-32 texts and images, ViT-L-14 texts
    .venv/bin/python bench/embeddings.py --models ViT-L-14 --images 64 --device cuda
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)

def real_prompts(count: int) -> list[str]:
    import csv

    with open(_common.BENCH_DIR.parent / "data" / "prompts" / "diffusiondb_sample.csv", encoding="utf-8", newline="") as handle:
        prompts = [row["prompt"] for row in csv.DictReader(handle)]
    return (prompts * (count // len(prompts) + 1))[:count]


def images(count: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (rng.integers(300, 700), rng.integers(300, 700), 3), dtype=np.uint8)) for _ in range(count)]


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import open_clip
    import torch

    from spellbook.embeddings.models import OpenClipModel

    figures = {}
    texts = real_prompts(args.texts)
    pictures = images(args.images)
    for name in args.models.split(","):
        torch.manual_seed(0)
        ours = OpenClipModel(name, None, device=args.device)
        model, preprocess, tokenizer = ours.load()  # random weights of the real architecture
        key = name.replace("-", "_").lower()

        def plain_texts():
            with torch.no_grad():
                for text in texts:
                    model.encode_text(tokenizer([text]).to(args.device))

        def plain_images(batch):
            with torch.no_grad():
                for image in batch:
                    model.encode_image(preprocess(image.convert("RGB"))[None].to(args.device, next(model.parameters()).dtype))

        ours.embed_texts(texts[:8])  # warm up both
        plain_t = timed(plain_texts)
        ours_t = timed(lambda: ours.embed_texts(texts))
        figures[f"{key}_texts_per_s"] = len(texts) / ours_t
        figures[f"{key}_plain_texts_per_s"] = len(texts) / plain_t
        figures[f"{key}_texts_vs_plain"] = plain_t / ours_t
        print(f"{name} texts: ours {len(texts) / ours_t:,.1f}/s, plain loop {len(texts) / plain_t:,.1f}/s ({plain_t / ours_t:.2f}x)", flush=True)
        # One short query, as a page encodes it (median of 15).
        queries = ["greg rutkowski castle", "a red fox in the snow", "portrait, oil painting", "cyberpunk city at night, neon"]
        full = [timed(lambda q=q: torch.no_grad()(model.encode_text)(tokenizer([q]))) for q in random.Random(1).choices(queries, k=15)]
        short = [timed(lambda q=q: ours.embed_texts([q])) for q in random.Random(1).choices(queries, k=15)]
        figures[f"{key}_query_ms"] = statistics.median(short) * 1000
        figures[f"{key}_plain_query_ms"] = statistics.median(full) * 1000
        print(f"{name} one query: ours {statistics.median(short) * 1000:.1f} ms, plain {statistics.median(full) * 1000:.1f} ms", flush=True)
        if args.images and (name != "ViT-L-14" or args.device != "cpu"):
            plain_i = timed(lambda: plain_images(pictures))
            ours_i = timed(lambda: ours.embed_images(pictures))
            figures[f"{key}_images_per_s"] = len(pictures) / ours_i
            figures[f"{key}_plain_images_per_s"] = len(pictures) / plain_i
            figures[f"{key}_images_vs_plain"] = plain_i / ours_i
            print(f"{name} images: ours {len(pictures) / ours_i:,.1f}/s, plain loop {len(pictures) / plain_i:,.1f}/s ({plain_i / ours_i:.2f}x)", flush=True)
        del model, ours
    print(_common.result_line(**figures))


if __name__ == "__main__":
    main()
