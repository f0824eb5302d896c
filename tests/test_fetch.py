"""The image fetcher against real HTTP servers on loopback addresses, one per test, whose routes
misbehave in the ways image hosts do."""
from __future__ import annotations

import io
import itertools
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from spellbook.embeddings.fetch import (
    OUTCOMES,
    BlockedAddress,
    FetchLimits,
    FetchResult,
    _pinned,
    _retry_after,
    fetch_all,
    fetch_images,
    is_public_address,
    make_client,
    sniff_image,
)


def image_bytes(format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buffer, format=format, **options)
    return buffer.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")
HTML = b"<!doctype html><html><body>not an image, but long enough to be sniffed</body></html>"


class Site:
    """A ThreadingHTTPServer in a thread. `routes` maps a path to a function of the request
    handler; the server counts requests per path and the most handled at once."""

    def __init__(self, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None):
        self.routes: dict[str, callable] = {}
        self.hits: Counter = Counter()
        self.headers: list = []
        self.active = self.most_active = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.split("?")[0]
                with site.lock:
                    site.hits[path] += 1
                    site.headers.append(self.headers)
                    site.active += 1
                    site.most_active = max(site.most_active, site.active)
                try:
                    site.routes.get(path, not_found)(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the fetcher stopped reading, as it should
                finally:
                    with site.lock:
                        site.active -= 1

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False  # slow routes are left to end on their own

            def handle_error(self, request, client_address):
                pass

        self.server = Server((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def route(self, path: str):
        def register(function):
            self.routes[path] = function
            return function

        return register

    def serve(self, path: str, body: bytes, content_type: str | None = "image/png", status: int = 200, headers: dict | None = None):
        self.routes[path] = lambda handler: send(handler, body, content_type, status, headers)

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def send(handler, body: bytes, content_type: str | None = "image/png", status: int = 200, headers: dict | None = None):
    handler.send_response(status)
    if content_type:
        handler.send_header("Content-Type", content_type)
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    for name, value in headers.items():
        if value is not None:
            handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def not_found(handler):
    send(handler, b"not found", "text/plain", 404)


@pytest.fixture
def site():
    server = Site()
    yield server
    server.stop()


LOCAL = FetchLimits(allow_private=True, retries=0, backoff=0.01)


def fetch(urls, limits: FetchLimits = LOCAL) -> list[FetchResult]:
    """Results for URLs, in the order given."""
    results = {result.item_id: result for result in fetch_images(enumerate(urls), limits)}
    assert sorted(results) == list(range(len(urls)))
    return [results[i] for i in range(len(urls))]


def fetch_one(url, limits: FetchLimits = LOCAL) -> FetchResult:
    return fetch([url], limits)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- good images ---------------------------------------------------------------------------------


def test_png_and_jpeg(site):
    site.serve("/cat.png", PNG, "image/png")
    site.serve("/cat.jpg", JPEG, "IMAGE/JPEG; charset=binary")
    png, jpeg = fetch([site.url + "/cat.png", site.url + "/cat.jpg"])
    for result, body in ((png, PNG), (jpeg, JPEG)):
        assert (result.outcome, result.status, result.attempts, result.error) == ("ok", 200, 1, None)
        assert result.data == body and result.bytes == len(body)
        assert Image.open(io.BytesIO(result.data)).size == (8, 8)
        assert 0 < result.seconds < 5
    assert png.final_url == site.url + "/cat.png" and png.content_type == "image/png"
    assert jpeg.content_type == "IMAGE/JPEG; charset=binary"
    sent = site.headers[0]
    assert sent["User-Agent"].startswith("Spellbook/") and "image embedding" in sent["User-Agent"]
    assert sent["Accept"] == "image/*" and sent["Accept-Encoding"] == "identity"


def test_octet_stream_is_sniffed(site):
    site.serve("/png", PNG, "application/octet-stream")
    site.serve("/none", PNG, None)  # no content type: read as octet-stream
    site.serve("/text", HTML, "application/octet-stream")
    png, untyped, text = fetch([site.url + "/png", site.url + "/none", site.url + "/text"])
    assert png.outcome == "ok" and png.data == PNG
    assert untyped.outcome == "ok" and untyped.content_type is None
    assert text.outcome == "not_image" and text.data is None and "not PNG" in text.error


def test_sniff_image_formats():
    assert sniff_image(PNG) == "png"
    assert sniff_image(JPEG) == "jpeg"
    assert sniff_image(image_bytes("GIF")) == "gif"
    assert sniff_image(image_bytes("WEBP")) == "webp"
    assert sniff_image(image_bytes("BMP")) == "bmp"
    assert sniff_image(image_bytes("TIFF")) == "tiff"
    assert sniff_image(image_bytes("AVIF")[:32]) == "avif"
    assert sniff_image(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00") == "avif"
    for not_image in (HTML, b"", b"BM is a prefix of many words", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.7"):
        assert sniff_image(not_image) is None


# --- not images ----------------------------------------------------------------------------------


def test_not_images(site):
    site.serve("/fake.png", HTML, "image/png")
    site.serve("/page", HTML * 1000, "text/html; charset=utf-8")
    site.serve("/icon.svg", b"<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'></svg>", "image/svg+xml")
    site.serve("/tiny.png", b"GIF8", "image/png")  # shorter than a signature
    fake, page, svg, tiny = fetch([site.url + p for p in ("/fake.png", "/page", "/icon.svg", "/tiny.png")])
    for result in (fake, page, svg, tiny):
        assert result.outcome == "not_image" and result.data is None and result.status == 200 and result.attempts == 1
    assert "image/png is not PNG" in fake.error
    assert page.error == "content type text/html" and page.bytes == 0  # refused before reading
    assert svg.content_type == "image/svg+xml"


# --- HTTP errors and retries -------------------------------------------------------------------------


def test_404_is_not_retried(site):
    result = fetch_one(site.url + "/missing.png", FetchLimits(allow_private=True, retries=2, backoff=0.01))
    assert (result.outcome, result.status, result.attempts, result.error) == ("http_error", 404, 1, "HTTP 404")
    assert result.data is None and site.hits["/missing.png"] == 1


def test_500_then_ok_on_retry(site):
    @site.route("/flaky.png")
    def flaky(handler):
        if site.hits["/flaky.png"] == 1:
            send(handler, b"oops", "text/plain", 500)
        else:
            send(handler, PNG)

    site.serve("/down.png", b"down", "text/plain", 503)
    limits = FetchLimits(allow_private=True, retries=2, backoff=0.05)
    flaky_result, down = fetch([site.url + "/flaky.png", site.url + "/down.png"], limits)
    assert (flaky_result.outcome, flaky_result.status, flaky_result.attempts) == ("ok", 200, 2)
    assert flaky_result.data == PNG and site.hits["/flaky.png"] == 2
    assert (down.outcome, down.status, down.attempts) == ("http_error", 503, 3)
    assert site.hits["/down.png"] == 3


def test_429_honours_retry_after(site):
    @site.route("/busy.png")
    def busy(handler):
        if site.hits["/busy.png"] == 1:
            send(handler, b"slow down", "text/plain", 429, {"Retry-After": "1"})
        else:
            send(handler, PNG)

    result = fetch_one(site.url + "/busy.png", FetchLimits(allow_private=True, retries=1, backoff=0.01))
    assert (result.outcome, result.attempts) == ("ok", 2)
    assert 0.95 <= result.seconds < 3  # waited as asked, not the 0.01 s backoff


def test_retry_after_is_capped(site):
    site.serve("/later.png", b"come back in an hour", "text/plain", 503, {"Retry-After": "3600"})
    result = fetch_one(site.url + "/later.png", FetchLimits(allow_private=True, retries=1, max_retry_delay=0.2))
    assert (result.outcome, result.status, result.attempts) == ("http_error", 503, 2)
    assert 0.2 <= result.seconds < 2


def test_retry_after_values():
    assert _retry_after("120") == 120
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past
    assert 3000 < _retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))) <= 3600
    assert _retry_after(None) is None and _retry_after("soon") is None


# --- time ------------------------------------------------------------------------------------------


def test_slow_response_is_cut_at_total_timeout(site):
    @site.route("/slow.png")
    def slow(handler):
        site.stopping.wait(5)  # no headers for 5 s
        send(handler, PNG)

    started = time.monotonic()
    once, twice = fetch(
        [site.url + "/slow.png", site.url + "/slow.png?again"],
        FetchLimits(allow_private=True, read_timeout=10, total_timeout=0.5, retries=0),
    )
    assert (once.outcome, once.status, once.attempts, once.data) == ("timeout", None, 1, None)
    assert once.error == "not done within 0.5 s"
    assert 0.5 <= once.seconds < 1.5
    assert time.monotonic() - started < 2

    retried = fetch_one(site.url + "/slow.png", FetchLimits(allow_private=True, total_timeout=0.3, retries=1, backoff=0.05))
    assert (retried.outcome, retried.attempts) == ("timeout", 2)
    assert 0.6 <= retried.seconds < 2


def test_trickling_response_is_cut_at_total_timeout(site):
    @site.route("/trickle.png")
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(PNG) * 100))
        handler.end_headers()
        handler.wfile.write(PNG[:8])
        for byte in itertools.cycle(PNG):  # a byte every 0.1 s: never a read timeout
            if site.stopping.wait(0.1):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    result = fetch_one(site.url + "/trickle.png", FetchLimits(allow_private=True, read_timeout=5, total_timeout=1.0, retries=0))
    assert (result.outcome, result.status, result.data) == ("timeout", 200, None)
    assert 8 < result.bytes < 20
    assert 1.0 <= result.seconds < 2


