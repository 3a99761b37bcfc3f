"""What a compiled script provably does, decided once from its statements, before any file is read.

``study_uid_follows_original``: the rewritten StudyInstanceUID (0020,000D) is a function of the
original StudyInstanceUID and the variables XNAT gives (project, subject, session) alone. Then the
files of one original study keep one study after the script, and that study is known from the
first file: an upload can check its destination with it and rewrite the other files as they are
sent (``transfer.deidentify.StreamedDeidentification``) instead of in a dry run before the first
request.

The analysis is conservative: ``False`` whenever it cannot show the property (the upload then
rewrites every file before sending anything, which is always correct). It holds when every
statement that may write (0020,000D) is an assignment to that exact tag whose value reads only
literals, variables of the same kind and (0020,000D) itself, under conditions of the same kind;
no deletion, wildcard or ``*`` path, ``new UID`` or ``getURL`` reaches it. ``removeAllPrivateTags``
and ``retainPrivateTags`` never touch a public attribute.
"""

from __future__ import annotations

from collections.abc import Iterable

from xnat_flows.anon.paths import Path
from xnat_flows.anon.runtime import (
    AlterPixels,
    AssignTag,
    AssignVariable,
    Call,
    Conditional,
    Delete,
    Echo,
    Literal,
    MapReferencedUids,
    RemoveAllPrivate,
    RetainPrivate,
    Statement,
    TagValue,
    Value,
    Variable,
)

STUDY_INSTANCE_UID = 0x0020000D


def study_uid_follows_original(statements: Iterable[Statement]) -> bool:
    """True when the script's rewritten StudyInstanceUID depends on the original one and the given variables alone.

    Args:
        statements: The compiled script's statements, in order.

    Returns:
        True when shown; False when not (including when the analysis cannot tell).
    """
    per_file: set[str] = set()  # user variables whose value may differ from file to file
    # in order, stopping at the first statement not shown: ``per_file`` follows the program
    return all(_follows(statement, per_file, constant_condition=True) for statement in statements)


def _follows(statement: Statement, per_file: set[str], *, constant_condition: bool) -> bool:
    """Whether ``statement`` keeps the property; updates ``per_file`` with the variables it makes per-file."""
    if isinstance(statement, AssignTag):
        if not _may_name_study(statement.path):
            return True
        return (
            constant_condition
            and statement.path.exact_tag == STUDY_INSTANCE_UID
            and _per_study(statement.value, per_file)
        )
    if isinstance(statement, AssignVariable):
        if constant_condition and _per_study(statement.value, per_file):
            per_file.discard(statement.name)
        else:
            per_file.add(statement.name)
        return True
    if isinstance(statement, Delete):
        return not _may_name_study(statement.path)
    if isinstance(statement, MapReferencedUids):
        # the UIDs it maps are a function of themselves and the prefix
        reaches = any(_may_name_study(path) for path in statement.paths)
        return not reaches or (constant_condition and _per_study(statement.prefix, per_file))
    if isinstance(statement, Conditional):
        condition = statement.condition
        constant = constant_condition and _per_study(condition.left, per_file) and _per_study(condition.right, per_file)
        then_vars, else_vars = set(per_file), set(per_file)
        if not _follows(statement.then, then_vars, constant_condition=constant):
            return False
        if statement.otherwise is not None and not _follows(
            statement.otherwise, else_vars, constant_condition=constant
        ):
            return False
        per_file |= then_vars | else_vars
        return True
    # any other statement this analysis does not know: not shown
    return isinstance(statement, (RemoveAllPrivate, RetainPrivate, AlterPixels, Echo))


def _may_name_study(path: Path) -> bool:
    """The path may name (0020,000D) somewhere (at the top level or, conservatively, in an item)."""
    pattern = path.last.pattern
    return pattern.creator is None and pattern.matches(STUDY_INSTANCE_UID)


def _per_study(value: Value, per_file: set[str]) -> bool:
    """``value`` is the same for every file of one original study under one set of given variables."""
    if isinstance(value, Literal):
        return True
    if isinstance(value, Variable):
        return value.name not in per_file
    if isinstance(value, TagValue):
        return value.tag == STUDY_INSTANCE_UID
    if isinstance(value, Call):  # the functions are pure (anon.functions)
        return all(_per_study(arg, per_file) for arg in value.args)
    # NewValue derives from each instance's UID; Fetch's web service may answer anything; anything
    # else this analysis does not know: not shown
    return False
