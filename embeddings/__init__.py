"""Embeddings: CLIP models behind a registry, the vector store beside a database, the index that
searches it, and the image fetcher that feeds it. Nothing here imports Datasette; torch is
imported only where a model is loaded."""
