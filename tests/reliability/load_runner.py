"""Run N ``upload-dicom-session`` flow runs at once (threads) against one XNAT, under a global
concurrency limit; used by test_load.py in a child process that points PREFECT_API_URL at a real
Prefect server. Prints one JSON line: {"ok": [...], "failed": {...}}.

argv: XNAT_URL SOURCES_ROOT RUNS LIMIT
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    url, sources, runs, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from xnat_flows.flows.upload import upload_dicom_session
    from xnat_flows.models import UploadRequest, XnatConnection
    from xnat_flows.tasks.policies import upload_limit_name

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=upload_limit_name(url), limit=limit))

    def one(index: int) -> tuple[int, str | None]:
        request = UploadRequest(
            source_dir=f"{sources}/s{index:02d}",
            project="LOAD",
            subject=f"L{index:02d}",
            session=f"L{index:02d}",
            workers=2,
            verify_timeout_seconds=120,
        )
        try:
            result = upload_dicom_session(request, XnatConnection(url=url, username="admin"))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            return index, f"{type(exc).__name__}: {exc}"
        return index, None if result.ok else "not ok"

    with ThreadPoolExecutor(max_workers=runs) as pool:
        outcomes = list(pool.map(one, range(runs)))
    print(json.dumps({"ok": [i for i, e in outcomes if e is None], "failed": {i: e for i, e in outcomes if e}}))


if __name__ == "__main__":
    main()
