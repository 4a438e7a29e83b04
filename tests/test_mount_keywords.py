"""Keywords through ordinary tools: views, '@', ',', clash names, xattrs, editor saves."""

from __future__ import annotations

import pytest
from conftest import Mount

pytestmark = pytest.mark.mount


def test_keyword_space_and_views(mount: Mount) -> None:
    mount.run("""
        mkdir @/photo @/photo/2000 @/animal @/animal/dog @/animal/cat
        test "$(ls @)" = "$(printf 'animal\\nphoto')"
        echo woof > @/photo/2000/@/animal/dog/fig1.jpg      # created carrying //photo/2000//animal/dog
        test "$(getfattr --only-values -n user.hk.keywords @/photo/,fig1.jpg)" = "//animal/dog//photo/2000"
        test "$(ls @/photo)" = "$(printf '2000\\nfig1.jpg')"   # child keywords, then files
        test "$(cat @/animal/fig1.jpg)" = woof
        test "$(cat @/animal/dog/@/photo/fig1.jpg)" = woof
        test "$(stat -c %i @/animal/fig1.jpg)" = "$(stat -c %i @/photo/2000/fig1.jpg)"
        not test -e @/animal/cat/fig1.jpg                       # the view does not match it: ENOENT
        not cat @/animal/cat/fig1.jpg 2>/dev/null
        not test -e @/nokw
        not touch @/newfile 2>/dev/null                         # '@' alone holds keywords only
        rmdir @/animal/cat
    """)
    r = mount.run("rmdir @/animal/dog", check=False)
    assert "not empty" in r.stderr.lower()


def test_ln_mv_rm_in_views_never_delete_bytes(mount: Mount) -> None:
    mount.run("""
        mkdir @/a @/b @/b/x @/c
        echo data > @/a/f.txt
        ln @/a/f.txt @/b/                                     # attaches //b
        test "$(getfattr --only-values -n user.hk.keywords @/a/f.txt)" = "//a//b"
        mv @/b/f.txt @/c/f.txt                                # retag: //b -> //c
        test "$(getfattr --only-values -n user.hk.keywords @/a/f.txt)" = "//a//c"
        not test -e @/b/f.txt
        mv @/c/f.txt @/c/g.txt                                # within a view: rename
        test "$(cat @/a/g.txt)" = data
        rm @/c/g.txt                                          # detaches //c only
        test "$(getfattr --only-values -n user.hk.keywords @/a/g.txt)" = "//a"
        rm @/a/g.txt                                          # no keyword, no link: lost+found
        test "$(cat lost+found/g.txt)" = data
        mv lost+found/g.txt @/b/x/                            # from a directory into a view
        test "$(getfattr --only-values -n user.hk.keywords @/b/g.txt)" = "//b/x"
        not test -e lost+found/g.txt
        mkdir d; mv @/b/g.txt d/                               # from a view into a directory
        test "$(cat d/g.txt)" = data
        test -z "$(getfattr --only-values -n user.hk.keywords d/g.txt)"
        ln d/g.txt @/a/; test "$(cat @/a/g.txt)" = data; test -e d/g.txt
    """)



