"""When the mount skips invalidating the kernel's caches, and that nothing goes stale because of it.

A change to a file reached only through its one directory link (never through a view since
the last invalidation) drops nothing: the kernel updates the one inode it holds. These tests
prime the kernel's caches through every other kind of path first (a `,` view, a keyword view,
a second hard link, a clash, a keyword shadowing a file) and check that the very next command
sees the change there. See hkfs.mount.model.MountModel.entity_stale and hkfs.fuse.kernel_cache.KernelCache.carry_out.
"""

from __future__ import annotations

import os
import stat

from conftest import Mount


def test_change_through_a_directory_shows_in_a_comma_view(mount: Mount) -> None:
    # d's DKL is empty, so d/, lists every file of the namespace: a second path to d/f
    mount.run("""
        mkdir d && printf 1 > d/f
        test "$(stat -c %s d/,/f)" = 1 && ls -l d/, >/dev/null
        printf 234 >> d/f
        test "$(stat -c %s d/,/f)" = 4
        test "$(stat -c %s d/,f)" = 4
        chmod 600 d/f
        test "$(stat -c %a d/,/f)" = 600
    """)


def test_change_through_a_directory_shows_in_keyword_views(mount: Mount) -> None:
    mount.run("""
        mkdir d @/k && printf 1 > d/f
        setfattr -n user.hk.keywords -v //k d/f
        ls -l @/k >/dev/null && test "$(stat -c %s @/k/f)" = 1
        printf 2345 >> d/f
        test "$(stat -c %s @/k/f)" = 5
        touch -d @1000000000 d/f
        test "$(stat -c %Y @/k/f)" = 1000000000
        : > d/f
        test "$(stat -c %s @/k/f)" = 0
    """)


def test_second_hard_link_and_unlink(mount: Mount) -> None:
    mount.run("""
        mkdir d e && printf 1 > d/f && ln d/f e/f
        test "$(stat -c %h e/f)" = 2 && test "$(stat -c %s e/f)" = 1
        printf 22 >> d/f
        test "$(stat -c %s e/f)" = 3
        rm d/f
        test "$(stat -c %h e/f)" = 1
        not test -e d/f
    """)


def test_unlink_of_a_viewed_file_with_two_links(mount: Mount) -> None:
    mount.run("""
        mkdir d e @/k && printf 1 > d/f && ln d/f e/f
        setfattr -n user.hk.keywords -v //k d/f
        test "$(stat -c %h @/k/f)" = 3                  # two links and one HK
        rm e/f
        test "$(stat -c %h @/k/f)" = 2
        test "$(stat -c %h d/f)" = 2
    """)


def test_create_of_a_shared_name_turns_views_to_clash_names(mount: Mount) -> None:
    mount.run("""
        mkdir @/k @/j
        printf a > @/k/new
        test -f @/k/new && ls @/k | grep -qx new
        printf b > @/j/new                              # a second file named 'new'
        test -f @/j/new && test -f @/k/new              # each view still holds one 'new'
        setfattr -n user.hk.keywords -v //k//j @/j/new  # now both in @/k: a clash there
        not test -e @/k/new
        test "$(ls @/k | grep -c '^new~')" = 2
        mkdir d && printf c > d/new && ls -l d/, >/dev/null   # d's ',' lists the namespace
        not test -e d/,/new
        test "$(ls d/, | grep -c '^new~')" = 3
    """)


def test_unique_create_in_a_directory_is_listed_everywhere_at_once(mount: Mount) -> None:
    mount.run("""
        mkdir d && ls -l d/, >/dev/null
        for i in 1 2 3; do printf $i > d/f$i; done
        test "$(ls d/, | tr '\\n' ' ')" = "f1 f2 f3 "
        test "$(cat d/,/f2)" = 2 && test "$(stat -c %s d/,f3)" = 1
        rm d/f2
        not test -e d/,/f2
        test "$(ls d/, | tr '\\n' ' ')" = "f1 f3 "
    """)


