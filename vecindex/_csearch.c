/* vecindex._csearch: the compiled IVF search kernel (a CPython extension, plain C).
 *
 * One call searches a batch of queries end to end with the GIL released, on as many threads as
 * asked: score the centroids (in panels, so the scores of 8 lists come from one vector
 * multiply-add), pick the nprobe best lists, read each probed list once per batch with pread(2)
 * into a reused buffer (so RSS does not grow with the bytes scanned) and score it for every
 * query probing it (list-major, see "The batch engine"), keep each query's best in a bounded
 * candidate buffer (offer_rows), re-rank int8 candidates exactly from the float32 rows (list by
 * list for a batch), and read the k ids. Same results as the numpy path in ivf.py and the numba
 * kernel in _numba_search.py (tests/test_vecindex_kernels.py compares them).
 *
 * Why C and not numba: importing numba/llvmlite costs ~130 MiB of RSS and its dispatch of
 * 28 array arguments costs tens of microseconds a call (docs/vecindex.md, "Kernels").
 * The build is optional (setup.py): without a compiler vecindex falls back to numba or numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
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
#define MAX_THREADS 64   /* threads of one call */
#define MAX_ROUND 4096   /* queries of one round (see the batch engine) */
#define SPLIT_UNITS 8    /* a block's queries split so no unit costs over 1/8 of a thread's share */

/* Build with -DVX_PROF for where a threaded batch spends its time (scripts/profile_vecindex_threads.py):
 * per thread, ns inside items, spinning and asleep between phases; the caller's serial planning
 * and its wait at each phase's end; per phase kind the caller's wall time. prof() returns and
 * clears the counters. Off by default: no clock reads in the normal build. */
#ifdef VX_PROF
#include <time.h>
enum { PK_PREPARE, PK_SCAN, PK_RERANK, PK_WRITE, PK_FINISH, PK_COUNT };
enum { PC_BUSY, PC_ITEMS, PC_SPIN, PC_SLEEP, PC_WAKES, PC_PREAD, PC_PREADS, PC_ENTER, PC_CUT, PC_SCANPREAD, PC_UNITS, PC_SCORE, PC_OFFER, PC_CUTNS, PC_LATE, PC_COUNT };
static _Atomic long long prof_open, prof_late[PK_COUNT];  /* when the current phase opened */
static _Thread_local int prof_tid, prof_pk;
static _Atomic long long prof_thr[MAX_THREADS][16], prof_tbusy[MAX_THREADS][16];  /* a row per thread: 128 bytes, no shared line */
static _Atomic long long prof_phase[PK_COUNT], prof_tailspin[PK_COUNT], prof_tailsleep[PK_COUNT], prof_phases[PK_COUNT];
static _Atomic long long prof_serial, prof_call, prof_calls, prof_start;
static inline long long prof_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}
#define PROF(...) __VA_ARGS__
#define PROF_ADD(var, v) atomic_fetch_add_explicit(&(var), (v), memory_order_relaxed)
#else
#define PROF(...)
#define PROF_ADD(var, v)
#endif

enum { F_INT8 = 1, F_L2 = 2, F_COSINE = 4, F_ALLOWED = 8, F_FINAL = 16 };

static int read_full(int fd, void *buf, size_t nbytes, int64_t offset)
{
    size_t got = 0;
    PROF(const long long t0 = prof_ns(); PROF_ADD(prof_thr[prof_tid][PC_PREADS], 1);)
    while (got < nbytes) {
        ssize_t r = pread(fd, (char *)buf + got, nbytes - got, (off_t)(offset + (int64_t)got));
        PROF(PROF_ADD(prof_thr[prof_tid][PC_PREAD], prof_ns() - t0);
             if (prof_pk == PK_SCAN) PROF_ADD(prof_thr[prof_tid][PC_SCANPREAD], prof_ns() - t0);)
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

/* Keep the `cap` best (score, position) pairs in a min-heap; returns the new size. The order is
 * total (a higher score, then a lower position), so the kept set does not depend on the order of
 * the offers (the probe's lists, the re-rank's k best). */
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
    } else if (worse(hs[0], hp[0], s, p)) {
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

/* (sa, pa) ranks above (sb, pb): the converse of worse. */
static inline int better(float sa, int64_t pa, float sb, int64_t pb)
{
    return sa > sb || (sa == sb && pa < pb);
}

/* Put the `cap` best of the n > cap pairs (s, p) into s[0:cap], the cap-th best at cap - 1
 * (quickselect, Hoare partition; the order is total, as in heap_push). A query's scan keeps its
 * candidates in a buffer of 2 cap pairs cut back to the cap best when full (offer_rows): cheaper
 * than pushing each entrant into a heap, whose sift-down mispredicts a branch a level. */
static void select_best(float *s, int64_t *p, int64_t n, int64_t cap)
{
    int64_t lo = 0, hi = n - 1;
    const int64_t t = cap - 1;
    while (lo < hi) {
        int64_t mid = lo + ((hi - lo) >> 1);
        /* median of three as the pivot */
        int64_t a = lo, b = mid, c = hi, m;
        if (better(s[a], p[a], s[b], p[b]))
            m = better(s[b], p[b], s[c], p[c]) ? b : better(s[a], p[a], s[c], p[c]) ? c : a;
        else
            m = better(s[a], p[a], s[c], p[c]) ? a : better(s[b], p[b], s[c], p[c]) ? c : b;
        const float ps = s[m];
        const int64_t pp = p[m];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (better(s[i], p[i], ps, pp))
                i++;
            while (better(ps, pp, s[j], p[j]))
                j--;
            if (i <= j) {
                float ts = s[i];
                int64_t tq = p[i];
                s[i] = s[j]; p[i] = p[j];
                s[j] = ts; p[j] = tq;
                i++;
                j--;
            }
        }
        if (t <= j)
            hi = j;
        else if (t >= i)
            lo = i;
        else
            break;
    }
}

/* Add (sc, p), which beats the threshold (*ts, *tp), to a buffer of *n < 2 cap candidates; a full
 * buffer is cut back to its cap best, whose worst becomes the threshold if it ranks higher.
 * Returns 1 when the threshold rose. */
static inline int enter(float *hs, int64_t *hp, int64_t *n, int64_t cap, float sc, int64_t p, float *ts,
                        int64_t *tp)
{
    hs[*n] = sc;
    hp[*n] = p;
    PROF(PROF_ADD(prof_thr[prof_tid][PC_ENTER], 1);)
    if (++*n < 2 * cap)
        return 0;
    PROF(PROF_ADD(prof_thr[prof_tid][PC_CUT], 1); const long long c0 = prof_ns();)
    select_best(hs, hp, *n, cap);
    PROF(PROF_ADD(prof_thr[prof_tid][PC_CUTNS], prof_ns() - c0);)
    *n = cap;
    if (!better(hs[cap - 1], hp[cap - 1], *ts, *tp))
        return 0;
    *ts = hs[cap - 1];
    *tp = hp[cap - 1];
    return 1;
}

/* The centroids are stored in panels of PANEL: panel p holds, for each dimension j, the j-th
 * values of centroids p * PANEL .. p * PANEL + PANEL - 1 (zeros past nlist), so scoring a panel
 * reads one contiguous d x PANEL block and keeps PANEL sums in registers (8 AVX2 accumulators:
 * enough independent FMAs to keep both FMA units busy). ivf.py builds them (_c_const). */
#define PANEL 64

static int64_t panels(int64_t nlist)
{
    return (nlist + PANEL - 1) / PANEL;
}

/* out[c] = q . cent_c for the nlist centroids in panels. */
static void score_panels_c(const float *restrict q, const float *restrict cp, int64_t d, int64_t nlist,
                           float *restrict out)
{
    for (int64_t p = 0; p < panels(nlist); p++) {
        float acc[PANEL] = {0};
        const float *restrict blk = cp + p * d * PANEL;
        for (int64_t j = 0; j < d; j++)
            for (int e = 0; e < PANEL; e++)
                acc[e] += q[j] * blk[j * PANEL + e];
        int64_t m = nlist - p * PANEL < PANEL ? nlist - p * PANEL : PANEL;
        memcpy(out + p * PANEL, acc, (size_t)m * sizeof(float));
    }
}

/* A query prepared once for the int8 scan: qs = qv * step per dimension (the portable loop),
 * the same scaled to int16 with the inverse scale (the AVX2 loop, see score_i8_avx2), and the
 * constant term cst = qv . (min + 128 step). */
typedef struct {
    const float *qs;
    const int16_t *qi;
    float inv, cst;
} QI8;

/* out[r] = qs . codes_r + cst for m int8 rows. */
static void score_i8_c(const QI8 *q, const int8_t *restrict codes, int64_t m, int64_t d,
                       float *restrict out)
{
    const float *restrict qs = q->qs;
    for (int64_t r = 0; r < m; r++) {
        const int8_t *restrict x = codes + r * d;
        float acc = 0.0f;
        for (int64_t j = 0; j < d; j++)
            acc += qs[j] * (float)x[j];
        out[r] = acc + q->cst;
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

AVX2 static void score_panels_avx2(const float *restrict q, const float *restrict cp, int64_t d,
                                  int64_t nlist, float *restrict out)
{
    for (int64_t p = 0; p < panels(nlist); p++) {
        __m256 a[PANEL / 8];
        for (int e = 0; e < PANEL / 8; e++)
            a[e] = _mm256_setzero_ps();
        const float *blk = cp + p * d * PANEL;
        for (int64_t j = 0; j < d; j++) {
            __m256 qj = _mm256_set1_ps(q[j]);
            for (int e = 0; e < PANEL / 8; e++)
                a[e] = _mm256_fmadd_ps(qj, _mm256_loadu_ps(blk + j * PANEL + 8 * e), a[e]);
        }
        int64_t m = nlist - p * PANEL;
        if (m >= PANEL) {
            for (int e = 0; e < PANEL / 8; e++)
                _mm256_storeu_ps(out + p * PANEL + 8 * e, a[e]);
        } else {
            float tmp[PANEL];
            for (int e = 0; e < PANEL / 8; e++)
                _mm256_storeu_ps(tmp + 8 * e, a[e]);
            memcpy(out + p * PANEL, tmp, (size_t)m * sizeof(float));
        }
    }
}

/* The same for two queries in one pass over the panels: half a panel (32 centroids) at a time,
 * 4 accumulators per query, each panel load used by both; a batch reads the panels half as often
 * (GloVe's 2048 x 50 are 400 KiB: read from L2 once per query they bound this step). Each score
 * is the same sum in the same order as score_panels_avx2's, so the same bits. */
AVX2 static void score_panels_avx2_x2(const float *restrict qa, const float *restrict qb,
                                     const float *restrict cp, int64_t d, int64_t nlist,
                                     float *restrict outa, float *restrict outb)
{
    for (int64_t p = 0; p < panels(nlist); p++) {
        const float *blk = cp + p * d * PANEL;
        const int64_t m = nlist - p * PANEL;
        for (int h = 0; h < PANEL; h += PANEL / 2) {
            __m256 a[PANEL / 16], b[PANEL / 16];
            for (int e = 0; e < PANEL / 16; e++)
                a[e] = b[e] = _mm256_setzero_ps();
            for (int64_t j = 0; j < d; j++) {
                const __m256 x = _mm256_set1_ps(qa[j]), y = _mm256_set1_ps(qb[j]);
                for (int e = 0; e < PANEL / 16; e++) {
                    const __m256 v = _mm256_loadu_ps(blk + j * PANEL + h + 8 * e);
                    a[e] = _mm256_fmadd_ps(x, v, a[e]);
                    b[e] = _mm256_fmadd_ps(y, v, b[e]);
                }
            }
            float ta[PANEL / 2], tb[PANEL / 2];
            for (int e = 0; e < PANEL / 16; e++) {
                _mm256_storeu_ps(ta + 8 * e, a[e]);
                _mm256_storeu_ps(tb + 8 * e, b[e]);
            }
            const int64_t keep = m - h >= PANEL / 2 ? PANEL / 2 : m - h;
            if (keep > 0) {
                memcpy(outa + p * PANEL + h, ta, (size_t)keep * sizeof(float));
                memcpy(outb + p * PANEL + h, tb, (size_t)keep * sizeof(float));
            }
        }
    }
}

/* Integer dot products: the query, scaled so its largest |value| is 32767 and rounded to int16
 * (a relative error of ~2e-5, far below the codes' own 1/255; done once per query by
 * prepare_query), times the int8 codes with vpmaddwd: 16 dimensions in 3 instructions against 6
 * for int8 -> float32 -> FMA. The int32 sums cannot overflow for d <= MAX_I16_DIM
 * (2 * 32767 * 128 per pair of dimensions). Rows are read 16 bytes at a time, so the last group
 * may read up to 15 bytes past a row (the buffer has that slack; they meet zeros in the query). */
#define MAX_I16_DIM 4096

AVX2 static inline int32_t hsum_epi32(__m256i acc)
{
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(h);
}

#define LOAD16(p) _mm256_loadu_si256((const __m256i *)(p))

/* The 4 horizontal sums of a[0..3], as the lanes of one vector. */
AVX2 static inline __m128i hsum4_epi32(const __m256i *a)
{
    __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* The 8 horizontal sums of a[0..7], as lanes 0..7 of one vector. */
AVX2 static inline __m256i hsum8_epi32(const __m256i *a)
{
    __m256i s01 = _mm256_hadd_epi32(a[0], a[1]), s23 = _mm256_hadd_epi32(a[2], a[3]);
    __m256i s45 = _mm256_hadd_epi32(a[4], a[5]), s67 = _mm256_hadd_epi32(a[6], a[7]);
    __m256i s03 = _mm256_hadd_epi32(s01, s23), s47 = _mm256_hadd_epi32(s45, s67);
    /* s03 = [rows 0-3 of the low halves | rows 0-3 of the high halves], s47 likewise */
    return _mm256_add_epi32(_mm256_permute2x128_si256(s03, s47, 0x20),
                            _mm256_permute2x128_si256(s03, s47, 0x31));
}
#define CODES16(x, t) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((x) + 16 * (t))))

AVX2 static void score_i8_avx2(const QI8 *q, const int8_t *restrict codes, int64_t m, int64_t d,
                               float *restrict out)
{
    if (d > MAX_I16_DIM) {
        score_i8_c(q, codes, m, d, out);
        return;
    }
    const int64_t g = (d + 15) >> 4;
    const int16_t *qi = q->qi;
    int64_t r = 0;
    /* 8 rows a step: their 8 integer sums are reduced together (a few instructions for all 8,
     * against ~6 for each row alone); exact integer sums, then the same float steps as row by row
     * (multiply, then add: no FMA), so the same scores */
    const __m256 inv8 = _mm256_set1_ps(q->inv), cst8 = _mm256_set1_ps(q->cst);
    for (; r + 8 <= m; r += 8) {
        __m256i a[8];
        for (int e = 0; e < 8; e++)
            a[e] = _mm256_setzero_si256();
        for (int64_t t = 0; t < g; t++) {
            const __m256i w = LOAD16(qi + 16 * t);
            for (int e = 0; e < 8; e++)
                a[e] = _mm256_add_epi32(a[e], _mm256_madd_epi16(CODES16(codes + (r + e) * d, t), w));
        }
        __m256i s = hsum8_epi32(a);
        _mm256_storeu_ps(out + r, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), inv8), cst8));
    }
    for (; r < m; r++) {
        const int8_t *x = codes + r * d;
        __m256i acc = _mm256_setzero_si256(), acc2 = _mm256_setzero_si256();
        int64_t t = 0;
        for (; t + 2 <= g; t += 2) {
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(CODES16(x, t), LOAD16(qi + 16 * t)));
            acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(CODES16(x, t + 1), LOAD16(qi + 16 * t + 16)));
        }
        if (t < g)
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(CODES16(x, t), LOAD16(qi + 16 * t)));
        out[r] = (float)hsum_epi32(_mm256_add_epi32(acc, acc2)) * q->inv + q->cst;
    }
}