def test_ln_under_another_name_in_a_view_is_refused(mount: Mount) -> None:
    """A file has one name in every view, so link(2) to another name in a view cannot make a
    second one: EPERM, nothing changed (it used to rename the file, directory links too, and
    a link-then-unlink tool's unlink then failed). git's object writes fall back to rename."""
    mount.run("""
        mkdir @/k @/k/sub @/j d
        echo a > @/k/a; ln @/k/a d/a
        fails_with 'Operation not permitted' ln @/k/a @/k/b
        fails_with 'Operation not permitted' ln @/k/a @/j/b
        fails_with 'Operation not permitted' ln d/a @/j/b
        test "$(ls @/k)" = "$(printf 'a\\nsub')"; test -z "$(ls @/j)"; test "$(ls d)" = a
        test "$(getfattr --only-values -n user.hk.keywords d/a)" = //k
        ln @/k/a @/j/                                          # its own name: attaches //j
        test "$(getfattr --only-values -n user.hk.keywords d/a)" = //j//k
        echo 1 > @/k/c.txt; echo 2 > @/k/sub/c.txt            # @/k lists them as c~ID.txt
        one=$(cd @/k && ls c~*.txt | head -1)
        ln "@/k/$one" @/j/                                     # a clash name is the file's own name
        test "$(ls @/j)" = "$(printf 'a\\nc.txt')"
        "$PY" - <<'PY'
import errno, os
# git's finalize_object_file: link the temp to the final name, else rename it there
tmp, final = "@/k/tmp_obj_x", "@/k/obj"
with open(tmp, "w") as f:
    f.write("blob")
try:
    os.link(tmp, final)
    os.unlink(tmp)
except OSError as e:
    assert e.errno == errno.EPERM, e
    os.rename(tmp, final)
assert open(final).read() == "blob" and not os.path.exists(tmp)
PY
    """)


def test_comma_views_dkl_and_clash_names(mount: Mount) -> None:
    mount.run("""
        mkdir @/paper @/paper/os @/paper/dps
        echo os > @/paper/os/main.tex
        echo dps > @/paper/dps/main.tex
        ls @/paper | grep -E '^main~[0-9]+\\.tex$' | wc -l | grep -qx 2
        not cat @/paper/main.tex 2>/dev/null                    # shared name: only the clash names
        for f in @/paper/main~*.tex; do cat "$f"; done | sort | tr '\\n' ' ' | grep -qx 'dps os '
        test "$(cat @/paper/os/main.tex)" = os               # alone in its view: plain name
        id=$(ls @/paper | grep main~ | head -1 | sed 's/main~\\([0-9]*\\).tex/\\1/')
        not test -e @/paper/nothere/main~$id.tex
        mkdir work
        setfattr -n user.hk.dkl -v //paper/os work
        test "$(getfattr --only-values -n user.hk.dkl work)" = //paper/os
        test "$(ls work/,)" = main.tex
        test "$(cat work/,main.tex)" = os
        ln work/,main.tex work/main.tex                       # load into the directory
        test "$(cat work/main.tex)" = os
        setfattr -n user.hk.dkl -v //paper work
        test "$(ls work/,/os)" = main.tex                     # ',' then a child keyword of //paper
        echo fig > @/paper/os/os.txt 2>/dev/null || true
        mkdir @/paper/os/sub; echo clash > @/paper/os/,sub 2>/dev/null || echo clash > @/paper/os/@/paper/dps/sub
        getfattr -n user.hk.ns work | grep -q user.hk.ns
    """)


def test_keyword_named_like_a_file_is_reached_with_comma(mount: Mount) -> None:
    mount.run("""
        mkdir @/k
        echo body > @/k/notes
        not mkdir @/k/notes 2>/dev/null                         # the kernel sees the file: EEXIST
        "$PY" -c "from hkfs.core.store import Store; s = Store.open('$S'); s.mkkw(s.namespace_id(0), ('k', 'notes'))"
        test -d @/k/notes
        ls @/k | grep -qx ',notes'
        test "$(cat @/k/,notes)" = body
    """)


