"""hkfs: files named by hierarchical keywords (Tada, Higuchi, Taniguchi), mounted with FUSE."""

__version__ = "0.1.0"
