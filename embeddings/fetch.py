"""Fetch images by URL for embedding: bounded in time, size and concurrency, and never from a
private address.

    limits = FetchLimits(concurrency=32)
    for result in fetch_images(((row["id"], row["url"]) for row in rows), limits):
        if result.outcome == "ok":
            vectors.append(model.embed_image(result.data))
        else:
            failures[result.outcome] += 1

`FetchLimits(read="headers")` stops at the response's headers (what the opt-out check reads off
an image's URL) and `read="text"` takes any body up to `max_bytes` (ai.txt, tdmrep.json); the
same address policy, timeouts and retries hold.

Every URL gives exactly one `FetchResult`, whatever happens (its `outcome` says what); nothing
a server does raises. Results come back as they complete, not in input order.

How private addresses are kept out. The policy lives in this module's own code, before every
request and every redirect hop: the URL must be http(s), its host is resolved with
`loop.getaddrinfo` and the hop is refused ("blocked") if ANY of the addresses is private,
loopback, link-local, multicast, reserved, unspecified or shared (IPv4 and IPv6, IPv4 inside
IPv6 included). What stops DNS rebinding (a second lookup, by the HTTP library, that answers
127.0.0.1) is the client `make_client` builds: its transport connects only to the addresses this
module has just checked for that host (handed over in a context variable), and refuses to
connect anywhere else. Pinning in the transport was chosen over rewriting the URL to the IP
(with a Host header and `sni_hostname`) because the URL, the Host header, the TLS server name,
certificate checks and relative redirects all stay those of the real host, and the connection
pool stays keyed by host name: with URLs rewritten to IPs, one TLS connection made (and
verified) for a.example could be reused for b.example on the same CDN address. A client passed
in by the caller gets the same checks before each hop, but not the pinning, nor the proxy
settings of ours (environment proxies ignored): pass `make_client(limits)` or nothing. (Such a
client gets a response hook, inert outside this module's requests: see _catch_redirect.)
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import queue
import random
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import httpcore
import httpx

__all__ = [
    "OUTCOMES",
    "USER_AGENT",
    "BlockedAddress",
    "FetchLimits",
    "FetchResult",
    "fetch_all",
    "fetch_images",
    "is_public_address",
    "make_client",
    "sniff_image",
]

USER_AGENT = "Spellbook/0.1 (image embedding; python-httpx)"
# identity: a compressed body could inflate far past max_bytes inside a single chunk.
HEADERS = {"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"}

OUTCOMES = (
    "ok",
    "http_error",
    "not_image",
    "too_large",
    "timeout",
    "connect_error",
    "blocked",
    "bad_url",
    "too_many_redirects",
    "error",
)
READS = ("image", "headers", "text")
ACCEPT = {"image": "image/*", "headers": "*/*", "text": "text/plain, application/json;q=0.9, */*;q=0.5"}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SNIFF_BYTES = 32  # enough for every signature sniff_image knows, AVIF's compatible brands included
SCHEMES = ("http", "https")


@dataclass(frozen=True)
class FetchLimits:
    """How far one fetch may go. Frozen, so that the shared default instance stays the default."""

    concurrency: int = 16  # requests in flight at once
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # between bytes
    total_timeout: float = 30.0  # one try at one URL (its redirects included, retries not)
    retries: int = 2  # for connect errors, timeouts, 429 and 5xx
    backoff: float = 0.5  # first wait between tries; doubles each time, with jitter
    max_bytes: int = 20 * 2**20  # bigger bodies are abandoned ("too_large")
    max_redirects: int = 5
    allow_private: bool = False  # tests set True to reach 127.0.0.1
    # Networks allowed although not public (a local mirror, say), e.g. ("10.1.2.0/24",).
    allowed_networks: tuple[str, ...] = ()
    max_retry_delay: float = 10.0  # the longest wait between tries, whatever Retry-After asks
    # What to read: "image" (the body, checked to be an image), "headers" (the final response's
    # headers only; the body is not read) or "text" (any body up to max_bytes, e.g. ai.txt).
    read: str = "image"
    _networks: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.retries < 0 or self.max_redirects < 0 or self.max_bytes < 0:
            raise ValueError("retries, max_redirects and max_bytes cannot be negative")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.read not in READS:
            raise ValueError(f"read must be one of {', '.join(READS)}")
        networks = tuple(ipaddress.ip_network(network, strict=False) for network in self.allowed_networks)
        object.__setattr__(self, "_networks", networks)

    def permits(self, address: str) -> bool:
        """Whether a connection to this IP address is allowed."""
        if self.allow_private or is_public_address(address):
            return True
        ip = _unwrap(ipaddress.ip_address(address))
        return any(ip.version == network.version and ip in network for network in self._networks)


@dataclass
class FetchResult:
    item_id: int  # whatever the caller passed with the URL
    url: str  # as passed
    final_url: str | None  # the last URL requested (or refused, for a blocked redirect)
    status: int | None  # HTTP status of the last response, None when there was none
    outcome: str  # one of OUTCOMES
    content_type: str | None
    bytes: int  # body bytes received in the last try
    seconds: float  # wall time for this URL, retries included
    attempts: int  # tries made; 0 when the URL was refused before any
    error: str | None  # short human-readable reason, None when ok
    data: bytes | None  # the body, only when outcome == "ok"
    headers: dict[str, str] | None = None  # the last response's headers (lower-case names; repeated ones joined by ", ")


class BlockedAddress(Exception):
    """A connection the address policy does not allow."""


class _Failure(Exception):
    """Ends one try with an outcome other than "ok"."""

    def __init__(self, outcome: str, error: str, *, retry: bool = False, retry_after: float | None = None):
        super().__init__(error)
        self.outcome, self.error, self.retry, self.retry_after = outcome, error, retry, retry_after


# --- addresses -------------------------------------------------------------------------------

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _unwrap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address an IPv4-mapped IPv6 address stands for; other addresses as they are."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public_address(address: str) -> bool:
    """False for every address a fetch must not reach: private, loopback, link-local, multicast,
    reserved, unspecified, shared (100.64/10), site-local, and IPv6 addresses that carry such an
    IPv4 address (IPv4-mapped, 6to4, NAT64)."""
    ip = _unwrap(ipaddress.ip_address(address))
    if ip.version == 6:
        embedded = ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


# (host name, the addresses checked for it) for the request being made in this task
_PINNED: ContextVar[tuple[str, tuple[str, ...]] | None] = ContextVar("spellbook_fetch_pinned", default=None)


@contextmanager
def _pinned(host: str, addresses: tuple[str, ...]):
    token = _PINNED.set((host.lower(), addresses))
    try:
        yield
    finally:
        _PINNED.reset(token)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the addresses checked for the host being requested, never resolving a
    name itself: the answer httpcore would get from its own lookup may differ from the one that
    was checked."""

    def __init__(self):
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        pin = _PINNED.get()
        if pin is None or pin[0] != host.lower():
            raise BlockedAddress(f"no checked address for {host}")
        last_error: Exception = BlockedAddress(f"no address for {host}")
        for address in pin[1]:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise BlockedAddress("no Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, limits: FetchLimits):
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context)
        # httpx has no public way to give its pool a network backend, so the pool it has just
        # made is replaced by the same pool with ours (httpx is pinned below 1.0 in pyproject).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=None,  # fetch_all bounds the requests in flight
            max_keepalive_connections=limits.concurrency,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_PinnedBackend(),
        )


