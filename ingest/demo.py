"""Build the demo database from the real samples bundled in a checkout's data/ folder.

    python -m spellbook.ingest.demo OUT.db [DATA_DIR]

Built into a temporary file and renamed at the end, so a failed build never leaves a half-made demo.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from spellbook.ingest.load import ingest_prompt_files, ingest_training_files

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the checkout's bundled real samples
LAION = DATA_DIR / "laion"
V1_HEAD5_CSV = LAION / "laion2B-en-aesthetic_part00000_head5_PARTIAL.csv"
V1_SCHEMA = LAION / "laion2B-en-aesthetic_SCHEMA_ONLY_0rows.parquet"
V2_SCHEMA = LAION / "improved_aesthetics_6plus_SCHEMA_ONLY_0rows.parquet"
URL_TEXT = LAION / "laion_url_text_10000.parquet"
PROMPT_SAMPLES = [
    "prompts/diffusiondb_sample_metadata_schema.parquet",  # 1,000 real DiffusionDB rows (CC0)
    "prompts/i2p_lowrisk_subset.csv",  # 136 real Lexica prompts from I2P (MIT)
    "image_metadata",  # images carrying A1111 / ComfyUI / InvokeAI / Fooocus / NovelAI metadata (MIT)
]


def laion_rows_as_parquet(out: Path, schema_file: Path = V1_SCHEMA, head5_csv: Path = V1_HEAD5_CSV) -> Path:
    """The five real V1 rows (a CSV) as a parquet file in the exact published schema of schema_file.

    With the V2 schema file, the same real rows come out in the V2 layout (aesthetic ->
    AESTHETIC_SCORE, plus __index_level_0__), which is how the V2 tests get real values.
    """
    schema = pq.read_schema(schema_file).remove_metadata()
    table = pacsv.read_csv(head5_csv)
    columns = {}
    for field in schema:
        source = {"AESTHETIC_SCORE": "aesthetic", "__index_level_0__": None}.get(field.name, field.name)
        if source is None:
            columns[field.name] = pa.array(range(table.num_rows), field.type)
        else:
            columns[field.name] = table.column(source).cast(field.type)
    pq.write_table(pa.table(columns, schema=schema), out)
    return out


def build_demo(out: Path, data_dir: Path = DATA_DIR) -> str:
    out, data_dir = Path(out), Path(data_dir)
    if not (data_dir / "laion").is_dir():
        raise SystemExit(f"{data_dir}: no bundled samples here; the demo is built from a Spellbook checkout's data/ folder")
    partial = out.with_name(out.name + ".building")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    laion = data_dir / "laion"
    v1 = laion_rows_as_parquet(out.with_name("laion2B-en-aesthetic_part00000_head5.parquet"), laion / V1_SCHEMA.name, laion / V1_HEAD5_CSV.name)
    try:
        summary = ingest_training_files(partial, [v1, laion / URL_TEXT.name])
    finally:
        v1.unlink(missing_ok=True)
    prompts = ingest_prompt_files(partial, [data_dir / sample for sample in PROMPT_SAMPLES])
    for part in (summary, prompts):
        if part.failed:
            raise SystemExit(part.report())
    from spellbook.database.connect import connect

    conn = connect(partial)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to serve --immutable
    conn.close()
    os.replace(partial, out)
    return summary.report() + "\n" + prompts.report()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else DATA_DIR / "demo.db")
    print(build_demo(target, Path(sys.argv[2]) if len(sys.argv) > 2 else DATA_DIR))
    print(f"built {target}")
