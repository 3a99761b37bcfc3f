"""De-identification as files stream out (transfer.deidentify): the one hook every transport reads
through, against the emulator over real sockets for DICOM-zip and gradual-DICOM."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from deid_helpers import HashingAnonymizer, StreamingHashingAnonymizer, hashed_uid, mark_refused, tree_hashes
from transfer_helpers import connect, write_study

from xnat_flows.client.errors import InputError
from xnat_flows.testing import XnatEmulator
from xnat_flows.transfer import UploadJournal, UploadTarget, scan_directory, upload_session
from xnat_flows.transfer.archive_stream import archive_size, iter_archive
from xnat_flows.transfer.deidentify import NOT_DEIDENTIFIED, deidentify_files, deidentify_plan
from xnat_flows.transfer.journal import content_digest
from xnat_flows.transfer.scan import read_exactly

VARIABLES = {"project": "TEST", "subject": "ANON01", "session": "ANON01_MR"}
FAST = {"verify_timeout": 30.0, "poll_interval": 0.1}


def test_deidentified_entries_describe_the_rewritten_instance(study_dir: Path) -> None:
    scan = scan_directory(study_dir)
    before = tree_hashes(study_dir)
    done = deidentify_files(scan.files, HashingAnonymizer(), VARIABLES)
    assert not done.refused and len(done.files) == len(scan.files)
    for original, sent in zip(scan.files, done.files, strict=True):
        assert sent.path == original.path and sent.relpath == original.relpath
        assert sent.sop_instance_uid == hashed_uid(original.sop_instance_uid)
        assert sent.study_uid == hashed_uid(original.study_uid)
        assert sent.series_uid == hashed_uid(original.series_uid)
        data = b"".join(read_exactly(sent, chunk_size=1000))  # several chunks
        assert len(data) == sent.size
        ds = pydicom.dcmread(__import__("io").BytesIO(data))
        assert str(ds.PatientName) == "ANON01" and ds.PatientID == "ANON01_MR" and "PatientBirthDate" not in ds
        assert ds.SOPInstanceUID == sent.sop_instance_uid
    assert tree_hashes(study_dir) == before  # nothing written next to or over the originals


def test_a_file_the_script_cannot_take_is_refused_never_sent_as_original(study_dir: Path) -> None:
    scan = scan_directory(study_dir)
    mark_refused(scan.files[0].path)
    scan = scan_directory(study_dir)
    done = deidentify_files(scan.files, HashingAnonymizer(), VARIABLES)
    assert [s.path for s in done.refused] == [scan.files[0].path]
    assert done.refused[0].reason.startswith(NOT_DEIDENTIFIED) and "AnonError" in done.refused[0].reason
    assert scan.files[0].path not in {f.path for f in done.files}


def test_two_files_rewritten_to_one_sop_instance_uid_are_not_both_sent(study_dir: Path) -> None:
    class SameUid(HashingAnonymizer):
        def apply_bytes(self, part10, variables=None):
            ds = pydicom.dcmread(__import__("io").BytesIO(super().apply_bytes(part10, variables)))
            ds.SOPInstanceUID = "1.2.3.4"
            out = __import__("io").BytesIO()
            ds.save_as(out, enforce_file_format=True)
            return out.getvalue()

    scan = scan_directory(study_dir)
    done = deidentify_files(scan.files, SameUid(), VARIABLES)
    assert len(done.files) == 1 and len(done.refused) == len(scan.files) - 1
    assert "SOP Instance UID of" in done.refused[0].reason


def test_a_script_splitting_one_study_stops_before_sending(study_dir: Path) -> None:
    class PerFileStudy(HashingAnonymizer):
        def apply_bytes(self, part10, variables=None):
            ds = pydicom.dcmread(__import__("io").BytesIO(super().apply_bytes(part10, variables)))
            ds.StudyInstanceUID = ds.SOPInstanceUID + ".9"
            out = __import__("io").BytesIO()
            ds.save_as(out, enforce_file_format=True)
            return out.getvalue()

    scan = scan_directory(study_dir)
    with pytest.raises(InputError, match="StudyInstanceUIDs"):
        deidentify_plan([(UploadTarget("TEST", "S", "E"), scan.files)], PerFileStudy())


def test_a_second_pass_giving_other_bytes_stops_the_stream(study_dir: Path) -> None:
    class Drifting(HashingAnonymizer):
        def apply_bytes(self, part10, variables=None):
            out = super().apply_bytes(part10, variables)
            return out + b"\0\0" * (self.applied > 1)

    # without the rewritten headers kept (a session too large for them), the script runs again
    files = deidentify_files(scan_directory(study_dir).files[:1], Drifting(), VARIABLES, head_cache_bytes=0).files
    with pytest.raises(InputError, match="not deterministic"):
        b"".join(read_exactly(files[0]))


@pytest.mark.parametrize("cache", [0, 1 << 20])
def test_the_bytes_sent_are_the_scripts_output_with_or_without_the_headers_kept(study_dir: Path, cache: int) -> None:
    anonymizer = HashingAnonymizer()
    scan = scan_directory(study_dir)
    files = deidentify_files(scan.files, anonymizer, VARIABLES, head_cache_bytes=cache).files
    applied = anonymizer.applied
    for original, sent in zip(scan.files, files, strict=True):
        expected = HashingAnonymizer().apply_bytes(original.path.read_bytes(), VARIABLES)
        assert b"".join(read_exactly(sent, chunk_size=777)) == expected
        assert (sent.rewrite.head is not None) == bool(cache)
    assert anonymizer.applied == applied + (0 if cache else len(files))  # kept headers: the script ran once


def test_large_files_are_rewritten_from_their_header_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dry run reads a file's first bytes only (the pixel data is neither read nor copied) and
    runs the script once; the bytes sent are still exactly the script's output for the whole file."""
    from xnat_flows.anon import basic_profile, compile_script
    from xnat_flows.testing.synth import write_studies
    from xnat_flows.transfer import scan as scan_module
    from xnat_flows.transfer.deidentify import HEAD_BYTES, chain

    write_studies(tmp_path / "study", series=2, instances=4, instance_kb=256, seed=5, pixels="random")
    scan = scan_directory(tmp_path / "study")
    assert all(f.size > HEAD_BYTES for f in scan.files)
    script = compile_script(
        'version "6.1"\n(0010,0010) := subject\n(0020,000D) := hashUID[(0020,000D)]\n'
        "(0020,000E) := hashUID[(0020,000E)]\n(0008,0018) := hashUID[(0008,0018)]\n-(0010,0030)\n"
    )
    for anonymizer in (script, chain([script, basic_profile(["retain-uids"])])):
        with monkeypatch.context() as patched:
            patched.setattr(scan_module, "read_exactly", lambda *a, **k: pytest.fail("the dry run read a whole file"))
            done = deidentify_files(scan.files, anonymizer, VARIABLES)
        assert not done.refused
        for original, sent in zip(scan.files, done.files, strict=True):
            expected = anonymizer.apply_bytes(original.path.read_bytes(), VARIABLES)
            assert sent.rewrite is not None and sent.rewrite.head is not None and len(sent.rewrite.head) < 16384
            assert sent.size == len(expected)
            assert b"".join(read_exactly(sent, chunk_size=65536)) == expected
            assert sent.sop_instance_uid == pydicom.dcmread(__import__("io").BytesIO(expected)).SOPInstanceUID


