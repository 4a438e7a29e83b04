/* vecindex._csearch: the compiled IVF search kernel (a CPython extension, plain C).
 *
 * One call searches a batch of queries end to end with the GIL released: score the
 * centroids (transposed, so the scores of 8 lists come from one vector multiply-add),
 * pick the nprobe best lists, read each list with pread(2) into a reused buffer (so RSS
 * does not grow with the bytes scanned), score the rows of a buffer into a score block,
 * keep the best in a bounded min-heap, re-rank int8 candidates exactly from the float32
 * rows, and read the k ids. Same results as the numpy path in ivf.py and the numba
 * kernel in _numba_search.py (tests/test_vecindex_kernels.py compares them).
 *
 * Why C and not numba: importing numba/llvmlite costs ~130 MiB of RSS and its dispatch of
 * 28 array arguments costs tens of microseconds a call (docs/vecindex.md, "Kernels").
 * The build is optional (setup.py): without a compiler vecindex falls back to numba or numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The hot loops have a plain C version (vectorized by the compiler for the baseline CPU)
 * and, on x86-64, an AVX2+FMA version written with intrinsics, picked once at import by
 * what the CPU supports: one build runs on any x86-64 machine. */
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma")))
#endif

/* Rows to read at scattered positions (re-rank candidates, ids) that lie at most GAP_BYTES
 * apart share one pread of their span, up to SPAN_BYTES: a syscall costs about as much as
 * copying 4 KiB from the page cache. */
#define GAP_BYTES 4096
#define SPAN_BYTES (64 << 10)
#define MAX_BUF_ROWS 32768
#define BUF_BYTES (512 << 10)

enum { F_INT8 = 1, F_L2 = 2, F_COSINE = 4, F_ALLOWED = 8, F_FINAL = 16 };

