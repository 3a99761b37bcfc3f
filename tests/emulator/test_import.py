"""POST /data/services/import: body rules, parameters, responses and grouping
(XNAT wiki: Image Session Import Service API; xnat-web `Importer.java`, `SecureResource.java`,
`DicomZipImporter.java`, `GradualDicomImporter.java`).
"""

from __future__ import annotations

import gzip
import zipfile

import pytest
from emulator_helpers import make_instance, make_study, members, tar_bytes, zip_bytes

from xnat_flows.testing.pytest_plugin import wait_until

IMPORT = "/data/services/import"


def dicom_zip(client, body: bytes, content_type: str = "application/zip", **params):
    query = {"import-handler": "DICOM-zip", **params}
    return client.post(IMPORT, params=query, content=body, headers={"Content-Type": content_type})


def gradual(client, data: bytes, **params):
    query = {"import-handler": "gradual-DICOM", "inbody": "true", **params}
    return client.post(IMPORT, params=query, content=data, headers={"Content-Type": "application/dicom"})


@pytest.fixture
def manual(emulator):
    """A project whose sessions stay in the prearchive (code 0)."""
    emulator.set_prearchive_code("MAN", 0)
    return "MAN"


def test_gradual_returns_prearchive_uri_with_crlf_and_same_uri_per_study(client, manual):
    study = make_study(series=1, instances=3)
    answers = [gradual(client, i.data, PROJECT_ID=manual, SUBJECT_ID="S1", EXPT_LABEL="E1") for i in study]
    assert {a.status_code for a in answers} == {200}
    assert answers[0].text.endswith("\r\n")
    assert answers[0].text.startswith(f"/data/prearchive/projects/{manual}/")
    assert len({a.text for a in answers}) == 1
    assert answers[0].text.strip().endswith("/E1")


def test_gradual_ignores_lowercase_project(client, manual):
    instance = make_study(series=1, instances=1)[0]
    response = gradual(client, instance.data, project=manual, subject="S", session="E")
    assert response.text.startswith("/data/prearchive/projects/Unassigned/")
    assert response.text.strip().endswith("/PAT01")  # session label from PatientID


def test_gradual_routes_by_headers(client, manual):
    instance = make_study(series=1, instances=1, patient_comments=f"Project:{manual} Subject:SUBJ9 Session:SESS9")[0]
    uri = gradual(client, instance.data).text.strip()
    assert uri.startswith(f"/data/prearchive/projects/{manual}/") and uri.endswith("/SESS9")
    row = client.get(uri).json()["ResultSet"]["Result"][0]
    assert row["subject"] == "SUBJ9"


def test_gradual_rejects_non_dicom(client):
    response = gradual(client, b"not dicom at all" * 20, PROJECT_ID="TEST")
    assert response.status_code == 400
    assert "unable to read DICOM object upload.dcm" in response.text


def test_default_handler_for_application_dicom_is_gradual(client, manual):
    instance = make_study(series=1, instances=1)[0]
    response = client.post(
        IMPORT,
        params={"PROJECT_ID": manual, "inbody": "true"},
        content=instance.data,
        headers={"Content-Type": "application/dicom"},
    )
    assert response.status_code == 200 and f"/projects/{manual}/" in response.text


def test_unknown_handler_is_404(client):
    assert (
        client.post(
            IMPORT, params={"import-handler": "nope"}, content=b"x", headers={"Content-Type": "application/zip"}
        ).status_code
        == 404
    )