def test_the_dry_run_reads_more_first_bytes_only_when_a_header_needs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers that fit in HEAD_PROBE bytes are rewritten from those; once one does not (a long private
    block), the run reads HEAD_BYTES, still without reading whole files, and the bytes sent are the
    script's output for the whole file."""
    from xnat_flows.anon import compile_script
    from xnat_flows.testing.synth import write_studies
    from xnat_flows.transfer import deidentify
    from xnat_flows.transfer import scan as scan_module

    write_studies(tmp_path / "study", series=1, instances=4, instance_kb=256, seed=9, pixels="random")
    paths = sorted(p for p in (tmp_path / "study").rglob("IM*") if p.is_file())  # one series: no suffix
    for path in paths[1:3]:  # two files of the study carry a 30 KB private block before the UIDs
        ds = pydicom.dcmread(path)
        ds.add_new(0x00190010, "LO", "XNAT_FLOWS TEST")
        ds.add_new(0x00191000, "OB", b"\x01" * 30000)
        ds.save_as(path)
    scan = scan_directory(tmp_path / "study")
    script = compile_script('version "6.1"\n(0010,0010) := subject\n(0020,000D) := hashUID[(0020,000D)]\n')
    reads: list[int] = []
    real_read_head = deidentify._read_head

    def counting(item, count):  # type: ignore[no-untyped-def]
        reads.append(count)
        return real_read_head(item, count)

    with monkeypatch.context() as patched:
        patched.setattr(deidentify, "_read_head", counting)
        patched.setattr(scan_module, "read_exactly", lambda *a, **k: pytest.fail("the dry run read a whole file"))
        done = deidentify_files(scan.files, script, VARIABLES)
    assert not done.refused and len(done.files) == 4
    long_first = next(i for i, f in enumerate(scan.files) if f.path in paths[1:3])
    probe, whole_head = deidentify.HEAD_PROBE, deidentify.HEAD_BYTES
    # short headers before the first long one: one probe each; then the long one needs a second read,
    # and every file after it is read to HEAD_BYTES at once
    assert reads == [probe] * long_first + [probe, whole_head] + [whole_head] * (3 - long_first)
    for original, sent in zip(scan.files, done.files, strict=True):
        expected = script.apply_bytes(original.path.read_bytes(), VARIABLES)
        assert sent.rewrite is not None and sent.rewrite.head is not None
        assert b"".join(read_exactly(sent)) == expected
        assert sent.study_uid == pydicom.dcmread(__import__("io").BytesIO(expected)).StudyInstanceUID


