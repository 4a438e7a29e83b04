"""Features users of tag file systems (TMSU, Tagsistant) reach for, through real tools on a
mount: mv of keywords, @or/@not/@only/@untagged views, clean exports with rsync, tar x and
cp -a into views (issue 13)."""

from __future__ import annotations

import shutil

import pytest
from conftest import Mount

pytestmark = pytest.mark.mount


def test_mv_renames_moves_and_merges_keywords(mount: Mount) -> None:
    mount.run("""
        mkdir @/animal @/animal/dgo @/animal/dgo/poodle @/pet @/photo
        echo woof > @/animal/dgo/f.jpg
        echo curl > @/animal/dgo/poodle/p.jpg
        mkdir work; setfattr -n user.hk.dkl -v '//animal/dgo/poodle' work
        mv @/animal/dgo @/animal/dog                          # rename, children and files follow
        test "$(ls @/animal)" = "$(printf 'dog\\nf.jpg\\np.jpg')"            # ls sorts
        test "$(ls @/animal/dog)" = "$(printf 'f.jpg\\np.jpg\\npoodle')"
        test "$(getfattr --only-values -n user.hk.keywords @/animal/dog/poodle/p.jpg)" = //animal/dog/poodle
        test "$(getfattr --only-values -n user.hk.dkl work)" = //animal/dog/poodle   # DKLs follow
        mv @/animal/dog @/pet/                                # move under another keyword
        test -z "$(ls @/animal)"
        test "$(cat @/pet/dog/f.jpg)" = woof
        not mv @/pet/dog @/pet/dog/poodle/x 2>/dev/null       # under itself: EINVAL
        mkdir @/canine; echo x > @/canine/c.jpg
        not mv -T @/pet/dog @/canine 2>/dev/null              # onto a keyword with files: ENOTEMPTY
        test "$(cat @/pet/dog/f.jpg)" = woof
        mkdir @/empty; mv -T @/photo @/empty                  # onto an empty keyword: replaced
        test -d @/empty; not test -e @/photo
        not mv @/pet/dog d 2>/dev/null                        # EPERM (EXDEV would make mv copy and detach)
        test "$(getfattr --only-values -n user.hk.keywords @/pet/dog/f.jpg)" = //pet/dog; not test -e d
        mkdir other; setfattr -n user.hk.ns -v nobody other
        not mv @/pet/dog other/@/dog 2>/dev/null               # a keyword stays in its namespace
        test "$(cat @/pet/dog/f.jpg)" = woof; not test -e other/@/dog
        hk mergekw //pet/dog //canine                         # merge: files and children join
        test "$(ls @/canine)" = "$(printf 'c.jpg\\nf.jpg\\np.jpg\\npoodle')"
        not test -e @/pet/dog
    """)
    r = mount.run("mv @ x", check=False)
    assert "not permitted" in r.stderr.lower()