static int read_full(int fd, void *buf, size_t nbytes, int64_t offset)
{
    size_t got = 0;
    while (got < nbytes) {
        ssize_t r = pread(fd, (char *)buf + got, nbytes - got, (off_t)(offset + (int64_t)got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return 1;
}

/* (sa, pa) ranks below (sb, pb): a lower score, or an equal score at a later position. */
static inline int worse(float sa, int64_t pa, float sb, int64_t pb)
{
    return sa < sb || (sa == sb && pa > pb);
}

/* Keep the `cap` best (score, position) pairs in a min-heap; returns the new size.
 * Equal scores do not replace: of tied rows the first scanned (lowest position) stays. */
static inline int64_t heap_push(float *hs, int64_t *hp, int64_t n, int64_t cap, float s, int64_t p)
{
    int64_t i;
    if (n < cap) {
        i = n++;
        while (i > 0 && worse(s, p, hs[(i - 1) >> 1], hp[(i - 1) >> 1])) {
            hs[i] = hs[(i - 1) >> 1];
            hp[i] = hp[(i - 1) >> 1];
            i = (i - 1) >> 1;
        }
    } else if (s > hs[0]) {
        i = 0;
        while (2 * i + 1 < n) {
            int64_t c = 2 * i + 1;
            if (c + 1 < n && worse(hs[c + 1], hp[c + 1], hs[c], hp[c]))
                c++;
            if (worse(s, p, hs[c], hp[c]))
                break;
            hs[i] = hs[c];
            hp[i] = hp[c];
            i = c;
        }
    } else {
        return n;
    }
    hs[i] = s;
    hp[i] = p;
    return n;
}

/* out[c] = q . cent_c for nlist centroids stored transposed (d rows of nlist). */
static void score_transposed_c(const float *restrict q, const float *restrict ct, int64_t d,
                               int64_t nlist, float *restrict out)
{
    for (int64_t c = 0; c < nlist; c++)
        out[c] = 0.0f;
    for (int64_t j = 0; j < d; j++) {
        const float qj = q[j];
        const float *restrict row = ct + j * nlist;
        for (int64_t c = 0; c < nlist; c++)
            out[c] += qj * row[c];
    }
}

/* out[r] = qs . codes_r + cst for m int8 rows. */
static void score_i8_c(const float *restrict qs, const int8_t *restrict codes, int64_t m,
                       int64_t d, float cst, float *restrict out)
{
    for (int64_t r = 0; r < m; r++) {
        const int8_t *restrict x = codes + r * d;
        float acc = 0.0f;
        for (int64_t j = 0; j < d; j++)
            acc += qs[j] * (float)x[j];
        out[r] = acc + cst;
    }
}

/* out[r] = q . x_r (ip, cosine) or -|q - x_r|^2 (l2) for m float32 rows. */
static void score_f32_c(const float *restrict q, const float *restrict xs, int64_t m, int64_t d,
                        int l2, float *restrict out)
{
    for (int64_t r = 0; r < m; r++) {
        const float *restrict x = xs + r * d;
        float acc = 0.0f;
        if (l2) {
            for (int64_t j = 0; j < d; j++) {
                float t = x[j] - q[j];
                acc += t * t;
            }
            out[r] = -acc;
        } else {
            for (int64_t j = 0; j < d; j++)
                acc += q[j] * x[j];
            out[r] = acc;
        }
    }
}

#ifdef HAVE_AVX2_PATH
AVX2 static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The lanes of the last, partial group of 8 (d % 8 of them, or all 8 when d % 8 == 0). */
AVX2 static inline __m256i tail_mask(int64_t d)
{
    int64_t r = d & 7;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(r ? (int)r : 8), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2 static void score_transposed_avx2(const float *restrict q, const float *restrict ct, int64_t d,
                                       int64_t nlist, float *restrict out)
{
    int64_t c0 = 0;
    for (; c0 + 32 <= nlist; c0 += 32) {  /* 32 centroids in 4 registers, over all d */
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < d; j++) {
            const float *row = ct + j * nlist + c0;
            __m256 qj = _mm256_set1_ps(q[j]);
            a0 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(row), a0);
            a1 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(row + 8), a1);
            a2 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(row + 16), a2);
            a3 = _mm256_fmadd_ps(qj, _mm256_loadu_ps(row + 24), a3);
        }
        _mm256_storeu_ps(out + c0, a0);
        _mm256_storeu_ps(out + c0 + 8, a1);
        _mm256_storeu_ps(out + c0 + 16, a2);
        _mm256_storeu_ps(out + c0 + 24, a3);
    }
    for (int64_t c = c0; c < nlist; c++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < d; j++)
            acc += q[j] * ct[j * nlist + c];
        out[c] = acc;
    }
}

/* Integer dot products: the query, scaled so its largest |value| is 32767 and rounded to int16
 * (a relative error of ~2e-5, far below the codes' own 1/255), times the int8 codes with
 * vpmaddwd: 16 dimensions in 3 instructions against 6 for int8 -> float32 -> FMA. The int32
 * sums cannot overflow for d <= MAX_I16_DIM (2 * 32767 * 128 per pair of dimensions). Rows are
 * read 16 bytes at a time, so the last group may read up to 15 bytes past a row (the buffer
 * has that slack; they meet zeros in the query). */
#define MAX_I16_DIM 4096