class _Redirect(Exception):
    def __init__(self, status: int, location: str | None):
        super().__init__(status, location)
        self.status, self.location = status, location


async def _catch_redirect(response: httpx.Response) -> None:
    """Hands a redirect met while fetching to _follow before httpx sees it: httpx builds the
    next request of every redirect even with follow_redirects=False, and fails on a Location
    such as javascript:alert(1) before the response reaches the caller. Other requests made
    with the same client are left alone."""
    if _PINNED.get() is not None and response.status_code in REDIRECT_STATUSES:
        raise _Redirect(response.status_code, response.headers.get("location"))


def _install_hook(client: httpx.AsyncClient) -> None:
    hooks = client.event_hooks
    if _catch_redirect not in hooks["response"]:
        client.event_hooks = {**hooks, "response": [*hooks["response"], _catch_redirect]}


def _timeouts(limits: FetchLimits) -> httpx.Timeout:
    return httpx.Timeout(
        connect=limits.connect_timeout, read=limits.read_timeout, write=limits.read_timeout, pool=limits.connect_timeout
    )


def make_client(limits: FetchLimits = FetchLimits()) -> httpx.AsyncClient:
    """The client fetch_all makes when given none: it connects only to addresses this module has
    checked, follows no redirects itself, and ignores proxy and .netrc settings from the
    environment (a proxy would be a connection to somewhere unchecked)."""
    return httpx.AsyncClient(
        transport=_PinnedTransport(limits),
        headers=HEADERS,
        timeout=_timeouts(limits),
        follow_redirects=False,
        trust_env=False,
        event_hooks={"response": [_catch_redirect]},
    )


