/* SQLite's int64s(x, ...) aggregate: the integer columns of many rows as one BLOB.
 *
 * A view listing's piece reads ~1,000 catalog rows at once (hkfs.core.store,
 * Store.entity_columns_between). As group_concat text, SQLite spends most of the read
 * turning each integer into decimal (19 digits for a time in ns) and numpy parses it back:
 * ~1.2 ms a piece, the largest part of a 100k-file `ls -l`'s daemon CPU. int64s() appends
 * each row's arguments as native int64 to one buffer, handed to Python as a BLOB
 * (row-major: numpy.frombuffer(blob, int64).reshape(-1, nargs)): ~0.3 ms a piece.
 *
 * Registered for every connection the process opens afterwards with sqlite3_auto_extension
 * (hkfs.core.int64s.register): the entry point gets the SQLite API routines, so this
 * library is not linked against libsqlite3. Also a Python module, which gives that entry
 * point's address. Optional (setup.py, optional=True; needs sqlite3ext.h): without it the
 * columns are read as text, with the same values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

typedef struct {
    int64_t *buf;
    sqlite3_int64 n, cap;   /* values in buf, room for */
} acc_t;

static void step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    acc_t *a = (acc_t *)sqlite3_aggregate_context(ctx, sizeof(acc_t));
    if (!a) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    if (a->n + argc > a->cap) {
        sqlite3_int64 cap = a->cap ? a->cap * 2 : 1024 * (sqlite3_int64)argc;
        while (cap < a->n + argc)
            cap *= 2;
        int64_t *b = (int64_t *)sqlite3_realloc64(a->buf, (sqlite3_uint64)cap * sizeof(int64_t));
        if (!b) {
            sqlite3_result_error_nomem(ctx);
            return;
        }
        a->buf = b;
        a->cap = cap;
    }
    for (int i = 0; i < argc; i++)
        a->buf[a->n++] = sqlite3_value_int64(argv[i]);
}

static void final(sqlite3_context *ctx) {
    acc_t *a = (acc_t *)sqlite3_aggregate_context(ctx, 0);
    if (!a || !a->n) {           /* no row: NULL, as group_concat gives */
        if (a)
            sqlite3_free(a->buf);
        sqlite3_result_null(ctx);
        return;
    }
    /* SQLite frees the buffer with the result */
    sqlite3_result_blob64(ctx, a->buf, (sqlite3_uint64)a->n * sizeof(int64_t), sqlite3_free);
    a->buf = NULL;
}

/* sqlite3_auto_extension's entry point: called for each new connection */
static int init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
    (void)err;
    SQLITE_EXTENSION_INIT2(api);
    return sqlite3_create_function_v2(db, "hkfs_int64s", -1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, NULL,
                                      step, final, NULL);
}

static PyObject *entry_point(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)init);
}

static PyMethodDef methods[] = {
    {"entry_point", entry_point, METH_NOARGS,
     "entry_point() -> int\n\nThe address of the sqlite3_auto_extension entry point that registers hkfs_int64s()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_int64s", "SQLite's hkfs_int64s() aggregate: integer columns as one BLOB.", -1, methods,
};

PyMODINIT_FUNC PyInit__int64s(void) { return PyModule_Create(&module); }