AVX2 static void score_i8_avx2(const float *restrict qs, const int8_t *restrict codes, int64_t m,
                               int64_t d, float cst, float *restrict out)
{
    if (d > MAX_I16_DIM) {
        score_i8_c(qs, codes, m, d, cst, out);
        return;
    }
    const int64_t g = (d + 15) >> 4;
    int16_t qi[MAX_I16_DIM + 16] __attribute__((aligned(32)));
    float mx = 0.0f;
    for (int64_t t = 0; t < d; t++)
        mx = fabsf(qs[t]) > mx ? fabsf(qs[t]) : mx;
    const float scale = mx > 0 ? 32767.0f / mx : 1.0f, inv = 1.0f / scale;
    for (int64_t t = 0; t < d; t++)
        qi[t] = (int16_t)lrintf(qs[t] * scale);
    for (int64_t t = d; t < 16 * g; t++)
        qi[t] = 0;
    for (int64_t r = 0; r < m; r++) {
        const int8_t *x = codes + r * d;
        __m256i acc = _mm256_setzero_si256(), acc2 = _mm256_setzero_si256();
        int64_t t = 0;
        for (; t + 2 <= g; t += 2) {
            __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 16 * t)));
            __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 16 * t + 16)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(v, _mm256_load_si256((const __m256i *)(qi + 16 * t))));
            acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(w, _mm256_load_si256((const __m256i *)(qi + 16 * t + 16))));
        }
        if (t < g) {
            __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 16 * t)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(v, _mm256_load_si256((const __m256i *)(qi + 16 * t))));
        }
        acc = _mm256_add_epi32(acc, acc2);
        __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
        out[r] = (float)_mm_cvtsi128_si32(h) * inv + cst;
    }
}

AVX2 static void score_f32_avx2(const float *restrict q, const float *restrict xs, int64_t m, int64_t d,
                                int l2, float *restrict out)
{
    const int64_t d8 = d & ~(int64_t)7;
    const __m256i mask = tail_mask(d);
    const __m256 qt = _mm256_maskload_ps(q + d8, mask);
    for (int64_t r = 0; r < m; r++) {
        const float *x = xs + r * d;
        __m256 acc = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
        int64_t j = 0;
        if (l2) {
            for (; j + 16 <= d8; j += 16) {
                __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(q + j));
                __m256 u = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), _mm256_loadu_ps(q + j + 8));
                acc = _mm256_fmadd_ps(t, t, acc);
                acc2 = _mm256_fmadd_ps(u, u, acc2);
            }
            for (; j < d8; j += 8) {
                __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(q + j));
                acc = _mm256_fmadd_ps(t, t, acc);
            }
            if (d8 < d) {
                __m256 t = _mm256_sub_ps(_mm256_maskload_ps(x + d8, mask), qt);
                acc = _mm256_fmadd_ps(t, t, acc);
            }
            out[r] = -hsum256(_mm256_add_ps(acc, acc2));
        } else {
            for (; j + 16 <= d8; j += 16) {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(q + j), acc);
                acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 8), _mm256_loadu_ps(q + j + 8), acc2);
            }
            for (; j < d8; j += 8)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(q + j), acc);
            if (d8 < d)
                acc = _mm256_fmadd_ps(_mm256_maskload_ps(x + d8, mask), qt, acc);
            out[r] = hsum256(_mm256_add_ps(acc, acc2));
        }
    }
}
#endif

static void (*score_transposed)(const float *, const float *, int64_t, int64_t, float *) = score_transposed_c;
static void (*score_i8)(const float *, const int8_t *, int64_t, int64_t, float, float *) = score_i8_c;
static void (*score_f32)(const float *, const float *, int64_t, int64_t, int, float *) = score_f32_c;

typedef struct {
    int64_t p, i;
} PosIdx;