/* The same for two queries in one pass over the rows: each group of 16 codes is widened once
 * and multiplied with both queries (the batch path scores a list block for every query that
 * probes it, so the widening and the loads are shared). Same sums as score_i8_avx2. */
AVX2 static void score_i8_avx2_x2(const QI8 *qa, const QI8 *qb, const int8_t *restrict codes, int64_t m,
                                  int64_t d, float *restrict outa, float *restrict outb)
{
    if (d > MAX_I16_DIM) {
        score_i8_c(qa, codes, m, d, outa);
        score_i8_c(qb, codes, m, d, outb);
        return;
    }
    const int64_t g = (d + 15) >> 4;
    const int16_t *a = qa->qi, *b = qb->qi;
    int64_t r = 0;
    /* 4 rows a step for both queries (8 accumulators), reduced 4 at a time as in score_i8_avx2 */
    const __m128 ia = _mm_set1_ps(qa->inv), ca = _mm_set1_ps(qa->cst);
    const __m128 ib = _mm_set1_ps(qb->inv), cb = _mm_set1_ps(qb->cst);
    for (; r + 4 <= m; r += 4) {
        __m256i sa[4], sb[4];
        for (int e = 0; e < 4; e++)
            sa[e] = sb[e] = _mm256_setzero_si256();
        for (int64_t t = 0; t < g; t++) {
            const __m256i wa = LOAD16(a + 16 * t), wb = LOAD16(b + 16 * t);
            for (int e = 0; e < 4; e++) {
                __m256i v = CODES16(codes + (r + e) * d, t);
                sa[e] = _mm256_add_epi32(sa[e], _mm256_madd_epi16(v, wa));
                sb[e] = _mm256_add_epi32(sb[e], _mm256_madd_epi16(v, wb));
            }
        }
        _mm_storeu_ps(outa + r, _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(hsum4_epi32(sa)), ia), ca));
        _mm_storeu_ps(outb + r, _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(hsum4_epi32(sb)), ib), cb));
    }
    for (; r < m; r++) {
        const int8_t *x = codes + r * d;
        __m256i sa = _mm256_setzero_si256(), sb = _mm256_setzero_si256();
        __m256i sa2 = _mm256_setzero_si256(), sb2 = _mm256_setzero_si256();
        int64_t t = 0;
        for (; t + 2 <= g; t += 2) {
            __m256i v = CODES16(x, t), w = CODES16(x, t + 1);
            sa = _mm256_add_epi32(sa, _mm256_madd_epi16(v, LOAD16(a + 16 * t)));
            sb = _mm256_add_epi32(sb, _mm256_madd_epi16(v, LOAD16(b + 16 * t)));
            sa2 = _mm256_add_epi32(sa2, _mm256_madd_epi16(w, LOAD16(a + 16 * t + 16)));
            sb2 = _mm256_add_epi32(sb2, _mm256_madd_epi16(w, LOAD16(b + 16 * t + 16)));
        }
        if (t < g) {
            __m256i v = CODES16(x, t);
            sa = _mm256_add_epi32(sa, _mm256_madd_epi16(v, LOAD16(a + 16 * t)));
            sb = _mm256_add_epi32(sb, _mm256_madd_epi16(v, LOAD16(b + 16 * t)));
        }
        outa[r] = (float)hsum_epi32(_mm256_add_epi32(sa, sa2)) * qa->inv + qa->cst;
        outb[r] = (float)hsum_epi32(_mm256_add_epi32(sb, sb2)) * qb->inv + qb->cst;
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

static void score_i8_x2_c(const QI8 *qa, const QI8 *qb, const int8_t *codes, int64_t m, int64_t d,
                          float *outa, float *outb)
{
    score_i8_c(qa, codes, m, d, outa);
    score_i8_c(qb, codes, m, d, outb);
}

static void score_panels_x2_c(const float *qa, const float *qb, const float *cp, int64_t d, int64_t nlist,
                              float *outa, float *outb)
{
    score_panels_c(qa, cp, d, nlist, outa);
    score_panels_c(qb, cp, d, nlist, outb);
}

static void (*score_panels)(const float *, const float *, int64_t, int64_t, float *) = score_panels_c;
static void (*score_panels_x2)(const float *, const float *, const float *, int64_t, int64_t, float *,
                               float *) = score_panels_x2_c;
static void (*score_i8)(const QI8 *, const int8_t *, int64_t, int64_t, float *) = score_i8_c;
static void (*score_i8_x2)(const QI8 *, const QI8 *, const int8_t *, int64_t, int64_t, float *,
                           float *) = score_i8_x2_c;
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

/* Sort n int64 ascending: insertion sort for the few items of one query (lists, candidates),
 * qsort beyond. */
static void sort_i64(int64_t *a, int64_t n)
{
    if (n > 128) {
        qsort(a, (size_t)n, sizeof(int64_t), cmp_i64);
        return;
    }
    for (int64_t i = 1; i < n; i++) {
        int64_t v = a[i], t = i;
        for (; t > 0 && a[t - 1] > v; t--)
            a[t] = a[t - 1];
        a[t] = v;
    }
}

static void sort_posidx(PosIdx *a, int64_t n)
{
    if (n > 64) {
        qsort(a, (size_t)n, sizeof(PosIdx), cmp_posidx);
        return;
    }
    for (int64_t i = 1; i < n; i++) {
        PosIdx v = a[i];
        int64_t t = i;
        for (; t > 0 && a[t - 1].p > v.p; t--)
            a[t] = a[t - 1];
        a[t] = v;
    }
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

/* ------------------------------------------------------------------------------------------
 * The batch engine. A call searches its queries in rounds of at most `R` queries; a round has
 * three phases, each shared by the call's threads (the caller's own thread is one of them):
 *   A. per query: normalize, prepare the int8 query, score the centroids, pick its lists;
 *   B. per block of a probed list (list-major): read the block once, score it for every query
 *      of the round that probes the list, and keep each query's best in that thread's buffer;
 *   C. per query: merge the threads' buffers, re-rank int8 candidates exactly, read the ids
 *      (with several int8 queries: the merge runs in B, the re-rank list by list, see "The
 *      round's re-rank"). The phases run on the call's team of threads (see "The team").
 * Reading a list once per round instead of once per query cuts the copies from the page cache
 * (on clustered data the queries of a batch share most of their lists), and the block stays in
 * cache while every query scores it. Candidates are ordered by (score, position) totally, so the kept set does
 * not depend on the order in which blocks are scanned: the results are those of a query alone.
 * ------------------------------------------------------------------------------------------ */

/* A block of a list to scan: rows p0 .. p0 + m, for queries lq[q0 .. q0 + nq] of the round. */
typedef struct {
    int64_t p0, m, cost, q0, nq;
} Unit;

static int cmp_unit_cost(const void *a, const void *b)
{
    int64_t x = ((const Unit *)a)->cost, y = ((const Unit *)b)->cost;
    return (x < y) - (x > y);  /* the costliest first: dynamic assignment then balances */
}

/* A growable scratch buffer: kept between calls (see pool_get), so a small search allocates nothing. */
typedef struct {
    void *p;
    size_t n;
} Buf;

static void *grow(Buf *b, size_t want)
{
    if (want > b->n) {
        void *q = malloc(want ? want : 1);
        if (!q)
            return NULL;
        free(b->p);
        b->p = q;
        b->n = want;
    }
    return b->p;
}

/* One thread's scratch. */
enum { S_BLOCK, S_SQ, S_SC, S_SC2, S_CS, S_ROW, S_PHS, S_PHP, S_MS, S_MP, S_CP, S_ID, S_ORD, S_PI, S_OP,
       S_HEAPS, S_HEAPP, S_HEAPN, S_COUNT };
/* The round's shared arrays (held by the calling thread's scratch set). */
enum { R_QV, R_QS, R_QI, R_QP, R_PL, R_PN, R_LCNT, R_LSTART, R_LDIST, R_LQ, R_UNITS, R_QT,
       R_CPOS, R_CN, R_CLIST, R_CXS, R_CENT, R_RL, R_COUNT };
#define NBUF ((int)S_COUNT > (int)R_COUNT ? (int)S_COUNT : (int)R_COUNT)
enum { FD_SCAN, FD_VEC, FD_SQ, FD_IDS, FD_COUNT };
typedef struct {
    Buf b[NBUF];  /* a thread's (S_*), or the round's shared arrays (R_*) */
    int fd[FD_COUNT]; /* the files this thread reads, for the call (see own_files) */
    int own;          /* fd[] were opened for this thread (closed at the call's end) */
} Scratch;


/* Kept scratch sets: one per thread of a call of MAX_THREADS plus the round's shared set, so a
 * call with many threads reuses its buffers on the next call instead of reallocating them. */
#define POOL_MAX (MAX_THREADS + 1)
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static Scratch *pool[POOL_MAX];
static int pool_n;

static long pool_made;  /* scratch sets ever allocated (scratch_sets_made(): the tests' witness of reuse) */

static Scratch *pool_get(void)
{
    Scratch *w = NULL;
    pthread_mutex_lock(&pool_mu);
    if (pool_n > 0)
        w = pool[--pool_n];
    else if ((w = calloc(1, sizeof(Scratch))))
        pool_made++;
    pthread_mutex_unlock(&pool_mu);
    return w;
}

static void pool_put(Scratch *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&pool_mu);
    if (pool_n < POOL_MAX) {
        pool[pool_n++] = w;
        w = NULL;
    }
    pthread_mutex_unlock(&pool_mu);
    if (w) {
        for (int i = 0; i < NBUF; i++)
            free(w->b[i].p);
        free(w);
    }
}

/* What the threads share per query during the scan, one cache line each: the threads update
 * the thresholds and counters of different queries at once, and queries sharing a line made
 * every such update a transfer of the line between the cores. */
typedef struct {
    _Alignas(64) _Atomic float thr; /* a score the query's hcap best beat or tie */
    atomic_long rem;                /* units still to scan; the thread ending its last merges it */
} QSync;

typedef struct Job {
    /* the call */
    int fd_scan, fd_vec, fd_sq, fd_ids, flags, nthreads;
    int64_t d, dpad, nlist, nprobe, keep, k, nq, P, ndel, nallowed, hcap, cap, R;
    const int64_t *offsets, *probes, *deleted, *allowed;
    const float *cpan, *csq, *Q, *qmin, *qstep;
    float *out_s;
    int64_t *out_p, *out_ids;
    /* the round */
    int64_t q0, nr, nunits, work;
    float *qv, *qs;     /* nr x d: normalized queries, and times the int8 step */
    int16_t *qi;        /* nr x dpad: the int16 queries of the AVX2 int8 scan */
    float *qp;          /* nr x 2: inverse int16 scale, constant term */
    int64_t *plist, *pn; /* nr x nprobe: each query's lists (sorted, distinct); how many */
    int64_t *lcnt, *lstart, *ldist, *lq; /* per probed list: queries, start in lq; the lists */
    Unit *units;
    int64_t nd;         /* distinct probed lists: ldist[0:nd] */
    /* the round's re-rank (int8, several queries; see "The round's re-rank") */
    int64_t *cpos, *cn; /* nr x hcap: each query's candidates (positions); how many */
    int32_t *clist;     /* nr x hcap: the list of each */
    float *cxs;         /* nr x hcap: their exact scores */
    PosIdx *cent;       /* the round's candidates grouped by list: (position, query x hcap + slot) */
    int64_t *rl, nrl;   /* lists holding candidates, the most candidates first */
    QSync *qsync;       /* nr, 64-byte aligned */
    int fuse;           /* the round's re-rank runs (int8, several queries) */
    Scratch **ws;       /* one per thread; candidate buffers live in each */
    atomic_int rc;
    /* the team (see run_phase): the phase's generation and next item in one word, so a helper
     * claims an item of the phase it looked at or none; items completed; the phases' work */
    _Atomic uint64_t claim;
    atomic_long done;
    struct Phase {
        void (*fn)(struct Job *, Scratch *, int64_t);
        int64_t n;
    } phase[4];
    int helpers, pooled;
    atomic_int stop;
    uint32_t gen;
    pthread_mutex_t mu;
    pthread_cond_t go, fin;
} Job;

/* Sizes of one thread's scratch; 0 when out of memory. */
static int scratch_ready(const Job *j, Scratch *w)
{
    const int int8 = j->flags & F_INT8;
    const int64_t d = j->d, cap = j->cap, hc = j->hcap, pc = 2 * j->nprobe > hc ? 2 * j->nprobe : hc;
    size_t want[S_COUNT] = {
        [S_BLOCK] = int8 ? (size_t)(cap * d) + 16 : (size_t)(cap * d) * sizeof(float),  /* slack: score_i8_avx2 */
        [S_SQ] = (size_t)cap * sizeof(float), [S_SC] = (size_t)cap * sizeof(float),
        [S_SC2] = (size_t)cap * sizeof(float), [S_CS] = (size_t)(2 * j->nlist) * sizeof(float),
        [S_ROW] = SPAN_BYTES > 4 * d ? SPAN_BYTES : (size_t)(4 * d),
        [S_PHS] = (size_t)pc * sizeof(float), [S_PHP] = (size_t)pc * sizeof(int64_t),
        [S_MS] = (size_t)(j->nthreads * 2 * hc) * sizeof(float),
        [S_MP] = (size_t)(j->nthreads * 2 * hc) * sizeof(int64_t),
        [S_CP] = (size_t)hc * sizeof(int64_t), [S_ID] = SPAN_BYTES,
        [S_ORD] = (size_t)j->k * sizeof(int64_t), [S_PI] = (size_t)j->k * sizeof(PosIdx),
        [S_OP] = (size_t)j->k * sizeof(int64_t),
        [S_HEAPS] = (size_t)(j->R * (2 * hc + 1)) * sizeof(float),
        [S_HEAPP] = (size_t)(j->R * (2 * hc + 1)) * sizeof(int64_t),
        [S_HEAPN] = (size_t)j->R * sizeof(int64_t),
    };
    for (int i = 0; i < S_COUNT; i++)
        if (!grow(&w->b[i], want[i]))
            return 0;
    return 1;
}

#define SB(w, i, T) ((T *)(w)->b[i].p)

/* The nprobe best of nlist centroid scores into (hs, hp) (room for 2 nprobe), in no order; returns
 * how many. As in offer_rows, entrants go to a buffer cut back by select_best when full (a heap's
 * sift-downs mispredict a branch a level); once a threshold is set, a group of 8
 * scores none of which beats it is skipped with one compare (a later list never wins a tie). */
static int64_t top_lists(const float *cs, int64_t nlist, int64_t nprobe, float *hs, int64_t *hp)
{
    int64_t n = 0;
    float ts = -INFINITY;
    int64_t tp = INT64_MAX;
    for (int64_t c0 = 0; c0 < nlist; c0 += 8) {
        const int64_t c1 = c0 + 8 <= nlist ? c0 + 8 : nlist;
        if (ts > -INFINITY && c1 - c0 == 8) {
            int any = 0;
            for (int e = 0; e < 8; e++)
                any |= cs[c0 + e] > ts;
            if (!any)
                continue;
        }
        for (int64_t c = c0; c < c1; c++) {
            const float s = cs[c];
            if (s > ts || (s == ts && c < tp))
                enter(hs, hp, &n, nprobe, s, c, &ts, &tp);
        }
    }
    if (n > nprobe) {
        select_best(hs, hp, n, nprobe);
        n = nprobe;
    }
    return n;
}

/* Phase A for query i of the round: its normalized and int8 forms. */
static void prepare_vec(Job *j, int64_t i)
{
    const int64_t d = j->d;
    const float *q = j->Q + (j->q0 + i) * d;
    float *qv = j->qv + i * d, *qs = j->qs + i * d;
    float nrm = 1.0f;
    if (j->flags & F_COSINE) {
        float acc = 0.0f;
        for (int64_t t = 0; t < d; t++)
            acc += q[t] * q[t];
        if (acc > 0)
            nrm = 1.0f / sqrtf(acc);
    }
    for (int64_t t = 0; t < d; t++)
        qv[t] = q[t] * nrm;
    if (j->flags & F_INT8) {
        float cst = 0.0f, mx = 0.0f;
        for (int64_t t = 0; t < d; t++) {
            qs[t] = qv[t] * j->qstep[t];
            cst += qv[t] * (j->qmin[t] + 128 * j->qstep[t]);
            mx = fabsf(qs[t]) > mx ? fabsf(qs[t]) : mx;
        }
        const float scale = mx > 0 ? 32767.0f / mx : 1.0f;
        int16_t *qi = j->qi + i * j->dpad;
        if (d <= MAX_I16_DIM)
            for (int64_t t = 0; t < d; t++)
                qi[t] = (int16_t)lrintf(qs[t] * scale);
        for (int64_t t = d <= MAX_I16_DIM ? d : 0; t < j->dpad; t++)
            qi[t] = 0;
        j->qp[2 * i] = 1.0f / scale;
        j->qp[2 * i + 1] = cst;
    }
}

/* Its lists: the probes given, or the nprobe best of the centroid scores cs (q . c). */
static void pick_lists(Job *j, Scratch *w, int64_t i, float *cs)
{
    int64_t *lists = j->plist + i * j->nprobe, n = 0;
    if (j->P > 0) {
        int64_t *tmp = SB(w, S_PHP, int64_t);
        memcpy(tmp, j->probes + (j->q0 + i) * j->P, (size_t)j->P * sizeof(int64_t));
        sort_i64(tmp, j->P);
        for (int64_t t = 0; t < j->P; t++)
            if (n == 0 || tmp[t] != lists[n - 1])
                lists[n++] = tmp[t];  /* P <= nprobe (checked at the call) */
    } else {
        float *hs = SB(w, S_PHS, float);
        int64_t *hp = SB(w, S_PHP, int64_t);
        if (j->flags & F_L2)
            for (int64_t c = 0; c < j->nlist; c++)
                cs[c] = 2 * cs[c] - j->csq[c];
        n = top_lists(cs, j->nlist, j->nprobe, hs, hp);
        memcpy(lists, hp, (size_t)n * sizeof(int64_t));
        sort_i64(lists, n);
    }
    j->pn[i] = n;
}

/* Between A and B (one thread): which queries probe each list, and the blocks to scan. Touches
 * only the probed lists (a single query at nprobe 1 must not pay for all nlist). */
static void plan_round(Job *j)
{
    int64_t *lcnt = j->lcnt, *lstart = j->lstart, *ld = j->ldist, *lq = j->lq, nd = 0, nu = 0;
    const int64_t np = j->nprobe;
    for (int64_t i = 0; i < j->nr; i++)
        for (int64_t t = 0; t < j->pn[i]; t++)
            lcnt[j->plist[i * np + t]] = 0;
    for (int64_t i = 0; i < j->nr; i++)
        for (int64_t t = 0; t < j->pn[i]; t++) {
            int64_t l = j->plist[i * np + t];
            if (lcnt[l]++ == 0)
                ld[nd++] = l;
        }
    sort_i64(ld, nd);  /* list order = file order */
    int64_t at = 0;
    for (int64_t e = 0; e < nd; e++) {
        int64_t l = ld[e], st = j->offsets[l], ln = j->offsets[l + 1] - st, nqs = lcnt[l];
        for (int64_t done = 0; done < ln; done += j->cap) {
            int64_t m = ln - done < j->cap ? ln - done : j->cap;
            j->units[nu++] = (Unit){st + done, m, m * nqs, at, nqs};
        }
        lstart[l] = at;
        at += nqs;
    }
    for (int64_t i = 0; i < j->nr; i++)  /* queries in order within each list */
        for (int64_t t = 0; t < j->pn[i]; t++)
            lq[lstart[j->plist[i * np + t]]++] = i;
    j->work = 0;
    for (int64_t u = 0; u < nu; u++)
        j->work += j->units[u].cost;
    if (j->nthreads > 1) {
        /* A block many queries probe (a big list of clustered data) can outweigh a thread's
         * share: split its queries over several units, each no costlier than an eighth of a
         * thread's share, so the threads end together (each unit reads the block itself).
         * At most SPLIT_UNITS * nthreads units more (see R_UNITS). */
        const int64_t most = j->work / (SPLIT_UNITS * j->nthreads) + 1, n0 = nu;
        for (int64_t u = 0; u < n0; u++) {
            Unit *x = &j->units[u];
            if (x->cost <= most || x->nq < 2)
                continue;
            int64_t parts = (x->cost + most - 1) / most;
            parts = parts > x->nq ? x->nq : parts;
            const int64_t per = (x->nq + parts - 1) / parts;
            for (int64_t q = per; q < x->nq; q += per) {
                const int64_t n = x->nq - q < per ? x->nq - q : per;
                j->units[nu++] = (Unit){x->p0, x->m, x->m * n, x->q0 + q, n};
            }
            x->nq = per;
            x->cost = x->m * per;
        }
        if (nu > 1)  /* the costliest first: the order only balances threads */
            qsort(j->units, (size_t)nu, sizeof(Unit), cmp_unit_cost);
    }
    j->nunits = nu;
    j->nd = nd;
    if (j->fuse) {  /* each query's units; a query none probes (empty lists) has no candidates */
        for (int64_t i = 0; i < j->nr; i++)
            atomic_store_explicit(&j->qsync[i].rem, 0, memory_order_relaxed);
        for (int64_t u = 0; u < nu; u++)
            for (int64_t t = 0; t < j->units[u].nq; t++)
                atomic_fetch_add_explicit(&j->qsync[lq[j->units[u].q0 + t]].rem, 1, memory_order_relaxed);
        for (int64_t i = 0; i < j->nr; i++)
            if (atomic_load_explicit(&j->qsync[i].rem, memory_order_relaxed) == 0)
                j->cn[i] = 0;
    }
}

/* Offer scores sc[0:m] of rows p0.. to a query's candidates, skipping deleted and not-allowed
 * rows. The candidates are a buffer (hs, hp) of *hn <= 2 hcap pairs and a threshold at index
 * 2 hcap: a row must rank above it to enter; when the buffer fills it is cut to the hcap best
 * (select_best) and the threshold becomes the worst of them. So the buffer always holds the hcap
 * best offered so far (finish_query cuts it to them), whatever the order of the offers. */
static void offer_rows(const Job *j, const float *restrict sc, int64_t m, int64_t p0, int64_t di, int64_t ai,
                       float *restrict hs, int64_t *restrict hp, int64_t *hn, _Atomic float *qt)
{
    const int64_t cap = j->hcap, ndel = j->ndel, nall = j->nallowed;
    const int64_t *restrict del = j->deleted, *restrict alw = j->allowed;
    const int filt = (j->flags & F_ALLOWED) != 0;
    int64_t n = *hn;
    float ts = n ? hs[2 * cap] : -INFINITY;
    int64_t tp = n ? hp[2 * cap] : INT64_MAX;
    /* Another thread's threshold for this query bounds this one's too: it holds hcap candidates
     * that rank above it, so a row below it cannot be among the hcap best of the union (a row
     * equal to it in score may rank above it by position: kept, INT64_MAX). */
    const float g = atomic_load_explicit(qt, memory_order_relaxed);
    if (g > ts) {
        ts = g;
        tp = INT64_MAX;
    }
    for (int64_t r = 0; r < m; r++) {
        const float s = sc[r];
        const int64_t pos = p0 + r;
        if (!(s > ts || (s == ts && pos < tp)))
            continue;  /* the common case: no better than the threshold */
        if (ndel) {
            while (di < ndel && del[di] < pos)
                di++;
            if (di < ndel && del[di] == pos)
                continue;
        }
        if (filt) {
            while (ai < nall && alw[ai] < pos)
                ai++;
            if (!(ai < nall && alw[ai] == pos))
                continue;
        }
        if (enter(hs, hp, &n, cap, s, pos, &ts, &tp) && ts > atomic_load_explicit(qt, memory_order_relaxed))
            atomic_store_explicit(qt, ts, memory_order_relaxed);  /* a lost race leaves a lower, still valid, bound */
    }
    hs[2 * cap] = ts;
    hp[2 * cap] = tp;
    *hn = n;
}

/* Phase B for one block: read it once, score it for each query of the round probing its list. */
static int scan_unit(Job *j, Scratch *w, const Unit *u)
{
    const int64_t d = j->d, m = u->m, p0 = u->p0, hst = 2 * j->hcap + 1;
    const int int8 = j->flags & F_INT8, l2 = j->flags & F_L2;
    float *sc = SB(w, S_SC, float), *sc2 = SB(w, S_SC2, float), *sq = SB(w, S_SQ, float);
    float *hs = SB(w, S_HEAPS, float);
    int64_t *hp = SB(w, S_HEAPP, int64_t), *hn = SB(w, S_HEAPN, int64_t);
    if (int8) {
        if (!read_full(w->fd[FD_SCAN], w->b[S_BLOCK].p, (size_t)(m * d), p0 * d))
            return -1;
        if (l2 && !read_full(w->fd[FD_SQ], sq, (size_t)m * 4, p0 * 4))
            return -1;
    } else if (!read_full(w->fd[FD_SCAN], w->b[S_BLOCK].p, (size_t)(m * d) * 4, p0 * 4 * d)) {
        return -1;
    }
    const int64_t di = j->ndel ? lower_bound(j->deleted, j->ndel, p0) : 0;
    const int64_t ai = (j->flags & F_ALLOWED) ? lower_bound(j->allowed, j->nallowed, p0) : 0;
    const int64_t *qs = j->lq + u->q0, nqs = u->nq;
    for (int64_t t = 0; t < nqs; t += 2) {
        const int64_t a = qs[t], b = t + 1 < nqs ? qs[t + 1] : -1;
        PROF(const long long t0 = prof_ns();)
        if (int8) {
            QI8 qa = {j->qs + a * d, j->qi + a * j->dpad, j->qp[2 * a], j->qp[2 * a + 1]};
            if (b >= 0) {
                QI8 qb = {j->qs + b * d, j->qi + b * j->dpad, j->qp[2 * b], j->qp[2 * b + 1]};
                score_i8_x2(&qa, &qb, w->b[S_BLOCK].p, m, d, sc, sc2);
            } else {
                score_i8(&qa, w->b[S_BLOCK].p, m, d, sc);
            }
            if (l2)
                for (int64_t r = 0; r < m; r++) {
                    sc[r] = 2 * sc[r] - sq[r];
                    if (b >= 0)
                        sc2[r] = 2 * sc2[r] - sq[r];
                }
        } else {
            score_f32(j->qv + a * d, w->b[S_BLOCK].p, m, d, l2, sc);
            if (b >= 0)
                score_f32(j->qv + b * d, w->b[S_BLOCK].p, m, d, l2, sc2);
        }
        PROF(const long long t1 = prof_ns(); PROF_ADD(prof_thr[prof_tid][PC_SCORE], t1 - t0);)
        offer_rows(j, sc, m, p0, di, ai, hs + a * hst, hp + a * hst, hn + a, &j->qsync[a].thr);
        if (b >= 0)
            offer_rows(j, sc2, m, p0, di, ai, hs + b * hst, hp + b * hst, hn + b, &j->qsync[b].thr);
        PROF(PROF_ADD(prof_thr[prof_tid][PC_OFFER], prof_ns() - t1);)
    }
    return 0;
}

/* Phase C for query i, first step: the hc best of every thread's candidates into (hs, hp); how many. */
static int64_t merge_candidates(Job *j, int64_t i, float *hs, int64_t *hp)
{
    const int64_t hc = j->hcap;
    int64_t n = 0;
    for (int t = 0; t < j->nthreads; t++) {  /* every thread's candidates, then the hc best */
        Scratch *o = j->ws[t];
        const int64_t on = SB(o, S_HEAPN, int64_t)[i];
        memcpy(hs + n, SB(o, S_HEAPS, float) + i * (2 * hc + 1), (size_t)on * sizeof(float));
        memcpy(hp + n, SB(o, S_HEAPP, int64_t) + i * (2 * hc + 1), (size_t)on * sizeof(int64_t));
        n += on;
    }
    if (n > hc) {
        select_best(hs, hp, n, hc);
        n = hc;
    }
    return n;
}

/* Exact re-rank of one query's n candidates (positions hp[0:n]): their float32 rows read in
 * position order, candidates close together sharing one read of their span (a syscall costs
 * more than a few KiB); the k best into (hs, hp). Returns how many, or -1 (short file). */
static int64_t rerank_query(Job *j, Scratch *w, int64_t i, float *hs, int64_t *hp, int64_t n)
{
    const int64_t d = j->d, k = j->k;
    const int l2 = j->flags & F_L2;
    const float *qv = j->qv + i * d;
    int64_t nc = n, *cp = SB(w, S_CP, int64_t);
    float *rowbuf = SB(w, S_ROW, float);
    memcpy(cp, hp, (size_t)nc * sizeof(int64_t));
    sort_i64(cp, nc);
    n = 0;
    const int64_t gap = GAP_BYTES / (4 * d), span_max = SPAN_BYTES / (4 * d);
    for (int64_t a = 0; a < nc;) {
        int64_t b = a + 1;
        while (b < nc && cp[b] - cp[b - 1] <= gap && cp[b] - cp[a] < span_max)
            b++;
        int64_t span = cp[b - 1] - cp[a] + 1;
        if (!read_full(w->fd[FD_VEC], rowbuf, (size_t)(span * 4 * d), cp[a] * 4 * d))
            return -1;
        for (int64_t t = a; t < b; t++) {
            float s;
            score_f32(qv, rowbuf + (cp[t] - cp[a]) * d, 1, d, l2, &s);
            n = heap_push(hs, hp, n, k, s, cp[t]);
        }
        a = b;
    }
    return n;
}

/* Phase C for query i, last step: its n <= k hits (hs, hp) ordered, written out, their ids read. */
static int write_query(Job *j, Scratch *w, int64_t i, const float *hs, const int64_t *hp, int64_t n)
{
    const int64_t k = j->k, qg = j->q0 + i;
    const int l2 = j->flags & F_L2;
    /* best first, ties by position (n <= k: an insertion sort) */
    int64_t *order = SB(w, S_ORD, int64_t);
    for (int64_t t = 0; t < n; t++)
        order[t] = t;
    for (int64_t t0 = 1; t0 < n; t0++) {
        for (int64_t t = t0; t > 0; t--) {
            int64_t a = order[t - 1], b = order[t];
            if (hs[a] > hs[b] || (hs[a] == hs[b] && hp[a] < hp[b]))
                break;
            order[t - 1] = b;
            order[t] = a;
        }
    }
    float *os = j->out_s + qg * k;
    /* positions: the caller's array, or scratch when it did not ask for them */
    int64_t *op = j->out_p ? j->out_p + qg * k : SB(w, S_OP, int64_t), *oi = j->out_ids + qg * k;
    for (int64_t t = 0; t < k; t++) {
        if (t < n) {
            os[t] = (j->flags & F_FINAL) && l2 ? -hs[order[t]] : hs[order[t]];
            op[t] = hp[order[t]];
        } else {
            if (j->flags & F_FINAL)  /* the caller's arrays need no filling beforehand */
                os[t] = l2 ? INFINITY : -INFINITY;
            op[t] = -1;
            oi[t] = -1;
        }
    }
    /* ids: positions close together share one read, as in the re-rank */
    PosIdx *pi = SB(w, S_PI, PosIdx);
    int64_t *idbuf = SB(w, S_ID, int64_t);
    for (int64_t t = 0; t < n; t++) {
        pi[t].p = op[t];
        pi[t].i = t;
    }
    sort_posidx(pi, n);
    for (int64_t a = 0; a < n;) {
        int64_t b = a + 1;
        while (b < n && pi[b].p - pi[b - 1].p <= GAP_BYTES / 8 && pi[b].p - pi[a].p < SPAN_BYTES / 8)
            b++;
        int64_t span = pi[b - 1].p - pi[a].p + 1;
        if (!read_full(w->fd[FD_IDS], idbuf, (size_t)span * 8, pi[a].p * 8))
            return -1;
        for (int64_t t = a; t < b; t++)
            oi[pi[t].i] = idbuf[pi[t].p - pi[a].p];
        a = b;
    }
    return 0;
}

/* Phase C for query i on its own: merge, re-rank (int8), write. */
static int finish_query(Job *j, Scratch *w, int64_t i)
{
    float *hs = SB(w, S_MS, float);
    int64_t *hp = SB(w, S_MP, int64_t);
    int64_t n = merge_candidates(j, i, hs, hp);
    if ((j->flags & F_INT8) && n && (n = rerank_query(j, w, i, hs, hp, n)) < 0)
        return -1;
    return write_query(j, w, i, hs, hp, n);
}

/* ------------------------------------------------------------------------------------------
 * The round's re-rank (int8 scan, a round of several queries). Re-ranking query by query reads
 * each query's candidates' float32 rows on its own: on clustered data the queries of a batch
 * share their lists and so their candidates' neighbourhoods (Zipf 200k, 300 queries at nprobe
 * 4: ~30 preads a query, 9100 a batch, a third of the batch's CPU in the kernel). Instead:
 *   C1. per query, by the thread that scanned its last unit (item_scan: no barrier of its own):
 *       merge the threads' candidates, keep the hcap best, note each one's list;
 *   (one thread) group the round's candidates by list, the lists with most candidates first;
 *   C2. per list: read its candidates' rows in position order, spans shared by all the queries
 *       whose candidates lie there, and score each candidate exactly for its query;
 *   C3. per query: the k best of its exact scores (heap_push: a total order, so the same k as
 *       query by query), ordered, written out, ids read.
 * The exact scores are the same calls on the same rows, so the results are those of finish_query.
 * ------------------------------------------------------------------------------------------ */

/* The list holding position p (offsets sorted, p < offsets[nlist]). */
static int32_t list_of(const int64_t *off, int64_t nlist, int64_t p)
{
    int64_t lo = 0, hi = nlist - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) >> 1;
        if (off[mid] <= p)
            lo = mid;
        else
            hi = mid - 1;
    }
    return (int32_t)lo;
}