def test_xattrs(mount: Mount) -> None:
    mount.run("""
        mkdir @/a @/b d
        echo x > @/a/f
        setfattr -n user.hk.keywords -v //a//b @/a/f
        test "$(getfattr --only-values -n user.hk.keywords @/b/f)" = //a//b
        ctime() { "$PY" -c 'import os, sys; print(os.stat(sys.argv[1]).st_ctime_ns)' "$1"; }
        c0=$(ctime @/a/f); d0=$(ctime d)
        setfattr -n user.color -v blue @/a/f
        test "$(getfattr --only-values -n user.color @/b/f)" = blue
        test "$(ctime @/b/f)" -gt "$c0"                         # POSIX: setxattr changes ctime
        getfattr -d @/a/f | grep -q 'user.color="blue"'
        setfattr -x user.color @/a/f
        not getfattr -n user.color @/a/f 2>/dev/null
        setfattr -n user.tag -v t d
        getfattr -d d | grep -q user.tag
        test "$(ctime d)" -gt "$d0"
        not setfattr -n user.hk.keywords -v '//a/..' @/a/f 2>/dev/null   # EINVAL
        not setfattr -n user.hk.keywords -v 'nope' @/a/f 2>/dev/null
        not setfattr -n trusted.x -v 1 @/a/f 2>/dev/null
        setfattr -x user.hk.keywords @/a/f                     # no keyword, no link: lost+found
        test "$(cat lost+found/f)" = x
    """)
    r = mount.run("setfattr -n user.hk.keywords -v '//a/..' lost+found/f", check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr


def need_vim(mount: Mount) -> None:
    if mount.run("command -v vim", check=False).returncode != 0:
        pytest.skip("vim not installed")


# a document tagged //doc/memo with a directory link d/m.txt
DOC_TWO_NAMES = """
        mkdir @/doc @/doc/memo d
        printf 'one\\ntwo\\n' > @/doc/memo/m.txt
        ln @/doc/memo/m.txt d/m.txt
"""


def test_editor_saves_keep_identity(mount: Mount) -> None:
    need_vim(mount)
    mount.run(DOC_TWO_NAMES + """
        setfattr -n user.note -v keep @/doc/m.txt
        ino=$(stat -c %i @/doc/m.txt)
        sed -i 's/one/ONE/' @/doc/memo/m.txt                   # temp file + rename over
        test "$(head -1 d/m.txt)" = ONE
        test "$(stat -c %i @/doc/m.txt)" = "$ino"
        test "$(getfattr --only-values -n user.hk.keywords d/m.txt)" = //doc/memo
        test "$(getfattr --only-values -n user.note d/m.txt)" = keep
        sed -i 's/ONE/1/' d/m.txt                               # through the directory link
        test "$(head -1 @/doc/m.txt)" = 1
        test "$(stat -c %i @/doc/m.txt)" = "$ino"
        test "$(ls @/doc)" = "$(printf 'm.txt\\nmemo')"        # no temp files left behind
        test "$(ls d)" = m.txt
    """)


def test_editor_saves_of_a_file_open_elsewhere_keep_identity(mount: Mount) -> None:
    """A save by rename over a document that is open (a pager, `tail -f`, or the editor's own
    read descriptor, whose close the kernel reports to the daemon later: RELEASE is sent
    asynchronously) is an editor save all the same. libfuse first hides an open destination
    (a rename to `.fuse_hidden*` in the same request); taken as a removal, it made the save a
    plain rename: d/m.txt went to the temp (a new inode named `sedXXXXXX`) and the document
    kept only its keyword and its old bytes. test_editor_saves_keep_identity failed so, once,
    under load (sed's RELEASE of the document still queued); a descriptor held open makes it
    certain. The reader keeps the old bytes, with link count 0, as after rename(2) on ext4."""
    mount.run(DOC_TWO_NAMES + """
        setfattr -n user.note -v keep d/m.txt
        ino=$(stat -c %i d/m.txt)
        exec 3<d/m.txt                                           # held open through the link
        sed -i 's/one/ONE/' d/m.txt
        test "$(head -1 @/doc/memo/m.txt)" = ONE
        test "$(stat -c %i d/m.txt)" = "$ino"
        test "$(getfattr --only-values -n user.hk.keywords d/m.txt)" = //doc/memo
        test "$(getfattr --only-values -n user.note @/doc/m.txt)" = keep
        fst='import os; s = os.fstat(3); print(s.st_nlink, s.st_size)'
        test "$("$PY" -c "$fst")" = "0 8"                        # the reader's old bytes
        test "$(head -1 <&3)" = one
        exec 4<@/doc/memo/m.txt                                  # held open in the view
        sed -i 's/two/TWO/' @/doc/memo/m.txt
        test "$(cat d/m.txt)" = "$(printf 'ONE\nTWO')"
        test "$(stat -c %i @/doc/memo/m.txt)" = "$ino"
        test "$(getfattr --only-values -n user.hk.keywords d/m.txt)" = //doc/memo
        test "$(tail -1 <&4)" = two
        exec 3<&- 4<&-
        test "$(ls -a d | tr '\n' ' ')" = ". .. m.txt "           # no hidden or temp name left
        test "$(ls -a @/doc/memo | tr '\n' ' ')" = ". .. m.txt "
        test -z "$(ls lost+found 2>/dev/null)"
        test "$(getfattr --only-values -n user.note d/m.txt)" = keep
    """)


def test_vim_saves_in_a_view_keep_identity(mount: Mount) -> None:
    """vim as users run it (nocompatible: backupcopy=auto) renames the original to NAME~,
    writes a new NAME and deletes NAME~ when the file has one link, which in a view would
    split the file (issue 11). st_nlink counts a file's HKs too and is at least 2 for a
    tagged file, so vim writes in place: same inode, keywords, links and xattrs.
    'backupskip' is emptied: its default (/tmp/*) skips the backup for a mount under /tmp,
    as the tests' mounts are, and vim then writes in place whatever st_nlink says."""
    need_vim(mount)
    mount.run(DOC_TWO_NAMES + """
        vi() { vim -N -es -u NONE -c 'set backupskip= backupcopy=auto' -c "$1" -c wq "$2"; }
        test "$(stat -c %h @/doc/m.txt)" = 2                    # a directory link and one HK
        ino=$(stat -c %i @/doc/m.txt)
        vi '%s/two/TWO/' @/doc/memo/m.txt
        test "$(tail -1 d/m.txt)" = TWO
        test "$(stat -c %i @/doc/memo/m.txt)" = "$ino"
        test "$(ls d)" = m.txt
        printf 'a\\nb\\n' > @/doc/memo/only.txt                # one HK, no directory link
        setfattr -n user.note -v keep @/doc/memo/only.txt
        ino=$(stat -c %i @/doc/only.txt)
        vi '%s/b/B/' @/doc/only.txt                             # edited through the parent view
        test "$(tail -1 @/doc/memo/only.txt)" = B
        test "$(stat -c %i @/doc/memo/only.txt)" = "$ino"
        test "$(getfattr --only-values -n user.hk.keywords @/doc/only.txt)" = //doc/memo
        test "$(getfattr --only-values -n user.note @/doc/only.txt)" = keep
        test "$(ls @/doc)" = "$(printf 'm.txt\\nmemo\\nonly.txt')"
        test -z "$(ls lost+found 2>/dev/null)"
    """)


def test_tree_tools_see_a_tagged_file_once_per_inode(mount: Mount, tmp_path) -> None:
    """A tagged file reports st_nlink > 1 and appears under several view paths (@/doc/m.txt,
    @/doc/memo/m.txt): tar, cp -a and rsync -aH copy it once and hard-link the other name, du
    counts it once, find -links sees the count; untagged files stay at 1 (as on ext4)."""
    out = tmp_path / "out"
    mount.run(DOC_TWO_NAMES + f"""
        echo plain > d/plain
        test "$(stat -c %h d/plain)" = 1
        test "$(find @/doc -name m.txt -links 2 | wc -l)" = 2      # one directory link, one HK
        mkdir -p {out}/tar {out}/cp {out}/rsync
        (cd @/doc && tar cf - .) | (cd {out}/tar && tar xf -)
        cp -a @/doc/. {out}/cp/
        rsync -aH @/doc/ {out}/rsync/
        for t in tar cp rsync; do
            test "$(cat {out}/$t/m.txt {out}/$t/memo/m.txt)" = "$(printf 'one\\ntwo\\none\\ntwo')"
            test "$(stat -c %i {out}/$t/m.txt)" = "$(stat -c %i {out}/$t/memo/m.txt)"
        done
        test "$(du -sb @/doc | cut -f1)" -lt "$(du -sbl @/doc | cut -f1)"   # -l: count it twice
        mkdir @/copy; cp -R --preserve=mode,links @/doc/. @/copy/     # into a view: one new file, two HKs
        test "$(getfattr --only-values -n user.hk.keywords @/copy/m.txt)" = //copy//copy/memo
        test "$(stat -c %i @/copy/m.txt)" = "$(stat -c %i @/copy/memo/m.txt)"
        test "$(stat -c %i @/copy/m.txt)" != "$(stat -c %i @/doc/m.txt)"
        chmod 600 d/plain; cp -a d/plain @/copy/                  # an untagged file: no keyword list
        test "$(stat -c %a @/copy/plain)" = 600                   # to copy, so it stays in the view
        test -z "$(ls lost+found 2>/dev/null)"
    """)


def test_cp_a_of_a_tagged_file_into_a_view_keeps_both(mount: Mount) -> None:
    """cp -a / rsync -X copy user.hk.keywords: onto a file just made in a view that list is
    added to the view's keywords, so the copy stays in the view it was copied into, keeps its
    mode and its source's keywords (docs/mount.md, "Extended attributes"); a later setfattr on
    it sets exactly what it says, as on any file."""
    mount.run("""
        mkdir -p @/a @/b @/c
        echo tama > @/a/tama.jpg; chmod 640 @/a/tama.jpg
        cp -a @/a/tama.jpg @/b/                                  # cp used to fail here
        test "$(getfattr --only-values -n user.hk.keywords @/b/tama.jpg)" = //a//b
        test "$(stat -c %a @/b/tama.jpg)" = 640
        test "$(cat @/b/tama.jpg)" = tama
        test "$(ls @/a | wc -l)" = 2                             # the original and its copy
        rsync -aX @/b/tama.jpg @/c/                              # rsync: a temp name, then rename
        test "$(getfattr --only-values -n user.hk.keywords @/c/tama.jpg)" = //a//b//c
        setfattr -n user.hk.keywords -v //c @/c/tama.jpg         # a second set is exact
        test "$(getfattr --only-values -n user.hk.keywords @/c/tama.jpg)" = //c
        test -z "$(ls lost+found 2>/dev/null)"
    """)


def test_vim_backupcopy_no_in_a_view_makes_a_new_file(mount: Mount) -> None:
    """backupcopy=no asks vim to rename whatever the link count (rename NAME NAME~, write a
    new NAME, rm NAME~): as on ext4 the saved file is a new inode carrying the view's HKs,
    and nothing is lost: the old file keeps its other names, but a rename in a view renames
    the file (chfn), so its directory link is now NAME~ (docs/mount.md, "Link counts")."""
    need_vim(mount)
    mount.run(DOC_TWO_NAMES + """
        ino=$(stat -c %i @/doc/m.txt)
        vim -N -es -u NONE -c 'set backupskip= backupcopy=no' -c '%s/two/TWO/' -c wq @/doc/memo/m.txt
        test "$(tail -1 @/doc/memo/m.txt)" = TWO
        test "$(stat -c %i @/doc/memo/m.txt)" != "$ino"
        test "$(getfattr --only-values -n user.hk.keywords @/doc/memo/m.txt)" = //doc/memo
        test "$(ls d)" = 'm.txt~'
        test "$(tail -1 'd/m.txt~')" = two
        test "$(stat -c %i 'd/m.txt~')" = "$ino"
        test -z "$(getfattr --only-values -n user.hk.keywords 'd/m.txt~')"
        test "$(ls @/doc/memo)" = m.txt
    """)


def test_scratch_files_made_in_a_view_leave_nothing_in_lost_found(mount: Mount) -> None:
    """Issue 11 item 6: vim's swap files and write probe, and rsync's temp files, made in a
    view are deleted when the tool removes them (they used to pile up in lost+found)."""
    need_vim(mount)
    mount.run("""
        mkdir @/doc
        printf 'one\\ntwo\\n' > @/doc/m.txt
        # vim with its swap file in the view and the write probe (4913); backupcopy=yes writes in place
        vim -N -es -u NONE -c 'set backupskip= backupcopy=yes directory=. swapfile' -c '%s/two/TWO/' -c wq @/doc/m.txt
        test "$(tail -1 @/doc/m.txt)" = TWO
        touch @/doc/.m.txt.swx @/doc/m.txt~ @/doc/.rsync.Ab12Cd
        rm @/doc/.m.txt.swx @/doc/m.txt~ @/doc/.rsync.Ab12Cd
        test "$(ls -A @/doc)" = m.txt
        test -z "$(ls -A lost+found 2>/dev/null)"
        echo keep > @/doc/notes.txt; rm @/doc/notes.txt     # an ordinary name: kept, as before
        test "$(ls -A lost+found)" = notes.txt
    """)


def test_keyword_directories_have_their_own_mode_and_owner(mount: Mount) -> None:
    """mkdir -m under '@' and in a view, chmod/chown of a keyword through any view path ending
    in it, seen at once under every other such path (the kernel's cached attributes go)."""
    mount.run("""
        mkdir -m 700 @/a; mkdir @/b; mkdir -m 751 @/b/@/a/c     # //a/c, made in the view //b//a
        test "$(stat -c %a @/a)" = 700
        test "$(stat -c %a @/a/c @/b/@/a/c)" = "$(printf '751\\n751')"
        stat @/a @/b/@/a @/@or/a >/dev/null                    # cached under three paths
        chmod 705 @/b/@/a
        test "$(stat -c %a @/a @/b/@/a @/@or/a | tr '\\n' ' ')" = "705 705 705 "
        chown 3:4 @/a
        test "$(stat -c %u:%g @/b/@/a)" = 3:4
        mv @/a @/z                                              # a renamed keyword keeps them
        test "$(stat -c %a:%u @/z)" = 705:3
        rmdir @/z/c; rmdir @/z; mkdir @/z                       # made again: mkdir's mode, owner
        test "$(stat -c %a:%u @/z)" = "755:$(id -u)"
        not chmod 700 @ 2>/dev/null; not chmod 700 @/@or 2>/dev/null   # no mode of their own
    """)


def test_changes_by_other_processes_are_visible_at_once(mount: Mount) -> None:
    mount.run("""
        mkdir @/seen
        echo a > @/seen/f
        "$PY" - <<EOF
from hkfs.core.store import Store
st = Store.open("$S")
ns = st.namespace_id(0)
st.mkkw(ns, ("later",))
eid = st.match(ns, [("seen",)])[0].id
st.atkw(eid, [("later",)])
st.chfn(eid, "g")
st.close()
EOF
        test "$(ls @/later)" = g
        not test -e @/seen/f
        test "$(cat @/seen/g)" = a
    """)


def test_hk_commands_inside_the_mount_are_seen_by_the_next_command(mount: Mount) -> None:
    mount.run("""
        mkdir d; cd d
        echo body > f.txt
        hk mkkw //proj
        test -d "$M/@/proj"
        hk atkw //proj f.txt
        test "$(ls "$M/@/proj")" = f.txt
        test "$(getfattr --only-values -n user.hk.keywords f.txt)" = //proj
        hk akl //proj
        test "$(getfattr --only-values -n user.hk.dkl .)" = //proj
        test "$(ls ,)" = f.txt
        setfattr -n user.hk.keywords -v '' f.txt
        not test -e "$M/@/proj/f.txt"
        test "$(hk ls , | wc -l)" = 0
    """)
