"""`hk embed` and `hk query`: a file's own embedding, and nearest neighbours from the shell.

Both open the store themselves (like every `hk` command, see hkfs.cli.context);
`hk query` prints exactly what reading a `.query` file in the same directory or
view prints, from an EmbeddingCatalog that never writes STORE/vectors (the
daemon owns it): persisted indexes plus an exact scan of what changed since.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..core.errors import InvalidArgument, NotFound
from ..core.naming import (
    parse_typed_spec,
    term_keyword,
)
from ..mount.paths import view_prefix
from .context import here, store_options
from .main import cli

if TYPE_CHECKING:
    import numpy as np

    from ..query.service import QueryService, Scope
    from .context import Here

# numpy and the embedding modules are imported inside the commands: every `hk` command
# (the shell's prompt and Tab completion included) imports this module.
EMBEDDING_ATTR = "user.hk.embedding"     # = hkfs.query.embeddings.EMBEDDING_ATTR
DEFAULT_K, MAX_K = 10, 10_000            # = hkfs.query.queryfiles.DEFAULT_K, MAX_K (tests check)


def _vector_from(path: Path, row: int | None) -> np.ndarray:
    import numpy as np

    from vecindex.io import open_vectors

    from ..query.queryfiles import parse_vector

    try:
        x = open_vectors(path, None) if path.suffix.lower() in (".npy", ".fvecs") else None
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"{path}: {exc}") from None
    if x is None:
        try:
            return parse_vector(path.read_bytes(), str(path))
        except OSError as exc:
            raise InvalidArgument(f"{path}: {exc.strerror}") from None
    if row is None:
        if len(x) != 1:
            raise InvalidArgument(f"{path} holds {len(x)} rows; say which with --row N")
        row = 0
    if not 0 <= row < len(x):
        raise InvalidArgument(f"{path}: no row {row} (it holds {len(x)})")
    v = np.asarray(x[row], np.float32)
    if not np.all(np.isfinite(v)):
        raise InvalidArgument(f"{path}: row {row} holds NaN or infinite values")
    return v


def _text(v: np.ndarray) -> bytes:
    from ..query.queryfiles import format_vector

    return format_vector(v).encode()


@cli.command("embed")
@click.argument("file")
@click.option("--vector", "vector", metavar="NUMBERS", help="The embedding as text numbers ('0.1 0.2 ...').")
@click.option("--from", "from_", type=click.Path(dir_okay=False, path_type=Path), metavar="X.npy",
              help="Take the embedding from a vector file (.npy, .fvecs, or a text file).")
@click.option("--row", type=int, default=None, help="Which row of --from (needed when it holds several).")
@click.option("--clear", is_flag=True, help="Remove the file's embedding.")
@click.option("--show", is_flag=True, help="Print the file's embedding.")
@store_options
def embed_cmd(file: str, vector: str | None, from_: Path | None, row: int | None, clear: bool, show: bool,
              store: Path | None, user: str | None) -> None:
    """Give FILE an embedding of its own (the user.hk.embedding attribute).

    Example: hk embed dog.jpg --from dogs.npy --row 3
    """
    from ..query.embeddings import parse_embedding
    from ..query.queryfiles import parse_vector

    given = [x for x in (vector is not None, from_ is not None, clear, show) if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --vector, --from, --clear, --show")
    with here(store, user) as h:
        ref = h.files(file, many=False)[0]
        eid = ref.info.id
        if show:
            try:
                v = parse_embedding(h.store.get_xattr("file", eid, EMBEDDING_ATTR))
            except NotFound:
                raise click.ClickException(f"{file} has no embedding of its own") from None
            click.echo(_text(v).decode(), nl=False)
            return
        h.require_file_owner(ref.info)
        if clear:
            try:
                h.store.remove_xattr("file", eid, EMBEDDING_ATTR)
            except NotFound:
                pass
            return
        if vector is not None:
            v = parse_vector(vector, "--vector")
        else:
            assert from_ is not None
            v = _vector_from(from_, row)
        h.store.set_xattr("file", eid, EMBEDDING_ATTR, _text(v))


def _show_body(name: str, store: Path | None, user: str | None) -> None:
    """Print a stored query's body (= getfattr -n user.hk.query NAME.query through the mount)."""
    from ..mount.queryfs import is_query_name

    with here(store, user) as h:
        ref = h.files(name, many=False)[0]
        if not is_query_name(ref.info.name.lstrip(",")):
            raise InvalidArgument(f"{name} is not a stored query (NAME.query)")
        try:
            body = h.store.entity_path(ref.info.id).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"{name}: {exc.strerror}") from None
    click.echo(body.decode("utf-8", "surrogateescape"), nl=False)


