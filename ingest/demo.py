"""Build the demo database from the real samples bundled in data/ (python -m ingest.demo OUT.db).

Built into a temporary file and renamed at the end, so a failed build never leaves a half-made demo.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ingest import DATA_DIR
from ingest.load import ingest_prompt_files, ingest_training_files

LAION = DATA_DIR / "laion"
V1_HEAD5_CSV = LAION / "laion2B-en-aesthetic_part00000_head5_PARTIAL.csv"
V1_SCHEMA = LAION / "laion2B-en-aesthetic_SCHEMA_ONLY_0rows.parquet"
V2_SCHEMA = LAION / "improved_aesthetics_6plus_SCHEMA_ONLY_0rows.parquet"
URL_TEXT = LAION / "laion_url_text_10000.parquet"
PROMPTS = [
    DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet",  # 1,000 real DiffusionDB rows (CC0)
    DATA_DIR / "prompts" / "i2p_lowrisk_subset.csv",  # 136 real Lexica prompts from I2P (MIT)
    DATA_DIR / "image_metadata",  # images carrying A1111 / ComfyUI / InvokeAI / Fooocus / NovelAI metadata (MIT)
]


def laion_rows_as_parquet(out: Path, schema_file: Path = V1_SCHEMA) -> Path:
    """The five real V1 rows (a CSV) as a parquet file in the exact published schema of schema_file.

    With the V2 schema file, the same real rows come out in the V2 layout (aesthetic ->
    AESTHETIC_SCORE, plus __index_level_0__), which is how the V2 tests get real values.
    """
    schema = pq.read_schema(schema_file).remove_metadata()
    table = pacsv.read_csv(V1_HEAD5_CSV)
    columns = {}
    for field in schema:
        source = {"AESTHETIC_SCORE": "aesthetic", "__index_level_0__": None}.get(field.name, field.name)
        if source is None:
            columns[field.name] = pa.array(range(table.num_rows), field.type)
        else:
            columns[field.name] = table.column(source).cast(field.type)
    pq.write_table(pa.table(columns, schema=schema), out)
    return out


def build_demo(out: Path) -> str:
    out = Path(out)
    partial = out.with_name(out.name + ".building")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    v1 = laion_rows_as_parquet(out.with_name("laion2B-en-aesthetic_part00000_head5.parquet"))
    try:
        summary = ingest_training_files(partial, [v1, URL_TEXT])
    finally:
        v1.unlink(missing_ok=True)
    prompts = ingest_prompt_files(partial, PROMPTS)
    for part in (summary, prompts):
        if part.failed:
            raise SystemExit(part.report())
    from ingest.db import connect

    conn = connect(partial)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to serve --immutable
    conn.close()
    os.replace(partial, out)
    return summary.report() + "\n" + prompts.report()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else DATA_DIR / "demo.db")
    print(build_demo(target))
    print(f"built {target}")
