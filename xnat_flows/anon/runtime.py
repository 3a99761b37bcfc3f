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
from collections.abc import Callable
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


# --- compiled form ------------------------------------------------------------------------------
# A script's statements are turned once into Python closures (``compile_program``), so a file's run
# is a call per statement: no walk of the program's tree and no dispatch on node types per file.

Getter = Callable[[Node, Context], "str | None"]
Action = Callable[[Node, Context], None]


def compile_value(value: Value) -> Getter:
    """``value`` as a function of the dataset and the file's context."""
    if isinstance(value, Literal):
        text = value.text
        return lambda node, context: text
    if isinstance(value, Variable):
        name = value.name

        def variable(node: Node, context: Context) -> str | None:
            try:
                return context.variables[name]
            except KeyError:
                raise AnonError(f"the script reads variable {name!r}, which is neither given nor assigned") from None

        return variable
    if isinstance(value, TagValue):
        exact = value.tag
        if exact is not None:
            return lambda node, context: node.string(exact)
        path = value.path

        def first_target(node: Node, context: Context) -> str | None:
            for target, tag in path.targets(node):
                return target.string(tag)
            return None

        return first_target
    if isinstance(value, NewValue):
        where = f"{value.position.line}:{value.position.column}"
        return lambda node, context: derived_uid(context.digest, where, context.original_uid)
    if isinstance(value, Fetch):
        url, fetcher, line = compile_value(value.url), value.fetcher, value.position.line
        return lambda node, context: fetcher.fetch((url(node, context) or "").strip(), line)
    return _compile_call(value)


def _compile_call(value: Call) -> Getter:
    function = VALUE_FUNCTIONS[value.name].call
    line = value.position.line
    if all(isinstance(arg, Literal) for arg in value.args):
        # the functions are pure: literal arguments give one value, worked out here once (an
        # argument the function refuses fails each file, as it would without this)
        try:
            folded = function(*(arg.text for arg in value.args if isinstance(arg, Literal)))
        except FunctionError:
            pass
        else:
            return lambda node, context: folded
    args = tuple(compile_value(arg) for arg in value.args)

    def call(node: Node, context: Context) -> str | None:
        try:
            return function(*[arg(node, context) for arg in args])
        except FunctionError as exc:
            raise AnonError(f"line {line}: {exc}") from exc

    if len(args) == 1:  # most calls (hashUID, uppercase...): no argument list built
        (only,) = args

        def call_one(node: Node, context: Context) -> str | None:
            try:
                return function(only(node, context))
            except FunctionError as exc:
                raise AnonError(f"line {line}: {exc}") from exc

        return call_one
    return call


def _compile_condition(condition: Condition) -> Callable[[Node, Context], bool]:
    left = compile_value(condition.left)
    right = compile_value(condition.right)
    op = condition.op
    if op in ("=", "!="):
        equal = op == "="
        return lambda node, context: ((left(node, context) or "") == (right(node, context) or "")) == equal
    matches = op == "~"
    regex = condition.regex
    if regex is not None:
        return lambda node, context: (regex.fullmatch(left(node, context) or "") is not None) == matches

    def holds(node: Node, context: Context) -> bool:
        text = left(node, context) or ""
        try:
            pattern = re.compile(right(node, context) or "")
        except re.error as exc:
            raise AnonError(f"invalid regular expression in a condition: {exc}") from exc
        return (pattern.fullmatch(text) is not None) == matches

    return holds


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