def test_or_not_only_untagged_views(mount: Mount) -> None:
    mount.run("""
        mkdir -p @/photo @/animal @/animal/dog @/plant
        echo 1 > @/photo/@/animal/dog/dog.jpg
        echo 2 > @/photo/tree.jpg; ln @/photo/tree.jpg @/plant/
        echo 3 > @/animal/cat.txt
        echo 4 > @/animal/dog/rex.txt
        echo 5 > loose.txt
        test "$(ls @/animal/dog/@/@or/plant)" = "$(printf 'dog.jpg\\nrex.txt\\ntree.jpg')"
        test "$(ls @/photo/@/@not/animal)" = "$(printf 'dog\\ntree.jpg')"   # //animal's children, then files
        test "$(ls @/@only/animal)" = "$(printf 'cat.txt\\ndog')"       # not the dog files
        test "$(ls @/@only/animal/dog)" = "$(printf 'dog.jpg\\nrex.txt')"
        test "$(ls @/@untagged)" = "$(printf 'loose.txt')"
        test "$(cat @/@untagged/loose.txt)" = 5
        test "$(hk ls '//animal/dog//@or/plant')" = "dog.jpg rex.txt tree.jpg"
        test "$(hk ls //photo//@not/animal)" = tree.jpg
        test "$(hk ls //@only/animal)" = cat.txt
        test "$(hk ls //@untagged)" = loose.txt
        test "$(cat "$(hk path //@untagged,loose.txt)")" = 5
        test "$(hk path //photo//@not/animal,tree.jpg)" = "$PWD/@/photo/@/@not/animal/tree.jpg"
        test "$(ls @ | grep -c @)" = 0                        # operators are not listed: find terminates
        not touch @/photo/@/@not/animal/new.txt 2>/dev/null   # read-only: EPERM
        not rm @/photo/@/@not/animal/tree.jpg 2>/dev/null
        test -e @/photo/tree.jpg
        not mkdir @/@bad 2>/dev/null
    """)
    r = mount.run("touch @/photo/@/@not/animal/new.txt", check=False)
    assert "not permitted" in r.stderr.lower()


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed (scripts/setup.sh)")
def test_rsync_exports_once_and_reimports_idempotently(mount: Mount, tmp_path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    mount.run(f"""
        mkdir -p @/animal/dog @/animal/cat
        echo a > @/animal/a.txt; echo d > @/animal/dog/d.txt; echo c > @/animal/cat/c.txt
        echo d2 > @/animal/cat/d.txt                          # two d.txt in //animal: clash names
        rsync -a @/animal {dest}/all
        test "$(find {dest}/all -type f | wc -l)" = 7         # the view lists descendants' files too
        rsync -a @/@only/animal {dest}/own
        test "$(cd {dest}/own && find . -type f | sort | tr '\\n' ' ')" = "./animal/a.txt ./animal/cat/c.txt ./animal/cat/d.txt ./animal/dog/d.txt "
        rsync -a {dest}/all/animal/ @/animal/                 # back into the view: nothing to do
        test "$(hk ls //animal)" = "a.txt c.txt d.txt(2)"
        mkdir @/zoo                                           # into a fresh view, twice: the copies
        rsync -a {dest}/all/animal/ @/zoo/                    # of descendants' files (zoo/c.txt and
        rsync -a {dest}/all/animal/ @/zoo/                    # zoo/cat/c.txt) share a name; c.txt is
        test "$(hk ls //zoo)" = "a.txt c.txt(2) d.txt(2) d~2.txt d~4.txt"   # zoo's own one
        test "$(hk ls //@only/zoo)" = "a.txt c.txt d~2.txt d~4.txt"
        cp -a {dest}/own/animal/. @/zoo/                      # cp -a over them too
        test "$(hk ls //zoo)" = "a.txt c.txt(2) d.txt(2) d~2.txt d~4.txt"
    """)


def test_tar_x_and_cp_a_into_a_view(mount: Mount, tmp_path) -> None:
    src = tmp_path / "src"
    mount.run(f"""
        mkdir -p {src}/dog {src}/cat; chmod 755 {src} {src}/cat; chmod 700 {src}/dog
        echo d > {src}/dog/d.txt; echo c > {src}/cat/c.txt
        mkdir @/animal
        (cd {src} && tar cf - .) | (cd @/animal && tar xf -)
        test "$(cat @/animal/dog/d.txt)" = d
        test "$(stat -c %a @/animal/dog)" = 700                # keyword directories keep their modes
        test "$(stat -c %a @/animal/cat)" = 755
        mkdir @/zoo
        cp -a {src}/. @/zoo/
        test "$(cat @/zoo/cat/c.txt)" = c
        test "$(stat -c %a @/zoo/dog)" = 700
        chown 12:34 @/zoo/dog                                   # owner of a keyword directory
        test "$(stat -c %u:%g @/zoo/dog @/animal/@/zoo/dog)" = "$(printf '12:34\n12:34')"
        test "$(stat -c %u:%g @/zoo)" = "$(id -u):$(id -g)"
        not chmod 700 @ 2>/dev/null                             # '@' has no mode of its own: EPERM
        chmod 755 @                                             # its own mode: fine (tar x, cp -a)
    """)
