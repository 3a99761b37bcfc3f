"""Malformed bodies answer 400, a full disk answers 500 per request and recovers, the bandwidth cap's accounting."""

from __future__ import annotations

import io

import pytest
from emulator_helpers import make_study, members, zip_bytes

from xnat_flows.testing.bandwidth import ThrottledReader, ThrottledWriter, TokenBucket
from xnat_flows.testing.pytest_plugin import wait_until

MALFORMED_BODIES = [b"not json", b"{", b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe"]


def _prearchive_url(emulator, client) -> str:
    emulator.set_prearchive_code("TEST", 0)
    answer = client.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "project": "TEST", "subject": "S", "session": "E"},
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip"},
    )
    assert answer.status_code == 200, answer.text
    return answer.text.strip()


@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_every_json_handler_answers_400_to_a_malformed_body(emulator, client, body):
    prearchive_url = _prearchive_url(emulator, client)
    json_headers = {"Content-Type": "application/json"}
    targets = [
        ("POST", "/xapi/siteConfig"),
        ("POST", "/xapi/direct-archive"),
        ("POST", f"{prearchive_url}?action=build"),
        ("POST", "/_emulator/faults"),
    ]
    for method, url in targets:
        answer = client.request(method, url, content=body, headers=json_headers)
        if body in (b"[1, 2]",) and url == "/_emulator/faults":
            assert answer.status_code == 400, (url, answer.text)  # a list, but of non-objects
            continue
        assert answer.status_code == 400, (url, body, answer.status_code, answer.text)
        assert "Internal Server Error" not in answer.text


def test_wrongly_shaped_json_answers_400(emulator, client):
    assert client.post("/xapi/siteConfig", json={"sessionXmlRebuilderInterval": "soon"}).status_code == 400
    assert client.post("/xapi/siteConfig", json={"sessionXmlRebuilderInterval": [1]}).status_code == 400
    assert client.post("/xapi/direct-archive", json={"filters": "TEST"}).status_code == 400
    assert client.post("/xapi/direct-archive", json={"filters": {"project": "TEST"}}).status_code == 400
    assert client.post("/_emulator/faults", json={"no_such_option": 1}).status_code == 400
    assert client.post("/xapi/siteConfig", json={"sessionXmlRebuilderInterval": 0.3}).status_code == 200
    assert client.post("/xapi/direct-archive", json={}).json() == []


def test_full_disk_answers_500_per_request_then_recovers(emulator, client):
    data = make_study(1, 2)
    params = {"import-handler": "gradual-DICOM", "inbody": "true", "PROJECT_ID": "TEST"}
    headers = {"Content-Type": "application/dicom"}
    emulator.faults.set_disk_full(True)
    refused = [client.post("/data/services/import", params=params, content=i.data, headers=headers) for i in data]
    zipped = client.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "project": "TEST"},
        content=zip_bytes(members(data)),
        headers={"Content-Type": "application/zip"},
    )
    refused.append(zipped)
    assert [a.status_code for a in refused] == [500, 500, 500]
    assert all("no space left on device" in a.text for a in refused)
    # Reading still works on a full disk, and nothing half-written is left behind.
    assert client.get("/data/projects").status_code == 200
    assert list((emulator.data_dir / "tmp").iterdir()) == []
    assert emulator.prearchive_sessions() == []

    client.post("/_emulator/faults", json={"disk_full": False})  # over HTTP too
    accepted = [client.post("/data/services/import", params=params, content=i.data, headers=headers) for i in data]
    assert [a.status_code for a in accepted] == [200, 200]
    archived = wait_until(lambda: emulator.archived_experiments())
    assert list(archived[0]["scans"].values()) == [2]


