"""How close a regeneration came to the image it was regenerated from, when that image is on this
machine: a perceptual-hash distance always, CLIP image similarity where the database's vector
store names a CLIP model this machine can load. Worded as "regenerated with the same settings":
the same settings on another GPU, driver, library version or sampler port do not give the same
pixels, and a score says how alike, never that it is the same image.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

MAX_SOURCE_BYTES = 64 << 20
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif"}


def source_image(conn, generation_id: int):
    """The generation's own image (a PIL image, RGB) from its folder or zip, or None."""
    from PIL import Image

    from spellbook.queries.reports import local_image

    found = local_image(conn, generation_id)
    if found is None:
        return None
    root, relative = found
    if Path(relative).suffix.lower() not in _IMAGE_SUFFIXES:
        return None
    base = Path(root)
    try:
        if base.is_file() and zipfile.is_zipfile(base):
            with zipfile.ZipFile(base) as archive:
                info = archive.getinfo(relative)
                if info.file_size > MAX_SOURCE_BYTES:
                    return None
                data = archive.read(info)
        else:
            path = (base / relative).resolve()
            if not path.is_relative_to(base.resolve()) or not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
                return None
            data = path.read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (OSError, KeyError, ValueError, Image.DecompressionBombError):
        return None


def phash_distance(first, second) -> int:
    """Hamming distance of the two images' 64-bit perceptual hashes (imagehash.phash): 0 for the
    same picture, about 32 for unrelated ones."""
    import imagehash

    return int(imagehash.phash(first.convert("RGB")) - imagehash.phash(second.convert("RGB")))


_CLIP_FAILED: dict[str, str] = {}


def display_model(model_id: str) -> str:
    """A CLIP model's id without this machine's folders ("open_clip:local-dir:/home/me/clip" -> "open_clip:local-dir:clip")."""
    prefix, _, rest = model_id.rpartition("local-dir:")
    return f"{prefix}local-dir:{Path(rest).name}" if prefix or model_id.startswith("local-dir:") else model_id


def clip_similarity(db_path, first, second, device: str = "cpu") -> tuple[float, str]:
    """Cosine similarity of CLIP image embeddings with the model the database's vectors were made
    with (the similarity search's model). Raises LookupError when there is none or it cannot load."""
    from spellbook.embeddings.store import StoreError, VectorStore

    try:
        store = VectorStore.beside(db_path, readonly=True)
    except StoreError:
        raise LookupError("no vector store beside the database: run `spellbook embed`") from None
    try:
        record = store.only_model()
    finally:
        store.close()
    if record is None:
        raise LookupError("the vector store holds no single CLIP model")
    shown = display_model(record.model_id)
    if record.model_id in _CLIP_FAILED:
        raise LookupError(_CLIP_FAILED[record.model_id])
    from spellbook.embeddings.models import get_model
    from spellbook.queries.similar import model_spec

    name, pretrained = model_spec(record.model_id)
    try:
        model = get_model(name, pretrained, "cpu" if device == "mps" else device)
        vectors = model.embed_images([first.convert("RGB"), second.convert("RGB")])
    except Exception as error:  # weights not on this machine, a model that embeds no images
        _CLIP_FAILED[record.model_id] = f"{shown} cannot be loaded here ({type(error).__name__})"
        raise LookupError(_CLIP_FAILED[record.model_id]) from None
    return float((vectors[0] * vectors[1]).sum()), shown


def score(db_path, conn, generation_id: int | None, image, device: str = "cpu") -> dict:
    """The score columns of a regenerations row."""
    source = source_image(conn, generation_id) if generation_id is not None else None
    if source is None:
        return {"source_image": 0, "clip_similarity": None, "clip_model": None, "phash_distance": None,
                "score_note": "regenerated with the same settings; the source image is not on this machine, so there is nothing to compare with"}
    distance = phash_distance(source, image)
    try:
        similarity, clip_model = clip_similarity(db_path, source, image, device)
        clip_text = f"CLIP image similarity {similarity:.3f} ({clip_model})"
    except LookupError as error:
        similarity, clip_model, clip_text = None, None, f"no CLIP similarity ({error})"
    return {
        "source_image": 1, "clip_similarity": similarity, "clip_model": clip_model, "phash_distance": distance,
        "score_note": f"regenerated with the same settings, not an exact reproduction: perceptual-hash distance {distance} of 64, {clip_text}",
    }
