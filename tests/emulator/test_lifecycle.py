"""Session lifecycle: RECEIVING -> idle rebuild -> READY / auto-archive, fallbacks, persistence
(xnat-web `SessionXMLRebuilder.java`, `PrearcSessionArchiver.java`; XNAT wiki: Using Direct-to-Archive Uploading).
"""

from __future__ import annotations

import httpx
from emulator_helpers import make_study, members, zip_bytes

from xnat_flows.testing.pytest_plugin import wait_until


def upload(client, instances, **params):
    query = {"import-handler": "DICOM-zip", **params}
    response = client.post(
        "/data/services/import",
        params=query,
        content=zip_bytes(members(instances)),
        headers={"Content-Type": "application/zip"},
    )
    assert response.status_code == 200, response.text
    return response.text.strip()


def status_of(client, uri):
    response = client.get(uri)
    return response.json()["ResultSet"]["Result"][0]["status"] if response.status_code == 200 else None


def test_manual_project_goes_receiving_then_ready(emulator, client):
    emulator.set_prearchive_code("TEST", 0)
    uri = upload(client, make_study(1, 2), project="TEST", subject="S", session="E")
    assert status_of(client, uri) == "RECEIVING"
    wait_until(lambda: status_of(client, uri) == "READY")
    assert emulator.archived_experiments() == []


def test_auto_archive_project_archives_after_idle(emulator, client):
    uri = upload(client, make_study(2, 2), project="TEST", subject="S", session="AUTO")
    assert uri.startswith("/data/prearchive/projects/TEST/")
    wait_until(lambda: emulator.archived_experiments("TEST"))
    assert client.get(uri).status_code == 404
    [experiment] = emulator.archived_experiments("TEST")
    assert experiment["label"] == "AUTO" and experiment["subject"] == "S"
    assert experiment["scans"] == {"1": 2, "2": 2}


def test_auto_archive_conflict_leaves_row_in_conflict(emulator, client):
    study = make_study(1, 2)
    upload(client, study, project="TEST", subject="S", session="DUP")
    wait_until(lambda: emulator.archived_experiments("TEST"))
    # Same files again: append (code 4) refuses identical files -> CONFLICT in the prearchive.
    uri = upload(client, study, project="TEST", subject="S", session="DUP")
    wait_until(lambda: status_of(client, uri) == "CONFLICT")


def test_code_5_overwrites(emulator, client):
    emulator.set_prearchive_code("TEST", 5)
    study = make_study(1, 2)
    upload(client, study, project="TEST", subject="S", session="OW")
    wait_until(lambda: emulator.archived_experiments("TEST"))
    uri = upload(client, study, project="TEST", subject="S", session="OW")
    wait_until(lambda: client.get(uri).status_code == 404)
    assert emulator.archived_experiments("TEST")[0]["scans"] == {"1": 2}


def test_direct_archive_conflict_falls_back_to_prearchive(emulator, client):
    study = make_study(1, 1)
    upload(client, study, project="TEST", subject="S", session="DAC", dest="/archive/projects/TEST")
    # another study under an archived label: through the prearchive (xnat-web
    # DirectArchiveSessionServiceImpl.getOrCreate), auto-archived (code 4), refused: CONFLICT
    uri = upload(
        client, make_study(1, 1), **{"project": "TEST", "subject": "S", "session": "DAC", "Direct-Archive": "true"}
    )
    assert uri.startswith("/data/prearchive/projects/TEST/")
    wait_until(lambda: status_of(client, uri) == "CONFLICT")


def test_forced_error_for_next_session(emulator, client):
    emulator.faults.force_next_session("ERROR")
    uri = upload(
        client, make_study(1, 1), **{"project": "TEST", "subject": "S", "session": "ERR", "Direct-Archive": "true"}
    )
    assert uri.startswith("/xapi/direct-archive/")
    rows = wait_until(lambda: client.get("/data/prearchive/projects/TEST").json()["ResultSet"]["Result"])
    assert rows[0]["status"] == "ERROR"
    log = client.get(f"/data{rows[0]['url']}/logs").json()["ResultSet"]["Result"]
    assert "Attempt to direct-archive failed" in log[-1]["entry"]


def test_prevent_auto_commit_keeps_receiving(emulator, client):
    uri = upload(client, make_study(1, 1), project="TEST", session="HOLD", prevent_auto_commit="true")
    emulator.rebuild_now()
    import time

    time.sleep(0.5)  # the point: the idle interval (0.3 s) passes, and still no auto-build
    emulator.rebuild_now()
    assert status_of(client, uri) == "RECEIVING"