def test_keyword_mkdir_and_rmdir_shadow_a_cached_file(mount: Mount) -> None:
    mount.run("""
        mkdir @/k && printf x > @/k/x
        test -f @/k/x && stat @/k/x >/dev/null
        hk mkkw //k/x                   # the keyword wins the name; the file is ,x
        test -d @/k/x && test -f @/k/,x
        rmdir @/k/x                     # through the mount: the file takes its name back
        test -f @/k/x
        mkdir @/k/y && test -d @/k/y && ls @/k | grep -qx y
    """)


def test_stat_after_create_needs_no_round_trip_per_path(mount: Mount) -> None:
    """Creating files in a directory leaves the kernel's other entries valid (no epoch per file):
    the sync counter, which counts invalidations, does not move for creates and writes there."""
    mount.run("""
        mkdir d && before=$(getfattr --only-values -n user.hk.sync .)
        for i in $(seq 1 20); do printf x > d/f$i; done
        after=$(getfattr --only-values -n user.hk.sync .)
        test $((after - before)) -le 2          # the two getfattr calls each count one
        test "$(stat -c %s d/f20)" = 1
    """)


def test_api_change_reaches_an_open_descriptor(mount: Mount) -> None:
    """A process that changes a file's attributes with the Python API pokes the daemon, which
    also drops the inodes of files open through the mount (their descriptors keep attributes)."""
    from hkfs.core.store import Store

    (mount.root / "d").mkdir()
    (mount.root / "d" / "f").write_bytes(b"12345")
    fd = os.open(mount.root / "d" / "f", os.O_RDONLY)
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o644
        with Store.open(mount.store) as st:
            eid = st.lookup(st.root_dir(st.namespace_id(os.getuid())), "d")
            f = st.lookup(eid.id, "f")
            st.set_attrs(f.id, mode=0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)


def test_writing_an_embedding_entry_updates_query_sizes(mount: Mount) -> None:
    """Bytes of an entry file (.npy/.fvecs/.f32) change what FILE.query files answer, so a
    write to one in a directory drops the cached entries like a change seen through a view."""
    mount.run("""
        mkdir d
        "$PY" -c 'import numpy as np; np.save("d/a.npy", np.eye(3, dtype=np.float32)[:2])'
        "$PY" -c 'import numpy as np; np.save("d/b.npy", np.ones((1, 3), dtype=np.float32))'
        before=$(stat -c %s d/a.npy.query)
        test "$before" = "$(wc -c < d/a.npy.query)" && test "$before" -gt 0
        "$PY" -c 'import numpy as np; np.save("d/b.npy", np.ones((3, 3), dtype=np.float32))'
        after=$(stat -c %s d/a.npy.query)
        test "$after" = "$(wc -c < d/a.npy.query)" && test "$after" -gt "$before"
    """)


def test_create_of_a_shared_name_in_a_directory_turns_a_cached_name_to_clash_names(mount: Mount) -> None:
    # d's DKL is empty: d/, lists the whole namespace, where 'x' names one file until e/x is made
    mount.run("""
        mkdir @/k d e && printf a > @/k/x
        ls -l d/, >/dev/null && stat d/,/x >/dev/null   # (no read: it would expire atime)
        printf b > e/x                   # a new file with a name the namespace already has
        not test -e d/,/x
        test "$(ls d/, | grep -c '^x~')" = 2
    """)


def test_rm_in_a_view_drops_the_file_from_views_it_leaves(mount: Mount) -> None:
    mount.run("""
        mkdir @/a @/b && printf 1 > @/a/f && setfattr -n user.hk.keywords -v //a//b @/a/f
        stat @/a/@/b/f @/b/f >/dev/null                 # cached under two other views
        rm @/a/f                                        # detaches //a only
        not test -e @/a/@/b/f
        test -e @/b/f
    """)
