"""Who may post CDRs: HTTP basic credentials, one per sending node.

Each PBX node's senders (FreeSWITCH's mod_json_cdr ``cred``, the replay timer, the lab's media
stand-in) post as ``cdr-<node>`` with that node's own password; the receivers accept both nodes'
credentials (a node posts to the peer's receiver when its own is down). Without a credential a
forged record could claim a call's UUID before the real one (it would not replace it: see
cdr.ingest_outcome, but it would sit there). Credentials come from the environment
(``HAPBX_CDR_SENDERS``: ``user:password`` pairs, comma-separated; passwords are generated
without ``:`` or ``,``), never from argv.
"""
from __future__ import annotations

import base64
import binascii
import hmac

USER_PREFIX = "cdr-"


def sender_user(node: str) -> str:
    return f"{USER_PREFIX}{node}"


def parse_senders(raw: str) -> dict[str, str]:
    """``user:password,user:password`` -> {user: password}; ValueError naming the bad entry."""
    out: dict[str, str] = {}
    for i, item in enumerate(p for p in raw.split(",") if p.strip()):
        user, sep, password = item.strip().partition(":")
        if not sep or not user.startswith(USER_PREFIX) or len(password) < 16:
            raise ValueError(f"entry {i + 1} is not {USER_PREFIX}<node>:<password of 16+ characters>")
        out[user] = password
    return out


def authenticated(header: str | None, senders: dict[str, str]) -> str | None:
    """The sender's user name when the Authorization header holds one of the credentials."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return None
    want = senders.get(user)
    if not sep or want is None:
        return None
    return user if hmac.compare_digest(password.encode(), want.encode()) else None
