"""Demo embeddings for `make run` (docs/query.md's worked example runs on them).

Eight hand-made features (dog, cat, bird, people, sports, kyoto, food, movie),
plus a little seeded noise so that no two scores tie: every demo photo and
dogs.txt get an embedding of their own (user.hk.embedding), and an embedding
entry `words.npy` (//doc, one row per word in WORDS) shows `path#row` hits.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..core.store import Store
from ..query.embeddings import EMBEDDING_ATTR

__all__ = ["fill_demo_embeddings", "FEATURES", "PHOTO_FEATURES", "WORDS"]

log = logging.getLogger(__name__)

FEATURES = ("dog", "cat", "bird", "people", "sports", "kyoto", "food", "movie")

PHOTO_FEATURES: dict[str, dict[str, float]] = {
    "fig1.jpg": {"dog": 1.0, "people": 0.8},
    "fig2.jpg": {"dog": 1.0},
    "tama.jpg": {"cat": 1.0},
    "mike.jpg": {"cat": 1.0, "kyoto": 0.7},
    "crane.jpg": {"bird": 1.0, "kyoto": 0.2},
    "final.jpg": {"sports": 1.0, "people": 0.3},
    "match.jpg": {"sports": 1.0, "people": 0.7},
    "rink.jpg": {"sports": 0.8, "people": 0.2},
    "goal.jpg": {"sports": 1.0},
    "kinkakuji.jpg": {"kyoto": 1.0},
    "poster.jpg": {"movie": 1.0, "people": 0.3},
    "sushi.jpg": {"food": 1.0, "kyoto": 0.6},
    "dogs.txt": {"dog": 0.9, "people": 0.1},
}

WORDS: dict[str, dict[str, float]] = {
    "dog": {"dog": 1.0}, "poodle": {"dog": 0.9, "people": 0.1}, "cat": {"cat": 1.0},
    "crane": {"bird": 1.0}, "football": {"sports": 1.0, "people": 0.4},
    "skating": {"sports": 0.8}, "temple": {"kyoto": 1.0}, "sushi": {"food": 1.0, "kyoto": 0.3},
    "crowd": {"people": 1.0}, "film": {"movie": 1.0},
}


def _vec(features: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    v = np.array([features.get(f, 0.0) for f in FEATURES], dtype=np.float32)
    return (v + rng.uniform(0.0, 0.08, size=len(FEATURES))).astype(np.float32)


def fill_demo_embeddings(store: Store, user: str | int | None = None) -> int:
    """Add the demo embeddings to a namespace filled by hkfs.demo.data.fill_demo; returns how many
    files got one. Idempotent: files that already carry an embedding, and an existing words.npy,
    are left alone."""
    ns = store.namespace_id(os.getuid() if user is None else user)
    rng = np.random.default_rng(2026)
    done = 0
    for name, feats in PHOTO_FEATURES.items():
        v = _vec(feats, rng)
        for info in store.match(ns, [], name):
            try:
                store.get_xattr("file", info.id, EMBEDDING_ATTR)
                continue
            except Exception:   # noqa: BLE001 - NotFound: not set yet
                pass
            store.set_xattr("file", info.id, EMBEDDING_ATTR,
                            (" ".join(f"{x:.6g}" for x in v) + "\n").encode())
            done += 1
    if not store.match(ns, [], "words.npy") and store.keyword_exists(ns, ("doc",)):
        rows = np.stack([_vec(f, rng) for f in WORDS.values()])
        eid = store.create(ns, "words.npy", hks=[("doc",)], uid=os.getuid(), gid=os.getgid())
        with open(store.entity_path(eid), "wb") as f:
            np.save(f, rows)
        store.record_bytes(eid)
        done += 1
    log.info("demo embeddings: %d files", done)
    return done
