"""Fault injection, from Python and over the /_emulator control endpoints."""

from __future__ import annotations

import time

import httpx
import pytest
from emulator_helpers import make_study, members, zip_bytes

from xnat_flows.testing.faults import PERMANENT_400, TRANSIENT_400


def gradual(client, data):
    return client.post(
        "/data/services/import",
        params={"import-handler": "gradual-DICOM", "inbody": "true", "PROJECT_ID": "TEST"},
        content=data,
        headers={"Content-Type": "application/dicom"},
    )


def test_transient_400_applies_n_times(emulator, client):
    emulator.faults.add(method="POST", path="/data/services/import", status=400, message=TRANSIENT_400, times=2)
    data = make_study(1, 1)[0].data
    answers = [gradual(client, data) for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 200]
    assert TRANSIENT_400 in answers[0].text


def test_after_n_requests_and_handler_filter(emulator, client):
    emulator.faults.add(
        path="/data/services/import", handler="gradual-DICOM", status=400, message=PERMANENT_400, after=1, times=None
    )
    data = make_study(1, 1)[0].data
    assert gradual(client, data).status_code == 200
    assert gradual(client, data).text == PERMANENT_400
    zipped = client.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "project": "TEST"},
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip"},
    )
    assert zipped.status_code == 200


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after(emulator, client, status):
    emulator.faults.add(path="/data/projects$", status=status, retry_after=2)
    response = client.get("/data/projects")
    assert response.status_code == status and response.headers["Retry-After"] == "2"
    assert client.get("/data/projects").status_code == 200


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors(emulator, client, status):
    emulator.faults.add(method="GET", path="/data/projects", status=status)
    assert client.get("/data/projects").status_code == status


def test_token_eviction(emulator):
    token = httpx.post(f"{emulator.url}/data/JSESSION", auth=("admin", "admin")).text
    emulator.faults.add(path="/data/projects", evict_token=True)
    cookies = {"JSESSIONID": token}
    assert httpx.get(f"{emulator.url}/data/projects", cookies=cookies).status_code == 401
    assert httpx.get(f"{emulator.url}/data/projects", cookies=cookies).status_code == 401  # token is gone


def test_delay(emulator, client):
    emulator.faults.add(path="/data/projects", delay_ms=300)
    started = time.monotonic()
    assert client.get("/data/projects").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_connection_mid_body(emulator, client):
    emulator.faults.add(path="/data/services/import", drop=True)
    body = zip_bytes(members(make_study(1, 3)))
    with pytest.raises(httpx.TransportError):
        client.post(
            "/data/services/import",
            params={"import-handler": "DICOM-zip", "project": "TEST"},
            content=body,
            headers={"Content-Type": "application/zip"},
        )
    assert client.get("/data/projects").status_code == 200


def test_error_body_on_prearchive_service(emulator, client):
    emulator.faults.add(path="/data/services/archive", error_body="Error: archive failed (injected)")
    response = client.post("/data/services/archive", data={"src": "/prearchive/projects/TEST/1/2"})
    assert response.status_code == 200 and "archive failed" in response.text


def test_control_endpoints_over_http(emulator):
    control = f"{emulator.url}/_emulator"
    added = httpx.post(
        f"{control}/faults",
        json={"method": "GET", "path": "/data/projects", "status": 503, "retry_after": 1, "times": 1},
    )
    assert added.status_code == 200 and added.json()["ids"]
    assert len(httpx.get(f"{control}/faults").json()) == 1
    assert httpx.get(f"{emulator.url}/data/projects", auth=("admin", "admin")).status_code == 503
    httpx.post(f"{control}/faults", json={"path": "/data/projects", "status": 500, "times": None})
    assert httpx.delete(f"{control}/faults").status_code == 200
    assert httpx.get(f"{emulator.url}/data/projects", auth=("admin", "admin")).status_code == 200
    stats = httpx.get(f"{control}/stats").json()
    assert stats["requests"] >= 3 and "peak_concurrent_uploads" in stats
    assert httpx.post(f"{control}/faults", json={"bogus": 1}).status_code == 400


def test_forced_conflict_over_http(emulator, client):
    from xnat_flows.testing.pytest_plugin import wait_until

    httpx.post(f"{emulator.url}/_emulator/faults", json={"next_session": "CONFLICT"})
    client.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "project": "TEST", "session": "FC"},
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip"},
    )
    rows = wait_until(
        lambda: [r for r in client.get("/data/prearchive").json()["ResultSet"]["Result"] if r["status"] == "CONFLICT"]
    )
    assert rows[0]["name"] == "FC"


def test_throttled_response(emulator, client):
    projects_body = client.get("/data/projects").content
    emulator.faults.add(method="GET", path="/data/projects$", bytes_per_second=len(projects_body) * 2)
    started = time.monotonic()
    assert client.get("/data/projects").content == projects_body
    assert time.monotonic() - started >= 0.4
