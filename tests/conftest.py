"""Shared fixtures: small real databases built by the project's own ingest code in tmp_path."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spellbook.ingest.demo import DATA_DIR, URL_TEXT, V1_SCHEMA, V2_SCHEMA, laion_rows_as_parquet
from spellbook.ingest.load import ingest_training_files
from spellbook.site import make_datasette

REPO = Path(__file__).resolve().parent.parent
assert DATA_DIR == REPO / "data"  # the bundled real samples the tests read

V2_COLUMNS = pq.read_schema(V2_SCHEMA).remove_metadata()


@pytest.fixture
def v1_parquet(tmp_path) -> Path:
    """The five real V1 rows in the exact laion2B-en-aesthetic schema."""
    return laion_rows_as_parquet(tmp_path / "laion2B-en-aesthetic_part00000.parquet", V1_SCHEMA)


@pytest.fixture
def v2_parquet(tmp_path) -> Path:
    """The same real rows in the improved_aesthetics_6plus (V2) schema."""
    return laion_rows_as_parquet(tmp_path / "improved_aesthetics_6plus_part0.parquet", V2_SCHEMA)


@pytest.fixture
def url_text_parquet() -> Path:
    return URL_TEXT


def write_v2(path: Path, rows: list[dict]) -> Path:
    """A V2-schema parquet file from a few rows (missing columns default to plausible values)."""
    defaults = {
        "WIDTH": 512.0,
        "HEIGHT": 512.0,
        "similarity": 0.31,
        "punsafe": 0.01,
        "pwatermark": 0.1,
        "AESTHETIC_SCORE": 6.5,
        "hash": 1,
    }
    columns = {}
    for i, field in enumerate(V2_COLUMNS):
        if field.name == "__index_level_0__":
            columns[field.name] = pa.array(range(len(rows)), field.type)
        else:
            columns[field.name] = pa.array([row.get(field.name, defaults.get(field.name)) for row in rows], field.type)
    pq.write_table(pa.table(columns, schema=V2_COLUMNS), path)
    return path


@pytest.fixture
def training_db(tmp_path, v1_parquet, url_text_parquet) -> Path:
    """Real rows (V1 + the 10,000 URL+TEXT rows) plus a few crafted ones for folding and domains."""
    crafted = write_v2(
        tmp_path / "crafted.parquet",
        [
            {"URL": "https://i.pinimg.com/originals/aa/bb/cc.jpg", "TEXT": "Tales from the Loop by Simon Stålenhag", "AESTHETIC_SCORE": 7.9, "WIDTH": 1200.0, "HEIGHT": 600.0},
            {"URL": "https://s-media-cache-ak0.pinimg.com/736x/11/22.jpg", "TEXT": "Electric State, Simon Stalenhag painting", "AESTHETIC_SCORE": 7.1},
            {"URL": "https://foo.blogspot.com/photo.jpg", "TEXT": "A foggy harbour, oil painting by Simon Stålenhag", "punsafe": 0.93},
            {"URL": "https://bar.blogspot.com/x.png", "TEXT": "portrait of a cat in the style of Alphonse Mucha", "WIDTH": float("nan"), "HEIGHT": float("nan")},
        ],
    )
    db = tmp_path / "spellbook.db"
    summary = ingest_training_files(db, [v1_parquet, url_text_parquet, crafted])
    assert not summary.failed, summary.report()
    return db


def spellbook_datasette(*db_paths: Path, metadata: dict | None = None, config: dict | None = None):
    """A Datasette configured exactly as `spellbook serve` configures it."""
    return make_datasette(*db_paths, metadata=metadata, config=config)


@pytest.fixture
def datasette(training_db):
    return spellbook_datasette(training_db)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`spellbook serve DB` (or another serving command) on a free loopback port, stopped at the end
    of the test. `command` is the program and its arguments before `--port`."""

    def __init__(self, db: Path | None = None, command: list[str] | None = None, cwd: Path | None = None, env: dict | None = None, port: int | None = None):
        """With `port`, the command already names the port (it is not appended)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if command is None:
            command = [*self.spellbook(), "serve", str(db)]
        # The server's output goes to a file: a pipe nobody reads fills up (Datasette prints a
        # traceback per error) and then blocks the server.
        import tempfile

        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command if port else [*command, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env or os.environ, PYTHONUNBUFFERED="1"),
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(self.output())
                time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"{' '.join(command)} did not start within 30 s")

    @staticmethod
    def spellbook() -> list[str]:
        """The `spellbook` program of the Python running the tests."""
        return [str(Path(sys.executable).parent / "spellbook")]

    def get(self, path: str, status: int = 200):
        import httpx

        response = httpx.get(self.url + path, timeout=30)
        assert response.status_code == status, (path, response.status_code, response.text[:300])
        return response

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


@pytest.fixture
def served(training_db):
    server = Server(training_db)
    yield server
    server.stop()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright (no browser download: launched by its path)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: `make test` installs it as root")
        pytest.skip("Debian's chromium is not installed (make browser-deps)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


CLUSTER_WORD = "quokka"
CLUSTER_ROWS = 200_000
CLUSTER_DOMAINS = {"alpha-photos.org": 105_000, "beta-pics.net": 95_000}  # in this order, sorted by domain
EARLY_ROWS = 20_000


@pytest.fixture(scope="session")
def clustered_db(tmp_path_factory) -> Path:
    """Corpora arrive one after another, so matches bunch up: 20,000 early captions without the
    search word over 20 domains, then a file of 200,000 captions that all have it ("quokka",
    "pokémon", "by greg rutkowski"), sorted by domain (105,000 from alpha-photos.org first), with
    aesthetic scores 5.1 and 7.3 alternating (the bins between are empty)."""
    folder = tmp_path_factory.mktemp("clustered")
    early = [
        {"URL": f"https://img.site{i % 20}.com/{i}.jpg", "TEXT": f"a landscape painting of hills number {i}", "AESTHETIC_SCORE": 6.0}
        for i in range(EARLY_ROWS)
    ]
    late, i = [], 0
    for domain, count in CLUSTER_DOMAINS.items():
        for _ in range(count):
            late.append({"URL": f"https://{domain}/{i}.jpg", "TEXT": f"{CLUSTER_WORD} quokkas pokémon by greg rutkowski {i}",
                         "AESTHETIC_SCORE": 5.1 if i % 2 else 7.3})
            i += 1
    db = folder / "clustered.db"
    summary = ingest_training_files(db, [write_v2(folder / "early.parquet", early), write_v2(folder / "late.parquet", late)])
    assert not summary.failed, summary.report()
    return db


# --- models for the similarity tests ---------------------------------------------------------------

TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny open_clip CLIP built from a config with random weights, saved the way a real checkpoint
    folder is (open_clip_config.json + open_clip_model.safetensors), for `local-dir:` loading."""
    import json

    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CONFIG)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP_CONFIG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """`local-dir:PATH` of a tiny random CLIP checkpoint."""
    pytest.importorskip("open_clip")
    return "local-dir:" + str(save_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "tiny-clip"))


