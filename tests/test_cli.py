"""Every command has help with an example; the documented commands exist."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from spellbook.cli import cli


def commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from commands(command, prefix + (name,))


ALL = list(commands(cli))


def test_the_documented_commands_exist():
    names = {" ".join(path) for path, _ in ALL}
    assert {"ingest laion", "ingest prompts", "synth laion", "synth prompts", "serve"} <= names


@pytest.mark.parametrize("path", [path for path, _ in ALL], ids=[" ".join(p) for p, _ in ALL])
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    command = dict(ALL)[path]
    if not isinstance(command, click.Group):
        assert "Example:" in result.output and "spellbook " in result.output


def test_synth_writes_labelled_files(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "s.parquet"
    result = CliRunner().invoke(cli, ["synth", "laion", str(out), "--rows", "500", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert pq.read_metadata(out).num_rows == 500
    assert pq.read_schema(out).metadata[b"spellbook_synthetic"] == b"true"


def test_serve_builds_the_datasette_command(tmp_path):
    from spellbook.site import datasette_args

    args = datasette_args(tmp_path / "x.db")
    assert args[:3] == ["serve", "--immutable", str(tmp_path / "x.db")]
    assert "--metadata" in args
    from spellbook.site import datasette_1

    assert ("--config" in args) == datasette_1()  # 1.0 reads datasette.yaml; 0.65 gets it merged into its metadata
    # Pages, templates and static files come from the installed package's entry points.
    assert "--plugins-dir" not in args and "--template-dir" not in args and "--static" not in args


def test_serve_encodes_queries_as_the_published_image_does(training_db):
    """`spellbook serve` hands the server SERVER_ENV (the Dockerfile writes the same), and a value
    the user set already is kept. Read from the served process's own environment."""
    import os
    from pathlib import Path

    from spellbook.site import SERVER_ENV
    from tests.conftest import Server

    env = {name: value for name, value in os.environ.items() if name not in SERVER_ENV}
    server = Server(training_db, env={**env, "SPELLBOOK_QUERY_THREADS": "3"})
    try:
        raw = Path(f"/proc/{server.process.pid}/environ").read_bytes()  # execvp keeps the pid
        served = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    finally:
        server.stop()
    assert {name: served.get(name) for name in SERVER_ENV} == {**SERVER_ENV, "SPELLBOOK_QUERY_THREADS": "3"}
    assert SERVER_ENV == {"SPELLBOOK_QUERY_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


def test_format_choices_are_the_registry():
    from spellbook.ingest.readers import FORMATS

    option = next(p for p in dict(ALL)[("ingest", "prompts")].params if p.name == "source_format")
    assert tuple(option.type.choices) == FORMATS


def test_every_make_target_is_documented():
    """A self-documenting Makefile: every target a user runs has a `##` line for `make help`."""
    import re

    from tests.conftest import REPO

    makefile = (REPO / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split())
    documented = set(re.findall(r"^([a-zA-Z0-9_-]+):.*## ", makefile, re.M))
    assert phony == documented
    assert {"demo", "test", "test-datasette-1", "help", "bench"} <= documented
