"""Spellbook: what went into AI image generators (LAION-Aesthetics) and what people type into them
(prompt corpora), in one SQLite database explored in Datasette.

The checkout's top-level folders are this package's parts (pyproject maps `spellbook` to the
repository root), in pipeline order:

    ingest/readers  ->  ingest/load  ->  database  <-  queries  <-  plugins + templates
                      text (folding, keywords, samplers) is shared by both sides
    runner/ (diffusers) and embeddings (CLIP) are parts of their own.

This module is also registered as a Datasette plugin (the `datasette` entry point): it implements
no hook, but Datasette finds Spellbook's `templates/` beside it that way.
"""
from importlib import metadata

try:
    __version__ = metadata.version("spellbook")
except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
