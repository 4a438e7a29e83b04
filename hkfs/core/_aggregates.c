/* SQLite aggregates for big listings (hkfs.core.aggregates), in C.
 *
 * hkfs_int64s(x, ...): the integer columns of many rows as one BLOB. A view listing's
 * piece reads ~1,000 catalog rows at once (Store.entity_columns_between). As group_concat
 * text, SQLite spent most of the read turning each integer into decimal (19 digits for a
 * time in ns) and numpy parsed it back: ~1.2 ms a piece, the largest part of a 100k-file
 * `ls -l`'s daemon CPU. hkfs_int64s() appends each row's arguments as native int64 to one
 * buffer, handed to Python as a BLOB (row-major: numpy.frombuffer(blob, int64).reshape(-1,
 * nargs)): ~0.3 ms a piece.
 *
 * hkfs_repeated(text): the values that occur more than once, each once, joined by '/'
 * (NULL if none), from values given in order (BINARY collation: an index scan); an error
 * if they are not in order. The namespace's shared names (Store.shared_names) with one
 * comparison per row, where GROUP BY name HAVING count(*) > 1 cost ~0.5 us a row (50 ms
 * at 100k files, on the first listing's critical path).
 *
 * Registered for every connection the process opens afterwards with sqlite3_auto_extension
 * (hkfs.core.aggregates.register): the entry point gets the SQLite API routines, so this
 * library is not linked against libsqlite3. Also a Python module, which gives that entry
 * point's address. Optional (setup.py, optional=True; needs sqlite3ext.h): without it the
 * same values are read as text and with GROUP BY.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

/* A growing buffer in an aggregate's context (SQLite zeroes it) */
typedef struct {
    char *buf;
    sqlite3_int64 len, cap;
} acc_t;

static int grow(acc_t *a, sqlite3_int64 need) {
    if (a->len + need <= a->cap)
        return 1;
    sqlite3_int64 cap = a->cap ? a->cap * 2 : 8192;
    while (cap < a->len + need)
        cap *= 2;
    char *b = (char *)sqlite3_realloc64(a->buf, (sqlite3_uint64)cap);
    if (!b)
        return 0;
    a->buf = b;
    a->cap = cap;
    return 1;
}

/* hand the buffer to SQLite as the result (NULL when empty) */
static void give(sqlite3_context *ctx, acc_t *a, int blob) {
    if (!a || !a->len) {
        if (a)
            sqlite3_free(a->buf);
        sqlite3_result_null(ctx);
    } else if (blob) {
        sqlite3_result_blob64(ctx, a->buf, (sqlite3_uint64)a->len, sqlite3_free);
    } else {
        sqlite3_result_text64(ctx, a->buf, (sqlite3_uint64)a->len, sqlite3_free, SQLITE_UTF8);
    }
    if (a)
        a->buf = NULL;
}

static void int64s_step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    acc_t *a = (acc_t *)sqlite3_aggregate_context(ctx, sizeof(acc_t));
    if (!a || !grow(a, (sqlite3_int64)argc * 8)) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    for (int i = 0; i < argc; i++) {
        int64_t v = sqlite3_value_int64(argv[i]);
        memcpy(a->buf + a->len, &v, 8);
        a->len += 8;
    }
}

static void int64s_final(sqlite3_context *ctx) { give(ctx, (acc_t *)sqlite3_aggregate_context(ctx, 0), 1); }

typedef struct {
    acc_t out;             /* the repeated values, '/' after each */
    acc_t prev;            /* the last value */
    int seen, counted, failed;   /* a value came; the last one is in out already; not in order */
} rep_t;

static void repeated_step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    rep_t *r = (rep_t *)sqlite3_aggregate_context(ctx, sizeof(rep_t));
    if (!r) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    if (r->failed)
        return;
    const unsigned char *v = sqlite3_value_text(argv[0]);
    sqlite3_int64 n = sqlite3_value_bytes(argv[0]);
    if (!v)
        return;
    int cmp = 1;
    if (r->seen) {
        sqlite3_int64 m = n < r->prev.len ? n : r->prev.len;
        cmp = memcmp(v, r->prev.buf, (size_t)m);
        if (!cmp)
            cmp = (n > r->prev.len) - (n < r->prev.len);
    }
    if (cmp < 0) {                      /* not in order: the caller groups instead */
        r->failed = 1;
        return;
    }
    if (cmp == 0) {
        if (!r->counted) {
            if (!grow(&r->out, n + 1)) {
                sqlite3_result_error_nomem(ctx);
                return;
            }
            memcpy(r->out.buf + r->out.len, v, (size_t)n);
            r->out.len += n;
            r->out.buf[r->out.len++] = '/';
            r->counted = 1;
        }
        return;
    }
    r->prev.len = 0;
    if (!grow(&r->prev, n)) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    memcpy(r->prev.buf, v, (size_t)n);
    r->prev.len = n;
    r->seen = 1;
    r->counted = 0;
}

static void repeated_final(sqlite3_context *ctx) {
    rep_t *r = (rep_t *)sqlite3_aggregate_context(ctx, 0);
    if (!r) {
        sqlite3_result_null(ctx);
        return;
    }
    sqlite3_free(r->prev.buf);
    if (r->failed) {
        sqlite3_free(r->out.buf);
        sqlite3_result_error(ctx, "hkfs_repeated: values not in order", -1);
        return;
    }
    if (r->out.len)
        r->out.len--;                   /* the last '/' */
    give(ctx, &r->out, 0);
}

/* sqlite3_auto_extension's entry point: called for each new connection */
static int init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
    (void)err;
    SQLITE_EXTENSION_INIT2(api);
    int rc = sqlite3_create_function_v2(db, "hkfs_int64s", -1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, NULL,
                                        int64s_step, int64s_final, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function_v2(db, "hkfs_repeated", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, NULL,
                                        repeated_step, repeated_final, NULL);
    return rc;
}

static PyObject *entry_point(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)init);
}

static PyMethodDef methods[] = {
    {"entry_point", entry_point, METH_NOARGS,
     "entry_point() -> int\n\nThe address of the sqlite3_auto_extension entry point that registers "
     "hkfs_int64s() and hkfs_repeated()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_aggregates", "SQLite aggregates for big listings: hkfs_int64s(), hkfs_repeated().", -1,
    methods,
};

PyMODINIT_FUNC PyInit__aggregates(void) { return PyModule_Create(&module); }