# --- one URL ----------------------------------------------------------------------------------


def _parse_url(url: Any) -> httpx.URL:
    if not isinstance(url, str):
        raise _Failure("bad_url", f"not a string: {type(url).__name__}")
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError) as exc:
        raise _Failure("bad_url", f"unreadable URL: {exc}") from None
    if parsed.scheme not in SCHEMES:
        raise _Failure("bad_url", f"not an http(s) URL (scheme {parsed.scheme!r})" if parsed.scheme else "not an absolute URL")
    if not parsed.raw_host:
        raise _Failure("bad_url", "no host")
    return parsed


def _redirect_target(base: httpx.URL, location: str) -> httpx.URL:
    try:
        target = base.join(location.strip())
    except (httpx.InvalidURL, ValueError):
        raise _Failure("bad_url", "unreadable redirect Location") from None
    if target.scheme not in SCHEMES:
        raise _Failure("blocked", f"redirect to a {target.scheme or 'relative'}: URL")
    if not target.raw_host:
        raise _Failure("bad_url", "redirect to a URL without a host")
    return target


@dataclass
class _Run:
    """What every fetch of one fetch_all call shares."""

    client: httpx.AsyncClient
    limits: FetchLimits
    # Lookups of their own, one per worker: the loop's default executor has a few threads only,
    # and a lookup that hangs keeps its thread after the fetch has timed out.
    resolver: ThreadPoolExecutor


async def _resolve(url: httpx.URL, run: _Run) -> tuple[str, tuple[str, ...]]:
    """The host and all its addresses, every one of them allowed by the limits."""
    host = url.raw_host.decode("ascii").lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.get_running_loop().run_in_executor(run.resolver, lookup)
    except socket.gaierror as exc:
        # Only a temporary failure is worth another try; a name that does not exist stays so.
        raise _Failure("connect_error", f"cannot resolve {host}: {exc.strerror}", retry=exc.errno == socket.EAI_AGAIN) from None
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise _Failure("blocked", f"{host} has no address")
    refused = [address for address in addresses if not run.limits.permits(address)]
    if refused:
        raise _Failure("blocked", f"non-public address {refused[0]}" + ("" if host == refused[0] else f" for {host}"))
    return host, addresses


_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})  # the DIB header versions


def sniff_image(head: bytes) -> str | None:
    """The image format the first bytes of a body announce (png, jpeg, gif, webp, avif, bmp,
    tiff), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        box = int.from_bytes(head[:4], "big")
        if head[8:12] in (b"avif", b"avis") or b"avif" in head[16:box]:
            return "avif"
    if head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _check_format(body: bytearray, media_type: str) -> None:
    if sniff_image(bytes(body[:SNIFF_BYTES])) is None:
        claimed = media_type or "a body without a content type"
        raise _Failure("not_image", f"{claimed} is not PNG, JPEG, GIF, WebP, AVIF, BMP or TIFF")


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if not 200 <= status < 300:
        retry = status == 429 or status >= 500
        retry_after = _retry_after(response.headers.get("retry-after")) if retry else None
        raise _Failure("http_error", f"HTTP {status}", retry=retry, retry_after=retry_after)


async def _read_body(response: httpx.Response, result: FetchResult, limits: FetchLimits) -> None:
    """What limits.read asks of the final response, into result.data, or raises _Failure."""
    if limits.read == "image":
        await _read_image(response, result, limits)
        return
    _check_status(response)
    if limits.read == "headers":
        result.data = b""
        return
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise _Failure("error", f"compressed body (Content-Encoding: {encoding})")
    declared = _content_length(response)
    if declared is not None and declared > limits.max_bytes:
        raise _Failure("too_large", f"Content-Length {declared:,} is over {limits.max_bytes:,} bytes")
    body = bytearray()
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > limits.max_bytes:
            result.bytes = len(body) + len(chunk)
            raise _Failure("too_large", f"body over {limits.max_bytes:,} bytes")
        body += chunk
        result.bytes = len(body)
    result.data = bytes(body)


async def _read_image(response: httpx.Response, result: FetchResult, limits: FetchLimits) -> None:
    """Reads the final response's body into result.data, or raises _Failure."""
    _check_status(response)
    media_type = (result.content_type or "").split(";")[0].strip().lower()
    # No content type at all is read as application/octet-stream (RFC 9110 8.3): sniffed.
    if not (media_type.startswith("image/") or media_type in ("application/octet-stream", "")):
        raise _Failure("not_image", f"content type {media_type}")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise _Failure("error", f"compressed body (Content-Encoding: {encoding})")
    declared = _content_length(response)
    if declared is not None and declared > limits.max_bytes:
        raise _Failure("too_large", f"Content-Length {declared:,} is over {limits.max_bytes:,} bytes")
    body = bytearray()
    sniffed = False
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > limits.max_bytes:
            result.bytes = len(body) + len(chunk)
            raise _Failure("too_large", f"body over {limits.max_bytes:,} bytes")
        body += chunk
        result.bytes = len(body)
        if not sniffed and len(body) >= SNIFF_BYTES:
            _check_format(body, media_type)
            sniffed = True
    if not sniffed:
        _check_format(body, media_type)
    result.data = bytes(body)


