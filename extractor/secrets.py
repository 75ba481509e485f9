"""Secrets: the one parser of the credentials in a URL, and the one masker every message goes through.

A URL's user information ends at its last ``@``, so a password holding an unencoded ``@``, ``:`` or
``/`` is found whole (and refused with the fix, never printed) instead of leaking into a host name.
The price: an ``@`` in a path or query must be written ``%40``. A URL with no authority
(``sqlite:///path``) holds no user information, so its path may hold an ``@``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from extractor.errors import BadInputError

MASK = "***"
RESERVED_IN_USERINFO = "@:/?#[]"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URL_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")


def split_credentials(url: str) -> tuple[str, str | None, str | None, str]:
    """``(scheme://, user, password, host and the rest)``; user and password are None when absent."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, None, url
    if rest.startswith("/"):
        return scheme + sep, None, None, rest  # no authority (sqlite:///path): an @ is in a file name
    at = rest.rfind("@")
    if at < 0:
        return scheme + sep, None, None, rest
    user, colon, password = rest[:at].partition(":")
    return scheme + sep, user, password if colon else None, rest[at + 1 :]


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for every message and log line that shows it."""
    prefix, user, password, rest = split_credentials(url)
    if password is None:
        return url
    return f"{prefix}{user}:{MASK}@{rest}"


def check_credentials(url: str, where: str) -> None:
    """Refuse a URL whose user or password holds a character that must be percent-encoded there.

    The message names the characters and the fix but never a part of the password.
    """
    _, user, password, _ = split_credentials(url)
    for part, name in ((user, "user name"), (password, "password")):
        if part is None:
            continue
        if any(ch in RESERVED_IN_USERINFO for ch in part) or _BAD_PERCENT.search(part):
            raise BadInputError(
                f"the {name} in {where} holds a character that must be URL-encoded "
                f"(one of {' '.join(RESERVED_IN_USERINFO)} or a bare %): write @ as %40, : as %3A, / as %2F, "
                "? as %3F, # as %23 and % as %25, e.g. with "
                "python3 -c 'import sys, urllib.parse; "
                'print(urllib.parse.quote(sys.argv[1], safe=""))\' PASSWORD'
            )


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The password of ``url`` as written and as decoded: both must be masked wherever they appear."""
    if not url:
        return ()
    password = split_credentials(url)[2]
    if not password:
        return ()
    return tuple({password, unquote(password)})


class Redactor:
    """Masks known secrets and any URL password in a text: logs, errors and reports all use one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        text = _URL_TOKEN.sub(lambda found: mask_url(found.group()), text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text
