"""Every command has help with an example; the documented commands exist."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ingest.cli import cli


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
    from ingest.site import datasette_args

    args = datasette_args(tmp_path / "x.db")
    assert args[:3] == ["serve", "--immutable", str(tmp_path / "x.db")]
    assert "--plugins-dir" in args and "--template-dir" in args and "--metadata" in args