static void item_cands(Job *j, Scratch *w, int64_t i)
{
    const int64_t hc = j->hcap;
    float *hs = SB(w, S_MS, float);
    int64_t *hp = SB(w, S_MP, int64_t);
    const int64_t n = merge_candidates(j, i, hs, hp);
    for (int64_t t = 0; t < n; t++) {
        j->cpos[i * hc + t] = hp[t];
        j->clist[i * hc + t] = list_of(j->offsets, j->nlist, hp[t]);
    }
    j->cn[i] = n;
}

/* Between C1 and C2 (one thread, O(candidates)): the round's candidates grouped by list in
 * cent, list l's at cent[lstart[l] .. lstart[l] + lcnt[l]]; the lists holding some in rl, the
 * most candidates first (dynamic assignment then balances the threads). */
static void plan_rerank(Job *j)
{
    int64_t *cnt = j->lcnt, *st = j->lstart, nrl = 0, at = 0;
    const int64_t hc = j->hcap;
    for (int64_t e = 0; e < j->nd; e++)  /* candidates lie in the round's probed lists only */
        cnt[j->ldist[e]] = 0;
    for (int64_t i = 0; i < j->nr; i++)
        for (int64_t t = 0; t < j->cn[i]; t++)
            cnt[j->clist[i * hc + t]]++;
    PosIdx *order = (PosIdx *)j->lq;  /* the scan's query lists are done with; room for nd pairs */
    for (int64_t e = 0; e < j->nd; e++) {
        const int64_t l = j->ldist[e];
        if (!cnt[l])
            continue;
        st[l] = at;  /* a fill cursor first, moved back to the start below */
        order[nrl++] = (PosIdx){-cnt[l], l};
        at += cnt[l];
    }
    for (int64_t i = 0; i < j->nr; i++)
        for (int64_t t = 0; t < j->cn[i]; t++)
            j->cent[st[j->clist[i * hc + t]]++] = (PosIdx){j->cpos[i * hc + t], i * hc + t};
    sort_posidx(order, nrl);
    for (int64_t e = 0; e < nrl; e++) {
        const int64_t l = order[e].i;
        st[l] -= cnt[l];
        j->rl[e] = l;
    }
    j->nrl = nrl;
}