def test_read_timeout_between_bytes(site):
    @site.route("/stalls.png")
    def stalls(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(PNG)))
        handler.end_headers()
        handler.wfile.write(PNG[:10])
        handler.wfile.flush()
        site.stopping.wait(5)

    result = fetch_one(site.url + "/stalls.png", FetchLimits(allow_private=True, read_timeout=0.3, total_timeout=10, retries=0))
    assert (result.outcome, result.status, result.bytes) == ("timeout", 200, 10)
    assert result.error == "nothing for 0.3 s"
    assert result.seconds < 1.5


def test_connect_error_is_retried():
    result = fetch_one(f"http://127.0.0.1:{free_port()}/x.png", FetchLimits(allow_private=True, retries=1, backoff=0.01))
    assert (result.outcome, result.status, result.attempts) == ("connect_error", None, 2)
    assert result.seconds < 2


# --- redirects ---------------------------------------------------------------------------------------


def redirect(site: Site, path: str, location: str, status: int = 302):
    site.serve(path, b"", None, status, {"Location": location})


def test_redirect_chain_ends_at_an_image(site):
    site.serve("/final.png", PNG)
    redirect(site, "/hop1", "/final.png", 301)  # relative
    redirect(site, "/hop2", site.url + "/hop1", 307)  # absolute
    redirect(site, "/hop3", "hop2", 308)  # relative to the path
    result = fetch_one(site.url + "/hop3", FetchLimits(allow_private=True, max_redirects=3))
    assert (result.outcome, result.status, result.attempts) == ("ok", 200, 1)
    assert result.final_url == site.url + "/final.png" and result.data == PNG
    assert [site.hits[p] for p in ("/hop3", "/hop2", "/hop1", "/final.png")] == [1, 1, 1, 1]

    too_far = fetch_one(site.url + "/hop3", FetchLimits(allow_private=True, max_redirects=2))
    assert (too_far.outcome, too_far.status, too_far.final_url) == ("too_many_redirects", 301, site.url + "/hop1")