def compile_statement(statement: Statement) -> Action:
    """``statement`` as a function applied to the dataset with the file's context."""
    if isinstance(statement, AssignTag):
        return _compile_assign(statement)
    if isinstance(statement, AssignVariable):
        name, value = statement.name, compile_value(statement.value)

        def assign_variable(node: Node, context: Context) -> None:
            context.variables[name] = value(node, context) or ""

        return assign_variable
    if isinstance(statement, Delete):
        return _compile_delete(statement)
    if isinstance(statement, Conditional):
        holds = _compile_condition(statement.condition)
        then = compile_statement(statement.then)
        if statement.otherwise is None:

            def when(node: Node, context: Context) -> None:
                if holds(node, context):
                    then(node, context)

            return when
        otherwise = compile_statement(statement.otherwise)

        def either(node: Node, context: Context) -> None:
            (then if holds(node, context) else otherwise)(node, context)

        return either
    if isinstance(statement, RemoveAllPrivate):
        return lambda node, context: remove_private(node, ())
    if isinstance(statement, RetainPrivate):
        patterns = statement.patterns
        return lambda node, context: remove_private(node, patterns)
    if isinstance(statement, AlterPixels):
        edit = statement.edit
        return lambda node, context: context.pixel_edits.append(edit)
    if isinstance(statement, MapReferencedUids):
        prefix = compile_value(statement.prefix)
        paths, line = statement.paths, statement.position.line
        return lambda node, context: map_referenced_uids(prefix, paths, line, node, context)
    value = compile_value(statement.value)  # echo: evaluated for its errors; never printed

    def echo(node: Node, context: Context) -> None:
        value(node, context)

    return echo


def _compile_assign(statement: AssignTag) -> Action:
    value = compile_value(statement.value)
    exact = statement.tag
    if exact is not None:
        if exact not in IDENTIFYING_TAGS:  # never recorded in a mapping: put directly

            def put(node: Node, context: Context) -> None:
                node.put(exact, value(node, context) or "")

            return put

        def put_recorded(node: Node, context: Context) -> None:
            text = value(node, context) or ""
            if context.mapping is None:
                node.put(exact, text)
            else:
                assign(node, exact, text, context)

        return put_recorded
    path = statement.path

    def put_each(node: Node, context: Context) -> None:
        text = value(node, context) or ""
        for target, tag in list(path.targets(node, create=True)):
            assign(target, tag, text, context)

    return put_each


def _compile_delete(statement: Delete) -> Action:
    exact = statement.tag
    if exact is not None:

        def delete(node: Node, context: Context) -> None:
            node.delete(exact)

        return delete
    path = statement.path
    if path.last.index is not None:

        def delete_items(node: Node, context: Context) -> None:
            for parent, tag, index in reversed(list(path.items_named(node))):
                element = parent.get(tag)
                assert element is not None
                del parent.items(element)[index]
                element.changed = True

        return delete_items

    def delete_each(node: Node, context: Context) -> None:
        for target, tag in list(path.targets(node)):
            target.delete(tag)

    return delete_each


def _uses_new_uid(value: Value) -> bool:
    if isinstance(value, NewValue):
        return True
    if isinstance(value, Call):
        return any(_uses_new_uid(arg) for arg in value.args)
    if isinstance(value, Fetch):
        return _uses_new_uid(value.url)
    return False


def _statement_values(statement: Statement) -> list[Value]:
    if isinstance(statement, (AssignTag, AssignVariable, Echo)):
        return [statement.value]
    if isinstance(statement, MapReferencedUids):
        return [statement.prefix]
    if isinstance(statement, Conditional):
        found = [statement.condition.left, statement.condition.right, *_statement_values(statement.then)]
        return found + (_statement_values(statement.otherwise) if statement.otherwise is not None else [])
    return []


def compile_program(statements: tuple[Statement, ...]) -> Action:
    """The statements as one function: each applied in turn to the dataset with the file's context.

    ``new UID`` derives from the instance's original SOP Instance UID, read before the first
    statement (only when the program has one).
    """
    actions = tuple(compile_statement(statement) for statement in statements)
    needs_original_uid = any(_uses_new_uid(v) for statement in statements for v in _statement_values(statement))

    def run(node: Node, context: Context) -> None:
        if needs_original_uid:
            context.original_uid = node.string(SOP_INSTANCE_UID) or ""
        for action in actions:
            action(node, context)

    return run


def map_referenced_uids(prefix_value: Getter, paths: tuple[Path, ...], line: int, node: Node, context: Context) -> None:
    """Each attribute a path names, at whatever depth, gets its UID mapped under the prefix; an
    attribute two paths name is mapped once (dicom-edit6 visits each element once, first matching
    path). Each value of a multi-valued attribute is mapped; an empty one stays empty."""
    prefix = (prefix_value(node, context) or "").strip()
    problem = check_uid_prefix(prefix)
    if problem is not None:
        raise AnonError(f"line {line}: mapReferencedUIDs: {problem}")
    done: set[tuple[int, int]] = set()
    for path in paths:
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