static void item_rerank_list(Job *j, Scratch *w, int64_t e)
{
    if (atomic_load(&j->rc) != 0)
        return;
    const int64_t l = j->rl[e], d = j->d, hc = j->hcap;
    const int l2 = j->flags & F_L2;
    PosIdx *c = j->cent + j->lstart[l];
    const int64_t nc = j->lcnt[l];
    float *rowbuf = SB(w, S_ROW, float);
    sort_posidx(c, nc);
    const int64_t gap = GAP_BYTES / (4 * d), span_max = SPAN_BYTES / (4 * d);
    for (int64_t a = 0; a < nc;) {
        int64_t b = a + 1;
        while (b < nc && c[b].p - c[b - 1].p <= gap && c[b].p - c[a].p < span_max)
            b++;
        const int64_t span = c[b - 1].p - c[a].p + 1;
        if (!read_full(w->fd[FD_VEC], rowbuf, (size_t)(span * 4 * d), c[a].p * 4 * d)) {
            atomic_store(&j->rc, -1);
            return;
        }
        for (int64_t t = a; t < b; t++)
            score_f32(j->qv + (c[t].i / hc) * d, rowbuf + (c[t].p - c[a].p) * d, 1, d, l2, &j->cxs[c[t].i]);
        a = b;
    }
}

