/* The READDIRPLUS fill loop in C: one call per listing piece instead of one ctypes call
 * per entry (hkfs/fuse/glue.py, HKFuse.readdir_fuse_3).
 *
 * A ctypes call costs a few microseconds; a 100k-file `ls -l` makes 100k of them. Here the
 * glue hands over a piece already encoded (hkfs.fuse.glue.Wire: names as one NUL-separated
 * bytes object, the packed struct stats, offsets and fill flags as arrays) and this loop
 * calls libfuse's fuse_fill_dir_t for each entry, without the GIL, until the reply is full.
 *
 * Optional (setup.py, optional=True): without a C compiler the glue loops in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* libfuse 3's fuse_fill_dir_t (fuse.h); the stat is passed by address, off_t is 64-bit */
typedef int (*fill_dir_t)(void *buf, const char *name, const void *stbuf, int64_t off, int flags);

PyDoc_STRVAR(fill_doc,
"fill(filler, buf, names, name_at, stats, stat_size, offsets, flags, start, n) -> int\n\n"
"Call libfuse's filler (an address) for entries start..n-1 of a piece: name i at\n"
"names[name_at[i]:] (NUL-terminated), its struct stat at stats + i * stat_size, its\n"
"offset offsets[i], its fill flags flags[i] (name_at, stats, offsets, flags: addresses of\n"
"int64, struct stat, int64 and int32 arrays of at least n items, kept alive by the\n"
"caller). Returns the index of the first entry the filler refused (n if none).");

static PyObject *fill(PyObject *self, PyObject *args) {
    unsigned long long filler, buf, name_at, stats, offsets, flags;
    Py_buffer names;
    Py_ssize_t stat_size, start, n, i;
    if (!PyArg_ParseTuple(args, "KKy*KKnKKnn", &filler, &buf, &names, &name_at, &stats, &stat_size,
                          &offsets, &flags, &start, &n))
        return NULL;
    if (!filler || !name_at || !stats || !offsets || !flags || stat_size <= 0 || start < 0) {
        PyBuffer_Release(&names);
        PyErr_SetString(PyExc_ValueError, "fill: a null address or a bad size");
        return NULL;
    }
    fill_dir_t f = (fill_dir_t)(uintptr_t)filler;
    const char *base = (const char *)names.buf;
    const int64_t *at = (const int64_t *)(uintptr_t)name_at, *offs = (const int64_t *)(uintptr_t)offsets;
    const int32_t *fl = (const int32_t *)(uintptr_t)flags;
    const char *st = (const char *)(uintptr_t)stats;
    for (i = start; i < n; i++) {
        if (at[i] < 0 || at[i] >= names.len) {
            break;
        }
    }
    if (i < n) {
        PyBuffer_Release(&names);
        PyErr_SetString(PyExc_ValueError, "fill: a name offset outside the names");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = start; i < n; i++) {
        if (f((void *)(uintptr_t)buf, base + at[i], st + i * stat_size, offs[i], fl[i]))
            break;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&names);
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS, fill_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fill", "libfuse's READDIRPLUS fill loop, one call per listing piece.", -1, methods,
};

PyMODINIT_FUNC PyInit__fill(void) { return PyModule_Create(&module); }
