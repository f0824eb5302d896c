"""Text helpers shared by the write and the read side: folding as the index folds, FTS queries,
style keywords and artist names, sampler names, and safe markup. Pure functions, no database."""
