"""Embeddings and `.query` bodies: what the mount and `hk query` share. No FUSE."""
