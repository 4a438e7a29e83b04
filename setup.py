"""The optional C parts: vecindex's search kernel, hkfs's READDIRPLUS fill loop and its
SQLite aggregates for big listings (everything else is in pyproject.toml).

`optional=True`: on a machine without a C compiler or Python headers their build fails
with a warning and the install goes on; vecindex then searches with numba (extra `fast`)
or numpy (docs/vecindex.md, "Kernels"), hkfs.fuse.glue fills listings from Python, and
hkfs.core.store reads a listing's columns as text (hkfs/core/_aggregates.c also needs sqlite3ext.h).
"""

from setuptools import Extension, setup

# The reassociation flags let gcc vectorize the dot-product sums (as numpy's BLAS does);
# no -ffast-math: inf/nan keep their meaning. The AVX2 clone is chosen at run time.
# -pthread: a batch search runs its threads inside the kernel (pthreads; libc holds them on
# recent glibc, older ones need the flag).
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-std=c11", "-Wall", "-pthread"]

setup(ext_modules=[Extension("vecindex._csearch", ["vecindex/_csearch.c"], optional=True,
                             extra_compile_args=FLAGS, extra_link_args=["-pthread"]),
                   Extension("hkfs.fuse._fill", ["hkfs/fuse/_fill.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11", "-Wall"]),
                   Extension("hkfs.core._aggregates", ["hkfs/core/_aggregates.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11", "-Wall"])])
