"""What `usd_stage_uri` may name: the stage a session opens, which only ever reaches the Kit
app's `USD_PATH`."""

from __future__ import annotations

import posixpath
import urllib.parse

from ovas.errors import InvalidInput

STAGE_URI_SCHEMES = ("omniverse://", "http://", "https://", "s3://")
MAX_STAGE_URI = 2048


def check_stage_uri(uri: str, roots: tuple[str, ...] = ()) -> None:
    """Accept `omniverse://`, `http(s)://` and `s3://` URIs, and absolute paths under one of
    `roots`; raise `InvalidInput` otherwise. The value only ever reaches `USD_PATH`.

    A path must lie under a root as written and after each percent-decoding of it (Kit's
    asset resolvers take `/app/samples/%2e%2e/x` as `/app/samples/../x`, and a reader that
    decodes twice takes `%252e` as a dot), so no encoded `..` or `/` leaves the roots."""
    field = "arguments.usd_stage_uri"
    if len(uri) > MAX_STAGE_URI:
        raise InvalidInput(f"usd_stage_uri is longer than {MAX_STAGE_URI} characters", field=field)
    _check_characters(uri, field)
    if uri.lower().startswith(STAGE_URI_SCHEMES) and len(uri.split("://", 1)[1]) > 0:
        return
    if uri.startswith("/"):
        for form in _decodings(uri, field):
            _check_characters(form, field)
            path = posixpath.normpath(form)
            if not any(_lies_under(path, posixpath.normpath(root)) for root in roots):
                allowed = ", ".join(roots) or "none configured"
                raise InvalidInput(
                    f"usd_stage_uri paths must lie under an allowed folder ({allowed})",
                    field=field,
                )
        return
    raise InvalidInput(
        "usd_stage_uri must be an omniverse://, http(s):// or s3:// URI, or an allowed path",
        field=field,
    )


MAX_DECODINGS = 3  # percent-decodings of a stage path followed; one more is refused


def _decodings(path: str, field: str) -> list[str]:
    """`path`, then each percent-decoding of it while one changes it. Raises `InvalidInput`
    for a path still encoded after `MAX_DECODINGS` decodings."""
    forms = [path]
    while (decoded := urllib.parse.unquote(forms[-1])) != forms[-1]:
        if len(forms) > MAX_DECODINGS:
            raise InvalidInput("usd_stage_uri is percent-encoded over and over", field=field)
        forms.append(decoded)
    return forms


def _check_characters(text: str, field: str) -> None:
    if any(ord(c) < 32 or c.isspace() or ord(c) == 127 for c in text):
        raise InvalidInput("usd_stage_uri must not hold spaces or control characters", field=field)


def _lies_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