static void item_write(Job *j, Scratch *w, int64_t i)
{
    if (atomic_load(&j->rc) != 0)
        return;
    const int64_t hc = j->hcap;
    float *hs = SB(w, S_MS, float);
    int64_t *hp = SB(w, S_MP, int64_t), n = 0;
    for (int64_t t = 0; t < j->cn[i]; t++)
        n = heap_push(hs, hp, n, j->k, j->cxs[i * hc + t], j->cpos[i * hc + t]);
    if (write_query(j, w, i, hs, hp, n) != 0)
        atomic_store(&j->rc, -1);
}

/* Phase A, item `it`: queries 2 it and 2 it + 1 (their centroid scores in one pass over the panels). */
static void item_prepare(Job *j, Scratch *w, int64_t it)
{
    const int64_t d = j->d, nl = j->nlist;
    float *cs = SB(w, S_CS, float);
    const int64_t a = 2 * it, b = a + 1 < j->nr ? a + 1 : -1;
    prepare_vec(j, a);
    if (b >= 0)
        prepare_vec(j, b);
    if (j->P == 0 && b >= 0)
        score_panels_x2(j->qv + a * d, j->qv + b * d, j->cpan, d, nl, cs, cs + nl);
    else if (j->P == 0)
        score_panels(j->qv + a * d, j->cpan, d, nl, cs);
    pick_lists(j, w, a, cs);
    if (b >= 0)
        pick_lists(j, w, b, cs + nl);
}

static void item_cands(Job *j, Scratch *w, int64_t i);

/* Phase B, item u; with the round's re-rank, a query whose last unit this was is merged here
 * (item_cands), so the scan needs no barrier before it. */
