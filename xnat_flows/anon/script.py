"""DicomEdit 6 scripts: parse with the lark grammar ``dicomedit6.lark``, validate, compile.

Every error a script can have before it meets a file is found here and raised as
:class:`ScriptError` naming the line and column: syntax, a missing or wrong ``version`` line,
unknown functions, wrong argument counts, malformed tags, invalid literal regexes, bad
``alterPixels`` parameters. So a broken script stops an upload before anything is sent.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import lark
from lark import Token, Tree

from xnat_flows.anon.analysis import study_uid_follows_original
from xnat_flows.anon.engine import Anonymizer
from xnat_flows.anon.errors import ScriptError
from xnat_flows.anon.functions import STATEMENT_FUNCTIONS, URL_FUNCTION, VALUE_FUNCTIONS, check_uid_prefix
from xnat_flows.anon.paths import Levels, Path, TagPattern, TagStep
from xnat_flows.anon.rawds import Node, PixelEdit
from xnat_flows.anon.runtime import (
    AlterPixels,
    AssignTag,
    AssignVariable,
    Call,
    Condition,
    Conditional,
    Context,
    Delete,
    Echo,
    Fetch,
    Literal,
    MapReferencedUids,
    NewValue,
    Position,
    RemoveAllPrivate,
    RetainPrivate,
    Statement,
    TagValue,
    Value,
    Variable,
    compile_program,
)
from xnat_flows.anon.urls import UrlAccess, UrlFetcher

# Bumped whenever a change to the engine changes what a script produces: part of every digest,
# so a resume journal never mistakes bytes of an older engine for this one's.
ENGINE_VERSION = "3"  # 3: an empty assignment creates an absent attribute
SUPPORTED_VERSIONS = re.compile(r"6(\.\d+)?")


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = resources.files("xnat_flows.anon").joinpath("dicomedit6.lark").read_text(encoding="utf-8")
    # "path" too: mapReferencedUIDs names its tag paths in strings
    return lark.Lark(
        grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False, start=["start", "path"]
    )


_TOKEN_NAMES = {
    "_NL": "end of line",
    "$END": "end of script",
    "TAG": "a tag (gggg,eeee)",
    "STRING": 'a "string"',
    "NAME": "a name",
    "NUMBER": "a number",
    "OP": "a comparison (=, !=, ~, !~)",
    "__ANON_0": "':='",
    "PLUS": "'+'",
    "STAR": "'*'",
    "MINUS": "'-'",
    "RSQB": "']'",
    "LSQB": "'['",
    "COMMA": "','",
    "SLASH": "'/'",
    "QMARK": "'?'",
    "COLON": "':'",
    "NEW": "new",
    "ECHO": "echo",
    "REMOVEALLPRIVATETAGS": "removeAllPrivateTags",
}


def _describe_expected(expected: set[str]) -> str:
    names = sorted({_TOKEN_NAMES.get(name, name.lower()) for name in expected})
    return ", ".join(names[:8])


def _syntax_error(exc: lark.exceptions.UnexpectedInput, source: str) -> ScriptError:
    line, column = exc.line, exc.column
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        message = f"unexpected character {exc.char!r}"
        if exc.char == "(":
            message = "malformed tag: a tag is (gggg,eeee) with four hex digits (or X) on each side"
    elif isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        shown = "end of line" if token.type == "_NL" else "end of script" if token.type == "$END" else repr(str(token))
        message = f"unexpected {shown}; expected {_describe_expected(set(exc.expected))}"
    else:
        message = str(exc).splitlines()[0]
    return ScriptError(message, line=max(line, 1), column=max(column, 1), source=source)


def _position(item: Tree | Token) -> Position:
    if isinstance(item, Token):
        return Position(item.line or 1, item.column or 1)
    return Position(item.meta.line, item.meta.column)


def _unquote(token: Token) -> str:
    body = str(token)[1:-1]
    # \" and \\ are escapes; any other backslash stays (regexes: "\d" and "\\d" both mean \d).
    return re.sub(r"\\([\"\\])", r"\1", body)


class _Compiler:
    """Turns the parse tree into the interpreter's statements, validating as it goes."""

    def __init__(self, source: str, url_access: UrlAccess | None = None) -> None:
        self.source = source
        self.url_access = url_access
        self.fetcher = UrlFetcher(url_access) if url_access is not None else None
        self.version: str | None = None
        self.reads: set[str] = set()
        self.assigns: set[str] = set()
        self.highest_tag = 0  # the highest top-level tag a path names
        self.whole_header = False  # a statement may touch any attribute (*, +, private tag removal, pixels)

    def error(self, where: Tree | Token, message: str) -> ScriptError:
        position = _position(where)
        return ScriptError(message, line=position.line, column=position.column, source=self.source)

    # statements ---------------------------------------------------------------------------------
    def statements(self, tree: Tree) -> tuple[Statement, ...]:
        compiled: list[Statement] = []
        for child in tree.children:
            if not isinstance(child, Tree):
                continue
            if child.data == "version":
                self.check_version(child)
                continue
            if child.data == "describe":
                continue  # XNAT's upload UI prompt for a variable: nothing to apply
            if self.version is None:
                raise self.error(
                    child,
                    'the script has no version line before its first statement: DicomEdit 6 scripts start with version "6.1"',
                )
            compiled.append(self.statement(child))
        if self.version is None:
            raise ScriptError(
                'the script has no version line: DicomEdit 6 scripts start with version "6.1" '
                "(DicomEdit 4 scripts are not supported)",
                line=1,
                column=1,
                source=self.source,
            )
        return tuple(compiled)

    def check_version(self, tree: Tree) -> None:
        token = tree.children[0]
        assert isinstance(token, Token)
        version = _unquote(token)
        if not SUPPORTED_VERSIONS.fullmatch(version):
            raise self.error(
                token, f'unsupported DicomEdit version "{version}": this engine runs DicomEdit 6.x scripts'
            )
        if self.version is not None:
            raise self.error(tree, "a second version line")
        self.version = version

    def statement(self, tree: Tree) -> Statement:
        kind = tree.data
        children = tree.children
        if kind == "assign_tag":
            path = self.path(children[0])
            if isinstance(path.steps[-1], Levels) or path.last.index is not None:
                raise self.error(tree, "an assignment's target must end in a tag, not an item or a wildcard level")
            return AssignTag(path, self.value(children[1]), _position(tree))
        if kind == "assign_var":
            name = str(children[0])
            value = self.value(children[1])
            self.assigns.add(name)
            return AssignVariable(name, value)
        if kind == "delete":
            path = self.path(children[0])
            if isinstance(path.steps[-1], Levels):
                raise self.error(tree, "a deletion's target must end in a tag or an item")
            return Delete(path)
        if kind == "echo":
            return Echo(self.value(children[0]))
        if kind == "remove_private":
            self.whole_header = True
            return RemoveAllPrivate()
        if kind == "call":
            return self.statement_call(children[0])
        if kind == "conditional":
            condition = self.condition(children[0])
            then = self.statement(children[1])
            otherwise = self.statement(children[2]) if len(children) > 2 else None
            return Conditional(condition, then, otherwise)
        raise self.error(tree, f"unexpected statement {kind}")

    def statement_call(self, tree: Tree) -> Statement:
        name_token = tree.children[0]
        assert isinstance(name_token, Token)
        args = [child for child in tree.children[1:] if child is not None]
        key = str(name_token).lower()
        if key not in STATEMENT_FUNCTIONS:
            if key in VALUE_FUNCTIONS or key == URL_FUNCTION:
                raise self.error(
                    name_token, f"{name_token} returns a value: assign it, e.g. (gggg,eeee) := {name_token}[...]"
                )
            raise self.error(name_token, f"unknown function {name_token}")
        name, minimum, maximum = STATEMENT_FUNCTIONS[key]
        if not minimum <= len(args) <= maximum:
            raise self.error(name_token, f"{name} takes {_arity(minimum, maximum)}, got {len(args)}")
        if key == "mapreferenceduids":
            return self.map_referenced_uids(name_token, args)
        self.whole_header = True
        if key == "removeallprivatetags":
            return RemoveAllPrivate()
        if key == "retainprivatetags":
            patterns = []
            for arg in args:
                value = self.value(arg)
                if not isinstance(value, TagValue) or len(value.path.steps) != 1:
                    raise self.error(arg, "retainPrivateTags takes tags, e.g. (0019,{SIEMENS MR HEADER}0F)")
                patterns.append(value.path.last.pattern)
            return RetainPrivate(tuple(patterns))
        return AlterPixels(self.alter_pixels(name_token, [self.value(arg) for arg in args]))

    def map_referenced_uids(self, where: Token, args: list[Any]) -> MapReferencedUids:
        """mapReferencedUIDs[prefix, "(3006,0010)/(3006,0012)/(0008,1155)", ...]: the prefix any
        value; the paths literal strings in DicomEdit's tag path syntax, parsed here."""
        prefix = self.value(args[0])
        if isinstance(prefix, Literal) and (problem := check_uid_prefix(prefix.text.strip())):
            raise self.error(args[0], f"mapReferencedUIDs: {problem}")
        paths = []
        for arg in args[1:]:
            value = self.value(arg)
            if not isinstance(value, Literal):
                raise self.error(arg, 'mapReferencedUIDs takes its tag paths as strings, e.g. "(0008,1155)"')
            try:
                tree = _parser().parse(value.text, start="path")
            except lark.exceptions.UnexpectedInput:
                raise self.error(arg, f"mapReferencedUIDs: {value.text!r} is not a tag path") from None
            try:
                paths.append(self.path(tree))
            except ScriptError as exc:
                raise self.error(arg, f"mapReferencedUIDs: {exc.message}") from None
        return MapReferencedUids(prefix, tuple(paths), _position(where))

    def alter_pixels(self, where: Token, args: list[Value]) -> PixelEdit:
        """alterPixels["rectangle", "l=100, t=100, r=200, b=200", "solid", "v=100"]: literal
        arguments, checked here."""
        if not all(isinstance(arg, Literal) for arg in args):
            raise self.error(where, "alterPixels takes four literal strings")
        shape, shape_params, fill, fill_params = (arg.text.strip() for arg in args if isinstance(arg, Literal))
        if shape.lower() != "rectangle":
            raise self.error(where, f'alterPixels: unsupported shape "{shape}" (rectangle)')
        if fill.lower() != "solid":
            raise self.error(where, f'alterPixels: unsupported fill "{fill}" (solid)')
        bounds = _key_values(shape_params)
        fill_values = _key_values(fill_params)
        if bounds is None or not {"l", "t", "r", "b"} <= bounds.keys():
            raise self.error(where, 'alterPixels: the rectangle is "l=LEFT, t=TOP, r=RIGHT, b=BOTTOM" (pixels)')
        if fill_values is None or "v" not in fill_values:
            raise self.error(where, 'alterPixels: the fill is "v=VALUE"')
        return PixelEdit(bounds["l"], bounds["t"], bounds["r"], bounds["b"], fill_values["v"])

    def condition(self, tree: Tree) -> Condition:
        left, op_token, right = tree.children
        op = str(op_token)
        right_value = self.value(right)
        regex = None
        if op in ("~", "!~") and isinstance(right_value, Literal):
            try:
                regex = re.compile(right_value.text)
            except re.error as exc:
                raise self.error(right, f"invalid regular expression {right_value.text!r}: {exc}") from exc
        return Condition(self.value(left), op, right_value, regex)

    # values -------------------------------------------------------------------------------------
    def value(self, item: Tree | Token) -> Value:
        if isinstance(item, Token):
            raise self.error(item, f"unexpected {item}")
        kind = item.data
        children = item.children
        if kind == "string":
            return Literal(_unquote(children[0]))  # type: ignore[arg-type]
        if kind == "number":
            return Literal(str(children[0]))
        if kind == "tag_value":
            return TagValue(self.path(children[0]))
        if kind == "variable":
            name = str(children[0])
            if name.lower() in STATEMENT_FUNCTIONS:
                raise self.error(children[0], f"{name} is a statement of its own, not a value")
            if name.lower() in VALUE_FUNCTIONS or name.lower() == URL_FUNCTION:
                raise self.error(children[0], f"{name} is a function: call it as {name}[...]")
            if name not in self.assigns:
                self.reads.add(name)
            return Variable(name)
        if kind == "new_value":
            kind_token = children[0]
            if str(kind_token).upper() != "UID":
                raise self.error(kind_token, f"new {kind_token}: only new UID is defined")
            return NewValue("UID", _position(item))
        if kind == "function":
            return self.value_call(item)
        raise self.error(item, f"unexpected value {kind}")

    def value_call(self, tree: Tree) -> Call | Fetch:
        name_token = tree.children[0]
        assert isinstance(name_token, Token)
        key = str(name_token).lower()
        if key == URL_FUNCTION:
            return self.get_url(name_token, tree)
        function = VALUE_FUNCTIONS.get(key)
        if function is None:
            if key in STATEMENT_FUNCTIONS:
                raise self.error(name_token, f"{name_token} is a statement of its own, not a value")
            raise self.error(name_token, f"unknown function {name_token}")
        args = tuple(self.value(child) for child in tree.children[1:] if child is not None)
        if not function.minimum <= len(args) <= function.maximum:
            raise self.error(
                name_token, f"{function.name} takes {_arity(function.minimum, function.maximum)}, got {len(args)}"
            )
        if function.regex_argument is not None and isinstance(args[function.regex_argument], Literal):
            literal = args[function.regex_argument]
            assert isinstance(literal, Literal)
            try:
                re.compile(literal.text)
            except re.error as exc:
                raise self.error(
                    name_token, f"{function.name}: invalid regular expression {literal.text!r}: {exc}"
                ) from exc
        return Call(key, args, _position(name_token))

    def get_url(self, name_token: Token, tree: Tree) -> Fetch:
        """getURL[url]: a request to a web service, carrying what the URL holds; only to URLs the
        user allowed (``UrlAccess``), since a script could otherwise send identifiers anywhere."""
        if self.fetcher is None or self.url_access is None:
            raise self.error(
                name_token,
                "getURL asks a web service for a value while de-identifying, sending what its URL holds (often a "
                "patient's ID): refused unless you name the URLs it may reach (CLI --anon-allow-url PREFIX; "
                "library compile_script(url_access=UrlAccess((PREFIX,))))",
            )
        args = [child for child in tree.children[1:] if child is not None]
        if len(args) != 1:
            raise self.error(name_token, f"getURL takes 1 argument, got {len(args)}")
        url = self.value(args[0])
        if isinstance(url, Literal) and not self.url_access.allows(url.text.strip()):
            raise self.error(
                args[0],
                f"getURL: {url.text!r} is not under the allowed prefixes ({', '.join(self.url_access.prefixes)})",
            )
        return Fetch(url, _position(name_token), self.fetcher)

    def path(self, tree: Any) -> Path:
        steps: list[TagStep | Levels] = []
        for segment in tree.children:
            if segment.data == "any_levels":
                steps.append(Levels(0))
            elif segment.data == "some_levels":
                steps.append(Levels(1))
            else:
                token = segment.children[0]
                try:
                    pattern = TagPattern.parse(str(token))
                except ValueError as exc:
                    raise self.error(token, str(exc)) from exc
                if pattern.creator is not None and not (pattern.value >> 16) & 1:
                    raise self.error(token, f"{token}: a private creator names a block in an odd (private) group")
                index: int | None = None
                if len(segment.children) > 1:
                    index_token = segment.children[1].children[0]
                    index = None if str(index_token) == "%" else int(str(index_token))
                steps.append(TagStep(pattern, index))
        if isinstance(steps[-1], Levels):
            raise self.error(tree, "a path cannot end in * or +")
        first = steps[0]
        if isinstance(first, Levels):
            self.whole_header = True
        else:
            pattern = first.pattern
            highest = pattern.value | (~pattern.mask & 0xFFFFFFFF) | pattern.odd
            if pattern.creator is not None:
                highest |= 0xFF00  # whichever block the creator reserved
            self.highest_tag = max(self.highest_tag, highest)
        if len(steps) == 1 and isinstance(first, TagStep) and first.pattern.exact is not None:
            if first.pattern.exact >> 16 == 0x0002:
                raise self.error(
                    tree, "File Meta Information (0002,xxxx) is not edited by scripts (it follows the dataset)"
                )
            if first.pattern.exact == 0x7FE00010:
                raise self.error(tree, "Pixel Data is not assigned or deleted by scripts; use alterPixels")
        text = "/".join(
            ("*" if s.minimum == 0 else "+")
            if isinstance(s, Levels)
            else s.pattern.text + ("" if s.index is None else f"[{s.index}]")
            for s in steps
        )
        return Path(text, tuple(steps))


