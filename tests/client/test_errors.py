"""client.errors: facts below, words above — a reader's table words the hint, quoting the error's facts."""

from __future__ import annotations

import pickle

from xnat_flows.client.errors import ConflictError, XnatError, reworded


def test_a_reason_picks_the_readers_words_and_quotes_the_errors_facts() -> None:
    exc = ConflictError("already archived", reason="per-study-other-label", facts={"label": "MIX"}, hint="neutral")
    table = {"per-study-other-label": "Upload again with -E {label} --per-study"}

    assert reworded(exc, table, {}) == "Upload again with -E MIX --per-study"
    assert reworded(exc, {}, {}) == "neutral"  # no words for it here: the raiser's hint stands


def test_an_error_without_facts_takes_its_table_words_as_written() -> None:
    exc = XnatError("x", reason="r")
    assert reworded(exc, {"r": "literal {braces} stay"}, {}) == "literal {braces} stay"


def test_facts_survive_a_process_boundary() -> None:
    exc = ConflictError("already archived", reason="per-study-other-label", facts={"label": "MIX"})
    copy = pickle.loads(pickle.dumps(exc))
    assert copy.facts == {"label": "MIX"} and copy.reason == "per-study-other-label"