static void item_scan(Job *j, Scratch *w, int64_t u)
{
    const Unit *x = &j->units[u];
    if (atomic_load(&j->rc) == 0 && scan_unit(j, w, x) != 0)
        atomic_store(&j->rc, -1);
    if (j->fuse)
        for (int64_t t = 0; t < x->nq; t++) {
            const int64_t q = j->lq[x->q0 + t];
            if (atomic_fetch_sub(&j->qsync[q].rem, 1) == 1)
                item_cands(j, w, q);
        }
}

static void item_finish(Job *j, Scratch *w, int64_t i)
{
    if (atomic_load(&j->rc) == 0 && finish_query(j, w, i) != 0)
        atomic_store(&j->rc, -1);
}

/* ------------------------------------------------------------------------------------------
 * The team. A call takes its helper threads once, at its first phase with enough work (from the
 * pool below, or started for it), and they serve every later phase of the call (of every round):
 * starting threads per phase cost a thread start (0.2-0.4 ms here, and on a busy machine the wait
 * for a core: 1-2 ms measured) three times a round, against phases of a few ms at Zipf 200k /
 * 300 queries. Between phases a helper spins (see SPIN), then sleeps on a condition variable.
 * Items are claimed one at a time (the costliest first where the order matters), so a helper
 * that starts late or is descheduled only leaves more to the others; a phase ends when all its
 * items are done, not when every helper has looked at it.
 * ------------------------------------------------------------------------------------------ */

/* Spins of a waiting thread before it sleeps (each a `pause`: ~0.26 ms in all on this VM's CPU).
 * Long enough to outlast the caller's planning between phases (0.1-0.2 ms) and the end of the
 * previous phase: with 2000 (~26 µs) the helper slept there and woke 0.2-1.0 ms after the next
 * phase opened (an idle vCPU is slow to wake), 0.9-1.8 ms of a 17 ms 2-thread batch (Zipf 200k,
 * 300 queries; scripts/profile_vecindex_threads.py). A call spins at most this per phase. */
#ifndef SPIN
#define SPIN 20000
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

#ifdef VX_PROF
static int prof_kind(void (*fn)(Job *, Scratch *, int64_t))
{
    return fn == item_prepare ? PK_PREPARE : fn == item_scan ? PK_SCAN : fn == item_rerank_list ? PK_RERANK
           : fn == item_write ? PK_WRITE : PK_FINISH;
}
#endif

/* Claim the next item of generation g: 1 and *it, or 0 when g is over or no longer current. */
static int claim(Job *j, uint32_t g, int64_t *it)
{
    uint64_t v = atomic_load(&j->claim);
    for (;;) {
        if ((uint32_t)(v >> 32) != g)
            return 0;
        const int64_t i = (int64_t)(v & 0xffffffffu);
        if (i >= j->phase[g & 3].n)
            return 0;
        if (atomic_compare_exchange_weak(&j->claim, &v, v + 1)) {
            *it = i;
            return 1;
        }
    }
}

/* Do items of generation g until none is left; wake the caller after the phase's last one. */
static void work_on(Job *j, Scratch *w, uint32_t g, int tid)
{
    int64_t it;
    (void)tid;
    PROF(prof_tid = tid;)
    while (claim(j, g, &it)) {
        const struct Phase ph = j->phase[g & 3];  /* g stays current until this item is done */
        PROF(const long long t0 = prof_ns(); prof_pk = prof_kind(ph.fn); if (prof_pk == PK_SCAN) PROF_ADD(prof_thr[tid][PC_UNITS], 1);)
        ph.fn(j, w, it);
        PROF(const long long dt = prof_ns() - t0; PROF_ADD(prof_thr[tid][PC_BUSY], dt); PROF_ADD(prof_thr[tid][PC_ITEMS], 1);
             PROF_ADD(prof_tbusy[tid][prof_kind(ph.fn)], dt);)
        if (atomic_fetch_add(&j->done, 1) + 1 == ph.n) {
            pthread_mutex_lock(&j->mu);
            pthread_cond_signal(&j->fin);
            pthread_mutex_unlock(&j->mu);
        }
    }
}

typedef struct {
    Job *j;
    int tid;
} Helper;

/* A helper's part of a call: serve its phases until the call ends. */
static void team_loop(Job *j, int tid)
{
    uint32_t seen = 0;
    for (;;) {
        uint32_t g = (uint32_t)(atomic_load(&j->claim) >> 32);
        PROF(long long t0 = prof_ns();)
        for (int s = 0; g == seen && s < SPIN && !atomic_load(&j->stop); s++) {
            cpu_relax();
            g = (uint32_t)(atomic_load(&j->claim) >> 32);
        }
        PROF(long long t1 = prof_ns(); PROF_ADD(prof_thr[tid][PC_SPIN], t1 - t0);)
        if (g == seen) {
            pthread_mutex_lock(&j->mu);
            while (j->gen == seen && !atomic_load(&j->stop))
                pthread_cond_wait(&j->go, &j->mu);
            g = j->gen;
            const int stop = atomic_load(&j->stop);
            pthread_mutex_unlock(&j->mu);
            PROF(PROF_ADD(prof_thr[tid][PC_SLEEP], prof_ns() - t1); PROF_ADD(prof_thr[tid][PC_WAKES], 1);)
            if (stop)
                return;
        }
        seen = g;
        PROF(const long long late = prof_ns() - atomic_load(&prof_open); PROF_ADD(prof_thr[tid][PC_LATE], late);
             PROF_ADD(prof_late[prof_kind(j->phase[g & 3].fn)], late);)
        work_on(j, j->ws[tid], g, tid);
    }
}

static void *helper_main(void *arg)
{
    Helper *h = arg;
    team_loop(h->j, h->tid);
    return NULL;
}

/* The helper pool: threads kept between calls, asleep, and lent to one call at a time (a call
 * that finds the pool in use starts its own helpers, as before). Starting a thread and getting it
 * running took 0.2-0.4 ms on this VM (and joining it more), waking a sleeping one 30-45 µs, against
 * a 2-thread batch of ~15 ms (Zipf 200k, 300 queries). Pool thread i serves as helper i + 1. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    int n;        /* threads in the pool */
    int busy;     /* lent to a call */
    Job *job;     /* the call they serve now, or NULL */
    int want;     /* pool threads 0 .. want - 1 serve it */
    int active;   /* pool threads inside the call */
    uint64_t epoch;
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, 0, 0, 0};

static void *pool_main(void *arg)
{
    const int i = (int)(intptr_t)arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&P.mu);
    for (;;) {
        while (!(P.job && P.epoch != seen && i < P.want))
            pthread_cond_wait(&P.wake, &P.mu);
        seen = P.epoch;
        Job *j = P.job;
        P.active++;
        pthread_mutex_unlock(&P.mu);
        team_loop(j, i + 1);
        pthread_mutex_lock(&P.mu);
        if (--P.active == 0)
            pthread_cond_broadcast(&P.idle);
    }
    return NULL;
}

/* After fork the child has none of the pool's threads (and maybe a lock held by one): a new pool. */
static void pool_after_fork(void)
{
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_cond_init(&P.idle, NULL);
    P.n = P.busy = P.want = P.active = 0;
    P.job = NULL;
}

/* A helper reads through its own opens of the index files (the same files, reopened through
 * /proc/self/fd): in a process with several threads every pread takes and drops a reference on
 * the open file (its f_count), and threads reading through one open file move that cache line
 * between the cores at every read (~6000 reads a batch at Zipf 200k / 300 queries). Where the
 * reopen fails the helper shares the caller's descriptor, as before. */
static void own_files(const Job *j, Scratch *w)
{
    const int src[FD_COUNT] = {j->fd_scan, j->fd_vec, j->fd_sq, j->fd_ids};
    for (int f = 0; f < FD_COUNT; f++) {
        int fd = -1;
        if (src[f] >= 0) {
            for (int g = 0; g < f && fd < 0; g++)  /* one open per distinct file */
                if (src[g] == src[f])
                    fd = w->fd[g];
            if (fd < 0) {
                char path[40];
                snprintf(path, sizeof path, "/proc/self/fd/%d", src[f]);
                fd = open(path, O_RDONLY | O_CLOEXEC);
            }
        }
        w->fd[f] = fd >= 0 ? fd : src[f];
    }
    w->own = 1;
}

static void close_files(const Job *j, Scratch *w)
{
    const int src[FD_COUNT] = {j->fd_scan, j->fd_vec, j->fd_sq, j->fd_ids};
    if (w->own)
        for (int f = 0; f < FD_COUNT; f++) {
            int dup = w->fd[f] == src[f];
            for (int g = 0; g < f; g++)
                dup |= w->fd[g] == w->fd[f];
            if (!dup && w->fd[f] >= 0)
                close(w->fd[f]);
        }
    w->own = 0;
}

/* The call's helpers: the pool's when it is free (grown to nthreads - 1), else threads of its own. */
static void start_team(Job *j, Helper *h, pthread_t *th, int *up)
{
    const int need = j->nthreads - 1;
    for (int t = 1; t <= need; t++)
        own_files(j, j->ws[t]);
    pthread_mutex_lock(&P.mu);
    if (!P.busy) {
        while (P.n < need) {
            pthread_t t;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            const int ok = pthread_create(&t, &at, pool_main, (void *)(intptr_t)P.n) == 0;
            pthread_attr_destroy(&at);
            if (!ok)
                break;
            P.n++;
        }
        if (P.n > 0) {
            P.busy = 1;
            P.job = j;
            P.want = P.n < need ? P.n : need;
            P.epoch++;
            j->pooled = 1;
            j->helpers = P.want;
            pthread_cond_broadcast(&P.wake);
        }
    }
    pthread_mutex_unlock(&P.mu);
    if (j->pooled)
        return;
    for (int t = 1; t <= need; t++) {
        h[t] = (Helper){j, t};
        up[t] = pthread_create(&th[t], NULL, helper_main, &h[t]) == 0;
        j->helpers++;
    }
}

/* Below this much work (row scores, or queries x lists) a phase runs on the caller's thread
 * alone: a phase this small costs less than waking a helper. */
#define MIN_THREADED_WORK 32768

/* Run one phase of `items` items (`work` in all) on the caller's thread and the call's helpers
 * (started here the first time a phase is big enough; a helper that cannot be started only
 * leaves more to the others). */
