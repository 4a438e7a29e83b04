"""Keyword directories' own mode and owner on a shared mount (issue 11): the kernel checks
them (default_permissions) for a second user as for ordinary directories.

Fixtures come from tests/test_second_user.py (a session user made with useradd; skipped
only where that is impossible)."""

from __future__ import annotations

import pytest
from conftest import Mount
from test_second_user import second_uid, shared  # noqa: F401  (fixtures)

pytestmark = pytest.mark.mount


def test_a_private_keyword_keeps_a_second_user_out(shared: Mount, second_uid: int) -> None:  # noqa: F811
    """root's 0700 keyword cannot be entered by another user under any view path that ends in
    it; root's 0777 keyword lets them make child keywords, which are theirs."""
    shared.run("""
        mkdir -m 700 @/secret; mkdir -m 777 @/pub; mkdir @/pub/kid
        echo s > @/secret/f; chmod 644 @/secret/f
        echo p > @/pub/g; chmod 644 @/pub/g
        test "$(stat -c %a:%u @/secret @/pub)" = "$(printf '700:0\\n777:0')"
    """)
    shared.run(f"""
        not ls @/secret 2>/dev/null
        not cat @/secret/f 2>/dev/null
        not ls @/pub/@/secret 2>/dev/null                # //pub//secret: the directory is //secret
        not ls @/@or/secret 2>/dev/null
        not chmod 777 @/secret 2>/dev/null               # not theirs
        test "$(ls @ | tr '\\n' ' ')" = "pub secret "     # '@' itself is readable
        test "$(cat @/pub/g)" = p
        mkdir -m 750 @/pub/mine                          # 0777: anyone may make a keyword here
        test "$(stat -c %a:%u:%g @/pub/mine)" = 750:{second_uid}:{second_uid}
        chmod 700 @/pub/mine
        not mkdir @/pub/kid/x 2>/dev/null                # root's 0755 keyword: not writable
    """, user=second_uid)
    shared.run("""
        test "$(stat -c %a @/pub/mine)" = 700
        chmod 755 @/secret                               # root opens it up
    """)
    shared.run('test "$(cat @/secret/f)" = s', user=second_uid)
