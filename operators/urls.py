"""URL helpers: secrets in URLs never reach a log, an event, an error or a trace.

Two kinds of secret are masked, each replaced by `***`:

* The user information of a URL (`rtsp://user:password@host`, `redis://:password@host`,
  `http://token@host`): everything between `scheme://` and the LAST `@` of the URL becomes `***`,
  giving `rtsp://***@host:554/path`. The user name goes too (a bare `user@host` as well): it cannot
  be told from a token. urllib is not used on purpose: an unencoded `/`, `?`, `#` or `@` in a
  password ends its netloc early and the password would pass through. Seeing the last `@` as the
  end of the credentials masks too much when the path or query holds an `@` of its own
  (`rtsp://host/x?mail=a@b` -> `rtsp://***@b`): a secret is never shown, at worst the host is not.
  `scheme:///path` (an empty authority, e.g. `file:///clips/cam@2x.mp4`) has no user information.
  An address without a scheme (`user:password@triton:8001`, as gRPC and Kafka take them) is
  masked the same way when it has a `user:` part with no `/` in it: `***@triton:8001`.
* Secret query (or fragment, or `;` parameter) values: `?user=admin&password=***`. The key stays, so
  the user sees which field it was; the value runs to the next `&` (in free text also to
  whitespace). A key is secret when, lowercased, its last `_`/`-`/`.`-separated word is one of
  `SECRET_WORDS` (`password`, `pass`, `pwd`, `token`, `secret`, `key`, `auth`, `sig`, ...) or it
  ends in one of `SECRET_SUFFIXES` (`accessToken`, `apiKey`, `userPassword`, ...). `user`,
  `username`, `channel`, `subtype` and the like are not secrets and stay.

`redact_url` takes one URL (a config value: it may hold anything, whitespace included); `scrub`
takes free text (an FFmpeg error, a log line) in which a URL ends at whitespace, or at the quote
that opened it when it was quoted and its credentials end before that quote.
"""

from __future__ import annotations

import re

MASK = "***"

SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pass",
        "pwd",
        "pw",
        "token",
        "secret",
        "key",
        "apikey",
        "auth",
        "authorization",
        "sig",
        "signature",
        "credential",
        "credentials",
    }
)
"""A query key whose last word (split at `_`, `-`, `.`) is one of these is secret: `api_key`,
`access_token`, `client_secret`, `X-Amz-Signature`, `stream-key`, `sasl.password`."""

SECRET_SUFFIXES = (
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "apikey",
    "signature",
    "credential",
    "credentials",
)
"""A query key ending in one of these (lowercased) is secret: `accessToken`, `apiKey`, `dbpassword`."""

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
_URL_START = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//")  # redact_url: `scheme://` or `//`
_URL_IN_TEXT = re.compile(_SCHEME)
_QUOTES = "'\""
_SPACE = re.compile(r"\s")
# key=value after ?, &, ; or #; the value runs to the next & (the whole URL is one token)
_QUERY_IN_URL = re.compile(r"(?<=[?&;#])([A-Za-z0-9_.\-]+)=([^&]*)")
# in free text the value also ends at whitespace; closing quotes, brackets, a comma or a colon right
# before that end are kept (`'...?token=***'`, `(...&pwd=***),`), unless the value holds more
_QUERY_IN_TEXT = re.compile(r"(?<=[?&;#])([A-Za-z0-9_.\-]+)=([^&\s]*?)(?=[\"'`)\]}>,:]*(?:[&\s]|$))")


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_local_address(address: str) -> bool:
    """Whether a `host:port` address (a Triton gRPC URL) names this machine."""
    return address.rsplit(":", 1)[0] in LOCAL_HOSTS


def is_secret_key(key: str) -> bool:
    """Whether a query parameter named `key` holds a secret (see the module docstring)."""
    k = key.lower()
    return re.split(r"[_\-.]", k)[-1] in SECRET_WORDS or k.endswith(SECRET_SUFFIXES)


def _mask_value(m: re.Match[str]) -> str:
    key, value = m.group(1), m.group(2)
    return f"{key}={MASK}" if value and is_secret_key(key) else m.group(0)


# `user:password@host[:port]` with no scheme (a gRPC or Kafka address): the user part holds no
# `/` (a path) and the colon is not a scheme's `://`; the credentials end at the last `@`
_BARE_USERINFO = re.compile(r"^[^/\s:@]+:(?!//).*@(?=[^@]*$)", re.DOTALL)
_BARE_IN_TEXT = re.compile(r"""(?<![^\s'"(\[<,=])[^/\s:@'"()<>\[\],=]+:(?!//)[^\s'"]*@(?=[\w\[])""")


def redact_url(url: str) -> str:
    """The URL with its user information and secret query values replaced: rtsp://***@host/path
    (and `user:password@host:port`, an address without a scheme: ***@host:port)."""
    start = _URL_START.match(url)
    if start is None:  # a file path, or an address without a scheme
        return _BARE_USERINFO.sub(f"{MASK}@", url, count=1)
    head, rest = url[: start.end()], url[start.end() :]
    if not rest.startswith("/"):  # scheme:///path: an empty authority
        at = rest.rfind("@")
        if at >= 0:
            rest = f"{MASK}{rest[at:]}"
    return head + _QUERY_IN_URL.sub(_mask_value, rest)


def _userinfo_end(text: str, begin: int, end: int, quote: str) -> int:
    """Index of the `@` that ends the credentials of a URL in text[begin:end], or -1."""
    if text.startswith("/", begin):  # scheme:///path
        return -1
    if quote:  # quoted: prefer an `@` before the closing quote (repr escapes it with a backslash)
        i = begin
        while i < end and text[i] != quote:
            i += 2 if text[i] == "\\" else 1
        at = text.rfind("@", begin, min(i, end))
        if at > begin:
            return at
    at = text.rfind("@", begin, end)  # a password may hold the quote: the last `@` of the token
    return at if at > begin else -1


def scrub(text: str) -> str:
    """Any text (an FFmpeg error, a log line) with URL credentials and secret query values replaced."""
    out: list[str] = []
    pos = 0
    while (m := _URL_IN_TEXT.search(text, pos)) is not None:
        begin = m.end()
        ws = _SPACE.search(text, begin)
        end = ws.start() if ws else len(text)
        quote = text[m.start() - 1] if m.start() > 0 and text[m.start() - 1] in _QUOTES else ""
        at = _userinfo_end(text, begin, end, quote)
        if at < 0:
            out.append(text[pos:begin])
            pos = begin
        else:
            out.append(f"{text[pos:begin]}{MASK}")
            pos = at
    out.append(text[pos:])
    masked = _BARE_IN_TEXT.sub(f"{MASK}@", "".join(out))  # user:password@host without a scheme
    return _QUERY_IN_TEXT.sub(_mask_value, masked)