async def _follow(run: _Run, url: httpx.URL, result: FetchResult) -> None:
    """One try: the URL and its redirects, each hop checked before it is requested."""
    limits = run.limits
    for hop in range(limits.max_redirects + 1):
        result.final_url = str(url)
        host, addresses = await _resolve(url, run)
        try:
            with _pinned(host, addresses):
                headers = HEADERS if limits.read == "image" else {**HEADERS, "Accept": ACCEPT[limits.read]}
                async with run.client.stream("GET", url, headers=headers, timeout=_timeouts(limits), follow_redirects=False) as response:
                    result.status = response.status_code
                    result.content_type = response.headers.get("content-type")
                    result.headers = dict(response.headers.items())
                    await _read_body(response, result, limits)
                    return
        except _Redirect as redirect:
            result.status = redirect.status
            if not redirect.location:
                raise _Failure("http_error", f"HTTP {redirect.status} without a Location") from None
            if hop == limits.max_redirects:
                raise _Failure("too_many_redirects", f"more than {limits.max_redirects} redirects") from None
            result.final_url = redirect.location  # a refused target is the one to report
            url = _redirect_target(url, redirect.location)


def _timeout_reason(exc: httpx.TimeoutException, limits: FetchLimits) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {limits.connect_timeout:g} s"
    if isinstance(exc, httpx.PoolTimeout):
        return "no free connection in time"
    return f"nothing for {limits.read_timeout:g} s"


async def _try(run: _Run, url: httpx.URL, result: FetchResult) -> _Failure | None:
    """One try at a URL: None when it gave an image, else why not."""
    limits = run.limits
    budget = asyncio.timeout(limits.total_timeout)
    try:
        async with budget:
            await _follow(run, url, result)
        return None
    except _Failure as failure:
        return failure
    except TimeoutError:
        if budget.expired():
            return _Failure("timeout", f"not done within {limits.total_timeout:g} s", retry=True)
        return _Failure("timeout", "timed out", retry=True)
    except httpx.TimeoutException as exc:
        return _Failure("timeout", _timeout_reason(exc, limits), retry=True)
    except httpx.ConnectError as exc:
        # A certificate that does not verify will not verify on the next try either.
        return _Failure("connect_error", (str(exc) or "cannot connect")[:200], retry=not _bad_certificate(exc))
    except BlockedAddress as exc:
        return _Failure("blocked", str(exc))
    except httpx.InvalidURL as exc:
        return _Failure("bad_url", str(exc))
    except Exception as exc:  # one odd server must not end a run over thousands of URLs
        return _Failure("error", f"{type(exc).__name__}: {exc}"[:200])


def _bad_certificate(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _retry_delay(failure: _Failure, attempt: int, limits: FetchLimits) -> float:
    if failure.retry_after is not None:
        return min(failure.retry_after, limits.max_retry_delay)
    return min(limits.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5), limits.max_retry_delay)


async def _fetch_one(run: _Run, item_id: Any, url: Any) -> FetchResult:
    """Never raises (but for cancellation): every URL gets a result."""
    limits = run.limits
    started = time.monotonic()
    result = FetchResult(
        item_id=item_id, url=url, final_url=None, status=None, outcome="error", content_type=None,
        bytes=0, seconds=0.0, attempts=0, error=None, data=None,
    )
    try:
        parsed = _parse_url(url)
    except _Failure as failure:
        result.outcome, result.error = failure.outcome, failure.error
    else:
        while True:
            result.attempts += 1
            result.final_url, result.status, result.content_type, result.bytes, result.headers = None, None, None, 0, None
            failure = await _try(run, parsed, result)
            if failure is None:
                result.outcome, result.error = "ok", None
                break
            result.outcome, result.error = failure.outcome, failure.error
            if not failure.retry or result.attempts > limits.retries:
                break
            await asyncio.sleep(_retry_delay(failure, result.attempts, limits))
    result.seconds = time.monotonic() - started
    return result


