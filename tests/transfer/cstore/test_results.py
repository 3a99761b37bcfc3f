"""What a C-STORE reports (``cstore.results``): status meanings."""

from __future__ import annotations

from xnat_flows.transfer.cstore.results import status_meaning


def test_status_meanings_name_the_category_and_the_text() -> None:
    assert status_meaning(0x0000) == "Success"
    assert status_meaning(0xB000) == "Warning: Coercion of Data Elements"
    assert status_meaning(0xA700) == "Failure: Refused: Out of Resources"
    assert status_meaning(0xC000) == "Failure: Cannot Understand"
    assert status_meaning(None).startswith("no response")


def test_a_result_round_trips_through_prefects_json_result_serializer() -> None:
    """The flow returns a ``SendResult``: Prefect persists it (pickle by default, or JSON through
    pydantic's TypeAdapter); both give back an equal result, ``ok`` and ``in_doubt`` included."""
    from pathlib import Path

    from prefect.serializers import JSONSerializer, PickleSerializer

    from xnat_flows.transfer.cstore.results import ArchivedStudy, AssociationSummary, InstanceOutcome, SendResult
    from xnat_flows.transfer.scan import SkippedFile

    result = SendResult(
        sent=[InstanceOutcome(Path("/d/1"), "1.2.1", 10, 0, 2, unanswered_attempts=1)],
        failed=[InstanceOutcome(Path("/d/2"), "1.2.2", 10, 0xA700, 3, "busy", retryable=True)],
        associations=[AssociationSummary(0, 0, 1, 1, 0.5, "released")],
        seconds=0.5,
        workers=1,
        resumed=3,
        unchecked=[Path("/d/3")],
        unchecked_reason="no login",
        not_sent=[SkippedFile(Path("/d/notes.txt"), "not DICOM")],
        archived=[ArchivedStudy("1.2", "P", None, "L", "E1", "/data/experiments/E1", 2, 2)],
    )
    for serializer in (JSONSerializer(), PickleSerializer()):
        back = serializer.loads(serializer.dumps(result))
        assert back == result
        assert back.in_doubt == [Path("/d/3"), Path("/d/1")] and not back.ok


def test_ok_is_one_formula_over_stored_read_and_in_doubt() -> None:
    from pathlib import Path

    from xnat_flows.transfer.cstore.results import InstanceOutcome, SendResult
    from xnat_flows.transfer.scan import SkippedFile

    sent = InstanceOutcome(Path("/d/1"), "1.2.1", 10, 0, 1)
    again = InstanceOutcome(Path("/d/2"), "1.2.2", 10, 0, 2, unanswered_attempts=1)
    assert SendResult(sent=[sent]).ok
    assert not SendResult(sent=[sent], skipped=[InstanceOutcome(Path("/d/3"), "1.2.3", 10, None, 1)]).ok
    assert not SendResult(sent=[sent], not_sent=[SkippedFile(Path("/d/x"), "unreadable: permission denied")]).ok
    assert SendResult(sent=[sent], not_sent=[SkippedFile(Path("/d/x"), "not DICOM")]).ok
    assert not SendResult(sent=[sent, again]).ok  # maybe held twice, and nobody looked
    assert SendResult(sent=[sent, again], verified=True).ok  # the archive was seen to hold every instance
