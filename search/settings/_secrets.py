"""Passwords inside storage URLs: masked wherever a URL is shown, scrubbed from any text."""

from __future__ import annotations

import re

__all__ = ["mask_url", "scrub", "url_secrets"]

# scheme://user:PASSWORD@host...: the password runs to the LAST '@' (passwords may hold '@' or
# '/'); masking too much is harmless, too little is not.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.\-]*://[^:/@]*:)(?P<password>.+)@(?P<tail>[^@]*)", re.S)


def mask_url(url: str | None) -> str | None:
    """``url`` with its password (if any) replaced by ``***``: what the tool prints and writes
    wherever a storage URL appears (errors, progress, run.json)."""
    match = _USERINFO.fullmatch(url) if url else None
    return f"{match['head']}***@{match['tail']}" if match else url


def url_secrets(*urls: str | None) -> list[str]:
    """The passwords inside ``urls`` (raw and percent-decoded), to scrub from any text."""
    from urllib.parse import unquote

    found: list[str] = []
    for url in urls:
        match = _USERINFO.fullmatch(url) if url else None
        if match:
            found += [s for s in {match["password"], unquote(match["password"])} if s]
    return found


def scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
