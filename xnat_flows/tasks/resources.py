"""Prefect task over ``xnat_flows.manage.resources``: attach a file or a directory to a resource."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from xnat_flows.manage import resources as lib
from xnat_flows.models import XnatConnection
from xnat_flows.tasks.connection import open_client
from xnat_flows.tasks.hints import speaks_to_operator
from xnat_flows.tasks.policies import retry_unless_permanent


@task(
    name="upload-resource",
    timeout_seconds=6 * 3600,
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless_permanent,
)
@speaks_to_operator
def upload_resource_task(
    connection: XnatConnection, target: lib.ResourceTarget, label: str, path: str, overwrite: bool = False
) -> lib.ResourceUploadResult:
    """Upload ``path`` (file, or directory zipped on the fly and extracted by XNAT) to resource ``label``.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        target: The session or scan the resource belongs to.
        label: The resource's label.
        path: The file or directory to upload.
        overwrite: Replace files XNAT already has under the same names.

    Returns:
        What was sent, skipped and already there.
    """
    logger = get_run_logger()
    with open_client(connection) as client:
        result = lib.upload_resource(client, target, label, path, overwrite=overwrite)
    for item in result.skipped:
        logger.warning("not sent: %s (%s)", item.path, item.reason)
    if result.duplicates:
        logger.warning(
            "XNAT already had %d file(s) and kept them (overwrite is off): %s",
            len(result.duplicates),
            result.duplicates[:20],
        )
    logger.info("sent %d file(s), %.1f MB, to %s", len(result.files), result.bytes_sent / 1e6, result.resource_uri)
    return result