def test_state_survives_restart(tmp_path, xnat_emulator_factory):
    data_dir = tmp_path / "state"
    xnat = xnat_emulator_factory(data_dir, rebuild_idle_seconds=0.2)
    with httpx.Client(base_url=xnat.url, auth=("admin", "admin")) as http:
        upload(http, make_study(1, 3), project="TEST", subject="S", session="KEEP", dest="/archive/projects/TEST")
        xnat.set_prearchive_code("TEST", 0)
        pending = upload(http, make_study(1, 1), project="TEST", subject="S", session="PENDING")
    xnat.stop()
    xnat = xnat_emulator_factory(data_dir, rebuild_idle_seconds=0.2)
    with httpx.Client(base_url=xnat.url, auth=("admin", "admin")) as http:
        [experiment] = xnat.archived_experiments("TEST")
        assert experiment["label"] == "KEEP" and experiment["scans"] == {"1": 3}
        files = http.get(f"/data/experiments/{experiment['ID']}/scans/1/resources/DICOM/files").json()
        first = files["ResultSet"]["Result"][0]
        assert len(http.get(first["URI"]).content) == int(first["Size"])
        wait_until(lambda: status_of(http, pending) == "READY")
        assert http.get("/data/projects/TEST/prearchive_code").text == "0"


def test_stop_cuts_keep_alive_connections_and_restart_on_same_port(tmp_path, xnat_emulator_factory):
    xnat = xnat_emulator_factory(tmp_path / "s")
    port = xnat.port
    http = httpx.Client(base_url=xnat.url, auth=("admin", "admin"))
    assert http.get("/data/projects").status_code == 200
    xnat.stop()
    xnat = xnat_emulator_factory(tmp_path / "s", port=port)
    assert http.get("/data/projects").status_code == 200  # the pooled connection was closed cleanly
    http.close()


def test_parallel_gradual_uploads_of_one_study_make_one_session(emulator):
    from concurrent.futures import ThreadPoolExecutor

    study = make_study(series=3, instances=20)

    def send(instances):
        with httpx.Client(base_url=emulator.url, auth=("admin", "admin")) as http:
            return {
                http.post(
                    "/data/services/import",
                    params={
                        "import-handler": "gradual-DICOM",
                        "inbody": "true",
                        "PROJECT_ID": "TEST",
                        "SUBJECT_ID": "S",
                        "EXPT_LABEL": "PAR",
                    },
                    content=i.data,
                    headers={"Content-Type": "application/dicom"},
                ).text
                for i in instances
            }

    with ThreadPoolExecutor(6) as pool:
        uris = set().union(*pool.map(send, [study[k::6] for k in range(6)]))
    assert len(uris) == 1
    [experiment] = wait_until(lambda: emulator.archived_experiments("TEST"))
    assert experiment["scans"] == {"1": 20, "2": 20, "3": 20}


def test_stopping_with_requests_in_flight_is_quiet_and_waits_for_them(tmp_path, capfd, xnat_emulator_factory):
    """stop() cuts connections like a stopped XNAT, but no handler may touch the closed state
    afterwards and nothing is printed (it once printed 'closed database' tracebacks)."""
    import threading

    from xnat_flows.testing.synth import write_studies

    manifest = write_studies(tmp_path / "study", series=1, instances=400, instance_kb=32)
    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=("P",), rebuild_idle_seconds=1.0)
    answered = threading.Semaphore(0)
    outcomes: list[str] = []

    def send(part: int) -> None:
        with httpx.Client(base_url=xnat.url, auth=("admin", "admin"), timeout=10) as http:
            for item in manifest.files[part::4]:
                try:
                    http.post(
                        "/data/services/import",
                        content=item.path.read_bytes(),
                        params={
                            "import-handler": "gradual-DICOM",
                            "PROJECT_ID": "P",
                            "SUBJECT_ID": "S",
                            "EXPT_LABEL": "E",
                        },
                        headers={"Content-Type": "application/dicom"},
                    )
                    answered.release()
                except httpx.HTTPError as exc:  # the emulator went away, as XNAT would
                    outcomes.append(type(exc).__name__)
                    return

    senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for sender in senders:
        sender.start()
    for _ in range(40):  # stop in the middle of the stream
        assert answered.acquire(timeout=30)
    xnat.stop()
    for sender in senders:
        sender.join(timeout=30)
    assert outcomes, "the senders should have been cut off"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "closed database" not in err


def test_a_failed_rebuilder_pass_does_not_stop_the_rebuilder(emulator, client, monkeypatch):
    # A pass whose own query fails (a busy database, say) used to end the rebuilder's thread: every
    # session after it stayed RECEIVING, and a client verifying the upload waited for ever.
    store = emulator.prearchive.store
    real_rows = store.prearc_rows
    failures = []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("database is locked")
        return real_rows(*args, **kwargs)

    monkeypatch.setattr(store, "prearc_rows", failing_once)
    wait_until(lambda: failures, what="a rebuilder pass to fail")
    assert emulator.prearchive.running
    uri = upload(client, make_study(3, 2), project="TEST", subject="S", session="AFTER")
    wait_until(lambda: status_of(client, uri) is None, what="the session to be archived")
    assert [e["label"] for e in emulator.archived_experiments()] == ["AFTER"]
