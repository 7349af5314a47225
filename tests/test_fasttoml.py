"""lock/fasttoml.py: the config's arrays of strings read by a regular expression, the rest
by `tomllib`: the same document (or the same error) as `tomllib` for any text."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.spies import record_calls

from registrish_lock.errors import ConfigError
from registrish_lock.lock import fasttoml
from registrish_lock.lock.config import load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def same_as_tomllib(text: str) -> dict[str, Any] | str:
    """fasttoml's document for `text`, asserted equal to tomllib's (or the same error)."""
    try:
        expected: dict[str, Any] | str = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        expected = f"error: {exc}"
    try:
        got: dict[str, Any] | str = fasttoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        got = f"error: {exc}"
    assert got == expected
    assert type(got) is type(expected)
    return got


def test_the_common_form_skips_tomllib_for_its_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    tags = [f"1.{n}.0" for n in range(500)]
    text = '[registry]\nroot = "public"\nhosts = ["nginx", "caddy"]\n\n' + "".join(
        f'[[image]]\nsource = "oci:layouts/r{i}"\nname = "huge/r{i}"\ntags = {tags!r}\n\n'.replace(
            "'", '"'
        )
        for i in range(3)
    )
    seen = record_calls(monkeypatch, tomllib, "loads")
    doc = same_as_tomllib(text)
    assert isinstance(doc, dict) and doc["image"][2]["tags"] == tags
    assert doc["registry"]["hosts"] == ["nginx", "caddy"]
    # tomllib saw the text whole (same_as_tomllib), then fasttoml's: arrays as placeholders
    assert len(seen) == 2 and "1.499.0" in seen[0] and "1.499.0" not in seen[1]


@pytest.mark.parametrize(
    "text",
    [
        # arrays of the form, in every place a line can be
        'tags = ["a", "b",]\n',
        'tags=["a","b"]   \n',
        "  tags = [ ]\nx = 1\n",
        'tags = ["a"]',  # no newline at the end
        '[t]\ntags = ["a"]\n[[u]]\ntags = ["b"]\n[[u]]\ntags = ["c"]\n',
        # lines of that form that are no key's value
        'x = """\ntags = ["a"]\n"""\n',
        "x = '''\ntags = [\"a\"]\n'''\n",
        'x = """a \\\ntags = ["a"]\n"""\n',
        '# tags = ["a"]\ny = 2\n',
        'x = [\ntags = ["a"]\n]\n',
        # errors: the same as tomllib's
        'tags = ["a"]\ntags = ["b"]\n',
        'tags = ["a"]\n[tags]\n',
        'tags = ["a"]\n[[tags]]\n',
        'tags = ["a"]\ntags.x = 1\n',
        'tags = ["a"] # a comment\n',
        'tags = ["a"] x\n',
        'tags = ["a\\tb", "\\u0041"]\n',
        'tags = ["a"]\r\nb = ["c"]\r\n',
        'a.b = ["x"]\n',
        '"quoted" = ["x"]\n',
        'tags = ["a", 1]\n',
        'tags = ["a" "b"]\n',
        'tags = ["""a"""]\n',
    ],
)
def test_edge_cases_mean_what_tomllib_says(text: str) -> None:
    same_as_tomllib(text)


def test_a_string_that_spells_a_placeholder_is_only_a_string(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(secrets, "token_hex", lambda _n: "feed")
    # the token spelled by escapes: the swapped text parses, but the check refuses it
    text = 'a = ["x"]\nb = "\\u0066eed-0"\n'
    assert same_as_tomllib(text) == {"a": ["x"], "b": "feed-0"}
    assert same_as_tomllib('a = ["x"]\nb = ["\\u0066eed-0"]\n') == {"a": ["x"], "b": ["feed-0"]}
    assert same_as_tomllib('feed = "x"\n') == {"feed": "x"}  # the token in the text


_PLAIN = st.text(st.sampled_from("ab1.-_ \"\\#=[]'\n\t,"), max_size=6)
_ITEMS = st.lists(st.text(st.sampled_from("ab1.-_ "), max_size=4), max_size=4)


@st.composite
def _line(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(["tags", "x", "a-b", "t", "tags.y", '"q"']))
    items = draw(_ITEMS)
    array = "[" + draw(st.sampled_from([", ", ",", " ,  "])).join(f'"{i}"' for i in items)
    array += draw(st.sampled_from(["]", ",]", " ]", "] ", "] # c", "]x"]))
    return draw(
        st.sampled_from(
            [
                f"{key} = {array}",
                f"{key}={array}",
                f"  {key} = {array}",
                "[t]",
                "[[u]]",
                "[tags]",
                "[[tags]]",
                '"""',
                "'''",
                f"s = {draw(_PLAIN)!r}".replace("'", '"'),
                f"# {draw(_PLAIN)}",
                draw(_PLAIN),
                "",
            ]
        )
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line(), max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_any_text_means_what_tomllib_says(lines: list[str], newline: str) -> None:
    same_as_tomllib(newline.join(lines))


def test_load_config_reads_a_large_config_the_same(tmp_path: Path) -> None:
    tags = [f"1.{n // 100}.{n % 100}" for n in range(2000)]
    text = "".join(
        f'[[image]]\nsource = "oci:layouts/r{i}"\nname = "huge/r{i}"\n'
        + "tags = ["
        + ", ".join(f'"{t}"' for t in tags)
        + "]\n\n"
        for i in range(3)
    )
    path = tmp_path / "registrish.toml"
    path.write_text(text)
    config = load_config(path)
    assert [i.tags for i in config.images] == [tuple(sorted(tags))] * 3
    (tmp_path / "layouts").mkdir()
    bad = text.replace('"1.3.7"', '"-bad"', 1)
    path.write_text(bad)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "image[0].tags[307]" and "invalid tag '-bad'" in str(caught.value)