# --- many URLs --------------------------------------------------------------------------------

_END = object()  # no more items (in the work queue), no more results (in the results queue)


def _as_item(item: Any) -> tuple[Any, Any]:
    try:
        item_id, url = item
    except (TypeError, ValueError):
        raise TypeError(f"items must be (item_id, url) pairs, not {item!r:.80}") from None
    return item_id, url


async def _run_workers(todo: asyncio.Queue, emit: Callable[[Any], None], limits: FetchLimits, client: httpx.AsyncClient) -> None:
    """`concurrency` workers take (item_id, url) from `todo` until _END and emit each result; then
    _END is emitted."""
    run = _Run(client, limits, ThreadPoolExecutor(limits.concurrency, thread_name_prefix="spellbook-resolve"))

    async def work():
        while (item := await todo.get()) is not _END:
            emit(await _fetch_one(run, *item))
        todo.put_nowait(_END)  # for the next worker

    workers = [asyncio.create_task(work()) for _ in range(limits.concurrency)]
    try:
        await asyncio.gather(*workers)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        run.resolver.shutdown(wait=False, cancel_futures=True)  # a hung lookup ends on its own
        emit(_END)


def _window(limits: FetchLimits) -> int:
    """Items handed over but not yet given back: enough to keep every worker busy while the
    caller handles a result, few enough to bound memory (at most this many bodies)."""
    return 2 * limits.concurrency


async def fetch_all(
    items: Iterable[tuple[int, str]], limits: FetchLimits = FetchLimits(), client: httpx.AsyncClient | None = None
) -> AsyncIterator[FetchResult]:
    """Fetch (item_id, url) pairs, `limits.concurrency` at a time, yielding each result as it
    completes. `items` is read lazily (at most 2 x concurrency ahead of the results taken), on
    the event loop's thread. Without `client`, one from make_client is used and closed."""
    own_client = client is None
    if client is None:
        client = make_client(limits)
    else:
        _install_hook(client)
    todo: asyncio.Queue = asyncio.Queue()
    ready: asyncio.Queue = asyncio.Queue()
    workers = asyncio.create_task(_run_workers(todo, ready.put_nowait, limits, client))
    try:
        source, outstanding, exhausted = iter(items), 0, False
        while True:
            if not exhausted and outstanding < _window(limits):
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                else:
                    item, outstanding = _as_item(item), outstanding + 1
                todo.put_nowait(item)
                continue
            result = await ready.get()
            if result is _END:
                break
            outstanding -= 1
            yield result
        await workers
    finally:
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)
        if own_client:
            await client.aclose()


def fetch_images(items: Iterable[tuple[int, str]], limits: FetchLimits = FetchLimits()) -> Iterator[FetchResult]:
    """fetch_all for synchronous code. The fetching runs on an event loop in a thread of its own,
    which keeps requests moving while the caller works on a result; `items` is read lazily in
    the caller's thread (so a database cursor works), at most 2 x concurrency ahead of the
    results taken. Stopping the iteration early cancels what is in flight."""
    loop = asyncio.new_event_loop()
    todo: asyncio.Queue = asyncio.Queue()  # touched only on the loop's thread
    ready: queue.Queue = queue.Queue()  # bounded by the window below
    crashed: list[BaseException] = []

    async def serve():
        client = make_client(limits)
        try:
            await _run_workers(todo, ready.put, limits, client)
        finally:
            await client.aclose()

    task = loop.create_task(serve())

    def run():
        # The loop lives and ends on this thread: the caller may be inside an event loop of its own
        # (an async test, a server), where run_until_complete on the caller's thread would refuse.
        try:
            loop.run_until_complete(task)
        except BaseException as exc:  # handed to the caller's thread
            crashed.append(exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                ready.put(_END)

    thread = threading.Thread(target=run, name="spellbook-fetch", daemon=True)
    thread.start()
    try:
        source, outstanding, exhausted = iter(items), 0, False
        while True:
            if not exhausted and outstanding < _window(limits):
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                else:
                    item, outstanding = _as_item(item), outstanding + 1
                try:
                    loop.call_soon_threadsafe(todo.put_nowait, item)
                except RuntimeError:  # the loop has ended (it crashed): its _END is on the way
                    exhausted = True
                continue
            result = ready.get()
            if result is _END:
                break
            outstanding -= 1
            yield result
        thread.join()
        if crashed:
            raise crashed[0]
    finally:
        if thread.is_alive():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # closed in the meantime
                pass
            thread.join()
