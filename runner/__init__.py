"""The diffusion runner: regenerate an indexed prompt with its own settings (diffusers).

`regenerate.regenerate()` is the library call behind `spellbook regenerate` and the worker of
`spellbook serve --enable-runner`; docs/runner.md describes the rules (models by A1111 hash, the
sampler table, prompt syntax, seeds) and the runner's own database, DB.runner.db. Nothing here
imports Datasette, and torch/diffusers are imported only inside the functions that run a model.
"""
