"""`spellbook publish`: a hosted, read-only instance that stays fast, safe and able to take rows down.

    spellbook publish docker spellbook.db --out build/        # a build context: databases, inspect file, Dockerfile
    spellbook publish cloudrun spellbook.db --service spellbook
    spellbook publish fly spellbook.db --app spellbook

Each database is copied so that what a removal took down is not in the file at all (FTS rebuilt,
vectors dropped, counts recomputed, VACUUM), local paths are dropped, and rows at or over an
unsafe score can be hidden (removed from the copy, with the reason). The instance runs the same
`datasette serve` command `spellbook serve` builds (spellbook.site.datasette_args), with Spellbook
installed from its wheel (its pages come through the entry points) and the hosted defaults:
immutable databases with an inspect file, arbitrary SQL off (canned queries for the useful
reports), database download off, no runner, no local images, no server-side fetching of any
user-given URL, no removal-request form unless `--removal-requests` names a file on a writable
volume, time limits sized for 12M rows, cache headers, and the security headers every
Spellbook response carries.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from spellbook.database.connect import connect, sqlite3, transaction
from spellbook.site import SERVER_ENV, datasette_1, default_config, merged_metadata, setting_value, site_metadata

PORT = 8001
HOSTED_SETTINGS = {
    "allow_download": False,  # the databases are many gigabytes and the point is the pages
    "sql_time_limit_ms": 3000,
    "default_cache_ttl": 3600,  # immutable databases: a page's answer does not change
    "max_returned_rows": 1000,
    "suggest_facets": False,
    "allow_csv_stream": False,
}
HOSTED_PLUGIN = {
    "local_images": False,
    "runner": False,
    "cache_ttl": 3600,
    "time_limit_ms": 5000,  # sized for 12.1M rows on a small instance (bench/README.md)
    "hosted": True,
}
CANNED = {
    "provenance": ("Every file ingested, with its sha256", "SELECT file_name, kind, schema_version, row_count, inserted, sha256, ingested_at FROM datasets ORDER BY id"),
    "top_domains": ("Domains with the most training images", "SELECT domain, image_count FROM domains ORDER BY image_count DESC LIMIT 200"),
    "artists_in_training": ("Artists named in the most training captions", "SELECT name, training_count, prompt_count FROM artists ORDER BY training_count DESC LIMIT 200"),
    "artists_in_prompts": ("Artists named in the most prompts", "SELECT name, prompt_count, training_count FROM artists ORDER BY prompt_count DESC LIMIT 200"),
    "top_keywords": ("The most used style keywords", "SELECT keyword, kind, prompt_count FROM keywords ORDER BY prompt_count DESC LIMIT 200"),
    "removals": ("What was taken down, why and when", "SELECT kind, value, reason, rows_removed, created_at FROM removals ORDER BY id"),
}


class PublishError(Exception):
    """A publish that cannot go on: names what is missing."""


@dataclass
class PublishedDatabase:
    name: str
    path: Path
    rows: dict = field(default_factory=dict)
    hidden: int = 0
    vectors: bool = False


def hosted_config(names: list[str], base: dict | None = None, removal_requests: str | None = None) -> dict:
    """datasette.yaml for a hosted instance: Spellbook's settings, the hosted defaults, SQL off,
    the canned queries of every Spellbook database. The removal-request form stays off unless
    `removal_requests` names its file, a path in the container on a writable volume (the
    published databases stay immutable); the instance is behind its host's proxy, so the client
    is the one X-Forwarded-For names."""
    config = json.loads(json.dumps(base or default_config()))
    config["settings"] = {**(config.get("settings") or {}), **HOSTED_SETTINGS}
    plugin = config.setdefault("plugins", {}).setdefault("spellbook", {})
    plugin.update(HOSTED_PLUGIN)
    plugin.pop("removal_requests_db", None)
    plugin.update(removal_requests_settings(removal_requests))
    config["allow_sql"] = False
    databases = config.setdefault("databases", {})
    for name in names:
        queries = databases.setdefault(name, {}).setdefault("queries", {})
        for key, (title, sql) in CANNED.items():
            queries.setdefault(key, {"title": title, "sql": sql})
    return config


def removal_requests_settings(path: str | None) -> dict:
    """The plugin settings that turn the removal-request form on, or none."""
    if not path:
        return {}
    if not path.startswith("/") or path.startswith("/app/"):  # /app is the image's own folder, beside the immutable databases
        raise PublishError(f"--removal-requests {path}: give an absolute path in the container, on a mounted volume (e.g. /data/removal-requests.db)")
    return {"removal_requests_db": path, "trust_forwarded_for": True}


def published_copy(source: Path, target: Path, hide_unsafe: float | None = None) -> PublishedDatabase:
    """A copy of source at target with nothing of what was removed, no local paths, and optionally
    without the rows at or over an unsafe score; its vectors (and their index) beside it."""
    from spellbook.database import schema
    from spellbook.embeddings.store import vectors_path
    from spellbook.ingest.removals import remove

    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # An earlier copy's files (the database, its WAL, its vectors and their index): publishing again replaces them
    for pattern in (target.name + "*", vectors_path(target).name + "*", vectors_path(target).stem + ".*.index*"):
        for stale in target.parent.glob(pattern):
            stale.unlink()
    _vacuum_into(source, target)
    vectors = vectors_path(source)
    if vectors.exists():
        _vacuum_into(vectors, vectors_path(target))
        for index in vectors.parent.glob(vectors.stem + ".*.index*"):
            shutil.copy2(index, vectors_path(target).parent / index.name.replace(vectors.stem, vectors_path(target).stem, 1))
    published = PublishedDatabase(target.stem, target, vectors=vectors.exists())
    if hide_unsafe is not None:
        published.hidden += remove(target, "unsafe", [hide_unsafe], f"predicted unsafe: LAION punsafe at or over {hide_unsafe:g}").rows
        published.hidden += remove(target, "unsafe", [hide_unsafe], f"predicted unsafe: NSFW score at or over {hide_unsafe:g}", item="generation").rows
    conn = connect(target)
    try:
        schema.ensure_schema(conn)
        with transaction(conn):
            conn.execute("UPDATE generations SET image_path = NULL, image_root_id = NULL WHERE image_path IS NOT NULL")
            conn.execute("DELETE FROM image_roots")
        # A removed row's FTS entry was deleted, but its words stay in older segments until they
        # merge: rebuilding writes the index afresh from the rows that remain.
        for fts in (schema.TRAINING_FTS, schema.GENERATIONS_FTS):
            conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")
        schema.refresh_term_counts(conn, schema.TRAINING_FTS, schema.TRAINING_FTS_VOCAB)
        schema.refresh_term_counts(conn, schema.GENERATIONS_FTS, schema.GENERATIONS_FTS_VOCAB)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
        published.rows = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("training_images", "generations")}
    finally:
        conn.close()
    if vectors.exists():
        store = sqlite3.connect(str(vectors_path(target)))
        store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.execute("PRAGMA journal_mode=DELETE")
        store.execute("VACUUM")
        store.close()
    return published


def _vacuum_into(source: Path, target: Path) -> None:
    conn = sqlite3.connect(Path(source).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        conn.execute("VACUUM INTO ?", (str(target),))
    finally:
        conn.close()


def package_wheel(out: Path) -> Path:
    """Spellbook as a wheel, for the image to `pip install`: built from the checkout it runs from."""
    import spellbook

    root = Path(spellbook.__file__).resolve().parent
    if not (root / "pyproject.toml").exists():
        raise PublishError(f"{root} is an installed package, not a checkout: run `spellbook publish` from a Spellbook checkout (it builds the wheel the image installs)")
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(root)], capture_output=True, text=True)
    if result.returncode != 0:
        raise PublishError(f"building the spellbook wheel failed:\n{result.stderr[-2000:]}")
    wheels = sorted(out.glob("spellbook-*.whl"))
    if not wheels:
        raise PublishError("pip built no spellbook wheel")
    return wheels[-1]


def serve_command(databases: list[str], config: dict, port: str = "${PORT:-8001}") -> list[str]:
    """The `datasette serve` command of a hosted instance, paths relative to its folder: what
    spellbook.site.datasette_args gives `spellbook serve`, with the configuration in the folder
    (0.65: merged into metadata.json, the settings as flags) and the inspect file."""
    args = ["serve", "--immutable", *databases, "--metadata", "metadata.json"]
    if datasette_1():
        args += ["--config", "datasette.yaml"]
    else:
        for name, value in (config.get("settings") or {}).items():
            args += ["--setting", name, setting_value(value)]
    return ["datasette", *args, "--inspect-file", "inspect.json", "--host", "0.0.0.0", "--port", port]


def build_context(databases: list[Path], out: Path, hide_unsafe: float | None = None, title: str | None = None,
                  removal_requests: str | None = None) -> dict:
    """A Docker build context: published copies, inspect file, metadata and configuration, the
    spellbook wheel, and a Dockerfile whose CMD is serve_command()."""
    removal_requests_settings(removal_requests)  # a bad path fails before any copying
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    published = []
    for source in databases:
        if not Path(source).exists():
            raise PublishError(f"{source}: no such database")
        published.append(published_copy(Path(source), out / Path(source).name, hide_unsafe))
    names = [p.name for p in published]
    files = [p.path.name for p in published]
    config = hosted_config(names, removal_requests=removal_requests)
    metadata = site_metadata()
    if title:
        metadata["title"] = title
    if datasette_1():
        (out / "metadata.json").write_text(json.dumps(metadata, indent=1))
        import yaml

        (out / "datasette.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        (out / "metadata.json").write_text(json.dumps(merged_metadata(metadata, config), indent=1))
        (out / "datasette.yaml").write_text("# Datasette 0.65 reads these settings from metadata.json and the --setting flags in the Dockerfile.\n")
    inspect = subprocess.run([sys.executable, "-m", "datasette", "inspect", *files, "--inspect-file", "inspect.json"], cwd=out, capture_output=True, text=True)
    if inspect.returncode != 0:
        raise PublishError(f"datasette inspect failed: {inspect.stderr[-1000:]}")
    wheel = package_wheel(out / "wheels")
    command = serve_command(files, config)
    datasette_pin = f"datasette=={datasette_version_string()}"  # the line this was tested on
    copied = [*files, *(f.name for p in published for f in p.path.parent.glob(p.path.stem + ".vectors*"))]
    (out / "Dockerfile").write_text(
        "# Built by `spellbook publish`: the same `datasette serve` command a test runs from a fresh venv.\n"
        "FROM python:3.11-slim\n"
        "WORKDIR /app\n"
        f"COPY wheels/{wheel.name} /wheels/\n"
        f"RUN pip install --no-cache-dir /wheels/{wheel.name} '{datasette_pin}'\n"
        f"COPY {' '.join(sorted(set(copied)))} inspect.json metadata.json datasette.yaml /app/\n"
        f"ENV PORT={PORT}\n"
        f"ENV {' '.join(f'{name}={value}' for name, value in SERVER_ENV.items())}\n"
        f"EXPOSE {PORT}\n"
        f'CMD ["sh", "-c", {json.dumps("exec " + shlex.join(command).replace(shlex.quote("${PORT:-8001}"), "${PORT:-8001}"))}]\n'
    )
    (out / ".dockerignore").write_text("*\n!" + "\n!".join(["wheels", *sorted(set(copied)), "inspect.json", "metadata.json", "datasette.yaml"]) + "\n")
    return {"out": str(out), "databases": [p.__dict__ | {"path": str(p.path)} for p in published], "command": command, "wheel": wheel.name}


def datasette_version_string() -> str:
    from importlib.metadata import version

    return version("datasette")


def dockerfile_command(context: Path) -> str:
    """The shell command a context's Dockerfile runs (its CMD), for running it outside Docker."""
    for line in (Path(context) / "Dockerfile").read_text().splitlines():
        if line.startswith("CMD "):
            return json.loads(line[4:])[2].removeprefix("exec ")
    raise PublishError(f"{context}/Dockerfile has no CMD")