def test_redirect_loop(site):
    redirect(site, "/loop", "/loop")
    result = fetch_one(site.url + "/loop", FetchLimits(allow_private=True, max_redirects=3, retries=2))
    assert (result.outcome, result.status, result.attempts, result.data) == ("too_many_redirects", 302, 1, None)
    assert result.error == "more than 3 redirects"
    assert site.hits["/loop"] == 4  # the first request and three redirects, no retries


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "javascript:alert(1)", "ftp://ftp.example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="]
)
def test_redirect_to_another_scheme_is_blocked(site, location):
    redirect(site, "/away", location)
    result = fetch_one(site.url + "/away")
    assert (result.outcome, result.status, result.attempts, result.data) == ("blocked", 302, 1, None)
    assert result.error.startswith("redirect to a ") and result.final_url == location


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/cat.png",
        "http://localhost:{port}/cat.png",
        "http://[::1]:{port}/cat.png",
        "http://[::ffff:127.0.0.1]:{port}/cat.png",
        "http://0.0.0.0:{port}/cat.png",
        "http://2130706433:{port}/cat.png",  # 127.0.0.1 as one number
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/cat.png",
        "https://192.168.1.1/cat.png",
    ],
)
def test_private_addresses_are_blocked(site, url):
    site.serve("/cat.png", PNG)
    result = fetch_one(url.format(port=site.url.rsplit(":", 1)[1]), FetchLimits(retries=2))
    assert (result.outcome, result.status, result.attempts, result.data) == ("blocked", None, 1, None)
    assert "non-public address" in result.error
    assert site.hits["/cat.png"] == 0


