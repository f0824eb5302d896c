"""How a database becomes a Spellbook site: the one description `spellbook serve`, the tests and
the benchmarks share, so that what is tested is what is served.

Spellbook's pages, templates and static files come with the package (its `datasette` entry
points), so a plain `datasette serve DB` shows them too. What differs between Datasette lines is
where configuration lives: 0.65 reads plugin settings from the metadata, 1.0 (from 1.0a8) refuses
a `plugins:` block there and reads them from `datasette.yaml`. So `metadata.yml` holds metadata
only, `datasette.yaml` holds Spellbook's settings, and each line is given them its own way.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

PACKAGE = resources.files("spellbook")
METADATA = Path(str(PACKAGE / "metadata.yml"))
CONFIG = Path(str(PACKAGE / "datasette.yaml"))
# How a server encodes its queries, set by `spellbook serve` (unless already set) and in a published
# image's Dockerfile: two torch threads (see embeddings/models.py); OpenMP runtimes (torch's, faiss's)
# read the other two once as they start: idle threads sleep after a short spin (GOMP_SPINCOUNT wins
# over the policy's own count of 0), so the operations of one encode, microseconds apart, keep their
# threads awake and idle ones do not spin against searches.
SERVER_ENV = {"SPELLBOOK_QUERY_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


@lru_cache(maxsize=1)
def datasette_version() -> tuple[int, ...]:
    """The installed Datasette's version (read once: importlib.metadata scans site-packages, ~1 ms,
    and every page asks)."""
    version = metadata.version("datasette")
    return tuple(int(part) for part in version.split("a")[0].split(".") if part.isdigit())


def datasette_1() -> bool:
    """True on the 1.0 line (its alphas included), which reads datasette.yaml."""
    return datasette_version() >= (1,)


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


@lru_cache(maxsize=1)
def default_config() -> dict:
    """The packaged datasette.yaml: Spellbook's own settings (plugins.spellbook) and Datasette's."""
    return _yaml(CONFIG)


def site_metadata(path: Path | None = None) -> dict:
    return _yaml(path or METADATA)


def merged_metadata(metadata: dict, config: dict) -> dict:
    """What 0.65 wants in one metadata document: datasette.yaml's plugin settings, permissions
    (allow blocks) and per-database configuration merged in (its `settings` become flags)."""
    merged = dict(metadata)
    for key, value in config.items():
        if key == "settings":
            continue
        if key == "databases":
            databases = {name: dict(db) for name, db in (merged.get("databases") or {}).items()}
            for name, db in value.items():
                target = databases.setdefault(name, {})
                for db_key, db_value in db.items():
                    if db_key == "tables":
                        tables = {t: dict(v) for t, v in (target.get("tables") or {}).items()}
                        for table, table_config in db_value.items():
                            tables.setdefault(table, {}).update(table_config)
                        target["tables"] = tables
                    else:
                        target[db_key] = db_value
            merged["databases"] = databases
        elif key == "plugins":
            merged["plugins"] = {**(merged.get("plugins") or {}), **value}
        else:
            merged[key] = value
    return merged


def datasette_args(*db_paths: Path, metadata_path: Path | None = None, config_path: Path | None = None) -> list[str]:
    """`datasette serve` arguments: the databases read-only (--immutable), Spellbook's metadata and
    configuration. Pages, templates and static files come from the entry points."""
    metadata_path = metadata_path or METADATA
    config_path = config_path or CONFIG
    args = ["serve", "--immutable", *[str(p) for p in db_paths]]
    if datasette_1():
        return args + ["--metadata", str(metadata_path), "--config", str(config_path)]
    # 0.65 has no configuration file: its settings are flags, the rest travels in the metadata,
    # written to a file named after its content (the same file for the same configuration).
    config = _yaml(config_path)
    document = json.dumps(merged_metadata(site_metadata(metadata_path), config), sort_keys=True, indent=1)
    merged = Path(tempfile.gettempdir()) / f"spellbook-metadata-{hashlib.sha256(document.encode()).hexdigest()[:16]}.json"
    if not merged.exists():
        partial = merged.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(document, encoding="utf-8")
        os.replace(partial, merged)
    args += ["--metadata", str(merged)]
    for name, value in (config.get("settings") or {}).items():
        args += ["--setting", name, str(value)]
    return args


def setting_value(value) -> str:
    """A setting as Datasette's --setting flag takes it: booleans as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def make_datasette(*db_paths: Path, metadata: dict | None = None, config: dict | None = None, settings: dict | None = None):
    """The same site as a Datasette object (for its ASGI client in tests and benchmarks).

    `config` is datasette.yaml's content (the packaged one by default); on 0.65 its plugin settings
    travel in the metadata, as that line expects."""
    from datasette.app import Datasette

    metadata = site_metadata() if metadata is None else metadata
    config = default_config() if config is None else config
    settings = {**(config.get("settings") or {}), **(settings or {})}
    if datasette_1():
        return Datasette(files=[], immutables=[str(p) for p in db_paths], metadata=metadata, config=config, settings=settings)
    return Datasette(files=[], immutables=[str(p) for p in db_paths], metadata=merged_metadata(metadata, config), settings=settings)
