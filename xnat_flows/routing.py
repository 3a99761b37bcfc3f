"""Route a dropped session folder to an XNAT project/subject/session (plain Python, no Prefect).

Labels come from the folder's first DICOM header through ``str.format`` templates whose fields
are DICOM keywords (``{PatientID}_{StudyDate}``) or ``{folder}`` (the folder's name); a sidecar
JSON file in the folder (``xnat.json``: project/subject/session) overrides any of them. Subject
and session labels are cleaned the way XNAT does (characters outside ``[A-Za-z0-9_-]`` become
``_``); a project ID is never rewritten, since it must name an existing project.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydicom
from pydantic import BaseModel, ConfigDict, ValidationError
from pydicom.datadict import tag_for_keyword

from xnat_flows.client.archive import LABEL_RE, clean_label
from xnat_flows.client.errors import InputError
from xnat_flows.transfer.scan import is_dicom_part10

FOLDER_FIELD = "folder"

Source = Literal["sidecar", "template", "parameter"]


class RoutingError(InputError):
    """A folder cannot be routed to a valid project/subject/session; the message says why and how to fix it."""


class Sidecar(BaseModel):
    """``xnat.json`` next to the DICOM files: any field given here wins over the templates."""

    model_config = ConfigDict(extra="forbid")

    project: str | None = None
    subject: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Route:
    project: str
    subject: str
    session: str
    sources: dict[str, Source] = field(default_factory=dict)  # where each label came from (for the report)
    dicom_file: str | None = None  # the header the templates were filled from


def template_fields(template: str) -> list[str]:
    """Field names of a template, each checked to be ``folder`` or a DICOM keyword."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise RoutingError(f"Invalid label template {template!r}: {exc}", hint="Write fields as {PatientID}") from None
    for name in names:
        if not name:
            raise RoutingError(
                f"Template {template!r} has an empty field {{}}", hint="Name a DICOM keyword, e.g. {PatientID}"
            )
        if name != FOLDER_FIELD and tag_for_keyword(name) is None:
            raise RoutingError(
                f"Template {template!r} names {{{name}}}, which is not a DICOM keyword",
                hint="Use DICOM keywords as pydicom spells them (PatientID, StudyDate, AccessionNumber, ...) or {folder}",
            )
    return list(dict.fromkeys(names))


def first_dicom_file(folder: Path, sidecar_name: str = "xnat.json") -> Path | None:
    """The first DICOM Part 10 file in sorted walk order (hidden files and the sidecar skipped)."""
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name == sidecar_name:
                continue
            path = Path(directory) / name
            try:
                if path.is_file() and is_dicom_part10(path):
                    return path
            except OSError:
                continue
    return None


def read_header_values(path: Path, keywords: list[str]) -> dict[str, str]:
    """The named header elements as strings (missing or empty elements map to ``""``)."""
    if not keywords:
        return {}
    dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keywords)
    values: dict[str, str] = {}
    for keyword in keywords:
        value = dataset.get(keyword)
        if value is None or value == "":
            values[keyword] = ""
        elif isinstance(value, pydicom.multival.MultiValue):
            values[keyword] = "_".join(str(v) for v in value)
        else:
            values[keyword] = str(value)
    return values


def read_sidecar(folder: Path, sidecar_name: str) -> Sidecar | None:
    path = folder / sidecar_name
    if not path.is_file():
        return None
    try:
        return Sidecar.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise RoutingError(
            f"{path} is not valid JSON: {exc}", hint='Write e.g. {"subject": "S01", "session": "S01_MR1"}'
        ) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors())
        raise RoutingError(f"{path}: {problems}", hint="Allowed keys: project, subject, session (strings)") from None


def render_label(template: str, values: dict[str, str], what: str, folder: Path) -> str:
    """Fill a template, then clean it as XNAT would; empty results are errors, not silent labels."""
    empty = [name for name in template_fields(template) if not values.get(name, "").strip()]
    if empty:
        raise RoutingError(
            f"{folder.name}: cannot build the {what} label from {template!r}: "
            f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty or missing in the DICOM header",
            hint=f'Put {{"{what}": "..."}} in the folder\'s sidecar JSON, or change the {what} template',
        )
    label = clean_label(template.format_map(values))
    if not label.strip("_"):
        raise RoutingError(f"{folder.name}: the {what} label rendered from {template!r} has no letter or digit")
    return label


def validate_project(project: str, folder: Path) -> str:
    if not LABEL_RE.fullmatch(project or ""):
        raise RoutingError(
            f"{folder.name}: invalid XNAT project ID {project!r}",
            hint="A project ID holds only letters, digits, '_' and '-', and must name an existing project",
        )
    return project


def route_folder(
    folder: Path,
    project: str,
    subject_template: str = "{PatientID}",
    session_template: str = "{PatientID}_{StudyDate}",
    sidecar_name: str = "xnat.json",
) -> Route:
    """Where the session in ``folder`` goes: sidecar values first, then templates over the first DICOM."""
    sidecar = read_sidecar(folder, sidecar_name) or Sidecar()
    sources: dict[str, Source] = {"project": "sidecar" if sidecar.project else "parameter"}
    chosen_project = validate_project(sidecar.project or project, folder)

    needed: dict[str, str] = {}
    if not sidecar.subject:
        needed["subject"] = subject_template
    if not sidecar.session:
        needed["session"] = session_template
    keywords = sorted({name for t in needed.values() for name in template_fields(t)} - {FOLDER_FIELD})

    dicom_file: Path | None = None
    values: dict[str, str] = {FOLDER_FIELD: folder.name}
    if keywords:
        dicom_file = first_dicom_file(folder, sidecar_name)
        if dicom_file is None:
            raise RoutingError(
                f"{folder.name}: no DICOM file found to read {', '.join(keywords)} from",
                hint=f"Drop the scanner export (Part 10 files) in the folder, or give subject and session in {sidecar_name}",
            )
        try:
            values.update(read_header_values(dicom_file, keywords))
        except Exception as exc:  # noqa: BLE001 - any unreadable header is a routing failure with its cause
            raise RoutingError(f"{folder.name}: cannot read the DICOM header of {dicom_file.name}: {exc}") from None

    labels: dict[str, str] = {}
    for what, given in (("subject", sidecar.subject), ("session", sidecar.session)):
        if given:
            labels[what] = clean_label(given)
            sources[what] = "sidecar"
            if not labels[what].strip("_"):
                raise RoutingError(
                    f"{folder.name}: the {what} label {given!r} in {sidecar_name} has no letter or digit"
                )
        else:
            labels[what] = render_label(needed[what], values, what, folder)
            sources[what] = "template"
    return Route(
        project=chosen_project,
        subject=labels["subject"],
        session=labels["session"],
        sources=sources,
        dicom_file=str(dicom_file.relative_to(folder)) if dicom_file else None,
    )
