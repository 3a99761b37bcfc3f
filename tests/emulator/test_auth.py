"""Authentication, JSESSION lifecycle and site endpoints (XNAT wiki: User Session Management API, User Alias Token API)."""

from __future__ import annotations

import re
import time

import httpx


def test_jsession_login_returns_32_hex_token_and_cookie(emulator):
    response = httpx.post(f"{emulator.url}/data/JSESSION", auth=("admin", "admin"))
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9A-F]{32}", response.text)
    assert response.cookies["JSESSIONID"] == response.text


def test_cookie_authenticates_and_delete_invalidates(emulator):
    token = httpx.post(f"{emulator.url}/data/JSESSION", auth=("admin", "admin")).text
    cookies = {"JSESSIONID": token}
    assert httpx.get(f"{emulator.url}/data/JSESSION", cookies=cookies).text == token
    assert httpx.get(f"{emulator.url}/data/projects", cookies=cookies).status_code == 200
    assert httpx.delete(f"{emulator.url}/data/JSESSION", cookies=cookies).status_code == 200
    assert httpx.get(f"{emulator.url}/data/projects", cookies=cookies).status_code == 401


def test_bad_credentials_and_missing_auth_are_401(emulator):
    assert httpx.post(f"{emulator.url}/data/JSESSION", auth=("admin", "wrong")).status_code == 401
    assert httpx.get(f"{emulator.url}/data/projects", auth=("admin", "wrong")).status_code == 401
    assert httpx.get(f"{emulator.url}/data/projects").status_code == 401
    assert httpx.get(f"{emulator.url}/data/projects", cookies={"JSESSIONID": "0" * 32}).status_code == 401


def test_basic_auth_on_every_request_and_rest_alias(client):
    data = client.get("/REST/projects", params={"format": "json"}).json()
    assert [row["ID"] for row in data["ResultSet"]["Result"]] == ["TEST"]


def test_idle_expiry(tmp_path, monkeypatch, xnat_emulator_factory):
    import types

    from xnat_flows.testing import auth

    clock = types.SimpleNamespace(now=time.time())
    # The JSESSION clock is moved by the test, not by sleeping: no race with a slow machine.
    monkeypatch.setattr(auth, "time", types.SimpleNamespace(time=lambda: clock.now))
    xnat = xnat_emulator_factory(tmp_path, session_idle_timeout=60)
    token = httpx.post(f"{xnat.url}/data/JSESSION", auth=("admin", "admin")).text
    clock.now += 59
    assert httpx.get(f"{xnat.url}/data/projects", cookies={"JSESSIONID": token}).status_code == 200
    clock.now += 59  # idle time counts from the last use
    assert httpx.get(f"{xnat.url}/data/projects", cookies={"JSESSIONID": token}).status_code == 200
    clock.now += 61
    assert httpx.get(f"{xnat.url}/data/projects", cookies={"JSESSIONID": token}).status_code == 401


def test_max_sessions_per_user_evicts_oldest(tmp_path, xnat_emulator_factory):
    xnat = xnat_emulator_factory(tmp_path, max_sessions_per_user=2)
    tokens = [httpx.post(f"{xnat.url}/data/JSESSION", auth=("admin", "admin")).text for _ in range(3)]
    statuses = [httpx.get(f"{xnat.url}/data/projects", cookies={"JSESSIONID": t}).status_code for t in tokens]
    assert statuses == [401, 200, 200]


def test_html200_login_failure_mode(tmp_path, xnat_emulator_factory):
    xnat = xnat_emulator_factory(tmp_path, login_failure_mode="html200")
    response = httpx.post(f"{xnat.url}/data/JSESSION", auth=("admin", "nope"))
    assert response.status_code == 200 and "<html" in response.text


def test_tokens_survive_restart(tmp_path, xnat_emulator_factory):
    xnat = xnat_emulator_factory(tmp_path / "d")
    token = httpx.post(f"{xnat.url}/data/JSESSION", auth=("admin", "admin")).text
    xnat.stop()
    xnat = xnat_emulator_factory(tmp_path / "d")
    assert httpx.get(f"{xnat.url}/data/projects", cookies={"JSESSIONID": token}).status_code == 200


def test_version_build_info_and_username(client):
    assert client.get("/xapi/siteConfig/buildInfo/version").text == "1.9.2.1"
    assert client.get("/xapi/siteConfig/buildInfo").json()["version"] == "1.9.2.1"
    assert client.get("/xapi/users/username").text == "admin"
    assert client.get("/data/version").status_code == 404  # as on 1.9.x


def test_kill_active_sessions(emulator, client):
    token = httpx.post(f"{emulator.url}/data/JSESSION", auth=("admin", "admin")).text
    assert client.delete("/xapi/users/active/admin").status_code == 200
    assert httpx.get(f"{emulator.url}/data/projects", cookies={"JSESSIONID": token}).status_code == 401


def test_alias_tokens(emulator, client):
    token = client.get("/data/services/tokens/issue").json()
    alias, secret = token["alias"], token["secret"]
    assert httpx.get(f"{emulator.url}/data/projects", auth=(alias, secret)).status_code == 200
    assert re.fullmatch(r"[0-9A-F]{32}", httpx.post(f"{emulator.url}/data/JSESSION", auth=(alias, secret)).text)
    assert client.get(f"/data/services/tokens/validate/{alias}/{secret}").json() == {"valid": "admin"}
    assert client.get(f"/data/services/tokens/invalidate/{alias}/{secret}").status_code == 200
    assert httpx.get(f"{emulator.url}/data/projects", auth=(alias, secret)).status_code == 401
    assert client.get(f"/data/services/tokens/validate/{alias}/{secret}").status_code == 404


def test_site_config_and_receivers(emulator, client):
    assert client.post("/xapi/siteConfig", json={"sessionXmlRebuilderInterval": 0.2}).status_code == 200
    assert client.get("/xapi/siteConfig").json()["sessionXmlRebuilderInterval"] == 0.2
    assert client.get("/xapi/dicomscp").json() == []  # no DICOM receiver running
