"""A ``prefect deploy`` build step: the site values of prefect.yaml, read from the deploying shell.

    build:
      - xnat_flows.deploy_steps.site_values:
          id: site

then ``{{ site.credentials_block }}``, ``{{ site.credentials_ref }}`` (``{"$ref": {"block_document_id":
...}}``: the form the UI's Block picker shows as selected; a slug reference works at run time but
shows an empty picker, and an id reference written in prefect.yaml itself is replaced by the Block's
data when ``prefect deploy`` reads the file, so it must come from here), ``{{ site.inbox_dir }}``,
``{{ site.inbox_project }}`` and ``{{ site.inbox_active }}`` in the deployments. ``XNAT_CREDENTIALS_BLOCK`` is required (and must
name a saved ``xnat-credentials`` Block); without ``XNAT_INBOX_DIR``/``XNAT_INBOX_PROJECT`` the inbox
schedule is created inactive instead of failing every few minutes, and the missing parameters are
left out of the deployment (a run started by hand asks for them). An ``XNAT_INBOX_DIR`` that does
not exist stops the deploy (the schedule would fail every 5 minutes), unless ``XNAT_INBOX_CREATE=1``
asks for it to be created. The check is made where ``prefect deploy`` runs: for a process worker on
this host (prefect.yaml's pool), the worker's folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


class MissingSiteValue(ValueError):
    pass


def site_values() -> dict[str, Any]:
    block = os.environ.get("XNAT_CREDENTIALS_BLOCK", "").strip()
    if not block:
        raise MissingSiteValue(
            "XNAT_CREDENTIALS_BLOCK is not set: export the name of the xnat-credentials Block the deployments "
            "use (create it first, docs/deployments.md section 2), then run prefect deploy again"
        )
    block_id = _require_block(block)
    inbox_dir = os.environ.get("XNAT_INBOX_DIR", "").strip()
    inbox_project = os.environ.get("XNAT_INBOX_PROJECT", "").strip()
    active = bool(inbox_dir and inbox_project)
    if not active:
        missing = [
            name for name, value in (("XNAT_INBOX_DIR", inbox_dir), ("XNAT_INBOX_PROJECT", inbox_project)) if not value
        ]
        print(
            f"xnat-flows: {' and '.join(missing)} not set: the inbox-ingest schedule is created INACTIVE; "
            "set them and deploy again to switch it on",
            file=sys.stderr,
        )
    values: dict[str, Any] = {
        "credentials_block": block,
        "credentials_ref": {"$ref": {"block_document_id": block_id}},
        "inbox_active": active,
    }
    # A value not given is left out: Prefect then drops the parameter (the run form asks for it)
    # instead of deploying an empty string that fails validation.
    if inbox_dir:
        values["inbox_dir"] = _require_inbox(inbox_dir)
    if inbox_project:
        values["inbox_project"] = inbox_project
    return values


def _require_inbox(inbox_dir: str) -> str:
    """The inbox folder as given; stops the deploy when it does not exist (unless the operator
    opted in to creating it with XNAT_INBOX_CREATE=1) or is not a folder."""
    path = Path(inbox_dir).expanduser()
    if path.is_dir():
        return inbox_dir
    if path.exists():
        raise MissingSiteValue(f"XNAT_INBOX_DIR={inbox_dir} is not a folder: name the folder sessions are dropped into")
    if os.environ.get("XNAT_INBOX_CREATE", "").strip().lower() in ("1", "true", "yes"):
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise MissingSiteValue(f"XNAT_INBOX_DIR={inbox_dir} could not be created: {exc.strerror or exc}") from None
        print(f"xnat-flows: created the inbox folder {inbox_dir} (XNAT_INBOX_CREATE=1)", file=sys.stderr)
        return inbox_dir
    raise MissingSiteValue(
        f"XNAT_INBOX_DIR={inbox_dir} does not exist: create it (mkdir -p {inbox_dir}, writable by the worker's user), "
        "or deploy again with XNAT_INBOX_CREATE=1 to have it created, then run prefect deploy again"
    )


def _require_block(name: str) -> str:
    """The named Block's document id; fails the deploy now, not every run later, when it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(
                name, block_type_slug="xnat-credentials", include_secrets=False
            )
        except ObjectNotFound:
            raise MissingSiteValue(
                f"XNAT_CREDENTIALS_BLOCK={name}: no xnat-credentials Block of that name on this Prefect server; "
                "create it (prefect block register -m xnat_flows.blocks, then the UI or docs/deployments.md section 2)"
            ) from None
    return str(document.id)
