"""Presentation contexts planned from the files to send (``cstore.contexts``)."""

from __future__ import annotations

import pytest

from xnat_flows.transfer.cstore.contexts import (
    MAX_CONTEXTS_PER_ASSOCIATION,
    plan_association_groups,
)

MR, CT = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def test_groups_hold_distinct_pairs_within_the_context_limit() -> None:
    pairs = [(f"1.2.3.{n}", ts) for n in range(100) for ts in (EXPLICIT, IMPLICIT)] * 2
    groups = plan_association_groups(pairs)
    assert [len(g.pairs) for g in groups] == [128, 72]
    assert sorted(p for g in groups for p in g.pairs) == sorted(set(pairs))
    assert [g.index for g in groups] == [0, 1]
    assert len(plan_association_groups([(MR, EXPLICIT), (MR, IMPLICIT), (CT, EXPLICIT)], max_contexts=2)) == 2
    with pytest.raises(ValueError):
        plan_association_groups([(MR, EXPLICIT)], max_contexts=MAX_CONTEXTS_PER_ASSOCIATION + 1)
