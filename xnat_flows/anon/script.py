"""DicomEdit 6 scripts: parse (lark grammar in ``dicomedit6.lark``), validate, compile."""

from __future__ import annotations

from xnat_flows.anon.engine import Anonymizer


def compile_script(text: str, *, source: str = "<script>") -> Anonymizer:
    """Parse and validate a DicomEdit 6 script; raise :class:`ScriptError` (line, column) if it
    cannot run. Nothing is applied here."""
    raise NotImplementedError("DicomEdit 6 engine: in progress (issue 23)")
