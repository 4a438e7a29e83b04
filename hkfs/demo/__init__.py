"""The demo store of `make run` / `hk demo`: the paper's files and a few embeddings."""