def test_the_dry_run_takes_the_rewritten_uids_from_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dry run groups by the UIDs of the dataset the script rewrote, without parsing the
    rewritten bytes again; they are the UIDs of the bytes sent."""
    from xnat_flows.anon import compile_script
    from xnat_flows.testing.synth import write_studies
    from xnat_flows.transfer import deidentify

    write_studies(tmp_path / "study", series=2, instances=3, instance_kb=128, seed=7, pixels="random")
    scan = scan_directory(tmp_path / "study")
    scripts = (
        'version "6.1"\n(0010,0010) := subject\n(0020,000D) := hashUID[(0020,000D)]\n',  # series: the original's
        'version "6.1"\n(0020,000E) := hashUID[(0020,000E)]\n(0020,0011) := "77"\n(0032,1032) := ""\n',
    )
    for text in scripts:
        with monkeypatch.context() as patched:
            patched.setattr(deidentify, "_window_keys", lambda *a: pytest.fail("the rewritten bytes were parsed again"))
            done = deidentify_files(scan.files, compile_script(text), VARIABLES)
        assert not done.refused
        for sent in done.files:
            ds = pydicom.dcmread(__import__("io").BytesIO(b"".join(read_exactly(sent))))
            assert (sent.study_uid, sent.series_uid, sent.sop_instance_uid, sent.sop_class_uid) == (
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
                ds.SOPClassUID,
            )
            assert sent.series_number == ds.SeriesNumber and sent.transfer_syntax == ds.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("change", ["tail", "header", "length"])
def test_a_file_changed_after_the_dry_run_stops_its_stream_before_the_last_chunk(tmp_path: Path, change: str) -> None:
    """Sending joins the kept rewritten header to the original's tail read anew: a file modified
    since it was scanned (in its tail, in the header the dry run read, or grown) is not sent whole."""
    import os

    from xnat_flows.anon import compile_script
    from xnat_flows.testing.synth import write_studies

    write_studies(tmp_path / "study", series=1, instances=1, instance_kb=256, seed=3, pixels="random")
    scan = scan_directory(tmp_path / "study")
    script = compile_script('version "6.1"\n(0010,0010) := subject\n(0020,000D) := hashUID[(0020,000D)]\n')
    sent = deidentify_files(scan.files, script, VARIABLES).files[0]
    assert sent.rewrite is not None and sent.rewrite.head
    path, stat = sent.path, sent.path.stat()
    with open(path, "r+b") as handle:
        if change == "length":
            handle.seek(0, 2)
            handle.write(b"\0\0")
        else:
            handle.seek(stat.st_size - 10 if change == "tail" else 200)
            handle.write(b"X")
    if change != "length":
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    pieces = []
    with pytest.raises(InputError, match="changed while being uploaded"):
        for piece in read_exactly(sent, chunk_size=65536):
            pieces.append(piece)
    assert sum(map(len, pieces)) < sent.size  # the request is cut short: XNAT refuses it


def test_archives_of_deidentified_files_have_the_announced_length(study_dir: Path) -> None:
    files = deidentify_files(scan_directory(study_dir).files, HashingAnonymizer(), VARIABLES).files
    for fmt in ("tar", "zip"):
        assert len(b"".join(iter_archive(files, fmt))) == archive_size(files, fmt)


def test_the_journal_record_depends_on_the_script_and_the_variables(study_dir: Path) -> None:
    files = scan_directory(study_dir).files
    one = deidentify_files(files, HashingAnonymizer("v1"), VARIABLES).files
    other_script = deidentify_files(files, HashingAnonymizer("v2"), VARIABLES).files
    other_subject = deidentify_files(files, HashingAnonymizer("v1"), {**VARIABLES, "subject": "ANON02"}).files
    assert len({content_digest(one), content_digest(other_script), content_digest(other_subject)}) == 3
    assert content_digest(one) == content_digest(deidentify_files(files, HashingAnonymizer("v1"), VARIABLES).files)


# -- end to end: the emulator's archive holds exactly the script's changes --------------------------------


@pytest.fixture
def client(xnat_emulator: XnatEmulator, tmp_path: Path):
    with connect(xnat_emulator, tmp_path) as xnat:
        yield xnat


def _archived_headers(emulator: XnatEmulator, label: str) -> dict[str, pydicom.Dataset]:
    return {
        str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(path) for path in emulator.archived_files(label).values())
    }


def _expected(original: Path, variables: dict[str, str]) -> pydicom.Dataset:
    ds = pydicom.dcmread(original)
    ds.PatientName, ds.PatientID, ds.StudyDescription = variables["subject"], variables["session"], variables["project"]
    del ds.PatientBirthDate
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, hashed_uid(str(getattr(ds, keyword))))
    return ds


def _assert_exactly_the_scripts_changes(emulator: XnatEmulator, label: str, originals: list[Path], variables) -> None:
    archived = _archived_headers(emulator, label)
    assert len(archived) == len(originals)
    for path in originals:
        expected = _expected(path, variables)
        got = archived[str(expected.SOPInstanceUID)]
        assert {e.tag: e.value for e in got if e.tag != 0x7FE00010} == {
            e.tag: e.value for e in expected if e.tag != 0x7FE00010
        }
        assert got.PixelData == expected.PixelData


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["tar", "zip", "gradual", "streamed"])
def test_an_upload_lands_with_exactly_the_scripts_changes_and_the_originals_unchanged(
    xnat_emulator, client, tmp_path, mode, mocker
) -> None:
    """``streamed``: DICOM-zip (tar) with a script whose study follows the original, rewritten batch by batch."""
    from xnat_flows.transfer.deidentify import StreamedDeidentification

    export = tmp_path / "export"
    originals = write_study(export, series=2, instances=3)
    before = tree_hashes(export)
    target = UploadTarget("TEST", "ANON01", f"ANON_{mode}")
    anonymizer = StreamingHashingAnonymizer() if mode == "streamed" else HashingAnonymizer()
    batch_rewrites = mocker.spy(StreamedDeidentification, "rewrite")
    result = upload_session(
        client,
        export,
        target,
        workers=2,
        fmt="zip" if mode == "zip" else "tar",
        gradual=mode == "gradual",
        journal=UploadJournal(tmp_path / "journal"),
        anonymizer=anonymizer,
        **FAST,
    )
    assert result.ok, result
    # streamed: each of the 2 batches rewritten just before its request, then the files verified
    assert batch_rewrites.call_count == (3 if mode == "streamed" else 0)
    (study,) = result.sessions
    assert study.study_uid == hashed_uid(pydicom.dcmread(originals[0]).StudyInstanceUID)
    assert study.verify.ok and study.verify.found_count == 6  # verified on the rewritten UIDs
    variables = {"project": "TEST", "subject": "ANON01", "session": f"ANON_{mode}"}
    _assert_exactly_the_scripts_changes(xnat_emulator, f"ANON_{mode}", originals, variables)
    assert tree_hashes(export) == before

    again = upload_session(
        client,
        export,
        target,
        workers=2,
        gradual=mode == "gradual",
        journal=UploadJournal(tmp_path / "journal"),
        anonymizer=type(anonymizer)(),
        **FAST,
    )
    assert again.ok, again
    # the journal lists every rewritten batch or instance as delivered, and XNAT holds the study:
    # nothing new is sent, and the session is read back again
    assert again.files_sent == 0 and again.sessions[0].verify.ok
    _assert_exactly_the_scripts_changes(xnat_emulator, f"ANON_{mode}", originals, variables)


@pytest.mark.e2e
def test_an_interrupted_deidentified_upload_resumes_sending_only_the_rest(xnat_emulator, client, tmp_path) -> None:
    export = tmp_path / "export"
    write_study(export, series=2, instances=3)
    target = UploadTarget("TEST", "ANON01", "RESUME")
    journal = UploadJournal(tmp_path / "journal")
    files = scan_directory(export)
    from xnat_flows.transfer.session import plan_sessions, upload_instances

    ((_, planned),) = deidentify_plan(plan_sessions(files, target), HashingAnonymizer())[0]
    first = upload_instances(client, planned[:4], target, workers=2, journal=journal)  # "interrupted" after 4
    assert first.sent_count == 4
    result = upload_session(
        client, export, target, gradual=True, journal=journal, anonymizer=HashingAnonymizer(), **FAST
    )
    assert result.ok, result
    assert result.sessions[0].gradual.resumed_count == 4 and result.files_sent == 2


@pytest.mark.e2e
@pytest.mark.parametrize("anonymizer", [HashingAnonymizer, StreamingHashingAnonymizer])
def test_a_file_the_script_cannot_take_is_listed_not_sent_and_the_upload_fails(
    xnat_emulator, client, tmp_path, anonymizer
) -> None:
    export = tmp_path / "export"
    originals = write_study(export, series=1, instances=3)
    mark_refused(originals[1])
    label = f"REFUSED_{anonymizer.__name__[:9]}"
    result = upload_session(client, export, UploadTarget("TEST", "ANON01", label), anonymizer=anonymizer(), **FAST)
    assert not result.ok
    assert [r.path for r in result.not_deidentified] == [originals[1]]
    assert result.files_sent == 2 and result.sessions[0].files == 2
    sent = _archived_headers(xnat_emulator, label)
    refused_uid = str(pydicom.dcmread(originals[1]).SOPInstanceUID)
    assert len(sent) == 2 and refused_uid not in sent and hashed_uid(refused_uid) not in sent


@pytest.mark.e2e
def test_the_library_gate_sends_nothing_while_identifiers_survive(xnat_emulator, client, tmp_path) -> None:
    """``upload_session(require_clean=True)``: the gate the CLI's --anon-require-clean uses."""
    from xnat_flows.anon import compile_script
    from xnat_flows.transfer.deidentify import GATE_WITHOUT_RULES, IdentifiersSurvive

    export = tmp_path / "export"
    write_study(export, series=1, instances=2)
    leaky = compile_script('version "6.1"\n(0010,0010) := subject\n')
    target = UploadTarget("TEST", "ANON01", "LIBGATE")
    with pytest.raises(IdentifiersSurvive, match="identifying attributes survive: .*; nothing was sent"):
        upload_session(client, export, target, anonymizer=leaky, require_clean=True, **FAST)
    with pytest.raises(InputError, match=GATE_WITHOUT_RULES):
        upload_session(client, export, target, require_clean=True, **FAST)
    assert xnat_emulator.stats()["imports"] == 0


