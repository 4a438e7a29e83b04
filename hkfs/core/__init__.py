"""The pure core: the naming model, the catalog and the store. Knows nothing of FUSE or click."""
