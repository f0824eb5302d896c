"""Embedding models behind a small registry, in the shape of llm's embedding-model hook.

A model says whether it embeds text, images or both, its dimensions and its id, and loads its
weights lazily, once per process. The built-in kind is open_clip: any model name with a
pretrained tag (`ViT-L-14` + `openai`, the default: the model LAION computed its published image
embeddings and its aesthetic scores with, so a text query can search LAION's own vectors), an
`hf-hub:org/repo` id, a `local-dir:PATH` checkpoint folder (open_clip_config.json +
open_clip_model.safetensors), or a model name with a checkpoint file as `pretrained`.

Other packages add models through the `spellbook` entry point group: a module with a
`register_embedding_models(register)` function, called with `register(alias, factory)`.

    model = get_model("ViT-B-32", "laion2b_s34b_b79k")
    vectors = model.embed_texts(["a castle by greg rutkowski"])   # float32, L2-normalised
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
LIGHT_MODEL = ("ViT-B-32", "laion2b_s34b_b79k")


class ModelError(Exception):
    """A model that cannot be found, loaded, or used for what was asked."""


class EmbeddingModel:
    """What every model provides. Vectors are float32 and L2-normalised."""

    model_id: str  # what a database records: the same id means the same vectors
    supports_text = False
    supports_images = False

    @property
    def dimensions(self) -> int:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the weights: two models with one fingerprint give the same vectors."""
        return self.model_id

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise ModelError(f"{self.model_id} does not embed text")

    def embed_images(self, images: Sequence) -> np.ndarray:
        """Images as PIL images (already opened and verified)."""
        raise ModelError(f"{self.model_id} does not embed images")