def test_build_anonymizer_compiles_get_url_only_with_allowed_urls() -> None:
    from xnat_flows.models import Deidentification
    from xnat_flows.transfer.deidentify import build_anonymizer

    script = ("lookup.das", 'version "6.1"\n(0008,0050) := getURL["https://ids.site.local/acc"]\n')
    with pytest.raises(InputError, match=r"lookup.das:2:16: getURL asks a web service"):
        build_anonymizer(script=script)
    assert build_anonymizer(script=script, allowed_urls=["https://ids.site.local/"]) is not None
    with pytest.raises(InputError, match="not an http"):
        build_anonymizer(script=script, allowed_urls=["ids.site.local"])
    request = Deidentification(script=script[1], allowed_urls=["https://ids.site.local/"])
    assert build_anonymizer(script=request.script_text(), allowed_urls=request.allowed_urls) is not None


# -- a session rewritten batch by batch as it is sent (StreamedDeidentification) ---------------------------

STREAM_VARIABLES = {"project": "TEST", "subject": "S", "session": "E"}


def _streamed_plan(study_dir: Path, anonymizer):
    from xnat_flows.transfer.session import plan_sessions

    target = UploadTarget("TEST", "S", "E")
    return deidentify_plan(plan_sessions(scan_directory(study_dir), target), anonymizer, streamed=True)


