"""vecindex: an on-disk IVF vector index searched by memory map with little RAM."""

__version__ = "0.1.0"
