"""tree/layout.path_collisions: a repository whose directory would sit on another's file."""

from __future__ import annotations

from registrish_lock.tree.layout import path_collisions


def test_no_collision_among_ordinary_names() -> None:
    assert path_collisions({"a": ["1", "2"], "b/c": ["1"], "b": ["c"]}) == []


def test_each_kind_of_file_a_name_can_spell() -> None:
    got = path_collisions(
        {
            "x": ["v1", "tags"],
            "x/manifests/v1": ["a"],
            "x/manifests": ["a"],
            "x/tags/list": ["a"],
            "index": ["a"],
        }
    )
    assert got == [
        ("index", "repository 'index' needs the directory v2/index/, the file of the /v2/ ping"),
        (
            "x/manifests",
            "repository 'x/manifests' needs the directory v2/x/manifests/tags/, "
            "the file of tag 'tags' of 'x'",
        ),
        (
            "x/manifests/v1",
            "repository 'x/manifests/v1' needs the directory v2/x/manifests/v1/, "
            "the file of tag 'v1' of 'x'",
        ),
        (
            "x/tags/list",
            "repository 'x/tags/list' needs the directory v2/x/tags/list/, "
            "the file of the tag list of 'x'",
        ),
    ]