def test_a_streamed_session_rewrites_as_a_whole_dry_run_would_whichever_batch_asks_first(study_dir: Path) -> None:
    from xnat_flows.transfer.deidentify import as_sent, streamed_session
    from xnat_flows.transfer.partition import partition_in_order

    mark_refused(sorted(study_dir.rglob("IM*"))[2])
    ((_, pending),), refused_early = _streamed_plan(study_dir, StreamingHashingAnonymizer())
    whole = deidentify_files(scan_directory(study_dir).files, HashingAnonymizer(), STREAM_VARIABLES)
    session = streamed_session(pending)
    assert session is not None and not refused_early
    # the destination is checked with the rewritten study, known from the first file
    assert {f.study_uid for f in pending} == {whole.files[0].study_uid} == {session.study_uid}
    with pytest.raises(RuntimeError, match="before it was rewritten"):
        content_digest(pending[:1])  # a pending file can be neither journaled ...
    with pytest.raises(RuntimeError, match="before it was rewritten"):
        b"".join(read_exactly(pending[0]))  # ... nor sent as it is
    batches = partition_in_order(pending, 3)
    kept = {f.relpath for f in whole.files}
    # the last batch asks first: the files before it are rewritten too, in the session's order
    assert [f.relpath for f in session.rewrite(batches[-1])] == [f.relpath for f in batches[-1] if f.relpath in kept]
    sent = as_sent(pending)
    assert [(f.relpath, f.size, f.study_uid, f.sop_instance_uid) for f in sent] == [
        (f.relpath, f.size, f.study_uid, f.sop_instance_uid) for f in whole.files
    ]
    assert content_digest(sent) == content_digest(whole.files)  # the same journal records
    assert [r.path for r in session.refused] == [r.path for r in whole.refused]
    for mine, theirs in zip(sent, whole.files, strict=True):
        assert b"".join(read_exactly(mine)) == b"".join(read_exactly(theirs))


