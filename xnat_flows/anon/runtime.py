"""The DicomEdit 6 interpreter: statements applied to one dataset, top to bottom.

Semantics follow XNAT's DicomEdit 6 Language Reference; where it is silent, the choice is noted:

* an assignment to an exact tag creates the attribute if absent (VR from the data dictionary); to
  a wildcard or ``*`` path, it changes the attributes that exist;
* a tag's value is its text, multiple values joined by ``\\``; an absent attribute is ``null``,
  which compares as the empty string and assigns the empty string;
* ``~`` and ``!~`` match the whole value (Java ``String.matches``);
* ``new UID`` is derived from the program's digest, the statement's position and the instance's
  original SOP Instance UID, so a re-run gives the same bytes (DicomEdit's is random per run);
* ``echo`` prints nothing: a value may be an identifier, and this engine never logs values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from xnat_flows.anon.errors import AnonError
from xnat_flows.anon.functions import VALUE_FUNCTIONS, FunctionError, check_uid_prefix, derived_uid, mapped_uid
from xnat_flows.anon.identifiers import IDENTIFYING_TAGS, keyword_of
from xnat_flows.anon.paths import Path, TagPattern
from xnat_flows.anon.rawds import SOP_INSTANCE_UID, Node, PixelEdit
from xnat_flows.anon.urls import UrlFetcher


@dataclass
class Context:
    """Per-file state: variables (given, then assigned by the script), the mapping recorder,
    the pixel edits ``alterPixels`` asked for, and what is needed to derive ``new UID``."""

    variables: dict[str, str]
    mapping: object | None = None
    pixel_edits: list[PixelEdit] = field(default_factory=list)
    digest: str = ""
    original_uid: str = ""


# --- the program's tree --------------------------------------------------------------------------


class _ExactTagOnce:
    """For a node with a ``path`` and a ``tag`` field: the path's exact_tag, computed once at construction."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", self.path.exact_tag)


@dataclass(frozen=True)
class Position:
    line: int
    column: int


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class TagValue(_ExactTagOnce):
    path: Path
    tag: int | None = None  # the path's exact_tag, computed once


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class NewValue:
    kind: str
    position: Position


@dataclass(frozen=True)
class Call:
    name: str  # lower-case key into VALUE_FUNCTIONS
    args: tuple[Value, ...]
    position: Position


@dataclass(frozen=True)
class Fetch:
    """``getURL[url]``: the answer of a web service the user allowed (``anon.urls``)."""

    url: Value
    position: Position
    fetcher: UrlFetcher = field(compare=False)


Value = Literal | TagValue | Variable | NewValue | Call | Fetch


@dataclass(frozen=True)
class AssignTag(_ExactTagOnce):
    path: Path
    value: Value
    position: Position
    tag: int | None = None  # the path's exact_tag, computed once


@dataclass(frozen=True)
class AssignVariable:
    name: str
    value: Value


@dataclass(frozen=True)
class Delete(_ExactTagOnce):
    path: Path
    tag: int | None = None  # the path's exact_tag, computed once


@dataclass(frozen=True)
class RemoveAllPrivate:
    pass


@dataclass(frozen=True)
class RetainPrivate:
    patterns: tuple[TagPattern, ...]


@dataclass(frozen=True)
class AlterPixels:
    edit: PixelEdit


@dataclass(frozen=True)
class MapReferencedUids:
    """``mapReferencedUIDs[prefix, "path", ...]``: every UID the paths name, mapped under ``prefix``."""

    prefix: Value
    paths: tuple[Path, ...]
    position: Position


@dataclass(frozen=True)
class Echo:
    value: Value


@dataclass(frozen=True)
class Condition:
    left: Value
    op: str
    right: Value
    regex: re.Pattern[str] | None  # compiled once when the right side is a literal


@dataclass(frozen=True)
class Conditional:
    condition: Condition
    then: Statement
    otherwise: Statement | None


Statement = (
    AssignTag
    | AssignVariable
    | Delete
    | RemoveAllPrivate
    | RetainPrivate
    | AlterPixels
    | MapReferencedUids
    | Echo
    | Conditional
)


# --- evaluation ---------------------------------------------------------------------------------


def evaluate(value: Value, node: Node, context: Context) -> str | None:
    if isinstance(value, Literal):
        return value.text
    if isinstance(value, Variable):
        if value.name not in context.variables:
            raise AnonError(f"the script reads variable {value.name!r}, which is neither given nor assigned")
        return context.variables[value.name]
    if isinstance(value, TagValue):
        exact = value.tag
        if exact is not None:
            return node.string(exact)
        for target, tag in value.path.targets(node):
            return target.string(tag)
        return None
    if isinstance(value, NewValue):
        return derived_uid(context.digest, f"{value.position.line}:{value.position.column}", context.original_uid)
    if isinstance(value, Fetch):
        return value.fetcher.fetch((evaluate(value.url, node, context) or "").strip(), value.position.line)
    args = [evaluate(arg, node, context) for arg in value.args]
    try:
        return VALUE_FUNCTIONS[value.name].call(*args)
    except FunctionError as exc:
        raise AnonError(f"line {value.position.line}: {exc}") from exc


