"""The FUSE adapter: operations, libfuse glue, kernel caches, the daemon.

Only this package imports mfusepy (lazily: importing the package itself loads no libfuse).
"""
