"""vecindex: an on-disk IVF vector index searched with little RAM, plus the notebook's VecDB API."""

from vecindex.format import FORMAT_VERSION, IndexExistsError, IndexFormatError, VecIndexError
from vecindex.ivf import IVFIndex, default_nlist, default_nprobe
from vecindex.vecdb import VecDB

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "IVFIndex",
    "IndexExistsError",
    "IndexFormatError",
    "VecDB",
    "VecIndexError",
    "default_nlist",
    "default_nprobe",
]