def test_a_batch_is_ready_after_its_own_files_and_those_before_it_while_others_wait(study_dir: Path) -> None:
    """What lets the first request start early: asking for a batch rewrites the files up to its last
    one, not the files of the batches after it; several threads asking at once get the same files."""
    import threading

    from xnat_flows.transfer.deidentify import streamed_session
    from xnat_flows.transfer.partition import partition_in_order

    anonymizer = StreamingHashingAnonymizer()
    ((_, pending),), _ = _streamed_plan(study_dir, anonymizer)
    session = streamed_session(pending)
    batches = partition_in_order(pending, 3)
    assert anonymizer.applied == 1  # the first file, for the session's study
    session.rewrite(batches[0])
    assert anonymizer.applied == len(batches[0])
    results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: session.rewrite(batches[i])})) for i in (2, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert anonymizer.applied == len(pending)  # each file rewritten once, whoever asked
    assert [f.relpath for i in (1, 2) for f in results[i]] == [f.relpath for b in batches[1:] for f in b]


def test_a_script_not_shown_to_keep_the_study_is_rewritten_whole_before_sending(study_dir: Path) -> None:
    from xnat_flows.transfer.deidentify import streamed_session

    ((_, files),), _ = _streamed_plan(study_dir, HashingAnonymizer())
    assert streamed_session(files) is None
    assert all(f.rewrite is not None and f.rewrite.head is not None for f in files)


def test_a_streamed_session_whose_every_file_is_refused_is_dropped_with_them_listed(study_dir: Path) -> None:
    paths = sorted(study_dir.rglob("IM*"))
    for path in paths:
        mark_refused(path)
    planned, refused = _streamed_plan(study_dir, StreamingHashingAnonymizer())
    assert planned == [] and sorted(r.path for r in refused) == paths


class _SplitsLateStudies(StreamingHashingAnonymizer):
    """Claims its study follows the original, yet gives series 2 another study:
    what a wrong analysis would let through, for the check each streamed file meets before its request."""

    def apply_bytes(self, part10, variables=None):
        import io

        ds = pydicom.dcmread(io.BytesIO(super().apply_bytes(part10, variables)))
        if int(ds.SeriesNumber) == 2:
            ds.StudyInstanceUID = ds.StudyInstanceUID + ".9"
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            return out.getvalue()
        return super().apply_bytes(part10, variables)


@pytest.mark.e2e
def test_a_streamed_file_rewritten_to_another_study_stops_the_upload_unsent(xnat_emulator, client, tmp_path) -> None:
    export = tmp_path / "export"
    originals = write_study(export, series=2, instances=3)  # batches of 2 workers: series 1, series 2
    with pytest.raises(InputError, match=r"series2/IM0001 StudyInstanceUID .* the upload stopped before sending it"):
        upload_session(
            client, export, UploadTarget("TEST", "ANON01", "SPLIT"), workers=2, anonymizer=_SplitsLateStudies(), **FAST
        )
    time.sleep(0.5)
    xnat_emulator.rebuild_now()  # what was received is archived (Direct-Archive), as XNAT's idle timer would
    sent = _archived_headers(xnat_emulator, "SPLIT")
    studies = {str(ds.StudyInstanceUID) for ds in sent.values()}
    first_study = hashed_uid(str(pydicom.dcmread(originals[0]).StudyInstanceUID))
    assert studies <= {first_study}  # nothing of another study reached the session
    assert len(sent) <= 3, sorted(sent)  # at most the first batch (series 1), never a file of series 2


@pytest.mark.e2e
def test_an_interrupted_streamed_upload_resumes_sending_only_the_batches_not_delivered(
    xnat_emulator, client, tmp_path
) -> None:
    from xnat_flows.transfer.deidentify import streamed_session
    from xnat_flows.transfer.partition import partition_in_order
    from xnat_flows.transfer.session import plan_sessions, upload_batch_resumable

    export = tmp_path / "export"
    write_study(export, series=2, instances=3)
    target = UploadTarget("TEST", "ANON01", "STREAM_RESUME")
    journal = UploadJournal(tmp_path / "journal")
    ((_, pending),), _ = deidentify_plan(
        plan_sessions(scan_directory(export), target), StreamingHashingAnonymizer(), streamed=True
    )
    first = partition_in_order(pending, 2)[0]
    done = upload_batch_resumable(client, streamed_session(pending).rewrite(first), target, journal=journal)
    assert done.ok  # "interrupted" after the first of 2 batches
    result = upload_session(
        client, export, target, workers=2, journal=journal, anonymizer=StreamingHashingAnonymizer(), **FAST
    )
    assert result.ok, result
    assert [b.resumed for b in result.sessions[0].batches] == [True, False]
    assert result.files_sent == 6 - len(first) and result.sessions[0].verify.found_count == 6


@pytest.mark.e2e
def test_a_deidentified_uploads_own_late_copy_is_merged_by_its_rewritten_patient(
    xnat_emulator, client, tmp_path
) -> None:
    """XNAT parked a late copy in CONFLICT: it is merged when its patient is the archived session's —
    the PatientID the script wrote, not the original's."""
    export = tmp_path / "export"
    write_study(export, series=2, instances=3)
    target = UploadTarget("TEST", "ANON01", "ANON_LATE")
    assert upload_session(client, export, target, anonymizer=HashingAnonymizer(), **FAST).ok
    xnat_emulator.faults.force_next_session("CONFLICT")
    again = upload_session(client, export, target, anonymizer=HashingAnonymizer(), **FAST)
    assert again.ok, again.sessions[0].verify
    assert len(_archived_headers(xnat_emulator, "ANON_LATE")) == 6


@pytest.mark.e2e
def test_a_file_rewritten_while_a_streamed_upload_runs_is_not_sent_and_a_rerun_completes(
    xnat_emulator, client, tmp_path, monkeypatch
) -> None:
    """The export changes under a streamed upload: a file of the second batch is rewritten by the
    scanner after the first file gave the session's study. It is listed, not sent (neither its old nor
    its new bytes), the upload fails; once the export is still, a re-run sends the rest and verifies."""
    from xnat_flows.transfer import deidentify

    export = tmp_path / "export"
    originals = write_study(export, series=2, instances=3)
    changing = originals[4]  # series2/IM0002: in the second of 2 batches
    real_start = deidentify.StreamedDeidentification.start

    def start_then_the_scanner_writes(self):
        pending = real_start(self)
        ds = pydicom.dcmread(changing)
        ds.ImageComments = "rewritten by the scanner after the scan"
        ds.save_as(changing, enforce_file_format=True)
        return pending

    monkeypatch.setattr(deidentify.StreamedDeidentification, "start", start_then_the_scanner_writes)
    target = UploadTarget("TEST", "ANON01", "CHANGING")
    journal = UploadJournal(tmp_path / "journal")
    first = upload_session(
        client, export, target, workers=2, journal=journal, anonymizer=StreamingHashingAnonymizer(), **FAST
    )
    assert not first.ok
    assert [r.path for r in first.not_deidentified] == [changing]
    assert "changed while being uploaded" in first.not_deidentified[0].reason
    assert hashed_uid(str(pydicom.dcmread(changing).SOPInstanceUID)) not in _archived_headers(xnat_emulator, "CHANGING")
    monkeypatch.undo()
    again = upload_session(
        client, export, target, workers=2, journal=journal, anonymizer=StreamingHashingAnonymizer(), **FAST
    )
    assert again.ok, again
    assert len(_archived_headers(xnat_emulator, "CHANGING")) == 6


@pytest.mark.e2e
def test_two_streamed_uploads_at_once_each_land_whole_in_their_own_session(xnat_emulator, client, tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    exports = [tmp_path / "a", tmp_path / "b"]
    for export in exports:
        write_study(export, series=2, instances=4)

    def upload(index: int):
        return upload_session(
            client,
            exports[index],
            UploadTarget("TEST", f"ANON0{index}", f"TWICE_{index}"),
            workers=3,
            anonymizer=StreamingHashingAnonymizer(),
            **FAST,
        )

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(upload, [0, 1]))
    for index, result in enumerate(results):
        assert result.ok, result
        archived = _archived_headers(xnat_emulator, f"TWICE_{index}")
        assert len(archived) == 8 and {str(ds.PatientName) for ds in archived.values()} == {f"ANON0{index}"}
        assert {str(ds.StudyInstanceUID) for ds in archived.values()} == {result.sessions[0].study_uid}
