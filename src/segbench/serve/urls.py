"""Which URLs the server reads scenes from: http(s) on the hosts given to ``--allow-urls``, and only
those, redirects included.

GDAL reads a URL scene itself (``/vsicurl/``), and its HTTP client follows redirects to any host,
with no option to stop it. So a job's URL is resolved here first, hop by hop without following
(a one-byte ranged GET, as GDAL's first read is), each hop's host checked, and GDAL is given the
URL the redirects end at. An allowed host that starts redirecting elsewhere between this check and
GDAL's reads is not caught: allow only hosts you trust.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urljoin, urlsplit

from segbench.errors import InputError

#: redirects followed before a URL is refused
MAX_REDIRECTS = 5
#: seconds to wait for each hop's answer
TIMEOUT_S = 10.0


def check_url(url: str, allowed: Collection[str]) -> str:
    """``url`` if it is plain http(s) on an allowed host, else one sentence (InputError)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise InputError(f"{url!r} is not an http(s) URL this server takes.")
    if parts.hostname.lower() not in allowed:
        raise InputError(f"URL scenes from {parts.hostname} are not allowed here; the server takes "
                         "URLs only from hosts given to --allow-urls.")
    return url


def resolve_url(url: str, allowed: Collection[str]) -> str:
    """Where ``url``'s redirects end, every hop on an allowed host; one sentence where a hop is not,
    the chain is too long, or the scene cannot be fetched."""
    import httpx

    with httpx.Client(follow_redirects=False, timeout=TIMEOUT_S) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, allowed)
            try:  # streamed and never read: a server that ignores Range sends no scene into memory
                with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as answer:
                    status, redirect = answer.status_code, answer.is_redirect
                    location = answer.headers.get("location")
            except httpx.HTTPError as exc:
                raise InputError(f"Could not fetch {url}: {exc}.") from exc
            if not redirect:
                if status >= 400:
                    raise InputError(f"{url} answered HTTP {status}; no scene there.")
                return url
            url = urljoin(url, location)
    raise InputError(f"{url} redirects more than {MAX_REDIRECTS} times; give the scene's own URL.")
