"""getURL[url] as dicom-edit6 defines it (GetURLScriptFunction: an HTTP GET, the answer's lines
joined as the value, an empty answer or a failed request an error), allowed only for URLs the user
names, each distinct URL asked once, every request bounded in time and size."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from anon_helpers import VARIABLES, part10, read

from xnat_flows.anon import AnonError, Anonymizer, ScriptError, UrlAccess, compile_script


class _Lookup(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path.startswith("/slow"):
            time.sleep(3)
        status, body = {
            "/map/MRN0001": (200, b"STUDY-\r\n0042\n"),
            "/empty": (200, b""),
            "/large": (200, b"x" * 70000),
            "/moved": (302, b""),
        }.get(self.path.split("?")[0], (404, b"no such id"))
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "http://example.invalid/elsewhere")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up (the timeout and size tests)
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    _Lookup.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Lookup)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _script(url_expression: str, base: str, timeout: float = 10.0) -> Anonymizer:
    return compile_script(
        f'version "6.1"\n(0010,0020) := getURL[{url_expression}]\n',
        source="lookup.das",
        url_access=UrlAccess((base + "/",), timeout),
    )


def test_the_answer_becomes_the_value_and_each_url_is_asked_once(service: str) -> None:
    anonymizer = _script(f'format["{service}/map/{{0}}", (0010,0020)]', service)
    first = anonymizer.apply_bytes(part10(), VARIABLES)
    again = anonymizer.apply_bytes(part10(), VARIABLES)
    assert read(first).PatientID == "STUDY-0042"  # lines joined without their breaks, as DicomEdit
    assert first == again
    assert _Lookup.requests == ["/map/MRN0001"]  # the dry run and the send get one answer


def test_without_allowed_urls_a_script_calling_get_url_does_not_compile() -> None:
    with pytest.raises(ScriptError) as caught:
        compile_script('version "6.1"\n\n(0010,0020) := getURL["http://ids.local/x"]\n', source="lookup.das")
    assert (caught.value.line, caught.value.column) == (3, 16)
    assert "--anon-allow-url" in caught.value.message


def test_a_literal_url_outside_the_allowed_prefixes_does_not_compile(service: str) -> None:
    with pytest.raises(ScriptError, match="not under the allowed prefixes") as caught:
        _script('"http://elsewhere.local/x"', service)
    assert (caught.value.line, caught.value.column) == (2, 23)


def test_a_computed_url_outside_the_prefixes_is_refused_without_a_request(service: str) -> None:
    anonymizer = _script('format["http://elsewhere.local/{0}", (0010,0020)]', service)
    with pytest.raises(AnonError, match="line 2: getURL: a URL on http://elsewhere.local is not under") as caught:
        anonymizer.apply_bytes(part10(), VARIABLES)
    assert "MRN0001" not in str(caught.value)  # a message names the host, never the identifier
    assert _Lookup.requests == []


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/unknown/MRN0001", "answered HTTP 404"),
        ("/empty", "empty response"),
        ("/large", "longer than 65536 bytes"),
        ("/moved", "redirect"),
    ],
)
def test_a_failed_request_refuses_the_file(service: str, path: str, words: str) -> None:
    anonymizer = _script(f'"{service}{path}"', service)
    with pytest.raises(AnonError, match=words) as caught:
        anonymizer.apply_bytes(part10(), VARIABLES)
    assert str(caught.value).startswith("line 2: getURL: ")


def test_a_request_waits_at_most_the_timeout(service: str) -> None:
    anonymizer = _script(f'"{service}/slow"', service, 0.5)
    started = time.monotonic()
    with pytest.raises(AnonError, match="failed"):
        anonymizer.apply_bytes(part10(), VARIABLES)
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("prefix", ["ids.local/", "ftp://ids.local/", "file:///etc/"])
def test_allowed_urls_are_http_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        UrlAccess((prefix,))