@pytest.fixture
def second_loopback():
    """A server on 127.0.0.2, which FetchLimits(allowed_networks=...) can admit on its own: a
    first hop that is allowed while 127.0.0.1 is not."""
    try:
        server = Site("127.0.0.2")
    except OSError:
        pytest.skip("cannot bind 127.0.0.2 here")
    yield server
    server.stop()


def test_redirect_to_a_private_address_is_blocked(site, second_loopback):
    site.serve("/secret.png", PNG)
    second_loopback.serve("/public.png", PNG)
    port = site.url.rsplit(":", 1)[1]
    redirect(second_loopback, "/to-loopback", site.url + "/secret.png")
    redirect(second_loopback, "/to-localhost", f"http://localhost:{port}/secret.png")
    redirect(second_loopback, "/to-mapped", f"http://[::ffff:127.0.0.1]:{port}/secret.png")
    limits = FetchLimits(allowed_networks=("127.0.0.2/32",), retries=2)
    public, *redirected = fetch([second_loopback.url + p for p in ("/public.png", "/to-loopback", "/to-localhost", "/to-mapped")], limits)
    assert public.outcome == "ok" and public.data == PNG
    for result in redirected:
        assert (result.outcome, result.status, result.attempts) == ("blocked", 302, 1)
        assert "non-public address 127.0.0.1" in result.error or "non-public address ::" in result.error
    assert redirected[0].final_url == site.url + "/secret.png"
    assert site.hits["/secret.png"] == 0


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
     "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "fec0::1", "ff02::1", "::ffff:127.0.0.1",
     "::ffff:10.0.0.1", "::127.0.0.1", "2002:7f00:1::1", "64:ff9b::a00:1", "2001:db8::1"],
)
def test_non_public_addresses(address):
    assert not is_public_address(address)
    assert not FetchLimits().permits(address)
    assert FetchLimits(allow_private=True).permits(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address):
    assert is_public_address(address) and FetchLimits().permits(address)


