"""Compiled search kernels (numba); imported by vecindex._kernels on the first search only.

One call searches a batch of queries end to end without the GIL: score the
centroids, pick the `nprobe` best lists, read each list with `pread(2)` into a
reused buffer (so RSS does not grow with the bytes scanned), score the rows
into a bounded min-heap, re-rank int8 candidates exactly from the float32 rows,
and read the k ids. The pure-numpy path in ivf.py does the same with many small
numpy calls; this removes their fixed cost (about 0.2 ms a query) and lets
threads run in parallel. Compiled code is cached next to this file (`cache=True`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

# libc's pread, called by symbol (not by address, so the cache stays valid across runs)
_pread = types.ExternalFunction("pread", types.intp(types.int32, types.voidptr, types.uintp, types.int64))
_FM = {"reassoc", "contract", "nsz", "arcp"}  # vectorizable sums; keeps inf/nan semantics
#: re-rank candidates at most this many rows apart are read with one pread of their span
RERANK_GAP = 16


@njit(cache=True, nogil=True)
def _read_full(fd, ptr, nbytes, offset):
    got = 0
    while got < nbytes:
        r = _pread(fd, ptr + got, nbytes - got, offset + got)
        if r <= 0:
            return False
        got += r
    return True

@njit(cache=True, nogil=True)
def _contains(sorted_set, x):
    lo, hi = 0, len(sorted_set)
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_set[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(sorted_set) and sorted_set[lo] == x


@njit(cache=True, nogil=True)
def _heap_push(hs, hp, n, cap, s, p):
    """Keep the `cap` best (score, position) pairs in a min-heap; returns the new size.

    Equal scores do not replace: of tied rows the first scanned (lowest position) stays.
    """
    if n < cap:  # sift up from the new leaf
        i = n
        n += 1
        while i > 0 and _worse(s, p, hs[(i - 1) >> 1], hp[(i - 1) >> 1]):
            hs[i], hp[i] = hs[(i - 1) >> 1], hp[(i - 1) >> 1]
            i = (i - 1) >> 1
    elif s > hs[0]:  # better than the worst kept: replace it, sift down
        i = 0
        while 2 * i + 1 < n:
            c = 2 * i + 1
            if c + 1 < n and _worse(hs[c + 1], hp[c + 1], hs[c], hp[c]):
                c += 1
            if _worse(s, p, hs[c], hp[c]):
                break
            hs[i], hp[i] = hs[c], hp[c]
            i = c
    else:
        return n
    hs[i], hp[i] = s, p
    return n


@njit(cache=True, nogil=True)
def _worse(sa, pa, sb, pb):
    """(sa, pa) ranks below (sb, pb): a lower score, or an equal score at a later position."""
    return sa < sb or (sa == sb and pa > pb)


@njit(cache=True, nogil=True, fastmath=_FM)
def _dot_i8(qs, codes, r):
    acc = np.float32(0.0)
    for j in range(qs.shape[0]):
        acc += qs[j] * np.float32(codes[r, j])
    return acc

@njit(cache=True, nogil=True, fastmath=_FM)
def _dot_f32(q, x, r):
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * x[r, j]
    return acc

@njit(cache=True, nogil=True, fastmath=_FM)
def _negsqdist(q, x, r):
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        t = x[r, j] - q[j]
        acc += t * t
    return -acc

@njit(cache=True, nogil=True, fastmath=_FM)
def _probe(qv, cents, csq, nprobe, hs, hp, lists):
    """The nprobe best lists of one query, sorted by list number (= file order)."""
    n = 0
    for c in range(cents.shape[0]):
        s = _dot_f32(qv, cents, c)
        if csq.shape[0]:
            s = 2 * s - csq[c]
        n = _heap_push(hs, hp, n, nprobe, s, c)
    lists[:n] = np.sort(hp[:n])
    return n

@njit(cache=True, nogil=True)
def search_batch(fd_scan, fd_vec, fd_sq, fd_ids, int8_scan, l2, cosine, offsets, cents, csq, probes,
                 nprobe, Q, qmin, qstep, keep, k, deleted, allowed, use_allowed,
                 buf8, buff, sqbuf, rowbuf, idbuf, out_s, out_p, out_ids):
    """Search each row of Q over the main lists (`cosine`: each row is normalized here).

    int8_scan: score codes with q * qstep plus q . (qmin + 128 qstep), then re-rank `keep` candidates
    exactly; else score float32 rows and keep k. `probes` (nq, P) gives the lists when
    P > 0, else the centroids are scored here. Internally higher is better (l2: -|q-x|^2).
    Writes out_s/out_p/out_ids (position -1 and id -1 where fewer than k rows are in scope);
    ids of positions past the main rows (none here) are left to the caller.
    Returns 0, or -1 when a file turned out shorter than the header says.
    """
    nq, d = Q.shape
    cap = buf8.shape[0] if int8_scan else buff.shape[0]
    rb = d if int8_scan else 4 * d
    heap_cap = keep if int8_scan else k
    hs = np.empty(max(heap_cap, nprobe), np.float32)
    hp = np.empty(max(heap_cap, nprobe), np.int64)
    lists = np.empty(max(nprobe, probes.shape[1]), np.int64)
    ndel = deleted.shape[0]
    qv = np.empty(d, np.float32)
    qs = np.empty(d, np.float32)
    order = np.empty(k, np.int64)
    for qi in range(nq):
        nrm = np.float32(1.0)
        if cosine:
            acc = np.float32(0.0)
            for j in range(d):
                acc += Q[qi, j] * Q[qi, j]
            if acc > 0:
                nrm = np.float32(1.0) / np.sqrt(acc)
        const = np.float32(0.0)
        for j in range(d):
            qv[j] = Q[qi, j] * nrm
            if int8_scan:
                qs[j] = qv[j] * qstep[j]
                const += qv[j] * (qmin[j] + 128 * qstep[j])
        if probes.shape[1] > 0:
            nl = probes.shape[1]
            lists[:nl] = np.sort(probes[qi])
        else:
            nl = _probe(qv, cents, csq, nprobe, hs, hp, lists)
        n = 0
        for li in range(nl):
            lst = lists[li]
            if li > 0 and lst == lists[li - 1]:
                continue
            st = offsets[lst]
            ln = offsets[lst + 1] - st
            done = 0
            while done < ln:
                m = min(ln - done, cap)
                if int8_scan:
                    if not _read_full(fd_scan, buf8.ctypes.data, m * rb, (st + done) * rb):
                        return -1
                    if l2 and not _read_full(fd_sq, sqbuf.ctypes.data, m * 4, (st + done) * 4):
                        return -1
                elif not _read_full(fd_scan, buff.ctypes.data, m * rb, (st + done) * rb):
                    return -1
                for r in range(m):
                    pos = st + done + r
                    if ndel and _contains(deleted, pos):
                        continue
                    if use_allowed and not _contains(allowed, pos):
                        continue
                    if int8_scan:
                        s = _dot_i8(qs, buf8, r) + const
                        if l2:
                            s = 2 * s - sqbuf[r]
                    elif l2:
                        s = _negsqdist(qv, buff, r)
                    else:
                        s = _dot_f32(qv, buff, r)
                    n = _heap_push(hs, hp, n, heap_cap, s, pos)
                done += m
        if int8_scan and n:
            # exact re-rank: read the candidates' float32 rows (sorted: forward reads)
            # candidates close together (often: a few lists hold them all) share one read of
            # their span; a syscall costs more than copying a few KiB
            cp = np.sort(hp[:n])
            nc = n
            n = 0
            a = 0
            while a < nc:
                b = a + 1
                while b < nc and cp[b] - cp[b - 1] <= RERANK_GAP and cp[b] - cp[a] < rowbuf.shape[0]:
                    b += 1
                span = cp[b - 1] - cp[a] + 1
                if not _read_full(fd_vec, rowbuf.ctypes.data, span * 4 * d, cp[a] * 4 * d):
                    return -1
                for j in range(a, b):
                    r = cp[j] - cp[a]
                    s = _negsqdist(qv, rowbuf, r) if l2 else _dot_f32(qv, rowbuf, r)
                    n = _heap_push(hs, hp, n, k, s, cp[j])
                a = b
        # best first, ties by position (n <= k: an insertion sort)
        for i in range(n):
            order[i] = i
        for i in range(1, n):
            j = i
            while j > 0:
                a, b = order[j - 1], order[j]
                if hs[a] > hs[b] or (hs[a] == hs[b] and hp[a] < hp[b]):
                    break
                order[j - 1], order[j] = b, a
                j -= 1
        for i in range(k):
            if i < n:
                out_s[qi, i] = hs[order[i]]
                out_p[qi, i] = hp[order[i]]
            else:
                out_p[qi, i] = -1
                out_ids[qi, i] = -1
        # ids: positions close together share one read, as in the re-rank
        srt = np.argsort(out_p[qi, :n])
        a = 0
        while a < n:
            p0 = out_p[qi, srt[a]]
            b = a + 1
            while (b < n and out_p[qi, srt[b]] - out_p[qi, srt[b - 1]] <= RERANK_GAP
                   and out_p[qi, srt[b]] - p0 < idbuf.shape[0]):
                b += 1
            span = out_p[qi, srt[b - 1]] - p0 + 1
            if not _read_full(fd_ids, idbuf.ctypes.data, span * 8, p0 * 8):
                return -1
            for j in range(a, b):
                out_ids[qi, srt[j]] = idbuf[out_p[qi, srt[j]] - p0]
            a = b
    return 0
