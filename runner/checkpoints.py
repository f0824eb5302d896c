"""Which checkpoint file an image was made with, by AUTOMATIC1111's own hash rules.

A1111 (modules/hashes.py, modules/sd_models.py) writes `Model hash` in two ways:
- since 1.x (2023): the first 10 hex digits of the file's sha256 (its "shorthash"); the full sha256
  is what Civitai lists;
- before (2022): `model_hash`, the sha256 of the 64 KiB at offset 1 MiB (0x100000), first 8 hex
  digits; cheap, and what DiffusionDB-era images carry.
LoRAs and embeddings are named in `Lora hashes`/`TI hashes` by the "addnet" hash (sd-scripts, A1111
`networks`): the sha256 of a .safetensors file's tensor bytes after its JSON header, first 12 hex.

A full sha256 of a 2-7 GB checkpoint takes seconds, so hashes are cached by (path, size, mtime) in
the runner's database (store.RunnerStore) or in memory; the old 8-hex hash is always cheap.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_BLOCK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def old_model_hash(path: str | Path) -> str:
    """A1111's pre-2023 `Model hash`: sha256 of 64 KiB at 1 MiB, 8 hex digits (a file shorter than
    1 MiB hashes the empty string, as A1111's does)."""
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


def addnet_hash(path: str | Path) -> str:
    """The hash A1111 and kohya's sd-scripts give a LoRA: sha256 of a .safetensors file's data
    after its header (the whole file for other formats)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if str(path).endswith(".safetensors"):
            header = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + header)
        for chunk in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_hash(value) -> str | None:
    """"[7460a6fa]", "7460A6FA", "6ce0161689" -> lower-case hex; None if it is no hash."""
    if value is None:
        return None
    text = str(value).strip().strip("[]()").lower()
    return text if re.fullmatch(r"[0-9a-f]{8,64}", text) else None


class MemoryHashCache:
    """(path, size, mtime_ns) -> sha256, for one process."""

    def __init__(self):
        self.entries: dict[tuple[str, int, int], str] = {}

    def get(self, path: str, size: int, mtime_ns: int) -> str | None:
        return self.entries.get((path, size, mtime_ns))

    def put(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        self.entries[(path, size, mtime_ns)] = sha256


@dataclass
class Checkpoint:
    path: Path
    sha256: str
    old_hash: str
    matched_by: str  # "sha256", "old hash", "file name"

    @property
    def short_hash(self) -> str:
        """What A1111 1.x writes as `Model hash`."""
        return self.sha256[:10]


def file_sha256(path: Path, cache=None) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    found = cache.get(*key) if cache is not None else None
    if found is None:
        found = sha256_file(path)
        if cache is not None:
            cache.put(*key, found)
    return found


def checkpoint_files(models_dir: str | Path) -> list[Path]:
    """Checkpoint files below a folder (A1111's models/Stable-diffusion layout: any depth)."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES[:2])


def find_checkpoint(models_dir, model_hash=None, model_name=None, cache=None) -> Checkpoint | None:
    """The file in models_dir an image's `Model hash` (and `Model`) name, by A1111's rules.

    An 8-digit hash is the old hash or a sha256 prefix; 10 or more digits a sha256 prefix. Files
    whose name is the recorded model name are hashed first; a file matched by name alone (no hash
    recorded) says so."""
    wanted = normalise_hash(model_hash)
    files = checkpoint_files(models_dir)
    stem = (model_name or "").strip().lower()
    files.sort(key=lambda p: (p.stem.lower() != stem, str(p)))
    if wanted is not None:
        if len(wanted) == 8:
            for path in files:
                if old_model_hash(path) == wanted:
                    return Checkpoint(path, file_sha256(path, cache), wanted, "old hash")
        for path in files:
            sha = file_sha256(path, cache)
            if sha.startswith(wanted):
                return Checkpoint(path, sha, old_model_hash(path), "sha256")
        return None
    if stem:
        for path in files:
            if path.stem.lower() == stem:
                return Checkpoint(path, file_sha256(path, cache), old_model_hash(path), "file name")
    return None


def find_named_file(folder, name: str, suffixes=(".safetensors", ".pt", ".ckpt", ".bin")) -> Path | None:
    """A LoRA or embedding by the name a prompt uses (its file name without suffix, any depth;
    A1111 matches case-sensitively first, then without case)."""
    root = Path(folder) if folder else None
    if root is None or not root.is_dir():
        return None
    candidates = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes]
    for exact in (True, False):
        for path in sorted(candidates):
            if (path.stem == name) if exact else (path.stem.lower() == name.lower()):
                return path
    return None