def deploy_commands(target: str, context: Path, name: str, project: str | None = None, region: str | None = None) -> list[list[str]]:
    """What `publish cloudrun` / `publish fly` run once the context is built."""
    if target == "cloudrun":
        image = f"gcr.io/{project or '$(gcloud config get-value project)'}/{name}"
        return [
            ["gcloud", "builds", "submit", "--tag", image, str(context)],
            ["gcloud", "run", "deploy", name, "--image", image, "--platform", "managed", "--allow-unauthenticated", "--port", str(PORT),
             "--memory", "4Gi", "--cpu", "2", "--concurrency", "40", *(["--region", region] if region else [])],
        ]
    if target == "fly":
        (Path(context) / "fly.toml").write_text(
            f'app = "{name}"\n\n[build]\n  dockerfile = "Dockerfile"\n\n[http_service]\n  internal_port = {PORT}\n  force_https = true\n'
            f'  auto_stop_machines = "stop"\n  auto_start_machines = true\n  min_machines_running = 1\n\n[[vm]]\n  memory = "4gb"\n  cpus = 2\n'
        )
        return [["flyctl", "deploy", "--remote-only", str(context)]]
    raise PublishError(f"no such target {target!r}: docker, cloudrun or fly")


def deploy(commands: list[list[str]], dry_run: bool) -> list[str]:
    done = []
    for command in commands:
        line = shlex.join(command)
        done.append(line)
        if dry_run:
            continue
        if shutil.which(command[0]) is None:
            raise PublishError(f"{command[0]} is not installed; the build context is ready, deploy it with: {line}")
        result = subprocess.run(command)
        if result.returncode != 0:
            raise PublishError(f"{line} failed (exit {result.returncode})")
    return done


def temporary_context() -> Path:
    return Path(tempfile.mkdtemp(prefix="spellbook-publish-"))


__all__ = ["PublishError", "build_context", "deploy", "deploy_commands", "dockerfile_command", "hosted_config", "published_copy", "serve_command"]