COLOURS = {"red": 0, "green": 1, "blue": 2}
STAND_IN_DIMENSIONS = 32


class StandInModel:
    """A deterministic stand-in (llm's way to test ranking): colour words and an image's mean
    colour share dimensions 0-2, every other word hashes to one of the rest. So "red" is near red
    images, and captions that share words are near each other."""

    supports_text = supports_images = True
    dimensions = STAND_IN_DIMENSIONS

    def __init__(self, name="stand-in", pretrained=None, device="cpu"):
        self.model_id = "stand-in"

    def fingerprint(self):
        return "stand-in:v1"

    @staticmethod
    def word(word: str):
        import hashlib

        import numpy as np

        vector = np.zeros(STAND_IN_DIMENSIONS, np.float32)
        if word in COLOURS:
            vector[COLOURS[word]] = 3.0
        else:
            vector[3 + int(hashlib.md5(word.encode()).hexdigest(), 16) % (STAND_IN_DIMENSIONS - 3)] = 1.0
        return vector

    def embed_texts(self, texts):
        import numpy as np

        out = np.stack([sum((self.word(w) for w in text.lower().split()), np.zeros(STAND_IN_DIMENSIONS, np.float32)) + 1e-3 for text in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_images(self, images):
        import numpy as np

        out = []
        for image in images:
            vector = np.full(STAND_IN_DIMENSIONS, 1e-3, np.float32)
            vector[:3] = np.asarray(image.convert("RGB").resize((4, 4))).reshape(-1, 3).mean(axis=0) / 255.0
            out.append(vector)
        out = np.stack(out)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def stand_in():
    """The stand-in model, registered like a plugin's model; forgotten afterwards."""
    from spellbook.embeddings import models

    models.register("stand-in", StandInModel)
    yield models.get_model("stand-in", None)
    models._FACTORIES.pop("stand-in", None)
    models.forget_models()