def _arity(minimum: int, maximum: int) -> str:
    if minimum == maximum:
        return f"{minimum} argument{'s' if minimum != 1 else ''}"
    return f"{minimum} to {maximum} arguments"


def _key_values(text: str) -> dict[str, int] | None:
    pairs: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            return None
        try:
            pairs[key.strip().lower()] = int(value.strip())
        except ValueError:
            return None
    return pairs


class ScriptProgram:
    """A compiled script: its statements, run on the dataset of each file. ``up_to``: the highest
    top-level tag it reads or writes (``None``: it may touch any), so the engine indexes no more
    of each header than that."""

    def __init__(self, statements: tuple[Statement, ...], digest: str, up_to: int | None) -> None:
        self.statements = statements
        self.digest = digest
        self.up_to = up_to
        self.study_uid_follows_original = study_uid_follows_original(statements)
        self._run = compile_program(statements)  # closures built once, called per file

    def run(self, dataset: Node, context: Context) -> None:
        context.digest = self.digest
        self._run(dataset, context)


def compile_script(text: str, *, source: str = "<script>", url_access: UrlAccess | None = None) -> Anonymizer:
    """Parse and validate a DicomEdit 6 script; raise :class:`ScriptError` (line, column) if it
    cannot run. Nothing is applied here. ``url_access``: the URLs ``getURL`` may fetch (without it,
    a script calling ``getURL`` is refused; ``anon.urls``)."""
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark from a Windows editor
    try:
        tree = _parser().parse(text, start="start")
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(exc, source) from None
    compiler = _Compiler(source, url_access)
    statements = compiler.statements(tree)
    digest = hashlib.sha256(f"dicomedit6\0engine {ENGINE_VERSION}\0{text}".encode()).hexdigest()
    return Anonymizer(
        ScriptProgram(statements, digest, None if compiler.whole_header else compiler.highest_tag),
        digest=digest,
        required_variables=frozenset(compiler.reads),
        description=source,
    )
