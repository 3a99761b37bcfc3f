"""De-identification on upload, as a user runs it: `session upload` (DICOM-zip, gradual-DICOM) and
`session upload-dicom` (C-STORE) with --anon-script into the emulator; the archive is read back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from xnat_flows.anon.functions import hash_uid
from xnat_flows.cli.main import app
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies

pytestmark = pytest.mark.e2e
PASSWORD = "anon-upload-password-3c1d"
SCRIPT = """version "6.1"
// the labels XNAT files the session under replace the identifiers; UIDs hashed as XNAT does
(0010,0010) := subject
(0010,0020) := session
(0008,1030) := project
- (0010,0030)
(0020,000D) := hashUID[(0020,000D)]
(0020,000E) := hashUID[(0020,000E)]
(0008,0018) := hashUID[(0008,0018)]
"""
_PIXEL_DATA = 0x7FE00010


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory, home: Path) -> XnatEmulator:
    emulator = xnat_emulator_factory(
        tmp_path / "xnat", projects=("ANON",), password=PASSWORD, rebuild_idle_seconds=0.3, scp_port=0
    )
    login = run("auth", "login", "--url", emulator.url, "--username", "admin", "--password-stdin", input=PASSWORD)
    assert login.exit_code == 0, login.output
    return emulator


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "site.das"
    path.write_text(SCRIPT)
    return path


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def export(tmp_path: Path, seed: int, instances: int = 6) -> tuple[Path, list[Path]]:
    manifest = write_studies(tmp_path / "export", series=2, instances=instances, instance_kb=8, seed=seed)
    return tmp_path / "export", [f.path for f in manifest.files]


def expected(original: Path, project: str, subject: str, session: str, routed: bool) -> dict[int, object]:
    """The original's elements with exactly the script's changes (and a C-STORE's routing comment)."""
    ds = pydicom.dcmread(original)
    if routed:
        ds.PatientComments = f"Project:{project} Subject:{subject} Session:{session}"
    ds.PatientName, ds.PatientID, ds.StudyDescription = subject, session, project
    del ds.PatientBirthDate
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, hash_uid(str(getattr(ds, keyword))))
    return {int(e.tag): e.value for e in ds}


def assert_archive_holds_exactly_the_scripts_changes(
    xnat: XnatEmulator, label: str, originals: list[Path], labels, routed: bool = False
):
    archived = {}
    for path in xnat.archived_files(label).values():
        ds = pydicom.dcmread(path)
        archived[str(ds.SOPInstanceUID)] = ds
    assert len(archived) == len(originals)
    for original in originals:
        want = expected(original, *labels, routed)
        got = archived[str(want[0x00080018])]
        assert {int(e.tag): e.value for e in got if int(e.tag) != _PIXEL_DATA} == {
            tag: value for tag, value in want.items() if tag != _PIXEL_DATA
        }
        assert got.PixelData == pydicom.dcmread(original).PixelData  # byte-identical pixel data