def _normalise(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


@dataclass
class OpenClipModel(EmbeddingModel):
    """An open_clip model (text and images). Weights load on first use, once per process."""

    name: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    device: str = "cpu"
    batch_size: int = 64
    download: bool = False  # fetch missing weights from the hub (spellbook embed); a server never does
    _loaded: tuple | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    supports_text = True
    supports_images = True

    def __post_init__(self):
        if self.name.startswith(("local-dir:", "hf-hub:")):
            self.pretrained = None  # open_clip ignores it for these
        self.model_id = f"open_clip:{self.name}" + (f"/{self.pretrained}" if self.pretrained else "")

    def fingerprint(self) -> str:
        """For a checkpoint on disk, the sha256 of its weights: a folder moved elsewhere is still the
        same model, a retrained one in the same folder is not."""
        weights = self._weights_file()
        if weights is None:
            return self.model_id
        return f"{self.model_id.split(':', 1)[0]}:sha256:{_file_sha256(str(weights), weights.stat().st_size, weights.stat().st_mtime_ns)[:16]}"

    def _weights_file(self) -> Path | None:
        if self.name.startswith("local-dir:"):
            folder = Path(self.name[len("local-dir:"):])
            for candidate in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                if (folder / candidate).is_file():
                    return folder / candidate
            return None
        if self.pretrained and Path(self.pretrained).is_file():
            return Path(self.pretrained)
        return None

    @property
    def dimensions(self) -> int:
        model, _, _ = self.load()
        return int(model.visual.output_dim)

    def load(self):
        """(model, image preprocessing, tokenizer), loaded once."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self):
        try:
            import open_clip
            import torch
        except ImportError as error:
            raise ModelError(f"{self.model_id} needs the clip extra: pip install 'spellbook[clip]' ({error})") from None
        threads = os.environ.get("SPELLBOOK_QUERY_THREADS")
        if threads:
            # A server encodes one short query at a time, several requests at once. `spellbook serve`
            # and published images set 2 threads, OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=10000
            # (idle OpenMP threads sleep after a short spin): at 12.1M rows hybrid p50 75 ms against
            # 128 ms with one thread, and better under 3 concurrent clients too; with torch's default
            # 3 ms of spinning a busy 2-core machine took one encode from ~30 ms to 250-530 ms.
            torch.set_num_threads(max(1, int(threads)))
        with _hub_offline(not self.download):
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(self.name, pretrained=self.pretrained, device=self.device)
                tokenizer = open_clip.get_tokenizer(self.name)
            except Exception as error:  # open_clip raises RuntimeError, ValueError, FileNotFoundError, HF errors...
                hint = ("; downloads are off here (`spellbook embed` fetches weights), so use weights already on this machine "
                        "or a checkpoint folder (--model local-dir:PATH)") if not self.download else "; offline, use a checkpoint folder (--model local-dir:PATH)"
                raise ModelError(
                    f"cannot load open_clip model {self.name!r}" + (f" with pretrained {self.pretrained!r}" if self.pretrained else "")
                    + f": {' '.join(str(error).split())[:300]}{hint}"
                ) from None
        model.eval()
        if self.device == "cuda":
            model = model.half()
        elif os.environ.get("SPELLBOOK_QUERY_INT8") == "1" and hasattr(model, "transformer"):
            _quantise_text_tower(model, torch)
        torch.set_grad_enabled(False)
        return model, preprocess, tokenizer

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        model, _, tokenizer = self.load()  # first: without the clip extra, a ModelError that says so
        import torch

        if not len(texts):
            return np.zeros((0, self.dimensions), np.float32)
        tokens = tokenizer(list(texts))
        # Batches of similar lengths: each is cut to its longest text (see _encode_text).
        order = np.argsort((tokens != 0).sum(dim=1).numpy(), kind="stable")
        out = np.zeros((len(texts), self.dimensions), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                picked = order[start : start + self.batch_size]
                out[picked] = _encode_text(model, tokens[torch.as_tensor(picked)].to(self.device)).float().cpu().numpy()
        return _normalise(out)

    def embed_images(self, images: Sequence) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor

        model, preprocess, _ = self.load()
        import torch

        dtype = next(model.parameters()).dtype
        batches = [images[start : start + self.batch_size] for start in range(0, len(images), self.batch_size)]
        if not batches:
            return np.zeros((0, self.dimensions), np.float32)

        def prepare(batch):
            return torch.stack([preprocess(image.convert("RGB")) for image in batch])

        out = []
        # Decoding and resizing the next batch (Pillow lets go of the GIL) while the model runs.
        with ThreadPoolExecutor(1) as pool, torch.inference_mode():
            upcoming = pool.submit(prepare, batches[0])
            for index in range(len(batches)):
                ready = upcoming.result()
                if index + 1 < len(batches):
                    upcoming = pool.submit(prepare, batches[index + 1])
                out.append(model.encode_image(ready.to(self.device, dtype)).float().cpu().numpy())
        return _normalise(np.concatenate(out))


class _hub_offline:
    """Hugging Face hub offline mode for one load: only weights already cached are used (without it,
    a machine with no internet waits ~45 s on retries before failing)."""

    def __init__(self, offline: bool):
        self.offline = offline

    def __enter__(self):
        if self.offline:
            import huggingface_hub.constants as constants

            self.before = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        if self.offline:
            import huggingface_hub.constants as constants

            constants.HF_HUB_OFFLINE = self.before


def _encode_text(model, tokens):
    """model.encode_text, on only as many positions as the longest text needs.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding after it changes
    nothing, yet open_clip always runs all 77 positions: for a query of a few words, cutting them off
    does a fraction of the work for the same vector (tests hold the two equal)."""
    import torch

    if not _truncatable(model):
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(dim=1).max().item())  # the tokenizer pads with 0 after end-of-text
    length = max(2, min(length, tokens.shape[1]))
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _truncatable(model) -> bool:
    return (
        hasattr(model, "token_embedding")
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") == "argmax"
        and getattr(model, "text_projection", None) is not None
    )


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the registry ------------------------------------------------------------------------------

Factory = Callable[..., EmbeddingModel]
_FACTORIES: dict[str, Factory] = {}
_LOADED: dict[tuple, EmbeddingModel] = {}
_PLUGINS_LOADED = False


def register(alias: str, factory: Factory) -> None:
    """Make `factory(name, pretrained, device)` the model for names `alias` or `alias:...`."""
    _FACTORIES[alias] = factory


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for entry in entry_points(group="spellbook"):
        hook = getattr(entry.load(), "register_embedding_models", None)
        if hook is not None:
            hook(register)


def get_model(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED, device: str | None = None, download: bool = False) -> EmbeddingModel:
    """The model for a name (and pretrained tag or checkpoint), one instance per process. Missing
    weights are fetched from the hub only with download=True (`spellbook embed` does; pages do not)."""
    _load_plugins()
    device = device or os.environ.get("SPELLBOOK_DEVICE", "cpu")
    key = (name, pretrained, device, download)
    if key not in _LOADED:
        alias = name.split(":", 1)[0]
        factory = _FACTORIES.get(name) or (_FACTORIES.get(alias) if alias not in ("local-dir", "hf-hub") else None)
        _LOADED[key] = factory(name, pretrained, device) if factory else OpenClipModel(name, pretrained, device, download=download)
    return _LOADED[key]


def forget_models() -> None:
    """Drop loaded models (tests that register stand-ins)."""
    _LOADED.clear()


def _quantise_text_tower(model, torch) -> None:
    """SPELLBOOK_QUERY_INT8=1 (a server's choice; `spellbook embed` should not set it): the text
    tower's Linear layers as dynamic int8 (torch.ao.quantization.quantize_dynamic), about 1.7x
    faster on a CPU (ViT-L-14, one query: 59 to 35 ms on one thread, 36 to 21 ms on two). Its error
    was measured on random weights only (cosine to the float vector 0.9994): trained CLIP has
    outlier activations, so check it on the real weights before serving with it (bench/README.md)."""
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantised = torch.ao.quantization.quantize_dynamic(model.transformer, {torch.nn.Linear}, dtype=torch.qint8)
    # open_clip asks the first block's c_fc.weight for the cast dtype, a method on a quantised Linear.
    quantised.get_cast_dtype = lambda: torch.float32
    model.transformer = quantised