static void run_phase(Job *j, void (*fn)(Job *, Scratch *, int64_t), int64_t items, int64_t work,
                      Helper *h, pthread_t *th, int *up)
{
    PROF(const int pk = prof_kind(fn); const long long p0 = prof_ns(); PROF_ADD(prof_phases[pk], 1);)
    if (work < MIN_THREADED_WORK || items < 2 || j->nthreads < 2) {
        PROF(prof_pk = pk; prof_tid = 0; if (pk == PK_SCAN) PROF_ADD(prof_thr[0][PC_UNITS], items);)
        for (int64_t it = 0; it < items; it++)
            fn(j, j->ws[0], it);
        PROF(const long long dt = prof_ns() - p0; PROF_ADD(prof_phase[pk], dt); PROF_ADD(prof_thr[0][PC_BUSY], dt);
             PROF_ADD(prof_thr[0][PC_ITEMS], items); PROF_ADD(prof_tbusy[0][pk], dt);)
        return;
    }
    if (j->helpers == 0) {
        PROF(const long long s0 = prof_ns();)
        start_team(j, h, th, up);
        PROF(PROF_ADD(prof_start, prof_ns() - s0);)
    }
    const uint32_t g = j->gen + 1;
    j->phase[g & 3] = (struct Phase){fn, items};
    atomic_store(&j->done, 0);
    PROF(atomic_store(&prof_open, prof_ns());)
    atomic_store(&j->claim, (uint64_t)g << 32);  /* the phase opens: items claimable from here */
    pthread_mutex_lock(&j->mu);
    j->gen = g;
    pthread_cond_broadcast(&j->go);
    pthread_mutex_unlock(&j->mu);
    work_on(j, j->ws[0], g, 0);
    PROF(const long long w0 = prof_ns();)
    for (int s = 0; atomic_load(&j->done) < items && s < SPIN; s++)
        cpu_relax();
    PROF(const long long w1 = prof_ns(); PROF_ADD(prof_tailspin[pk], w1 - w0);)
    if (atomic_load(&j->done) < items) {
        pthread_mutex_lock(&j->mu);
        while (atomic_load(&j->done) < items)
            pthread_cond_wait(&j->fin, &j->mu);
        pthread_mutex_unlock(&j->mu);
    }
    PROF(const long long w2 = prof_ns(); PROF_ADD(prof_tailsleep[pk], w2 - w1); PROF_ADD(prof_phase[pk], w2 - p0);)
}

/* Stop and join the call's helpers. */
static void end_team(Job *j, pthread_t *th, const int *up)
{
    pthread_mutex_lock(&j->mu);
    atomic_store(&j->stop, 1);
    pthread_cond_broadcast(&j->go);
    pthread_mutex_unlock(&j->mu);
    if (j->pooled) {  /* the pool back, once none of its threads is inside this call */
        pthread_mutex_lock(&P.mu);
        P.job = NULL;
        while (P.active > 0)
            pthread_cond_wait(&P.idle, &P.mu);
        P.busy = 0;
        pthread_mutex_unlock(&P.mu);
        return;
    }
    for (int t = 1; t <= j->helpers; t++)
        if (up[t])
            pthread_join(th[t], NULL);
}

/* Run the job; 0, -1 (a file shorter than expected) or -2 (out of memory). */
static int run_job(Job *j)
{
    PROF(const long long c0 = prof_ns(); PROF_ADD(prof_calls, 1);)
    Scratch *ws[MAX_THREADS] = {0}, *shared = NULL;
    Helper h[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    int up[MAX_THREADS] = {0}, team = 0;
    int rc = -2;
    const int int8 = j->flags & F_INT8;
    const int64_t rb = int8 ? j->d : 4 * j->d;
    j->cap = BUF_BYTES / rb;
    j->cap = j->cap < 256 ? 256 : j->cap > MAX_BUF_ROWS ? MAX_BUF_ROWS : j->cap;
    j->hcap = int8 ? j->keep : j->k;
    j->dpad = 16 * ((j->d + 15) / 16);
    /* a round's candidate buffers stay within ~32 MiB over all threads (and the re-rank's arrays) */
    int64_t R = (32 << 20) / (12 * (2 * j->hcap + 1) * j->nthreads + 32 * j->hcap);
    j->R = R < 1 ? 1 : R > MAX_ROUND ? MAX_ROUND : R;
    if (j->R > j->nq)
        j->R = j->nq;
    for (int t = 0; t < j->nthreads; t++) {
        if (!(ws[t] = pool_get()) || !scratch_ready(j, ws[t]))
            goto out;
        ws[t]->fd[FD_SCAN] = j->fd_scan; ws[t]->fd[FD_VEC] = j->fd_vec;
        ws[t]->fd[FD_SQ] = j->fd_sq; ws[t]->fd[FD_IDS] = j->fd_ids;
        ws[t]->own = 0;
    }
    if (!(shared = pool_get()))
        goto out;
    const int64_t R1 = j->R, np = j->nprobe;
    size_t rsz[R_COUNT] = {
        [R_QV] = (size_t)(R1 * j->d) * 4, [R_QS] = (size_t)(R1 * j->d) * 4, [R_QI] = (size_t)(R1 * j->dpad) * 2,
        [R_QP] = (size_t)R1 * 8, [R_PL] = (size_t)(R1 * np) * 8, [R_PN] = (size_t)R1 * 8,
        [R_LCNT] = (size_t)j->nlist * 8, [R_LSTART] = (size_t)j->nlist * 8, [R_LDIST] = (size_t)j->nlist * 8,
        [R_LQ] = (size_t)(R1 * np) * sizeof(PosIdx), [R_QT] = (size_t)(R1 + 1) * sizeof(QSync),
        [R_CPOS] = (size_t)(R1 * j->hcap) * 8, [R_CN] = (size_t)R1 * 8, [R_CLIST] = (size_t)(R1 * j->hcap) * 4,
        [R_CXS] = (size_t)(R1 * j->hcap) * 4, [R_CENT] = (size_t)(R1 * j->hcap) * sizeof(PosIdx),
        [R_RL] = (size_t)j->nlist * 8,
        /* blocks: the full ones plus at most one partial block per list, plus the splits */
        [R_UNITS] = (size_t)(j->nlist + j->offsets[j->nlist] / j->cap + 1 + SPLIT_UNITS * j->nthreads)
                     * sizeof(Unit),
    };
    for (int i = 0; i < R_COUNT; i++)
        if (!grow(&shared->b[i], rsz[i]))
            goto out;
    j->qv = shared->b[R_QV].p; j->qs = shared->b[R_QS].p; j->qi = shared->b[R_QI].p;
    j->qp = shared->b[R_QP].p; j->plist = shared->b[R_PL].p; j->pn = shared->b[R_PN].p;
    j->lcnt = shared->b[R_LCNT].p; j->lstart = shared->b[R_LSTART].p; j->ldist = shared->b[R_LDIST].p;
    j->lq = shared->b[R_LQ].p; j->units = shared->b[R_UNITS].p;
    j->cpos = shared->b[R_CPOS].p; j->cn = shared->b[R_CN].p; j->clist = shared->b[R_CLIST].p;
    j->cxs = shared->b[R_CXS].p; j->cent = shared->b[R_CENT].p; j->rl = shared->b[R_RL].p;
    j->qsync = (QSync *)(((uintptr_t)shared->b[R_QT].p + 63) & ~(uintptr_t)63);
    j->ws = ws;
    atomic_init(&j->rc, 0);
    atomic_init(&j->claim, 0);
    atomic_init(&j->done, 0);
    atomic_init(&j->stop, 0);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->go, NULL);
    pthread_cond_init(&j->fin, NULL);
    team = 1;
    for (int64_t q0 = 0; q0 < j->nq && atomic_load(&j->rc) == 0; q0 += j->R) {
        j->q0 = q0;
        j->nr = j->nq - q0 < j->R ? j->nq - q0 : j->R;
        for (int t = 0; t < j->nthreads; t++)
            memset(ws[t]->b[S_HEAPN].p, 0, (size_t)j->nr * sizeof(int64_t));
        for (int64_t i = 0; i < j->nr; i++)
            atomic_init(&j->qsync[i].thr, -INFINITY);
        j->fuse = int8 && j->nr > 1;
        run_phase(j, item_prepare, (j->nr + 1) / 2, j->nr * j->nlist, h, th, up);
        PROF(long long s0 = prof_ns();)
        plan_round(j);
        PROF(PROF_ADD(prof_serial, prof_ns() - s0);)
        run_phase(j, item_scan, j->nunits, j->work, h, th, up);
        if (j->fuse) {  /* the round's re-rank, list by list (above); C1 ran in the scan */
            PROF(s0 = prof_ns();)
            plan_rerank(j);
            PROF(PROF_ADD(prof_serial, prof_ns() - s0);)
            run_phase(j, item_rerank_list, j->nrl, j->nr * j->hcap * j->d, h, th, up);
            run_phase(j, item_write, j->nr, j->nr * j->k * 64, h, th, up);
        } else {
            run_phase(j, item_finish, j->nr, j->nr * j->hcap * 64, h, th, up);
        }
    }
    rc = atomic_load(&j->rc);
out:
    if (team) {
        end_team(j, th, up);
        pthread_mutex_destroy(&j->mu);
        pthread_cond_destroy(&j->go);
        pthread_cond_destroy(&j->fin);
    }
    for (int t = 0; t < MAX_THREADS; t++)
        if (ws[t]) {
            close_files(j, ws[t]);
            pool_put(ws[t]);
        }
    pool_put(shared);
    PROF(PROF_ADD(prof_call, prof_ns() - c0);)
    return rc;
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
"search_batch(flags, fd_scan, fd_vec, fd_sq, fd_ids, offsets, cpanels, csq, qmin, qstep, deleted,\n"
"             probes, nprobe, Q, keep, k, allowed, out_s, out_p, out_ids, threads=1) -> int\n\n"
"Search each row of Q (nq x d float32) over the main lists; see vecindex/_csearch.c.\n"
"flags: 1 int8 scan, 2 l2, 4 cosine (Q normalized here), 8 allowed positions only,\n"
"16 out_s gets the caller's scores (l2: distances) instead of internal ones (higher is better).\n"
"cpanels: the centroids in panels (ceil(nlist / PANEL) x d x PANEL, see PANEL); probes (nq x P int64, P <= nprobe) gives the lists\n"
"when P > 0. threads: threads of this call (the caller's own included), all with the GIL released.\n"
"Writes out_s, out_p (positions; an empty out_p: not wanted) and out_ids; where fewer than k rows are in scope, position\n"
"and id -1, and out_s inf (l2) or -inf with flag 16, else untouched. Returns 0, or -1 when a\n"
"file is shorter than expected.");

/* Checks of the buffers (every entry point), then the search with the GIL released. Returns
 * run_job's code, or -3 with a Python error set. `b` holds offsets, cpanels, csq, qmin, qstep,
 * deleted, probes, Q, allowed, out_s, out_p, out_ids (B_* below); j holds the scalars. */
enum { B_OFF, B_CT, B_CSQ, B_QMIN, B_QSTEP, B_DEL, B_PR, B_Q, B_ALL, B_OS, B_OP, B_OI, B_COUNT };