async def test_client_connects_only_to_checked_addresses(site):
    """make_client's transport never resolves a name itself: without a checked address it refuses,
    and with one it connects there (the name need not resolve at all) and sends the real Host."""
    site.serve("/cat.png", PNG)
    port = site.url.rsplit(":", 1)[1]
    async with make_client() as client:
        with pytest.raises(BlockedAddress):
            await client.get(site.url + "/cat.png")
        with _pinned("spellbook.invalid", ("127.0.0.1",)):
            response = await client.get(f"http://spellbook.invalid:{port}/cat.png")
    assert response.status_code == 200 and response.content == PNG
    assert site.headers[-1]["Host"] == f"spellbook.invalid:{port}"
    assert site.hits["/cat.png"] == 1


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_is_verified_against_the_host_name(tmp_path, monkeypatch):
    """The connection goes to the checked IP, but TLS still names and verifies the host."""
    localhost, other = self_signed(tmp_path, "localhost"), self_signed(tmp_path, "other.example")
    good, wrong = Site(tls=localhost), Site(tls=other)
    try:
        good.serve("/cat.png", PNG)
        wrong.serve("/cat.png", PNG)
        monkeypatch.setenv("SSL_CERT_FILE", str(localhost[0]))
        ok = fetch_one(good.url + "/cat.png")
        monkeypatch.setenv("SSL_CERT_FILE", str(other[0]))
        refused = fetch_one(wrong.url + "/cat.png", FetchLimits(allow_private=True, retries=2))
    finally:
        good.stop()
        wrong.stop()
    assert (ok.outcome, ok.status, ok.data) == ("ok", 200, PNG)
    assert ok.final_url.startswith("https://localhost:")
    assert (refused.outcome, refused.status, refused.attempts) == ("connect_error", None, 1)  # not retried
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error and wrong.hits["/cat.png"] == 0


# --- size --------------------------------------------------------------------------------------------


def test_huge_body_is_abandoned(site):
    @site.route("/huge.png")
    def huge(handler):  # no Content-Length: the size is only known by reading
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Connection", "close")  # the body ends when the connection does
        handler.end_headers()
        handler.close_connection = True
        handler.wfile.write(PNG)
        for _ in range(2000):
            handler.wfile.write(b"\0" * 4096)

    site.serve("/says-huge.png", PNG, "image/png", headers={"Content-Length": str(10**9)})
    limits = FetchLimits(allow_private=True, max_bytes=100_000, retries=2)
    huge, says_huge = fetch([site.url + "/huge.png", site.url + "/says-huge.png"], limits)
    assert (huge.outcome, huge.status, huge.attempts, huge.data) == ("too_large", 200, 1, None)
    assert 100_000 < huge.bytes <= 100_000 + 2**16 and huge.error == "body over 100,000 bytes"
    assert (says_huge.outcome, says_huge.bytes, says_huge.attempts) == ("too_large", 0, 1)
    assert says_huge.error == "Content-Length 1,000,000,000 is over 100,000 bytes"

    exactly = fetch_one(site.url + "/huge.png", FetchLimits(allow_private=True, max_bytes=len(PNG) + 2000 * 4096))
    assert exactly.outcome == "ok" and exactly.bytes == len(PNG) + 2000 * 4096


# --- bad URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "file:///etc/passwd", "ftp://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo=",
     "/images/cat.png", "cat.png", "", "http://", "http:///cat.png", None, 42],
)
def test_bad_urls_are_not_requested(url):
    result = fetch_one(url, FetchLimits())
    assert (result.outcome, result.status, result.attempts, result.final_url, result.data) == ("bad_url", None, 0, None, None)
    assert result.url == url and result.error


# --- many URLs ---------------------------------------------------------------------------------------


def test_concurrency_is_bounded(site):
    @site.route("/wait.png")
    def wait(handler):
        time.sleep(0.15)
        send(handler, PNG)

    started = time.monotonic()
    results = fetch([site.url + f"/wait.png?{i}" for i in range(12)], FetchLimits(allow_private=True, concurrency=3))
    assert [r.outcome for r in results] == ["ok"] * 12
    assert site.hits["/wait.png"] == 12
    assert site.most_active == 3  # reached, never passed
    assert time.monotonic() - started < 4 * 0.15 + 1.5


async def test_fetch_all_yields_as_completed_and_reads_lazily(site):
    @site.route("/slow.png")
    def slow(handler):
        time.sleep(0.5)
        send(handler, PNG)

    site.serve("/fast.png", PNG)
    taken = []

    def items():
        for i in itertools.count():
            taken.append(i)
            yield i, site.url + ("/slow.png" if i == 0 else "/fast.png")

    limits = FetchLimits(allow_private=True, concurrency=4)
    results = fetch_all(items(), limits)
    first = [await anext(results) for _ in range(6)]
    await results.aclose()
    assert 0 not in [r.item_id for r in first]  # the slow first item did not hold the others back
    assert all(r.outcome == "ok" for r in first)
    assert len(taken) <= 6 + 2 * limits.concurrency + 1  # an endless source, read only ahead of need