@pytest.mark.parametrize("fmt", ["zip", "zip-deflated", "tar", "tgz"])
def test_dicom_zip_formats(client, manual, fmt):
    study = make_study(series=2, instances=2)
    if fmt == "zip":
        body, ctype = zip_bytes(members(study)), "application/zip"
    elif fmt == "zip-deflated":
        body, ctype = zip_bytes(members(study), zipfile.ZIP_DEFLATED), "application/zip"
    elif fmt == "tar":
        body, ctype = tar_bytes(members(study)), "application/x-tar"
    else:
        body, ctype = tar_bytes(members(study), "w:gz"), "application/x-gtar"
    response = dicom_zip(client, body, ctype, project=manual, subject="S", session="E")
    assert response.status_code == 200, response.text
    uri = response.text.strip()
    scans = client.get(f"{uri}/scans").json()["ResultSet"]["Result"]
    assert sorted(s["ID"] for s in scans) == ["1", "2"]


def test_dicom_zip_streamed_chunked_zip_with_data_descriptors(client, manual):
    study = make_study(series=1, instances=3)

    class Unseekable:  # makes zipfile write data descriptors, as a streaming zipper does
        def __init__(self):
            self.parts = []

        def write(self, data):
            self.parts.append(bytes(data))
            return len(data)

        def flush(self):
            pass

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w") as archive:
        for name, data in members(study):
            with archive.open(name, "w") as entry:
                entry.write(data)
    body = b"".join(sink.parts)

    def chunks():
        for start in range(0, len(body), 10_000):
            yield body[start : start + 10_000]

    response = dicom_zip(client, chunks(), project=manual, subject="S", session="E")  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    files = client.get(f"{response.text.strip()}/scans/1/resources/DICOM/files").json()["ResultSet"]["Result"]
    assert len(files) == 3


def test_octet_stream_is_unsupported_format(client):
    response = dicom_zip(client, zip_bytes(members(make_study(1, 1))), "application/octet-stream", project="TEST")
    assert response.status_code == 400 and "Unsupported format" in response.text


def test_body_rules(client):
    study = make_study(1, 1)
    multipart = client.post(
        IMPORT,
        params={"import-handler": "DICOM-zip", "inbody": "true"},
        files={"file": ("a.zip", zip_bytes(members(study)), "application/zip")},
    )
    assert multipart.status_code == 406 and "not as part of multi-part form data" in multipart.text
    empty = client.post(
        IMPORT,
        params={"import-handler": "gradual-DICOM", "inbody": "true"},
        content=b"",
        headers={"Content-Type": "application/dicom"},
    )
    assert empty.status_code == 400 and "In-body File posts must include the file directly" in empty.text
    nothing = client.post(IMPORT, params={"import-handler": "DICOM-zip"})
    assert nothing.status_code == 400 and "Unable to identify upload format." in nothing.text
    two = client.post(
        IMPORT,
        params={"import-handler": "DICOM-zip"},
        files=[("a", ("a.zip", b"1", "application/zip")), ("b", ("b.zip", b"2", "application/zip"))],
    )
    assert two.status_code == 400 and "limited to one uploaded resource" in two.text


def test_multipart_upload_with_form_fields(client, manual):
    study = make_study(1, 2)
    response = client.post(
        IMPORT,
        data={"import-handler": "DICOM-zip", "PROJECT_ID": manual, "EXPT_LABEL": "MP"},
        files={"file": ("study.zip", zip_bytes(members(study)), "application/zip")},
    )
    assert response.status_code == 200, response.text
    assert response.text.strip().endswith("/MP")


def test_unparsable_entry_fails_but_keeps_earlier_entries(client, manual):
    study = make_study(1, 2)
    body = zip_bytes(members(study) + [("zz_notes.txt", b"hello")])
    response = dicom_zip(client, body, project=manual, subject="S", session="PART")
    assert response.status_code == 400 and "unable to read DICOM object zz_notes.txt" in response.text
    rows = client.get(f"/data/prearchive/projects/{manual}").json()["ResultSet"]["Result"]
    assert [r["name"] for r in rows] == ["PART"]


