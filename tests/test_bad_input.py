"""Bad LAION input: a clear error naming file/row/column and a non-zero exit, or a counted
rejection; never a traceback, never a half-written database."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from spellbook.cli import cli
from spellbook.database.connect import connect
from tests.conftest import write_v2


def run(db, *paths):
    result = CliRunner().invoke(cli, ["ingest", "laion", str(db), *map(str, paths)])
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def count(db):
    conn = connect(db)
    try:
        return conn.execute("SELECT count(*) FROM training_images").fetchone()[0]
    finally:
        conn.close()


def test_not_a_parquet_file(tmp_path):
    bad = tmp_path / "notes.parquet"
    bad.write_text("URL,TEXT\nhttps://a/b.jpg,hello\n")
    result = run(tmp_path / "x.db", bad)
    assert result.exit_code != 0
    assert str(bad) in result.output and "not a readable parquet file" in result.output


def test_truncated_parquet_file(tmp_path, v1_parquet):
    truncated = tmp_path / "truncated.parquet"
    data = v1_parquet.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = run(tmp_path / "x.db", truncated)
    assert result.exit_code != 0 and str(truncated) in result.output


def test_missing_required_column(tmp_path):
    path = tmp_path / "nocaption.parquet"
    pq.write_table(pa.table({"URL": ["https://a.com/1.jpg"], "WIDTH": [1.0]}), path)
    result = run(tmp_path / "x.db", path)
    assert result.exit_code != 0
    assert "column TEXT" in result.output and "required column is missing" in result.output


def test_wrong_types_name_the_column(tmp_path):
    path = tmp_path / "types.parquet"
    pq.write_table(pa.table({"URL": ["https://a.com/1.jpg"], "TEXT": ["ok"], "WIDTH": ["wide"]}), path)
    result = run(tmp_path / "x.db", path)
    assert result.exit_code != 0
    assert f"{path}, column WIDTH: has type string, expected a number" in result.output
    path2 = tmp_path / "types2.parquet"
    pq.write_table(pa.table({"URL": ["https://a.com/1.jpg"], "TEXT": [12]}), path2)
    assert "column TEXT: has type int64, expected text" in run(tmp_path / "y.db", path2).output


def test_row_level_problems_are_counted_rejections(tmp_path):
    path = write_v2(
        tmp_path / "rows.parquet",
        [
            {"URL": "https://ok.com/1.jpg", "TEXT": "a good row", "WIDTH": float("nan"), "HEIGHT": float("nan")},
            {"URL": "https://ok.com/2.jpg", "TEXT": ""},
            {"URL": "https://ok.com/3.jpg", "TEXT": "   "},
            {"URL": "https://ok.com/4.jpg", "TEXT": "x" * 1_000_000},
            {"URL": "javascript:alert(1)", "TEXT": "hostile"},
            {"URL": "ftp://ok.com/6.jpg", "TEXT": "ftp"},
            {"URL": None, "TEXT": "no url"},
            {"URL": "https://ok.com/8.jpg", "TEXT": None},
        ],
    )
    db = tmp_path / "x.db"
    result = run(db, path)
    assert result.exit_code == 0, result.output
    assert "inserted 1," in result.output and "rejected 7" in result.output
    assert "row 2, column TEXT: empty caption" in result.output
    assert "row 4, column TEXT: caption longer than 10,000 characters" in result.output
    assert "row 5, column URL: URL is not http(s)" in result.output
    assert "row 7, column URL: missing URL" in result.output
    conn = connect(db)
    assert conn.execute("SELECT caption, width, height FROM training_images").fetchall() == [("a good row", None, None)]
    assert conn.execute("SELECT rejected FROM datasets").fetchone()[0] == 7


def test_invalid_utf8_is_rejected_with_row_and_column(tmp_path):
    captions = pa.array([b"fine caption", b"bad \xff\xfe bytes", b"also fine"], pa.binary()).view(pa.string())
    path = tmp_path / "utf8.parquet"
    pq.write_table(pa.table({"URL": ["https://a.com/1.jpg", "https://a.com/2.jpg", "https://a.com/3.jpg"], "TEXT": captions}), path)
    db = tmp_path / "x.db"
    result = run(db, path)
    assert result.exit_code == 0
    assert "row 2, column TEXT: invalid UTF-8" in result.output
    assert count(db) == 2


def test_a_bad_file_does_not_stop_or_spoil_the_good_ones(tmp_path, v1_parquet):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 nonsense")
    db = tmp_path / "x.db"
    result = run(db, v1_parquet, bad)
    assert result.exit_code == 1
    assert "inserted 5" in result.output and f"ERROR {bad}" in result.output
    assert count(db) == 5
    conn = connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_file_error_mid_way_keeps_committed_batches_and_resumes(tmp_path):
    # A file whose second row group is corrupt: the first group commits, the error names the file.
    good = write_v2(tmp_path / "good.parquet", [{"URL": f"https://a.com/{i}.jpg", "TEXT": f"c {i}"} for i in range(100)])
    table = pq.read_table(good)
    path = tmp_path / "groups.parquet"
    pq.write_table(table, path, row_group_size=50, compression="none")
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    second = meta.row_group(1).column(1)  # TEXT column chunk of the second row group
    start = second.data_page_offset
    data[start + 10 : start + 60] = b"\xff" * 50  # garble page contents
    path.write_bytes(bytes(data))
    db = tmp_path / "x.db"
    result = CliRunner().invoke(cli, ["ingest", "laion", str(db), str(path), "--batch-size", "50"])
    assert "Traceback" not in result.output
    conn = connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert result.exit_code == 1
    assert f"ERROR {path}, row 51: cannot read past row 50" in result.output
    assert conn.execute("SELECT count(*) FROM training_images").fetchone()[0] == 50
    assert conn.execute("SELECT status, rows_read FROM datasets").fetchone() == ("loading", 50)
    # The same rows in a sound file (other bytes, so another datasets row) complete the set exactly.
    rerun = CliRunner().invoke(cli, ["ingest", "laion", str(db), str(good)])
    assert rerun.exit_code == 0, rerun.output
    assert "inserted 50, already present 50" in rerun.output
    assert conn.execute("SELECT count(*) FROM training_images").fetchone()[0] == 100


def test_missing_path_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["ingest", "laion", str(tmp_path / "x.db"), str(tmp_path / "nope.parquet")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(tmp_path / "x.db", tmp_path / "empty")
    assert result.exit_code != 0 and "folder holds no .parquet files" in result.output
