"""The read side: read-only queries behind the pages, the reports and the benchmarks.

Nothing here writes, and nothing here imports the writer (spellbook.ingest)."""