static int cmp_posidx(const void *a, const void *b)
{
    int64_t x = ((const PosIdx *)a)->p, y = ((const PosIdx *)b)->p;
    return (x > y) - (x < y);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* First index i of sorted a[0:n] with a[i] >= x. */
static int64_t lower_bound(const int64_t *a, int64_t n, int64_t x)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

typedef struct {
    int fd_scan, fd_vec, fd_sq, fd_ids, flags;
    int64_t d, nlist, nprobe, keep, k, nq, P, ndel, nallowed;
    const int64_t *offsets, *probes, *deleted, *allowed;
    const float *centT, *csq, *Q, *qmin, *qstep;
    float *out_s;
    int64_t *out_p, *out_ids;
} Job;

/* Scratch of one call, freed at its end. */
typedef struct {
    int8_t *buf8;
    float *buff, *sq, *sc, *cs, *rowbuf, *qv, *qs, *hs;
    int64_t *hp, *lists, *cp, *idbuf, *order;
    PosIdx *pi;
    int64_t cap;
} Scratch;

static void scratch_free(Scratch *w)
{
    free(w->buf8); free(w->buff); free(w->sq); free(w->sc); free(w->cs); free(w->rowbuf);
    free(w->qv); free(w->qs); free(w->hs); free(w->hp); free(w->lists); free(w->cp);
    free(w->idbuf); free(w->order); free(w->pi);
}

static int scratch_alloc(Scratch *w, const Job *j)
{
    int int8 = j->flags & F_INT8;
    int64_t rb = int8 ? j->d : 4 * j->d;
    int64_t cap = BUF_BYTES / rb;
    if (cap < 256) cap = 256;
    if (cap > MAX_BUF_ROWS) cap = MAX_BUF_ROWS;
    int64_t hcap = (int8 ? j->keep : j->k);
    if (hcap < j->nprobe) hcap = j->nprobe;
    int64_t nl = j->nprobe > j->P ? j->nprobe : j->P;
    memset(w, 0, sizeof *w);
    w->cap = cap;
    w->buf8 = int8 ? malloc((size_t)(cap * j->d) + 16) : NULL;  /* slack: score_i8_avx2 */
    w->buff = int8 ? NULL : malloc((size_t)(cap * j->d) * sizeof(float));
    w->sq = malloc((size_t)cap * sizeof(float));
    w->sc = malloc((size_t)cap * sizeof(float));
    w->cs = malloc((size_t)(j->nlist > 0 ? j->nlist : 1) * sizeof(float));
    w->rowbuf = malloc(SPAN_BYTES > 4 * j->d ? SPAN_BYTES : (size_t)(4 * j->d));
    w->qv = malloc((size_t)j->d * sizeof(float));
    w->qs = malloc((size_t)j->d * sizeof(float));
    w->hs = malloc((size_t)hcap * sizeof(float));
    w->hp = malloc((size_t)hcap * sizeof(int64_t));
    w->lists = malloc((size_t)(nl > 0 ? nl : 1) * sizeof(int64_t));
    w->cp = malloc((size_t)hcap * sizeof(int64_t));
    w->idbuf = malloc(SPAN_BYTES);
    w->order = malloc((size_t)j->k * sizeof(int64_t));
    w->pi = malloc((size_t)j->k * sizeof(PosIdx));
    if ((int8 ? !w->buf8 : !w->buff) || !w->sq || !w->sc || !w->cs || !w->rowbuf || !w->qv
        || !w->qs || !w->hs || !w->hp || !w->lists || !w->cp || !w->idbuf || !w->order || !w->pi) {
        scratch_free(w);
        return 0;
    }
    return 1;
}

/* The nprobe best lists of query qv, sorted by list number (= file order); returns how many. */
static int64_t probe(const Job *j, Scratch *w, const float *qv)
{
    score_transposed(qv, j->centT, j->d, j->nlist, w->cs);
    int64_t n = 0;
    for (int64_t c = 0; c < j->nlist; c++) {
        float s = w->cs[c];
        if (j->flags & F_L2)
            s = 2 * s - j->csq[c];
        n = heap_push(w->hs, w->hp, n, j->nprobe, s, c);
    }
    memcpy(w->lists, w->hp, (size_t)n * sizeof(int64_t));
    qsort(w->lists, (size_t)n, sizeof(int64_t), cmp_i64);
    return n;
}

/* Search query qi; 0 on success, -1 when a file is shorter than the header says. */
static int search_one(const Job *j, Scratch *w, int64_t qi)
{
    const int64_t d = j->d, k = j->k;
    const int int8 = j->flags & F_INT8, l2 = j->flags & F_L2;
    const float *q = j->Q + qi * d;
    float *qv = w->qv, *qs = w->qs, *hs = w->hs;
    int64_t *hp = w->hp;
    float nrm = 1.0f;
    if (j->flags & F_COSINE) {
        float acc = 0.0f;
        for (int64_t t = 0; t < d; t++)
            acc += q[t] * q[t];
        if (acc > 0)
            nrm = 1.0f / sqrtf(acc);
    }
    float cst = 0.0f;
    for (int64_t t = 0; t < d; t++) {
        qv[t] = q[t] * nrm;
        if (int8) {
            qs[t] = qv[t] * j->qstep[t];
            cst += qv[t] * (j->qmin[t] + 128 * j->qstep[t]);
        }
    }
    int64_t nl;
    if (j->P > 0) {
        nl = j->P;
        memcpy(w->lists, j->probes + qi * j->P, (size_t)nl * sizeof(int64_t));
        qsort(w->lists, (size_t)nl, sizeof(int64_t), cmp_i64);
    } else {
        nl = probe(j, w, qv);
    }
    const int64_t rb = int8 ? d : 4 * d;
    const int64_t heap_cap = int8 ? j->keep : k;
    int64_t n = 0;
    for (int64_t li = 0; li < nl; li++) {
        int64_t lst = w->lists[li];
        if (li > 0 && lst == w->lists[li - 1])
            continue;
        int64_t st = j->offsets[lst], ln = j->offsets[lst + 1] - st;
        /* positions only grow within a list: walk the deleted/allowed sets with a cursor */
        int64_t di = j->ndel ? lower_bound(j->deleted, j->ndel, st) : 0;
        int64_t ai = (j->flags & F_ALLOWED) ? lower_bound(j->allowed, j->nallowed, st) : 0;
        for (int64_t done = 0; done < ln;) {
            int64_t m = ln - done < w->cap ? ln - done : w->cap;
            int64_t p0 = st + done;
            if (int8) {
                if (!read_full(j->fd_scan, w->buf8, (size_t)(m * rb), p0 * rb))
                    return -1;
                if (l2 && !read_full(j->fd_sq, w->sq, (size_t)m * 4, p0 * 4))
                    return -1;
                score_i8(qs, w->buf8, m, d, cst, w->sc);
                if (l2)
                    for (int64_t r = 0; r < m; r++)
                        w->sc[r] = 2 * w->sc[r] - w->sq[r];
            } else {
                if (!read_full(j->fd_scan, w->buff, (size_t)(m * rb), p0 * rb))
                    return -1;
                score_f32(qv, w->buff, m, d, l2, w->sc);
            }
            for (int64_t r = 0; r < m; r++) {
                float s = w->sc[r];
                if (n == heap_cap && !(s > hs[0]))
                    continue;  /* the common case: no better than the worst kept */
                int64_t pos = p0 + r;
                if (j->ndel) {
                    while (di < j->ndel && j->deleted[di] < pos)
                        di++;
                    if (di < j->ndel && j->deleted[di] == pos)
                        continue;
                }
                if (j->flags & F_ALLOWED) {
                    while (ai < j->nallowed && j->allowed[ai] < pos)
                        ai++;
                    if (!(ai < j->nallowed && j->allowed[ai] == pos))
                        continue;
                }
                n = heap_push(hs, hp, n, heap_cap, s, pos);
            }
            done += m;
        }
    }
    if (int8 && n) {
        /* exact re-rank: read the candidates' float32 rows in position order; candidates
         * close together share one read of their span (a syscall costs more than a few KiB) */
        int64_t nc = n, *cp = w->cp;
        memcpy(cp, hp, (size_t)nc * sizeof(int64_t));
        qsort(cp, (size_t)nc, sizeof(int64_t), cmp_i64);
        n = 0;
        const int64_t gap = GAP_BYTES / (4 * d), span_max = SPAN_BYTES / (4 * d);
        for (int64_t a = 0; a < nc;) {
            int64_t b = a + 1;
            while (b < nc && cp[b] - cp[b - 1] <= gap && cp[b] - cp[a] < span_max)
                b++;
            int64_t span = cp[b - 1] - cp[a] + 1;
            if (!read_full(j->fd_vec, w->rowbuf, (size_t)(span * 4 * d), cp[a] * 4 * d))
                return -1;
            for (int64_t t = a; t < b; t++) {
                float s;
                score_f32(qv, w->rowbuf + (cp[t] - cp[a]) * d, 1, d, l2, &s);
                n = heap_push(hs, hp, n, k, s, cp[t]);
            }
            a = b;
        }
    }
    /* best first, ties by position (n <= k: an insertion sort) */
    int64_t *order = w->order;
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    for (int64_t i = 1; i < n; i++) {
        for (int64_t t = i; t > 0; t--) {
            int64_t a = order[t - 1], b = order[t];
            if (hs[a] > hs[b] || (hs[a] == hs[b] && hp[a] < hp[b]))
                break;
            order[t - 1] = b;
            order[t] = a;
        }
    }
    float *os = j->out_s + qi * k;
    int64_t *op = j->out_p + qi * k, *oi = j->out_ids + qi * k;
    for (int64_t i = 0; i < k; i++) {
        if (i < n) {
            os[i] = (j->flags & F_FINAL) && l2 ? -hs[order[i]] : hs[order[i]];
            op[i] = hp[order[i]];
        } else {
            op[i] = -1;
            oi[i] = -1;
        }
    }
    /* ids: positions close together share one read, as in the re-rank */
    PosIdx *pi = w->pi;
    for (int64_t i = 0; i < n; i++) {
        pi[i].p = op[i];
        pi[i].i = i;
    }
    qsort(pi, (size_t)n, sizeof *pi, cmp_posidx);
    for (int64_t a = 0; a < n;) {
        int64_t b = a + 1;
        while (b < n && pi[b].p - pi[b - 1].p <= GAP_BYTES / 8 && pi[b].p - pi[a].p < SPAN_BYTES / 8)
            b++;
        int64_t span = pi[b - 1].p - pi[a].p + 1;
        if (!read_full(j->fd_ids, w->idbuf, (size_t)span * 8, pi[a].p * 8))
            return -1;
        for (int64_t t = a; t < b; t++)
            oi[pi[t].i] = w->idbuf[pi[t].p - pi[a].p];
        a = b;
    }
    return 0;
}

/* Parse-time checks: a buffer must hold exactly `want` bytes. */
static int need(const Py_buffer *b, Py_ssize_t want, const char *name)
{
    if (b->len != want) {
        PyErr_Format(PyExc_ValueError, "search_batch: %s holds %zd bytes, expected %zd", name,
                     b->len, want);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(search_batch_doc,
"search_batch(flags, fd_scan, fd_vec, fd_sq, fd_ids, offsets, centT, csq, qmin, qstep, deleted,\n"
"             probes, nprobe, Q, keep, k, allowed, out_s, out_p, out_ids) -> int\n\n"
"Search each row of Q (nq x d float32) over the main lists; see vecindex/_csearch.c.\n"
"flags: 1 int8 scan, 2 l2, 4 cosine (Q normalized here), 8 allowed positions only,\n"
"16 out_s gets the caller's scores (l2: distances) instead of internal ones (higher is better).\n"
"centT: the centroids transposed (d x nlist); probes (nq x P int64) gives the lists when P > 0.\n"
"Writes out_s, out_p (positions) and out_ids; where fewer than k rows are in scope, position\n"
"and id -1 and out_s untouched. Returns 0, or -1 when a file is shorter than expected.");

static PyObject *search_batch(PyObject *self, PyObject *args)
{
    (void)self;
    Job j;
    Py_buffer b_off, b_ct, b_csq, b_pr, b_Q, b_qmin, b_qstep, b_del, b_all, b_os, b_op, b_oi;
    if (!PyArg_ParseTuple(args, "iiiiiy*y*y*y*y*y*y*Ly*LLy*w*w*w*:search_batch", &j.flags,
                          &j.fd_scan, &j.fd_vec, &j.fd_sq, &j.fd_ids, &b_off, &b_ct, &b_csq,
                          &b_qmin, &b_qstep, &b_del, &b_pr, &j.nprobe, &b_Q, &j.keep, &j.k, &b_all,
                          &b_os, &b_op, &b_oi))
        return NULL;
    Py_buffer *all[] = {&b_off, &b_ct, &b_csq, &b_pr, &b_Q, &b_qmin, &b_qstep, &b_del, &b_all,
                        &b_os, &b_op, &b_oi};
    int rc = -2;
    j.d = b_qmin.len / 4;
    j.nlist = b_off.len / 8 - 1;
    j.nq = j.d > 0 ? b_Q.len / (4 * j.d) : 0;
    j.P = j.nq > 0 ? b_pr.len / (8 * j.nq) : 0;
    j.ndel = b_del.len / 8;
    j.nallowed = b_all.len / 8;
    if (j.d <= 0 || j.nlist < 1 || j.k < 1 || j.keep < j.k || j.nprobe < 1 || j.nprobe > j.nlist) {
        PyErr_SetString(PyExc_ValueError, "search_batch: bad dimension, nlist, k, keep or nprobe");
        goto done;
    }
    if (!need(&b_Q, j.nq * j.d * 4, "Q") || !need(&b_qstep, j.d * 4, "qstep")
        || !need(&b_ct, j.nlist * j.d * 4, "centT") || !need(&b_pr, j.nq * j.P * 8, "probes")
        || !need(&b_os, j.nq * j.k * 4, "out_s") || !need(&b_op, j.nq * j.k * 8, "out_p")
        || !need(&b_oi, j.nq * j.k * 8, "out_ids")
        || ((j.flags & F_L2) && !need(&b_csq, j.nlist * 4, "csq")))
        goto done;
    j.offsets = b_off.buf; j.centT = b_ct.buf; j.csq = b_csq.buf; j.probes = b_pr.buf;
    j.Q = b_Q.buf; j.qmin = b_qmin.buf; j.qstep = b_qstep.buf; j.deleted = b_del.buf;
    j.allowed = b_all.buf; j.out_s = b_os.buf; j.out_p = b_op.buf; j.out_ids = b_oi.buf;
    for (int64_t i = 0; i < j.P * j.nq; i++)
        if (j.probes[i] < 0 || j.probes[i] >= j.nlist) {
            PyErr_SetString(PyExc_ValueError, "search_batch: probe list out of range");
            goto done;
        }
    Scratch w;
    Py_BEGIN_ALLOW_THREADS
    if (scratch_alloc(&w, &j)) {
        rc = 0;
        for (int64_t qi = 0; qi < j.nq && rc == 0; qi++)
            rc = search_one(&j, &w, qi);
        scratch_free(&w);
    }
    Py_END_ALLOW_THREADS
    if (rc == -2)
        PyErr_NoMemory();
done:
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        PyBuffer_Release(all[i]);
    if (rc == -2)
        return NULL;
    return PyLong_FromLong(rc);
}

static PyMethodDef methods[] = {
    {"search_batch", search_batch, METH_VARARGS, search_batch_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vecindex._csearch",
    "The compiled IVF search kernel (C); see vecindex/_csearch.c.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__csearch(void)
{
    PyObject *m = PyModule_Create(&module);
    const char *isa = "c";
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !getenv("VECINDEX_NO_AVX2")) {
        score_transposed = score_transposed_avx2;
        score_i8 = score_i8_avx2;
        score_f32 = score_f32_avx2;
        isa = "avx2";
    }
#endif
    if (m && PyModule_AddStringConstant(m, "ISA", isa) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
