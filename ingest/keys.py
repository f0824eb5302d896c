"""Stable identities: the keys that make a row the same row in every run and every database."""
from __future__ import annotations

import hashlib
from pathlib import Path


def stable_key(*parts: str | None) -> int:
    """A 63-bit integer that depends only on the parts (blake2b): the same in every run and database."""
    text = "\x1f".join("" if part is None else part for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") >> 1


def stable_keys(*columns: list) -> list[int]:
    blake2b = hashlib.blake2b
    if len(columns) == 2:  # the hot path (LAION url + caption), without the generic join
        return [
            int.from_bytes(blake2b(f"{a}\x1f{b}".encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") >> 1
            for a, b in zip(*columns)
        ]
    return [stable_key(*parts) for parts in zip(*columns)]


def file_sha256(path: Path) -> str:
    """sha256 of a file; for a folder (of images), of each file's relative path and sha256."""
    path = Path(path)
    if path.is_dir():
        listing = "".join(f"{p.relative_to(path)}\t{file_sha256(p)}\n" for p in sorted(path.rglob("*")) if p.is_file())
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
