"""rename over an existing file through a real mount (issue 11 items 2 and 3).

A plain `mv` gives the destination name the source file (identity, keywords, xattrs,
embedding, owner, mode); only an editor save (a temp made moments ago through the mount,
of the destination's owner) keeps the destination's identity (docs/mount.md).
"""

from __future__ import annotations

import pytest
from conftest import Mount

pytestmark = pytest.mark.mount

# Files made by another process are not fresh temps of this mount: "old" files.
MAKE_OLD = """python3 - <<EOF
from hkfs.core.store import Store
st = Store.open("$S")
ns = st.namespace_id(0)
for name, hks, data in (("tama.jpg", ["//photo"], b"tama"), ("mike.jpg", ["//photo"], b"mike")):
    eid = st.create(ns, name, hks=hks, mode=0o644)
    st.entity_path(eid).write_bytes(data)
    st.record_bytes(eid)
st.close()
EOF
"""


def test_mv_of_an_old_file_over_another_in_a_view_moves_the_source(mount: Mount) -> None:
    mount.run("mkdir @/photo\n" + MAKE_OLD + """
        setfattr -n user.note -v tama @/photo/tama.jpg
        setfattr -n user.hk.embedding -v '1 0 0' @/photo/tama.jpg
        setfattr -n user.note -v mike @/photo/mike.jpg
        ino=$(stat -c %i @/photo/tama.jpg)
        mv @/photo/tama.jpg @/photo/mike.jpg
        test "$(cat @/photo/mike.jpg)" = tama
        test "$(stat -c %i @/photo/mike.jpg)" = "$ino"                 # tama's entity, new name
        test "$(getfattr --only-values -n user.note @/photo/mike.jpg)" = tama
        test "$(getfattr --only-values -n user.hk.keywords @/photo/mike.jpg)" = //photo
        test "$(getfattr --only-values -n user.hk.embedding @/photo/mike.jpg)" = '1 0 0'
        test "$(ls @/photo)" = mike.jpg
        test -z "$(ls lost+found)"                                      # mike's entity is gone
    """)


def test_rename_over_in_a_directory_is_what_a_plain_directory_does(mount: Mount, tmp_path) -> None:
    """The POSIX result, compared with a plain directory: the destination name is the source
    file with its owner and mode; a hard link of the old destination keeps the old bytes."""
    script = """
        cd "$1"
        echo secret > secret; chmod 600 secret                 # root's 0600 file
        echo mine > mine; chown 4242:4242 mine; chmod 644 mine  # another user's file
        ln mine mine-link
        ino=$(stat -c %i secret)
        mv secret mine
        test "$(stat -c %i mine)" = "$ino"
        for f in *; do printf '%s %s %s\n' "$f" "$(stat -c %u:%g:%a:%h "$f")" "$(cat "$f")"; done
    """
    plain = tmp_path / "plain"
    plain.mkdir()
    mount.run("mkdir d")
    want = mount.run(f"set -- {plain}\n" + script).stdout
    got = mount.run('set -- "$M/d"\n' + script).stdout
    assert got == want
    assert got.splitlines() == ["mine 0:0:600:1 secret", "mine-link 4242:4242:644:1 mine"]