def _scope_here(svc: QueryService, h: Here) -> Scope:
    """The scope of the cwd: its directory, or its view (what `.query` files there see)."""
    rel = h.rel.strip("/")
    prefix = rel + "/" if rel else ""
    if h.dirid is not None:
        return svc.dir_scope(h.dirid, prefix)
    if h.view is not None and not h.keyspace:
        return svc.view_scope(h.ns, tuple(h.view), prefix)
    raise NotFound(f"{h.rel}: a query needs a directory or a view")


@cli.command("query")
@click.argument("spec", required=False)
@click.option("--vector", "vector", metavar="NUMBERS", help="The query vector as text numbers.")
@click.option("--like", "like", metavar="FILE", help="Files most similar to FILE (FILE itself excluded).")
@click.option("-k", "k", type=click.IntRange(1, MAX_K), default=DEFAULT_K, show_default=True,
              help="How many hits.")
@click.option("--nprobe", type=click.IntRange(1), default=None, help="Inverted lists probed (default: the index's).")
@click.option("--show", "show", metavar="NAME.query",
              help="Print the body of a stored query (what it asks, not its results).")
@store_options
def query_cmd(spec: str | None, vector: str | None, like: str | None, k: int, nprobe: int | None,
              show: str | None, store: Path | None, user: str | None) -> None:
    """Nearest neighbours among the embeddings of a view or directory (default: the current one).

    SPEC is an HK list ('//photo//animal/dog', ',' for the CKL). Prints what a
    `.query` file there reads: score, a tab, the hit's path from the mount root.

    Example: hk query //photo --like dog.npy -k 5
    """
    from ..mount.queryfs import NO_HITS
    from ..query.queryfiles import Query, format_results, parse_vector
    from ..query.service import QueryService

    if show is not None:
        if spec or vector is not None or like is not None:
            raise click.UsageError("--show takes no SPEC, --vector or --like")
        _show_body(show, store, user)
        return
    if (vector is None) == (like is None):
        raise click.UsageError("give one of --vector or --like (or --show NAME.query)")
    with here(store, user) as h:
        svc = QueryService(h.store, writable=False)
        try:
            if spec:
                hks, name = parse_typed_spec(spec, h.ckl)      # operators too: //photo//@not/animal
                if name is not None:
                    raise InvalidArgument(f"{spec}: SPEC names a view, not a file (--like FILE)")
                for term in hks:
                    kw = term_keyword(term)
                    if kw and not h.store.keyword_exists(h.ns, kw):
                        raise NotFound(f"no keyword //{'/'.join(kw)}")
                base = h.rel.strip("/") + "/" if h.dirid is not None and h.rel.strip("/") else ""
                sc = svc.view_scope(h.ns, hks, base + view_prefix(hks))
            else:
                sc = _scope_here(svc, h)
            exclude = None
            if like is not None:
                ref = h.files(like, many=False)[0]
                v = svc.like(ref.info.ns, ref.info.id)
                if v is None:
                    raise InvalidArgument(f"{like} has no embedding (not an entry, no {EMBEDDING_ATTR})")
                exclude = ref.info.id
            else:
                assert vector is not None
                v = parse_vector(vector, "--vector")
            hits = svc.run(sc, Query(v, k, nprobe), exclude)
        finally:
            svc.stop()
        if not hits:
            click.echo(f"hk query: no hits: {NO_HITS}", err=True)
        click.echo(format_results(hits).decode("utf-8", "surrogateescape"), nl=False)
