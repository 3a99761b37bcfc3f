"""A script that cannot run stops with ScriptError naming line and column, before any file."""

from __future__ import annotations

import pytest

from xnat_flows.anon import ScriptError, compile_script


@pytest.mark.parametrize(
    ("script", "line", "column", "words"),
    [
        ('version "6.1"\n(0010,0010) := \n', 2, 16, "unexpected end of line"),
        ('version "6.1"\n\n(0010,001) := "x"', 3, 1, "malformed tag"),
        ('version "6.1"\n(0010,0010) := foo[(0010,0010)]', 2, 16, "unknown function foo"),
        ('version "6.1"\n  bogus[]', 2, 3, "unknown function bogus"),
        ('version "6.1"\n(0010,0010) := lowercase["a", "b"]', 2, 16, "lowercase takes 1 argument, got 2"),
        ('version "6.1"\n(0010,0010) ~ "([a-z" ? -(0010,0010)', 2, 15, "invalid regular expression"),
        ('version "6.1"\n(0010,0010) := match[(0010,0010), "(", 1]', 2, 16, "invalid regular expression"),
        ('version "6.1"\n(0010,0010) = "x" ?', 2, 19, "unexpected end of script"),
        ('(0010,0010) := "x"', 1, 1, "no version line"),
        ("// only a comment", 1, 1, "no version line"),
        ('version "4.2"\n', 1, 9, "unsupported DicomEdit version"),
        ('version "6.1"\n(0010,0010) := getURL["http://x"]', 2, 16, "getURL"),
        ('version "6.1"\nalterPixels["circle", "x=1", "solid", "v=0"]', 2, 1, "unsupported shape"),
        ('version "6.1"\nalterPixels["rectangle", "l=1, t=2", "solid", "v=0"]', 2, 1, "l=LEFT"),
        ('version "6.1"\n(0010,0010) := removeAllPrivateTags', 2, 16, "statement of its own"),
        ('version "6.1"\n(0010,0010) := retainPrivateTags[(0019,0010)]', 2, 16, "statement of its own"),
        ('version "6.1"\nhashUID[(0020,000D)]', 2, 1, "returns a value"),
        ('version "6.1"\n(0010,{ACME}10) := "x"', 2, 1, "odd (private) group"),
        ('version "6.1"\n(0010,0010) := new THING', 2, 20, "only new UID"),
        ('version "6.1"\n(0010,0010) := "unterminated\n', 2, 16, "unexpected character"),
    ],
)
def test_script_errors_name_line_and_column(script: str, line: int, column: int, words: str) -> None:
    with pytest.raises(ScriptError) as caught:
        compile_script(script, source="site.das")
    error = caught.value
    assert words in error.message
    assert (error.line, error.column) == (line, column)
    assert str(error).startswith(f"site.das:{line}:{column}: ")


def test_script_error_is_a_value_error_for_callers_that_catch_those() -> None:
    with pytest.raises(ValueError, match="no version line"):
        compile_script("")


def test_digest_is_stable_and_follows_the_text() -> None:
    text = 'version "6.1"\n(0010,0010) := subject\n'
    assert compile_script(text).digest == compile_script(text, source="other").digest
    assert compile_script(text).digest != compile_script(text + "-(0010,0030)\n").digest


@pytest.mark.parametrize("statement", ['(0002,0013) := "x"', "-(0002,0010)", "-(7FE0,0010)", '(7FE0,0010) := "x"'])
def test_file_meta_and_pixel_data_are_not_script_targets(statement: str) -> None:
    with pytest.raises(ScriptError) as caught:
        compile_script(f'version "6.1"\n{statement}')
    assert caught.value.line == 2
