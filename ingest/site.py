"""How a database becomes a Spellbook site: the one description `spellbook serve`, the tests and
the benchmarks share, so that what is tested is what is served."""
from __future__ import annotations

from pathlib import Path

from ingest import PROJECT_ROOT

METADATA = PROJECT_ROOT / "metadata.yml"
PLUGINS_DIR = PROJECT_ROOT / "plugins"
TEMPLATE_DIR = PROJECT_ROOT / "templates"
STATIC_MOUNT = ("spellbook-static", PROJECT_ROOT / "plugins" / "static")


def datasette_args(db: Path, metadata_path: Path | None = None) -> list[str]:
    """`datasette serve` arguments: the database read-only (--immutable), Spellbook's pages."""
    return [
        "serve",
        "--immutable",
        str(db),
        "--metadata",
        str(metadata_path or METADATA),
        "--plugins-dir",
        str(PLUGINS_DIR),
        "--template-dir",
        str(TEMPLATE_DIR),
        "--static",
        f"{STATIC_MOUNT[0]}:{STATIC_MOUNT[1]}",
    ]


def make_datasette(*db_paths: Path, metadata: dict | None = None, settings: dict | None = None):
    """The same site as a Datasette object (for its ASGI client in tests and benchmarks)."""
    import yaml
    from datasette.app import Datasette

    if metadata is None:
        metadata = yaml.safe_load(METADATA.read_text())
    return Datasette(
        files=[],
        immutables=[str(p) for p in db_paths],
        metadata=metadata,
        plugins_dir=str(PLUGINS_DIR),
        template_dir=str(TEMPLATE_DIR),
        static_mounts=[(STATIC_MOUNT[0], str(STATIC_MOUNT[1]))],
        settings=settings,
    )