@pytest.mark.parametrize("mode", [[], ["--gradual"], ["--archive-format", "zip"]], ids=["tar", "gradual", "zip"])
def test_rest_upload_lands_with_exactly_the_scripts_changes_originals_unchanged_rerun_sends_nothing_new(
    xnat, script, tmp_path, mode
) -> None:
    root, originals = export(tmp_path, seed=11)
    before = tree_hashes(root)
    args = ["session", "upload", str(root), "-P", "ANON", "-S", "SUBJ", "-E", "SESS", "--anon-script", str(script)]
    first = run(*args, *mode, "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["ok"] and summary["files_sent"] == 6 and summary["sessions"][0]["verified"] is True
    assert summary["sessions"][0]["study_uid"] == hash_uid(str(pydicom.dcmread(originals[0]).StudyInstanceUID))
    assert_archive_holds_exactly_the_scripts_changes(xnat, "SESS", originals, ("ANON", "SUBJ", "SESS"))
    assert tree_hashes(root) == before  # the originals are never modified

    again = run(*args, *mode, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["files_sent"] == 0  # nothing new: the journal lists it, XNAT holds it
    assert json.loads(again.stdout)["sessions"][0]["verified"] is True  # and the session was read back again
    assert_archive_holds_exactly_the_scripts_changes(xnat, "SESS", originals, ("ANON", "SUBJ", "SESS"))
    assert [e["label"] for e in xnat.archived_experiments("ANON")] == ["SESS"]


def test_cstore_lands_with_exactly_the_scripts_changes_and_a_rerun_sends_nothing(xnat, script, tmp_path) -> None:
    root, originals = export(tmp_path, seed=12)
    before = tree_hashes(root)
    args = ["session", "upload-dicom", str(root), "--host", "127.0.0.1", "--port", str(xnat.scp_port)]
    args += ["-P", "ANON", "-S", "CSUBJ", "-E", "CSESS", "--anon-script", str(script), "--json"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["sent"] == 6
    xnat.rebuild_now()
    wait_until(lambda: [e for e in xnat.archived_experiments("ANON") if e["label"] == "CSESS"], timeout=30)
    wait_until(lambda: len(xnat.archived_files("CSESS")) == 6, timeout=30)
    assert_archive_holds_exactly_the_scripts_changes(xnat, "CSESS", originals, ("ANON", "CSUBJ", "CSESS"), True)
    assert tree_hashes(root) == before
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["sent"] == 0 and json.loads(again.stdout)["resumed"] == 6


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('version "6.1"\n(0010,0010) := subject\n(0010,0020 := session\n', "bad.das:3:"),
        ('version "6.1"\n(0010,0010) := nosuchfunction[subject]\n', "bad.das:2:16: unknown function"),
        ('version "6.1"\n(0008,0050) := getURL["http://127.0.0.1:9/id"]\n', "bad.das:2:16: getURL asks a web service"),
    ],
    ids=["syntax", "unknown-function", "get-url-not-allowed"],
)
def test_a_script_error_stops_before_anything_is_sent(xnat, tmp_path, text, where) -> None:
    root, _ = export(tmp_path, seed=13, instances=2)
    bad = tmp_path / "bad.das"
    bad.write_text(text)
    for args in (
        ["session", "upload", str(root), "-P", "ANON", "-S", "S", "-E", "E"],
        ["session", "upload", str(root), "-P", "ANON", "-S", "S", "-E", "E", "--gradual"],
        ["session", "upload-dicom", str(root), "--host", "127.0.0.1", "--port", str(xnat.scp_port), "-P", "ANON"],
    ):
        result = run(*args, "--anon-script", str(bad))
        assert result.exit_code == 2, result.output
        assert where.replace("bad.das", str(bad)) in result.stderr
    assert xnat.stats()["imports"] == 0 and not xnat.prearchive_sessions(include_direct_archive=True)


def test_get_url_asks_an_allowed_service_once_per_url_and_its_answer_lands(xnat, tmp_path) -> None:
    import http.server
    import threading

    asked: list[str] = []

    class Lookup(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b"ACC-" + hashlib.sha256(self.path.encode()).hexdigest()[:8].upper().encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Lookup)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        root, originals = export(tmp_path, seed=15, instances=3)
        lookup = tmp_path / "lookup.das"
        lookup.write_text(f'version "6.1"\n(0008,0050) := getURL[format["{base}/accession/{{0}}", (0010,0020)]]\n')
        args = ["session", "upload", str(root), "-P", "ANON", "-S", "S", "-E", "GETURL", "--anon-script", str(lookup)]
        assert run(*args).exit_code == 2  # not allowed: nothing asked, nothing sent
        assert asked == [] and xnat.stats()["imports"] == 0
        result = run(*args, "--anon-allow-url", base + "/accession/", "--json")
        assert result.exit_code == 0, result.output
    finally:
        server.shutdown()
        server.server_close()
    patient_ids = {str(pydicom.dcmread(p).PatientID) for p in originals}
    assert sorted(asked) == sorted(f"/accession/{pid}" for pid in patient_ids)  # one request per distinct URL
    archived = [pydicom.dcmread(p) for p in xnat.archived_files("GETURL").values()]
    assert len(archived) == len(originals)
    assert {str(ds.AccessionNumber) for ds in archived} == {
        "ACC-" + hashlib.sha256(f"/accession/{pid}".encode()).hexdigest()[:8].upper() for pid in patient_ids
    }


def test_a_file_the_script_cannot_take_is_listed_not_sent_and_the_run_fails(xnat, tmp_path) -> None:
    root, originals = export(tmp_path, seed=14, instances=4)
    ds = pydicom.dcmread(originals[1])
    del ds.PixelData  # e.g. a report among the images: alterPixels cannot blank what it does not have
    ds.save_as(originals[1], enforce_file_format=True)
    script = tmp_path / "burned-in.das"
    script.write_text(SCRIPT + 'alterPixels["rectangle", "l=0, t=0, r=8, b=4", "solid", "v=0"]\n')
    cstore = ["session", "upload-dicom", str(root), "--host", "127.0.0.1", "--port", str(xnat.scp_port)]
    for args in (["session", "upload", str(root)], cstore):
        result = run(*args, "-P", "ANON", "-S", "S", "-E", "REFUSED", "--anon-script", str(script))
        assert result.exit_code == 6, result.output
        assert str(originals[1]) in result.stderr and "not de-identified, not sent" in result.stderr
    refused_uid = str(pydicom.dcmread(originals[1]).SOPInstanceUID)
    xnat.rebuild_now()
    archived = {str(pydicom.dcmread(p).SOPInstanceUID) for p in xnat.archived_files("REFUSED").values()}
    assert len(archived) == 3 and hash_uid(refused_uid) not in archived and refused_uid not in archived


def test_xnats_own_scripts_are_applied_once_before_sending_and_only_when_enabled(xnat, tmp_path) -> None:
    import httpx

    root, originals = export(tmp_path, seed=15, instances=4)
    with httpx.Client(base_url=xnat.url, auth=("admin", PASSWORD)) as admin:
        admin.put("/data/config/anon/script", params={"status": "disabled"}, content=SCRIPT)
        args = ["session", "upload", str(root), "-P", "ANON", "-S", "SRV", "-E", "FROM_SERVER", "--anon-from-server"]
        off = run(*args)
        assert off.exit_code == 2 and "no enabled anonymization script" in off.stderr
        assert xnat.stats()["imports"] == 0
        admin.put("/data/config/anon/script", params={"status": "enabled"})
        # hashUID applied twice would give other UIDs: the archive shows the script ran once, here,
        # and XNAT (told prevent_anon) did not run it again on import
        done = run(*args)
    assert done.exit_code == 0, done.output
    assert_archive_holds_exactly_the_scripts_changes(xnat, "FROM_SERVER", originals, ("ANON", "SRV", "FROM_SERVER"))


def test_anon_check_tries_xnats_own_scripts_as_the_upload_would_apply_them(xnat, tmp_path) -> None:
    """`anon check --anon-from-server -P` fetches the same enabled scripts `session upload
    --anon-from-server` applies, and refuses the same way when none is enabled."""
    import httpx

    root, _ = export(tmp_path, seed=17, instances=2)
    check = ["anon", "check", str(root), "--anon-from-server", "-P", "ANON", "-S", "SRV", "-E", "CHECKED"]
    with httpx.Client(base_url=xnat.url, auth=("admin", PASSWORD)) as admin:
        admin.put("/data/config/anon/script", params={"status": "disabled"}, content=SCRIPT)
        off = run(*check)
        assert off.exit_code == 2 and "no enabled anonymization script" in off.stderr
        assert "nothing was checked" in off.stderr
        admin.put("/data/config/anon/script", params={"status": "enabled"})
        admin.put(
            "/data/projects/ANON/config/anon/projects/ANON",  # XNAT's path of a project script
            params={"status": "enabled"},
            content='version "6.1"\n(0008,0080) := "PROJECT SCRIPT"\n',
        )
        on = run(*check)
    assert on.exit_code == 1, on.output  # the site script keeps the dates: they are listed as survivors
    assert on.output.splitlines()[0] == "anon check: site script v1, then project ANON script v1"  # XNAT's order
    assert "PatientID: 2 changed" in on.output and "-> CHECKED" in on.output  # the site script, with -E
    assert "InstitutionName: 2 changed" in on.output and "-> PROJECT SCRIPT" in on.output
    assert xnat.stats()["imports"] == 0  # a check sends nothing


def test_anon_require_clean_sends_nothing_while_identifiers_survive(xnat, script, tmp_path) -> None:
    """--anon-require-clean: every file is tried first (REST and C-STORE); a survivor stops the
    command before anything is sent, exit 2, the survivors named; what the site keeps on purpose
    is allowed with --anon-allow, and a clean set of rules goes through."""
    root, originals = export(tmp_path, seed=18, instances=2)
    labels = ["-P", "ANON", "-S", "S", "-E", "GATE"]
    cstore = ["session", "upload-dicom", str(root), "--host", "127.0.0.1", "--port", str(xnat.scp_port)]
    for command in (["session", "upload", str(root)], cstore):
        stopped = run(*command, *labels, "--anon-script", str(script), "--anon-require-clean")
        assert stopped.exit_code == 2, stopped.output
        assert "identifying attributes survive: AccessionNumber" in stopped.stderr
        assert "nothing was sent" in stopped.stderr and "--anon-allow NAME" in stopped.stderr
        assert "checking the de-identification of" in stopped.stdout  # said before the wait
    xnat.rebuild_now()
    stats = xnat.stats()
    assert stats["imports"] == 0 and stats["prearchive"] == 0 and stats["experiments"] == 0
    allowed = ["--anon-allow", "retain-uids", "--anon-allow", "StudyDescription"]
    clean = run(
        "session", "upload", str(root), *labels, "--anon-profile", "basic,retain-uids", "--anon-require-clean", *allowed
    )
    assert clean.exit_code == 0, clean.output
    assert f"checking the de-identification of {len(originals)} files before sending" in clean.output
    assert len(xnat.archived_files("GATE")) == len(originals)
    for flow in ([], ["--flow"]):  # said in the command line's words, also before a flow run's request
        no_rules = run("session", "upload", str(root), *labels, "--anon-require-clean", *flow)
        assert no_rules.exit_code == 2 and "--anon-require-clean checks de-identification rules" in no_rules.stderr


def test_without_prevent_anon_xnat_applies_its_site_script_on_import_too(xnat, script, tmp_path) -> None:
    """What the docs warn about: a client-side script and XNAT's own site script both apply."""
    import httpx

    root, originals = export(tmp_path, seed=16, instances=2)
    with httpx.Client(base_url=xnat.url, auth=("admin", PASSWORD)) as admin:
        admin.put("/data/config/anon/script", content='version "6.1"\n(0008,1030) := "SITE SCRIPT WAS HERE"\n')
    result = run("session", "upload", str(root), "-P", "ANON", "-S", "S", "-E", "TWICE", "--anon-script", str(script))
    assert result.exit_code == 0, result.output
    stored = [pydicom.dcmread(p) for p in xnat.archived_files("TWICE").values()]
    assert {ds.StudyDescription for ds in stored} == {"SITE SCRIPT WAS HERE"}
    assert {ds.PatientID for ds in stored} == {"TWICE"}  # and the client's script's changes are there