def _holds(condition: Condition, node: Node, context: Context) -> bool:
    left = evaluate(condition.left, node, context) or ""
    op = condition.op
    if op in ("=", "!="):
        right = evaluate(condition.right, node, context) or ""
        return (left == right) == (op == "=")
    regex = condition.regex
    if regex is None:
        try:
            regex = re.compile(evaluate(condition.right, node, context) or "")
        except re.error as exc:
            raise AnonError(f"invalid regular expression in a condition: {exc}") from exc
    return (regex.fullmatch(left) is not None) == (op == "~")


def assign(node: Node, tag: int, text: str, context: Context) -> None:
    """Set one attribute, recording the identifier it replaced in the mapping, if one is kept."""
    mapping = context.mapping
    if mapping is not None and tag in IDENTIFYING_TAGS:
        before = node.string(tag)
        node.put(tag, text)
        if before and text and before != text:
            mapping.record(keyword_of(tag), before, text)  # type: ignore[attr-defined]
        return
    node.put(tag, text)


def execute(statement: Statement, node: Node, context: Context) -> None:
    if isinstance(statement, AssignTag):
        text = evaluate(statement.value, node, context) or ""
        if statement.tag is not None:
            assign(node, statement.tag, text, context)
            return
        for target, tag in list(statement.path.targets(node, create=True)):
            assign(target, tag, text, context)
    elif isinstance(statement, AssignVariable):
        context.variables[statement.name] = evaluate(statement.value, node, context) or ""
    elif isinstance(statement, Delete):
        if statement.tag is not None:
            node.delete(statement.tag)
            return
        last = statement.path.last
        if last.index is not None:
            for parent, tag, index in reversed(list(statement.path.items_named(node))):
                element = parent.get(tag)
                assert element is not None
                del parent.items(element)[index]
                element.changed = True
        else:
            for target, tag in list(statement.path.targets(node)):
                target.delete(tag)
    elif isinstance(statement, Conditional):
        if _holds(statement.condition, node, context):
            execute(statement.then, node, context)
        elif statement.otherwise is not None:
            execute(statement.otherwise, node, context)
    elif isinstance(statement, RemoveAllPrivate):
        remove_private(node, ())
    elif isinstance(statement, RetainPrivate):
        remove_private(node, statement.patterns)
    elif isinstance(statement, AlterPixels):
        context.pixel_edits.append(statement.edit)
    elif isinstance(statement, MapReferencedUids):
        map_referenced_uids(statement, node, context)
    elif isinstance(statement, Echo):
        evaluate(statement.value, node, context)  # evaluated for its errors; never printed


def map_referenced_uids(statement: MapReferencedUids, node: Node, context: Context) -> None:
    """Each attribute a path names, at whatever depth, gets its UID mapped under the prefix; an
    attribute two paths name is mapped once (dicom-edit6 visits each element once, first matching
    path). Each value of a multi-valued attribute is mapped; an empty one stays empty."""
    prefix = (evaluate(statement.prefix, node, context) or "").strip()
    problem = check_uid_prefix(prefix)
    if problem is not None:
        raise AnonError(f"line {statement.position.line}: mapReferencedUIDs: {problem}")
    done: set[tuple[int, int]] = set()
    for path in statement.paths:
        for target, tag in list(path.targets(node)):
            if (id(target), tag) in done:
                continue
            done.add((id(target), tag))
            text = target.string(tag)
            if text:
                assign(
                    target,
                    tag,
                    "\\".join(mapped_uid(prefix, v.strip()) if v.strip() else "" for v in text.split("\\")),
                    context,
                )


def remove_private(node: Node, keep: tuple[TagPattern, ...]) -> None:
    """Delete every private attribute (odd group), at every depth, except those ``keep`` names
    and the Private Creator elements of the blocks they live in."""
    kept: set[int] = set()
    for pattern in keep:
        kept.update(pattern.tags_in(node))
    creators = {(tag & 0xFFFF0000) | (tag >> 8 & 0xFF) for tag in kept if tag & 0xFFFF >= 0x1000}
    node.delete_many([tag for tag in node.elements if tag >> 16 & 1 and tag not in kept and tag not in creators])
    for tag in list(node.elements):
        if node.is_sequence(tag):
            element = node.get(tag)
            assert element is not None
            for item in node.items(element):
                remove_private(item, keep)


def run(statements: tuple[Statement, ...], node: Node, context: Context) -> None:
    context.original_uid = node.string(SOP_INSTANCE_UID) or ""
    for statement in statements:
        execute(statement, node, context)
