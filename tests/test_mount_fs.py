"""The mount as an ordinary file system, driven by bash and real tools."""

from __future__ import annotations

import pytest
from conftest import Mount

pytestmark = pytest.mark.mount


def test_dirs_and_files_with_coreutils(mount: Mount) -> None:
    r = mount.run("""
        mkdir -p a/b/c
        echo hello > a/b/c/f.txt
        echo more >> a/b/c/f.txt
        test "$(cat a/b/c/f.txt)" = "$(printf 'hello\\nmore')"
        ino1=$(stat -c %i a/b/c/f.txt); ino2=$(stat -c %i a/b/c/f.txt)
        test "$ino1" = "$ino2"
        truncate -s 3 a/b/c/f.txt; test "$(cat a/b/c/f.txt)" = hel
        mv a/b/c/f.txt a/g.txt; test ! -e a/b/c/f.txt; test "$(cat a/g.txt)" = hel
        test "$(stat -c %i a/g.txt)" = "$ino1"
        echo other > a/h.txt; mv a/h.txt a/g.txt; test "$(cat a/g.txt)" = other
        chmod 600 a/g.txt; test "$(stat -c %a a/g.txt)" = 600
        chown 1234:5678 a/g.txt; test "$(stat -c %u:%g a/g.txt)" = 1234:5678
        touch -d '2001-02-03 04:05:06' a/g.txt; test "$(date -r a/g.txt +%Y)" = 2001
        chmod 700 a/b; test "$(stat -c %a a/b)" = 700
        touch -d '2002-01-01' a/b; test "$(date -r a/b +%Y)" = 2002
        ln a/g.txt a/b/hard; test "$(stat -c %h a/g.txt)" = 2; test "$(cat a/b/hard)" = other
        rm a/g.txt; test "$(cat a/b/hard)" = other
        rm a/b/hard
        rmdir a/b/c; not rmdir a 2>/dev/null
        mv a/b a/renamed; test -d a/renamed
        rm -r a; test "$(ls)" = "@"
        df -P . | tail -1
        ls -la
    """)
    assert "@" in r.stdout


def test_large_write_read_and_fsync(mount: Mount) -> None:
    mount.run("""
        head -c 20000000 /dev/urandom > /tmp/hkfs-src.$$
        dd if=/tmp/hkfs-src.$$ of=big bs=1M conv=fsync status=none
        cmp /tmp/hkfs-src.$$ big
        test "$(stat -c %s big)" = 20000000
        dd if=/dev/zero of=big bs=1 count=1 seek=5 conv=notrunc status=none
        test "$(stat -c %s big)" = 20000000
        rm -f /tmp/hkfs-src.$$
    """)


def test_find_tar_and_cp_with_symlinks(mount: Mount, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "x.txt").write_text("x\n")
    (src / "d" / "e" / "y.txt").write_text("y\n")
    (src / "d" / "link").symlink_to("x.txt")
    (src / "d" / "dangling").symlink_to("../nowhere")
    mount.run(f"""
        mkdir @/kw; echo tagged > @/kw/t.txt
        cp -a {src}/d copied
        test "$(readlink copied/link)" = x.txt
        test "$(cat copied/link)" = x
        test -L copied/dangling
        diff -r --no-dereference {src}/d copied
        tar -C {src} -cf - d | tar -C "$M" -xf - ; mv d fromtar
        diff -r --no-dereference {src}/d fromtar
        tar -cf {tmp_path}/out.tar copied fromtar
        mkdir {tmp_path}/back && tar -C {tmp_path}/back -xf {tmp_path}/out.tar
        diff -r --no-dereference {src}/d {tmp_path}/back/copied
        find . | sort > {tmp_path}/found
        grep -q '^./copied/e/y.txt$' {tmp_path}/found
        test "$(find ./@ | wc -l)" = 3      # ./@ ./@/kw ./@/kw/t.txt: views list no '@'
    """)


def test_concurrent_writers(mount: Mount) -> None:
    mount.run("""
        mkdir @/log
        for i in 1 2 3 4 5 6; do
          ( for j in $(seq 1 150); do echo "w$i line $j" >> shared.txt; echo "$j" >> own$i.txt; done ) &
        done
        ( for j in $(seq 1 100); do ls -l @/log > /dev/null; echo x > @/log/f$j; done ) &
        wait
        test "$(wc -l < shared.txt)" = 900
        for i in 1 2 3 4 5 6; do test "$(wc -l < own$i.txt)" = 150; done
        test "$(ls @/log | wc -l)" = 100
    """)