async def test_fetch_all_with_the_callers_client(site):
    site.serve("/cat.png", PNG)
    async with httpx.AsyncClient() as client:
        results = [r async for r in fetch_all([(7, site.url + "/cat.png"), (8, "file:///etc/passwd")], LOCAL, client)]
    assert sorted((r.item_id, r.outcome) for r in results) == [(7, "ok"), (8, "bad_url")]
    async with httpx.AsyncClient() as client:
        blocked = [r async for r in fetch_all([(9, site.url + "/cat.png")], FetchLimits(), client)]
    assert blocked[0].outcome == "blocked" and site.hits["/cat.png"] == 1


def test_fetch_images_from_synchronous_code(site):
    site.serve("/cat.png", PNG)
    site.serve("/cat.jpg", JPEG, "image/jpeg")
    caller = threading.get_ident()
    read_in = set()

    def rows():  # like a database cursor: must be read in the thread that made it
        for i in range(20):
            read_in.add(threading.get_ident())
            yield 100 + i, (site.url + "/cat.png", site.url + "/cat.jpg", site.url + "/missing.png", "mailto:x@example.com")[i % 4]

    results = list(fetch_images(rows(), FetchLimits(allow_private=True, concurrency=4, retries=0)))
    assert read_in == {caller}
    assert sorted(r.item_id for r in results) == list(range(100, 120))
    assert Counter(r.outcome for r in results) == {"ok": 10, "http_error": 5, "bad_url": 5}
    assert all(r.outcome in OUTCOMES for r in results)


async def test_fetch_images_inside_a_running_event_loop(site):
    """Synchronous code called from async code (an async test, a server's handler) has a loop
    running on its thread: fetch_images keeps its own loop on its own thread, start to end."""
    site.serve("/cat.png", PNG)
    results = list(fetch_images([(1, site.url + "/cat.png"), (2, site.url + "/missing.png")], FetchLimits(allow_private=True, retries=0)))
    assert sorted((r.item_id, r.outcome) for r in results) == [(1, "ok"), (2, "http_error")]


def test_headers_and_text_reads(site):
    site.serve("/cat.png", PNG)
    site.serve("/ai.txt", b"User-Agent: *\nDisallow: /\n", "text/plain")
    [headers] = fetch([site.url + "/cat.png"], FetchLimits(allow_private=True, retries=0, read="headers"))
    assert headers.outcome == "ok" and headers.data == b"" and headers.headers["content-type"] == "image/png"
    [text] = fetch([site.url + "/ai.txt"], FetchLimits(allow_private=True, retries=0, read="text"))
    assert text.outcome == "ok" and text.data.startswith(b"User-Agent")  # not an image, and fine
    [image] = fetch([site.url + "/ai.txt"])
    assert image.outcome == "not_image"
    with pytest.raises(ValueError):
        FetchLimits(read="everything")


def test_fetch_images_stops_early(site):
    @site.route("/slow.png")
    def slow(handler):
        site.stopping.wait(5)
        send(handler, PNG)

    site.serve("/fast.png", PNG)
    taken = []

    def items():
        for i in itertools.count():
            taken.append(i)
            yield i, site.url + ("/slow.png" if i % 2 else "/fast.png")

    limits = FetchLimits(allow_private=True, concurrency=4)
    started = time.monotonic()
    results = fetch_images(items(), limits)
    first = [next(results) for _ in range(3)]
    results.close()  # cancels the slow requests in flight
    assert time.monotonic() - started < 2
    assert all(r.outcome == "ok" for r in first)
    assert len(taken) <= 3 + 2 * limits.concurrency + 1


def test_bad_items_raise():
    with pytest.raises(TypeError, match="pairs"):
        list(fetch_images(["http://example.com/cat.png"]))


def test_imports_without_torch():
    code = "import sys, spellbook.embeddings.fetch; assert 'torch' not in sys.modules and 'PIL' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
