"""Alert someone when an XNAT upload fails: two Prefect automations that send through a
notification Block of your choice (Slack, Teams, e-mail, PagerDuty, a webhook, ...).

    .venv/bin/python deployments/alerting.py slack-webhook/xnat-alerts

1. "xnat: run failed": any run of an xnat-flows deployment (all are tagged ``xnat``) that ends
   Failed or Crashed -- an inbox run during an XNAT outage, an upload whose files did not land.
2. "xnat: upload failed": every ``xnat.upload.failed`` event, with the session and the reason
   (including failures before the first byte: unknown project, server down, unknown Block).

Running it again replaces both. See docs/deployments.md, "Alerting".
"""

from __future__ import annotations

import sys

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture


def main(notification_block: str) -> None:
    block_id = Block.load(notification_block)._block_document_id  # e.g. slack-webhook/xnat-alerts
    automations = [
        Automation(
            name="xnat: run failed",
            description="A run of an xnat-flows deployment ended Failed or Crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match_related={"prefect.resource.id": "prefect.tag.xnat"},
                posture=Posture.Reactive,
                threshold=1,
                within=0,
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject="XNAT: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                    body="{{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
                )
            ],
        ),
        Automation(
            name="xnat: upload failed",
            description="An upload did not land in XNAT (xnat.upload.failed).",
            trigger=EventTrigger(
                expect={"xnat.upload.failed"},
                match={"prefect.resource.id": "xnat.session.*"},
                posture=Posture.Reactive,
                threshold=1,
                within=0,
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject="XNAT upload failed: {{ event.resource['prefect.resource.name'] }}",
                    body="{{ event.payload.error }}\nserver: {{ event.resource['xnat.server'] }}\n"
                    "data: {{ event.payload.source }}",
                )
            ],
        ),
    ]
    for automation in automations:
        while (existing := _named(automation.name)) is not None:
            existing.delete()
        automation.create()
        print(f"created automation {automation.name!r} -> {notification_block}")


def _named(name: str) -> Automation | None:
    try:
        return Automation.read(name=name)
    except ValueError:  # Prefect's "not found"
        return None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: deployments/alerting.py BLOCK_TYPE_SLUG/BLOCK_NAME   (e.g. slack-webhook/xnat-alerts)")
    main(sys.argv[1])