static int checked_run(Job *j, Py_buffer *const b[B_COUNT])
{
    int rc = -3;
    j->d = b[B_QMIN]->len / 4;
    j->nlist = b[B_OFF]->len / 8 - 1;
    j->nq = j->d > 0 ? b[B_Q]->len / (4 * j->d) : 0;
    j->P = j->nq > 0 ? b[B_PR]->len / (8 * j->nq) : 0;
    j->ndel = b[B_DEL]->len / 8;
    j->nallowed = b[B_ALL]->len / 8;
    if (j->d <= 0 || j->nlist < 1 || j->k < 1 || j->keep < j->k || j->nprobe < 1 || j->nprobe > j->nlist
        || j->P > j->nprobe) {
        PyErr_SetString(PyExc_ValueError, "search_batch: bad dimension, nlist, k, keep or nprobe");
        return rc;
    }
    if (j->nthreads < 1 || j->nthreads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "search_batch: threads must be 1..%d", MAX_THREADS);
        return rc;
    }
    if (!need(b[B_Q], j->nq * j->d * 4, "Q") || !need(b[B_QSTEP], j->d * 4, "qstep")
        || !need(b[B_CT], panels(j->nlist) * j->d * PANEL * 4, "cpanels")
        || !need(b[B_PR], j->nq * j->P * 8, "probes")
        || !need(b[B_OS], j->nq * j->k * 4, "out_s") || (b[B_OP]->len && !need(b[B_OP], j->nq * j->k * 8, "out_p"))
        || !need(b[B_OI], j->nq * j->k * 8, "out_ids")
        || ((j->flags & F_L2) && !need(b[B_CSQ], j->nlist * 4, "csq")))
        return rc;
    j->offsets = b[B_OFF]->buf; j->cpan = b[B_CT]->buf; j->csq = b[B_CSQ]->buf; j->probes = b[B_PR]->buf;
    j->Q = b[B_Q]->buf; j->qmin = b[B_QMIN]->buf; j->qstep = b[B_QSTEP]->buf; j->deleted = b[B_DEL]->buf;
    j->allowed = b[B_ALL]->buf; j->out_s = b[B_OS]->buf; j->out_p = b[B_OP]->len ? b[B_OP]->buf : NULL;
    j->out_ids = b[B_OI]->buf;
    for (int64_t i = 0; i < j->P * j->nq; i++)
        if (j->probes[i] < 0 || j->probes[i] >= j->nlist) {
            PyErr_SetString(PyExc_ValueError, "search_batch: probe list out of range");
            return rc;
        }
    if (j->nq == 0)
        return 0;
    Py_BEGIN_ALLOW_THREADS
    rc = run_job(j);
    Py_END_ALLOW_THREADS
    if (rc == -2) {
        PyErr_NoMemory();
        rc = -3;
    }
    return rc;
}

static PyObject *search_batch(PyObject *self, PyObject *args)
{
    (void)self;
    Job j;
    memset(&j, 0, sizeof j);
    j.nthreads = 1;
    Py_buffer v[B_COUNT];
    if (!PyArg_ParseTuple(args, "iiiiiy*y*y*y*y*y*y*Ly*LLy*w*w*w*|i:search_batch", &j.flags,
                          &j.fd_scan, &j.fd_vec, &j.fd_sq, &j.fd_ids, &v[B_OFF], &v[B_CT], &v[B_CSQ],
                          &v[B_QMIN], &v[B_QSTEP], &v[B_DEL], &v[B_PR], &j.nprobe, &v[B_Q], &j.keep, &j.k,
                          &v[B_ALL], &v[B_OS], &v[B_OP], &v[B_OI], &j.nthreads))
        return NULL;
    Py_buffer *b[B_COUNT];
    for (int i = 0; i < B_COUNT; i++)
        b[i] = &v[i];
    const int rc = checked_run(&j, b);
    for (int i = 0; i < B_COUNT; i++)
        PyBuffer_Release(&v[i]);
    return rc == -3 ? NULL : PyLong_FromLong(rc);
}

/* A prepared index (prepare()): the per-index arguments of search_batch with their buffers held,
 * so a single-query search (search_prepared) acquires 3 buffers instead of 12: at nprobe 1 the
 * argument parsing was a tenth of the call. */
#define PREPARED "vecindex._csearch.Prepared"
typedef struct {
    int fd_scan, fd_vec, fd_sq, fd_ids, held;
    Py_buffer b[B_DEL + 1];  /* offsets, cpanels, csq, qmin, qstep, deleted */
} Prepared;

static void prepared_free(PyObject *cap)
{
    Prepared *p = PyCapsule_GetPointer(cap, PREPARED);
    if (!p)
        return;
    for (int i = 0; i < p->held; i++)
        PyBuffer_Release(&p->b[i]);
    PyMem_Free(p);
}

PyDoc_STRVAR(prepare_doc,
"prepare(fd_scan, fd_vec, fd_sq, fd_ids, offsets, cpanels, csq, qmin, qstep, deleted) -> capsule\n\n"
"The per-index arguments of search_batch, held (buffers acquired) for search_prepared.");

static PyObject *prepare(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o[B_DEL + 1];
    Prepared *p = PyMem_Calloc(1, sizeof *p);
    if (!p)
        return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "iiiiOOOOOO:prepare", &p->fd_scan, &p->fd_vec, &p->fd_sq, &p->fd_ids,
                          &o[0], &o[1], &o[2], &o[3], &o[4], &o[5]))
        goto fail;
    for (int i = 0; i <= B_DEL; i++) {
        if (PyObject_GetBuffer(o[i], &p->b[i], PyBUF_SIMPLE) < 0)
            goto fail;
        p->held++;
    }
    PyObject *cap = PyCapsule_New(p, PREPARED, prepared_free);
    if (cap)
        return cap;
fail:
    for (int i = 0; i < p->held; i++)
        PyBuffer_Release(&p->b[i]);
    PyMem_Free(p);
    return NULL;
}

PyDoc_STRVAR(search_prepared_doc,
"search_prepared(prepared, flags, nprobe, Q, keep, k, out_s, out_ids, threads) -> int\n\n"
"search_batch on a prepare()d index with every list probed by the kernel (no probes), no id filter\n"
"and no positions wanted: the same results, fewer arguments to parse.");

static PyObject *search_prepared(PyObject *self, PyObject *args)
{
    (void)self;
    Job j;
    memset(&j, 0, sizeof j);
    PyObject *cap;
    Py_buffer v[B_OI + 1];
    if (!PyArg_ParseTuple(args, "OiLy*LLw*w*i:search_prepared", &cap, &j.flags, &j.nprobe, &v[B_Q], &j.keep,
                          &j.k, &v[B_OS], &v[B_OI], &j.nthreads))
        return NULL;
    int rc = -3;
    Prepared *p = PyCapsule_GetPointer(cap, PREPARED);
    if (p) {
        j.fd_scan = p->fd_scan; j.fd_vec = p->fd_vec; j.fd_sq = p->fd_sq; j.fd_ids = p->fd_ids;
        j.flags &= ~F_ALLOWED;
        Py_buffer none = {0};
        Py_buffer *b[B_COUNT] = {&p->b[B_OFF], &p->b[B_CT], &p->b[B_CSQ], &p->b[B_QMIN], &p->b[B_QSTEP],
                                 &p->b[B_DEL], &none, &v[B_Q], &none, &v[B_OS], &none, &v[B_OI]};
        rc = checked_run(&j, b);
    }
    PyBuffer_Release(&v[B_Q]);
    PyBuffer_Release(&v[B_OS]);
    PyBuffer_Release(&v[B_OI]);
    return rc == -3 ? NULL : PyLong_FromLong(rc);
}

PyDoc_STRVAR(scratch_sets_made_doc,
"scratch_sets_made() -> int\n\nScratch sets (a thread's buffers) allocated so far; kept in a pool between calls.");

static PyObject *scratch_sets_made(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    pthread_mutex_lock(&pool_mu);
    const long n = pool_made;
    pthread_mutex_unlock(&pool_mu);
    return PyLong_FromLong(n);
}

#ifdef VX_PROF
/* d[key] = o, dropping the reference to o (a debug helper: errors leave the key out). */
static void put(PyObject *d, const char *key, PyObject *o)
{
    if (o) {
        PyDict_SetItemString(d, key, o);
        Py_DECREF(o);
    }
}

static PyObject *prof(PyObject *self, PyObject *args)
{
    static const char *pn[PK_COUNT] = {"prepare", "scan", "rerank", "write", "finish"};
    static const char *cn[PC_COUNT] = {"busy", "items", "spin", "sleep", "wakes", "pread", "preads", "enter",
                                       "cut", "scanpread", "units", "score", "offer", "cutns", "late"};
    PyObject *d = PyDict_New(), *th = PyList_New(0), *ph = PyDict_New();
    if (!d || !th || !ph) {
        Py_XDECREF(d); Py_XDECREF(th); Py_XDECREF(ph);
        return NULL;
    }
    for (int t = 0; t < MAX_THREADS; t++) {
        if (!atomic_load(&prof_thr[t][PC_ITEMS]) && !atomic_load(&prof_thr[t][PC_WAKES]))
            continue;
        PyObject *x = PyDict_New();
        if (!x)
            break;
        put(x, "tid", PyLong_FromLong(t));
        for (int c = 0; c < PC_COUNT; c++)
            put(x, cn[c], PyLong_FromLongLong(atomic_exchange(&prof_thr[t][c], 0)));
        for (int k = 0; k < PK_COUNT; k++)
            put(x, pn[k], PyLong_FromLongLong(atomic_exchange(&prof_tbusy[t][k], 0)));
        PyList_Append(th, x);
        Py_DECREF(x);
    }
    for (int k = 0; k < PK_COUNT; k++)
        put(ph, pn[k], Py_BuildValue("{s:L,s:L,s:L,s:L,s:L}", "late", (long long)atomic_exchange(&prof_late[k], 0),
                                     "wall", (long long)atomic_exchange(&prof_phase[k], 0),
                                     "tailspin", (long long)atomic_exchange(&prof_tailspin[k], 0),
                                     "tailsleep", (long long)atomic_exchange(&prof_tailsleep[k], 0),
                                     "n", (long long)atomic_exchange(&prof_phases[k], 0)));
    put(d, "threads", th);
    put(d, "phases", ph);
    put(d, "serial", PyLong_FromLongLong(atomic_exchange(&prof_serial, 0)));
    put(d, "call", PyLong_FromLongLong(atomic_exchange(&prof_call, 0)));
    put(d, "calls", PyLong_FromLongLong(atomic_exchange(&prof_calls, 0)));
    put(d, "start_team", PyLong_FromLongLong(atomic_exchange(&prof_start, 0)));
    return d;
}
#endif

static PyMethodDef methods[] = {
#ifdef VX_PROF
    {"prof", prof, METH_NOARGS, "Counters of a VX_PROF build (ns), cleared."},
#endif
    {"search_batch", search_batch, METH_VARARGS, search_batch_doc},
    {"prepare", prepare, METH_VARARGS, prepare_doc},
    {"search_prepared", search_prepared, METH_VARARGS, search_prepared_doc},
    {"scratch_sets_made", scratch_sets_made, METH_NOARGS, scratch_sets_made_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vecindex._csearch",
    "The compiled IVF search kernel (C); see vecindex/_csearch.c.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__csearch(void)
{
    pthread_atfork(NULL, NULL, pool_after_fork);
    PyObject *m = PyModule_Create(&module);
    const char *isa = "c";
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !getenv("VECINDEX_NO_AVX2")) {
        score_panels = score_panels_avx2;
        score_panels_x2 = score_panels_avx2_x2;
        score_i8 = score_i8_avx2;
        score_i8_x2 = score_i8_avx2_x2;
        score_f32 = score_f32_avx2;
        isa = "avx2";
    }
#endif
    if (m && (PyModule_AddStringConstant(m, "ISA", isa) < 0
              || PyModule_AddIntConstant(m, "PANEL", PANEL) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
