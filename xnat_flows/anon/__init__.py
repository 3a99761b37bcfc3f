"""De-identification before upload: XNAT's DicomEdit 6 scripts and DICOM's Basic Profile.

Plain Python (pydicom, lark); no Prefect, no XNAT client. The API the transports code against::

    from xnat_flows.anon import compile_script, basic_profile, ScriptError, AnonError

    anonymizer = compile_script(text, source="site.das")  # ScriptError(line, column) if invalid
    anonymizer = basic_profile(["retain-uids"])  # PS3.15 Annex E, with named options
    anonymizer = anonymizer_for(script=text, source="site.das")  # or profile="basic", options=[...]
    out = anonymizer.apply_bytes(part10, {"project": "P1", "subject": "S1", "session": "S1_MR1"})
    anonymizer.apply_dataset(ds, variables)  # in place, for `anon check`
    anonymizer.digest  # stable identity: same digest + same input -> same output bytes
    anonymizer.required_variables  # names the caller must supply (project, subject, ...)

``apply_bytes`` rewrites the header only: pixel data and transfer syntax stay byte-identical,
except where a script's ``alterPixels`` asks (native pixel data only). It raises
:class:`AnonError` for a file it cannot de-identify. See docs/anonymization.md.
"""

from __future__ import annotations

from xnat_flows.anon.engine import Anonymizer, MappingRecorder
from xnat_flows.anon.errors import AnonError, ScriptError
from xnat_flows.anon.mapping import MappingCsv
from xnat_flows.anon.profile import PROFILE_OPTIONS, PROFILES, anonymizer_for, basic_profile
from xnat_flows.anon.script import compile_script
from xnat_flows.anon.urls import UrlAccess

__all__ = [
    "PROFILES",
    "PROFILE_OPTIONS",
    "AnonError",
    "Anonymizer",
    "MappingCsv",
    "MappingRecorder",
    "ScriptError",
    "UrlAccess",
    "anonymizer_for",
    "basic_profile",
    "compile_script",
]