def test_full_disk_refuses_resource_uploads(emulator, client):
    client.post("/_emulator/faults", json={"disk_full": True})
    assert emulator.faults.disk_full
    emulator.set_prearchive_code("TEST", 4)
    answer = client.put(
        "/data/projects/TEST/resources/NOTES/files/a.txt", content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 500 and "no space left" in answer.text
    emulator.faults.clear()  # clearing the faults frees the disk
    answer = client.put(
        "/data/projects/TEST/resources/NOTES/files/a.txt", content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def test_token_bucket_books_bytes_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock)
    assert bucket.take(100) == 0.0  # the burst passes at once
    assert bucket.take(500) == pytest.approx(0.5)  # then 500 bytes cost half a second
    assert bucket.take(500) == pytest.approx(1.0)  # a second caller waits behind the first one's debt
    clock.now += 1.0
    assert bucket.take(0) == pytest.approx(0.0)  # after 1 s the debt is paid...
    clock.now += 10.0
    assert bucket.take(150) == pytest.approx(0.05)  # ...and idle time refills only up to the burst


def test_mbit_conversion():
    assert TokenBucket.from_mbit(8).rate == 1_000_000


def test_reads_and_writes_share_one_bucket():
    clock = FakeClock()
    bucket = TokenBucket(10_000, burst=1, clock=clock)
    reader = ThrottledReader(io.BytesIO(b"r" * 50_000), bucket, sleep=clock.sleep)
    sink = io.BytesIO()
    writer = ThrottledWriter(sink, bucket, sleep=clock.sleep)
    received = b""
    while chunk := reader.read(8192):
        received += chunk
    writer.write(b"w" * 30_000)
    assert received == b"r" * 50_000 and sink.getvalue() == b"w" * 30_000
    # 80,000 bytes at 10,000 bytes/s: 8 s of waiting in all, read and write together.
    assert clock.slept == pytest.approx(8.0, abs=0.01)
    assert clock.now - 100.0 == pytest.approx(8.0, abs=0.01)


def test_emulator_applies_the_cap(tmp_path, xnat_emulator_factory):
    xnat = xnat_emulator_factory(tmp_path / "x", bandwidth_mbit=80)
    assert xnat.bandwidth is not None and xnat.bandwidth.rate == 10_000_000
    import httpx

    before = xnat.bandwidth._tokens
    answer = httpx.get(f"{xnat.url}/", timeout=10)
    assert answer.status_code == 200
    assert xnat.bandwidth._tokens < before  # the answer's bytes went through the bucket
    xnat = xnat_emulator_factory(tmp_path / "y")
    assert xnat.bandwidth is None


GARBAGE = [
    ("application/json", b"{not json"),
    ("application/json", b'[1, {"a": }'),
    ("application/xml", b"<unclosed"),
    ("text/xml", b"\xff\xfe\x00\x01"),
    (
        "multipart/form-data; boundary=XYZ",
        b'--XYZ\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\nno end',
    ),
    ("multipart/form-data", b"no boundary at all"),
    ("application/x-www-form-urlencoded", b"%zz&&==&a=%"),
    ("application/zip", b"PK\x03\x04 not really a zip"),
    ("application/octet-stream", b"\x00" * 10),
]


def _write_urls(emulator, client) -> list[tuple[str, str]]:
    """One URL for every route that takes a body, with real objects behind the path parameters."""
    prearchive_url = _prearchive_url(emulator, client)
    archived = client.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "dest": "/archive/projects/TEST/subjects/S/experiments/A"},
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip"},
    )
    experiment = archived.text.strip().rsplit("/", 1)[-1]
    return [
        ("POST", "/data/JSESSION"),
        ("POST", "/data/services/auth"),
        ("PUT", "/data/services/auth"),
        ("POST", "/xapi/siteConfig"),
        ("PUT", "/data/projects/TEST/prearchive_code/4"),
        ("POST", "/data/projects/TEST/prearchive_code/4"),
        ("PUT", "/data/projects/TEST/accessibility/protected"),
        ("PUT", "/data/projects/NEWP"),
        ("PUT", "/data/projects/TEST/subjects/NS"),
        ("PUT", f"/data/projects/TEST/experiments/{experiment}"),
        ("PUT", f"/data/experiments/{experiment}/scans/9"),
        ("PUT", f"/data/experiments/{experiment}/resources/R/files/x.bin"),
        ("POST", f"/data/experiments/{experiment}/resources/R/files"),
        ("PUT", f"/data/experiments/{experiment}/assessors/A1"),
        ("POST", "/data/search"),
        ("POST", "/data/services/refresh/catalog"),
        ("PUT", "/data/services/refresh/catalog"),
        ("POST", "/data/services/import"),
        ("POST", "/data/services/archive"),
        ("POST", "/data/services/prearchive/delete"),
        ("POST", "/data/services/prearchive/move"),
        ("POST", "/data/services/prearchive/rebuild"),
        ("POST", f"{prearchive_url}?action=build"),
        ("POST", "/xapi/direct-archive"),
        ("POST", "/xapi/direct-archive/TEST/1.2.3/L"),
        ("POST", "/_emulator/faults"),
        ("POST", "/_emulator/rebuild"),
        ("PUT", "/data/config/anon/script"),  # last: a garbage site script would refuse later imports, as in XNAT
    ]


def test_every_handler_that_takes_a_body_answers_malformed_ones_without_a_500(emulator, client):
    urls = _write_urls(emulator, client)
    # Every route that accepts PUT or POST is exercised by at least one of these URLs.
    for methods, pattern, _handler, _auth in emulator.api.routes:
        for method in {"PUT", "POST"} & set(methods.split()):
            assert any(m == method and pattern.fullmatch(u.split("?")[0]) for m, u in urls), (method, pattern.pattern)
    for method, url in urls:
        for content_type, body in GARBAGE:
            answer = client.request(method, url, content=body, headers={"Content-Type": content_type})
            assert answer.status_code < 500, (method, url, content_type, answer.status_code, answer.text)
    assert client.get("/data/projects").status_code == 200  # and the emulator still serves