def test_ignore_unparsable_skips_junk(client, manual):
    body = zip_bytes(members(make_study(1, 2)) + [("junk.bin", b"\x00" * 300)])
    response = dicom_zip(client, body, **{"project": manual, "session": "OK", "Ignore-Unparsable": "true"})
    assert response.status_code == 200


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_tar_long_names_directories_and_truncation(client, manual, tar_format):
    """The tar stream reader: GNU long names and pax records name the next member, directories and
    empty files are skipped or kept as tarfile does, a truncated member is refused."""
    import io
    import tarfile

    study = make_study(series=1, instances=3)
    buffer = io.BytesIO()
    chosen = tarfile.GNU_FORMAT if tar_format == "gnu" else tarfile.PAX_FORMAT
    with tarfile.open(fileobj=buffer, mode="w", format=chosen) as archive:
        folder = tarfile.TarInfo("export/" + "deep/" * 30)
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for index, instance in enumerate(study):
            info = tarfile.TarInfo(folder.name + f"é{index}-" + "x" * 120)
            info.size = len(instance.data)
            archive.addfile(info, io.BytesIO(instance.data))
    body = buffer.getvalue()
    response = dicom_zip(client, body, "application/x-tar", project=manual, session="LONG")
    assert response.status_code == 200, response.text
    files = client.get(f"{response.text.strip()}/scans/1/resources/DICOM/files").json()["ResultSet"]["Result"]
    assert len(files) == 3
    truncated = dicom_zip(client, body[: len(body) // 2], "application/x-tar", project=manual, session="CUT")
    assert truncated.status_code == 400 and "unable to read data from file" in truncated.text


def test_ustar_headers_read_without_tarinfo_give_what_frombuf_gives():
    """The tar reader's shortcut for plain ustar headers: same name, size and type as tarfile's
    TarInfo.frombuf for every header it takes, and it leaves the rest (V7, GNU, prefixes, base-256
    sizes, directories, a bad checksum) to frombuf."""
    import tarfile

    from xnat_flows.testing.importer import _ustar_fields

    headers = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for name, kind, size in [
            ("a/b.dcm", tarfile.REGTYPE, 5),
            ("dir/", tarfile.DIRTYPE, 0),
            ("x" * 99, tarfile.REGTYPE, 0),
            ("p/" * 60 + "f.dcm", tarfile.REGTYPE, 1),  # ustar: a prefix; gnu/pax: a long-name member
            ("é.dcm", tarfile.REGTYPE, 7),
            ("big.dcm", tarfile.REGTYPE, 9 * 8**11),  # past 8 GB: base-256 (gnu) or a pax size
            ("link", tarfile.SYMTYPE, 0),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, size, "target" if kind == tarfile.SYMTYPE else ""
            try:
                block = info.tobuf(fmt, tarfile.ENCODING, "surrogateescape")
            except ValueError:
                continue  # the format cannot hold it
            headers += [block[i : i + 512] for i in range(0, len(block), 512)]
    taken = 0
    for header in headers:
        fields = _ustar_fields(header)
        if fields is None:
            continue
        taken += 1
        info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
        assert fields == (info.name, info.size, info.type), header[:100]
        damaged = bytearray(header)
        damaged[0] ^= 1
        assert _ustar_fields(bytes(damaged)) is None  # the checksum no longer holds: frombuf refuses it
        try:
            tarfile.TarInfo.frombuf(bytes(damaged), tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            pass
        else:
            raise AssertionError("frombuf took a header whose checksum is wrong")
    assert taken >= 10
    v7 = bytearray(tarfile.TarInfo("v7.dcm").tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "strict"))
    v7[257:265] = bytes(8)  # no magic: an old V7 header
    v7[148:156] = b"        "
    v7[148:155] = b"%06o\0" % sum(v7)
    assert tarfile.TarInfo.frombuf(bytes(v7), tarfile.ENCODING, "strict").name == "v7.dcm"
    assert _ustar_fields(bytes(v7)) is None


def test_zip_slip_members_are_refused(client, manual):
    instance = make_study(1, 1)[0]
    response = dicom_zip(client, zip_bytes([("../evil.dcm", instance.data)]), project=manual)
    assert response.status_code == 400 and "Invalid archive entry" in response.text
    response = dicom_zip(client, tar_bytes([("/abs.dcm", instance.data)]), "application/x-tar", project=manual)
    assert response.status_code == 400


def test_resending_same_instance_replaces_its_file(client, manual):
    study = make_study(1, 2)
    first = dicom_zip(client, zip_bytes(members(study)), project=manual, session="R").text.strip()
    second = dicom_zip(client, zip_bytes(members(study)), project=manual, session="R").text.strip()
    assert first == second
    files = client.get(f"{first}/scans/1/resources/DICOM/files").json()["ResultSet"]["Result"]
    assert len(files) == 2
    assert all(f["Name"].startswith(study[0].study_uid + "-1-") for f in files)


def test_same_series_number_different_uid_becomes_n_mod1(client, manual):
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    a = make_instance(study_uid, generate_uid(), 1, 1)
    b = make_instance(study_uid, generate_uid(), 1, 1)
    uri = dicom_zip(client, zip_bytes([("a.dcm", a.data), ("b.dcm", b.data)]), project=manual, session="M").text.strip()
    scans = client.get(f"{uri}/scans").json()["ResultSet"]["Result"]
    assert sorted(s["ID"] for s in scans) == ["1", "1-CT1"]


def test_two_studies_give_two_uris(client, manual):
    second = [(f"b/{name}", data) for name, data in members(make_study(1, 1, patient_id="P2"))]
    body = zip_bytes(members(make_study(1, 1, patient_id="P1")) + second)
    response = dicom_zip(client, body, project=manual)
    lines = response.text.split("\r\n")
    assert lines[-1] == "" and len(lines) == 3


def test_dest_archive_is_synchronous(client):
    response = dicom_zip(
        client,
        zip_bytes(members(make_study(2, 2))),
        project="TEST",
        subject="S1",
        session="SYNC",
        dest="/archive/projects/TEST",
    )
    assert response.status_code == 200, response.text
    uri = response.text.strip()
    assert uri.startswith("/data/archive/projects/TEST/subjects/")
    experiment = client.get(uri).json()["items"][0]["data_fields"]
    assert experiment["label"] == "SYNC"
    again = dicom_zip(
        client,
        zip_bytes(members(make_study(1, 1))),
        project="TEST",
        subject="S1",
        session="SYNC",
        dest="/archive/projects/TEST",
    )
    assert again.status_code == 400 and "Failed to archive 1 of 1 session(s)" in again.text


def test_the_idle_rebuilder_does_not_take_a_session_its_import_request_is_still_building(client, emulator):
    """A slow request (here: the rebuilder runs with no idle time just before the commit) must
    still archive its own session instead of finding it gone ("Unknown prearchive session")."""
    emulator.set_prearchive_code("AUTO", 4)  # auto-archive: the rebuilder would archive it itself
    original_build = emulator.prearchive.build
    ticks = []

    def build_after_a_rebuilder_pass(row_id):
        emulator.prearchive.rebuild_idle_seconds = 0
        emulator.rebuild_now()
        ticks.append(row_id)
        return original_build(row_id)

    emulator.prearchive.build = build_after_a_rebuilder_pass
    response = dicom_zip(
        client,
        zip_bytes(members(make_study(1, 3))),
        project="AUTO",
        subject="S1",
        session="HELD",
        dest="/archive/projects/AUTO",
    )
    assert ticks, "the rebuilder pass ran inside the request"
    assert response.status_code == 200, response.text
    experiment = client.get(response.text.strip()).json()["items"][0]["data_fields"]
    assert experiment["label"] == "HELD"
    assert [row for row in emulator.prearchive_sessions() if row["name"] == "HELD"] == []


def test_bad_dest_is_400(client):
    response = dicom_zip(client, zip_bytes(members(make_study(1, 1))), dest="/nowhere/x")
    assert response.status_code == 400 and "Parameter dest format error" in response.text


def test_direct_archive_returns_xapi_uri_then_archives(emulator, client):
    study = make_study(1, 2)
    response = dicom_zip(
        client,
        zip_bytes(members(study)),
        **{"project": "TEST", "subject": "S", "session": "DA", "Direct-Archive": "true"},
    )
    assert response.text == f"/xapi/direct-archive/TEST/{study[0].study_uid}/DA\r\n"
    assert client.get("/data/prearchive").json()["ResultSet"]["Result"] == []
    wait_until(lambda: client.get("/data/projects/TEST/experiments/DA").status_code == 200)


def test_gradual_direct_archive(emulator, client):
    study = make_study(1, 2)
    uris = {
        gradual(
            client, i.data, **{"PROJECT_ID": "TEST", "SUBJECT_ID": "S", "EXPT_LABEL": "GDA", "Direct-Archive": "true"}
        ).text
        for i in study
    }
    assert uris == {f"/xapi/direct-archive/TEST/{study[0].study_uid}/GDA\r\n"}
    wait_until(lambda: emulator.archived_experiments("TEST"))
    assert emulator.archived_experiments("TEST")[0]["scans"] == {"1": 2}


def test_peak_concurrency_is_recorded(emulator, client):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    emulator.faults.add(path="/data/services/import", delay_ms=300, times=4)
    study = make_study(1, 4)

    def send(instance):
        with httpx.Client(base_url=emulator.url, auth=("admin", "admin")) as http:
            return gradual(http, instance.data, PROJECT_ID="TEST", EXPT_LABEL="C").status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(send, study)) == {200}
    assert emulator.peak_concurrent_uploads >= 2


def test_gzip_body_sent_as_plain_tar_is_refused(client):
    body = gzip.compress(tar_bytes(members(make_study(1, 1))))
    response = dicom_zip(client, body, "application/x-tar", project="TEST")
    assert response.status_code == 400


def test_accept_text_plain_gives_single_uri_without_crlf(client, manual):
    response = client.post(
        IMPORT,
        params={"import-handler": "DICOM-zip", "project": manual, "session": "TXT"},
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip", "Accept": "text/plain"},
    )
    assert response.status_code == 200 and not response.text.endswith("\r\n")
    assert response.text.startswith(f"/data/prearchive/projects/{manual}/")


def test_synthetic_studies_with_junk_via_tar(client, emulator, tmp_path):
    """A synth.write_studies tree (two studies + junk files) in one streamed tar, archived synchronously."""
    from collections import Counter

    from xnat_flows.testing.synth import write_studies

    manifest = write_studies(tmp_path / "src", studies=2, series=2, instances=6, instance_kb=8, junk=True)
    entries = [
        (str(p.relative_to(manifest.root)), p.read_bytes()) for p in sorted(manifest.root.rglob("*")) if p.is_file()
    ]
    response = client.post(
        IMPORT,
        params={
            "import-handler": "DICOM-zip",
            "project": "TEST",
            "subject": "SYN",
            "dest": "/archive/projects/TEST",
            "Ignore-Unparsable": "true",
        },
        content=tar_bytes(entries),
        headers={"Content-Type": "application/x-tar"},
    )
    assert response.status_code == 200, response.text
    assert len(response.text.strip().split("\r\n")) == 2
    expected = Counter((f.study_uid, str(f.series_number)) for f in manifest.files)
    # The junk includes an instance cut inside its pixel data: its header parses, so (as on XNAT,
    # which reads headers only) it is archived; the one cut inside the header is skipped.
    expected[(manifest.files[0].study_uid, str(manifest.files[0].series_number))] += 1
    archived = Counter()
    for experiment in emulator.archived_experiments("TEST"):
        for scan_id, count in experiment["scans"].items():
            archived[(experiment["UID"], scan_id)] += count
    assert archived == expected


def _large_instance(study_uid: str, number: int, *, private_kb: int = 0, pixels_kb: int = 200):
    """A ~200 KB instance; ``private_kb``: a private element before routing's fields."""
    import copy
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(make_instance(study_uid, "1.2.3.4", 1, number).data))
    ds = copy.deepcopy(ds)
    if private_kb:
        ds.add_new(0x00090010, "LO", "EMULATOR TEST")
        ds.add_new(0x00091001, "OB", bytes(range(256)) * (4 * private_kb))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = bytes((number + i) % 251 for i in range(pixels_kb * 1024))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = pixels_kb, 512, 16, 16, 15
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return ds.SOPInstanceUID, buffer.getvalue()


def test_large_tar_members_are_stored_byte_for_byte_whatever_the_path(client, emulator):
    """Large members of a plain tar body, their bytes arriving split over many TCP writes (a tar
    header cut across two), one with a 40 KB private element before routing's fields: every
    stored file equals its source."""
    import hashlib
    import socket
    import time
    from base64 import b64encode
    from urllib.parse import urlencode, urlsplit

    from pydicom.uid import generate_uid

    study = generate_uid()
    sources = dict(
        [_large_instance(study, n) for n in range(1, 6)] + [_large_instance(study, 9, private_kb=40, pixels_kb=100)]
    )
    body = tar_bytes([(f"d/{uid}.dcm", data) for uid, data in sources.items()])
    target = urlsplit(emulator.url)
    query = urlencode({"import-handler": "DICOM-zip", "project": "TEST", "subject": "S", "dest": "/archive"})
    head = (
        f"POST {IMPORT}?{query} HTTP/1.1\r\nHost: {target.netloc}\r\nContent-Type: application/x-tar\r\n"
        f"Authorization: Basic {b64encode(b'admin:admin').decode()}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((target.hostname, target.port), timeout=30) as connection:
        connection.sendall(head + body[:700])  # the request and part of the first tar header at once
        for start in range(700, len(body), 50_000):
            connection.sendall(body[start : start + 50_000])
            time.sleep(0.001)
        answer = connection.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 200"), answer
    [experiment] = emulator.archived_experiments("TEST")
    stored = emulator.archived_files(experiment["label"])
    assert sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in stored.values()) == sorted(
        hashlib.sha256(data).hexdigest() for data in sources.values()
    )


def test_a_body_cut_inside_a_large_member_leaves_no_file_of_it(client, emulator, manual):
    """The connection closes half-way through a large member: no answer, and the files placed
    are only the members received whole."""
    import socket
    from base64 import b64encode
    from urllib.parse import urlencode, urlsplit

    from pydicom.uid import generate_uid

    study = generate_uid()
    first, second = _large_instance(study, 1), _large_instance(study, 2)
    body = tar_bytes([("a.dcm", first[1]), ("b.dcm", second[1])])
    target = urlsplit(emulator.url)
    query = urlencode({"import-handler": "DICOM-zip", "project": manual, "subject": "S", "session": "CUT"})
    head = (
        f"POST {IMPORT}?{query} HTTP/1.1\r\nHost: {target.netloc}\r\nContent-Type: application/x-tar\r\n"
        f"Authorization: Basic {b64encode(b'admin:admin').decode()}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((target.hostname, target.port), timeout=30) as connection:
        connection.sendall(head + body[: len(body) - 100_000])
        connection.shutdown(socket.SHUT_WR)
        assert connection.recv(65536) == b""  # closed without an answer
    wait_until(lambda: emulator.api.active_imports == 0)
    rows = client.get("/data/prearchive/projects/" + manual).json()["ResultSet"]["Result"]
    files = client.get(f"/data{rows[0]['url']}/scans/1/resources/DICOM/files").json()["ResultSet"]["Result"]
    assert len(files) == 1
    leftovers = [p for p in emulator.store.tmp_dir.rglob("part-*")] if emulator.store.tmp_dir.exists() else []
    assert leftovers == []
