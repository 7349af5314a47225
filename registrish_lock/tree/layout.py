"""Where everything lives in the static tree. Pure path arithmetic, no I/O.

```
<root>/v2/                                   the API ping ("index" file holds `{}`)
<root>/v2/_catalog
<root>/v2/<name>/tags/list
<root>/v2/<name>/tags/<tag>.~last            the tags after <tag> (`tags/list?last=<tag>`)
<root>/v2/<name>/manifests/<tag|digest>      the exact bytes, for hosts that map paths
<root>/v2/<name>/manifests/<ref>.~<kind>     a hardlinked typed twin: hosts pick the
                                             Content-Type from the suffix (`KINDS`)
<root>/v2/<name>/blobs/sha256:<hex>          hardlink into the content store
<root>/v2/<name>/referrers/sha256:<hex>      an OCI index of what refers to <hex>
<store>/blobs/sha256/<hex>                   the content store: one copy of each blob
<store>/tmp/                                 temp files (same filesystem, for rename)
<store>/lock                                 the exclusive lock file
<store>/synced.json                          the sync record (`record.py`): written last
```

The store lives outside the root (by default beside it: `<root>/../.registrish-<rootname>`),
because Netlify, Cloudflare Pages and GitHub Pages publish a whole directory: a store inside
it would be served and uploaded. It must share the root's filesystem (hardlinks, renames).

The twin's suffix starts with `~`, a character no tag or digest can contain, so a
twin can never collide with a real reference. Paths are built only from validated
names, tags and digests (`reference.validate_*`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..oci import mediatypes
from ..oci.reference import digest_hex, validate_digest, validate_name, validate_tag

#: Where older releases kept the store: inside the root (`storemove` moves it out).
LEGACY_STATE_DIR = ".registrish"
#: The default store's name beside the root: `.registrish-<rootname>`.
STORE_PREFIX = ".registrish-"
TWIN_SEPARATOR = ".~"
PING_FILE = "index"  # v2/ is a directory; its index file answers `GET /v2/`
#: `tags/<tag>.~last`: the tags after <tag>, what static hosts answer `tags/list?last=<tag>`
#: with. The fixed suffix keeps a tag's own "extension" (`v1.gz`) from picking a type.
LAST_PAGE_SUFFIX = ".~last"


def ref_component(ref: str) -> str:
    """A manifest reference (tag or digest) validated for use as a file name."""
    return validate_digest(ref) if ref.startswith("sha256:") else validate_tag(ref)


def twin_name(ref: str, media_type: str) -> str:
    return f"{ref_component(ref)}{TWIN_SEPARATOR}{mediatypes.KIND_OF[media_type]}"


def split_twin(filename: str) -> tuple[str, str] | None:
    """`latest.~oci-index` → (`latest`, OCI index type); None for a non-twin."""
    ref, sep, kind = filename.rpartition(TWIN_SEPARATOR)
    if not sep or kind not in mediatypes.TYPE_OF_KIND:
        return None
    return ref, mediatypes.TYPE_OF_KIND[kind]


def _in_repository(name: str, section: str, leaf: str) -> str:
    """`v2/<name>/<section>/<leaf>`: the one place a repository's name becomes a path (it
    is validated here, so no caller can put a path outside the tree)."""
    return f"v2/{validate_name(name)}/{section}/{leaf}"


@dataclass(frozen=True)
class Layout:
    """Paths of one tree. `rel_*` give `/`-separated paths relative to the root
    (what a URL path is, minus the leading `/`)."""

    root: Path
    #: The content store's directory; None = `default_store(root)`.
    store: Path | None = None

    # --- relative (URL) paths -------------------------------------------------
    @staticmethod
    def rel_ping() -> str:
        return f"v2/{PING_FILE}"

    @staticmethod
    def rel_catalog() -> str:
        return "v2/_catalog"

    @staticmethod
    def rel_tags_list(name: str) -> str:
        return _in_repository(name, "tags", "list")

    @staticmethod
    def rel_tags_last(name: str, tag: str) -> str:
        return _in_repository(name, "tags", validate_tag(tag) + LAST_PAGE_SUFFIX)

    @staticmethod
    def rel_manifest(name: str, ref: str) -> str:
        return _in_repository(name, "manifests", ref_component(ref))

    @staticmethod
    def rel_manifest_twin(name: str, ref: str, media_type: str) -> str:
        return _in_repository(name, "manifests", twin_name(ref, media_type))

    @staticmethod
    def rel_blob(name: str, digest: str) -> str:
        return _in_repository(name, "blobs", validate_digest(digest))

    @staticmethod
    def rel_referrers(name: str, digest: str) -> str:
        return _in_repository(name, "referrers", validate_digest(digest))

    # --- absolute paths -------------------------------------------------------
    def path(self, rel: str) -> Path:
        """Absolute path for a relative tree path (which must not escape the root)."""
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ValueError(f"unsafe tree path {rel!r}")
        return self.root.joinpath(*pure.parts)

    @property
    def v2(self) -> Path:
        return self.root / "v2"

    @property
    def state(self) -> Path:
        """The content store's directory (blobs, temp files, the lock)."""
        return self.store if self.store is not None else default_store(self.root)

    @property
    def tmp(self) -> Path:
        return self.state / "tmp"

    @property
    def lock_file(self) -> Path:
        return self.state / "lock"

    @property
    def sync_record(self) -> Path:
        return self.state / "synced.json"

    def store_blob(self, digest: str) -> Path:
        return self.state / "blobs" / "sha256" / digest_hex(digest)

    def repo_dir(self, name: str) -> Path:
        return self.v2.joinpath(*validate_name(name).split("/"))


def default_store(root: Path) -> Path:
    """`<root>/../.registrish-<rootname>`: outside every directory a host deploys whole,
    on the root's filesystem unless the root is a mount point. (A root named by `.` or a
    trailing `..` is made absolute first so it has a name.)"""
    if not root.name or root.name == "..":
        root = Path(os.path.abspath(root))
    return root.parent / f"{STORE_PREFIX}{root.name or 'root'}"


def parse_rel_path(rel: str) -> tuple[str, str, str] | None:
    """Split `v2/<name>/<section>/<ref>` into (name, section, ref), or None.

    `section` is `manifests`, `blobs`, `referrers` or `tags` (ref `list`). The name
    and ref are not validated here; callers validate what they use.
    """
    parts = rel.strip("/").split("/")
    if len(parts) < 4 or parts[0] != "v2":
        return None
    section, ref = parts[-2], parts[-1]
    if section not in ("manifests", "blobs", "referrers", "tags"):
        return None
    return "/".join(parts[1:-2]), section, ref


def path_collisions(tags_by_name: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """Where one repository's directory would sit on another's file: repository
    `x/manifests/v1` lies under tag `v1` of `x`, `x/tags/list` under `x`'s tag list,
    `x/manifests` needs `x/manifests/tags/` where `x`'s tag `tags` is a file, `index` is
    the `/v2/` ping. (name, problem) pairs; empty when there is none."""
    # Every file whose path a repository name could spell: the pings (names cannot start
    # with `_` like `_catalog`), `tags/list` and tag files (digests hold a colon, twins and
    # last pages a `~`: no name can spell those).
    needs = {name: _needed_dirs(name) for name in tags_by_name}
    wanted = {where for dirs in needs.values() for where in dirs}
    files = {PING_FILE: "the /v2/ ping", "index.html": "the plain host's /v2/ ping"}
    for name, tags in tags_by_name.items():
        files[f"{name}/tags/list"] = f"the tag list of {name!r}"
        for tag in tags:  # only the tags a directory needs (not a string per tag kept)
            if (path := f"{name}/manifests/{tag}") in wanted:
                files[path] = f"tag {tag!r} of {name!r}"
    problems: list[tuple[str, str]] = []
    for name in sorted(tags_by_name):
        for where in needs[name]:
            owner = files.get(where)
            if owner is not None:
                problem = (
                    f"repository {name!r} needs the directory v2/{where}/, the file of {owner}"
                )
                problems.append((name, problem))
                break
    return problems


#: The directories under a repository (`v2/<name>/<section>/`).
REPOSITORY_SECTIONS = ("manifests", "tags", "blobs", "referrers")


def _needed_dirs(name: str) -> list[str]:
    """The directories a repository needs: its own path, then its sections."""
    parts = name.split("/")
    needed = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return needed + [f"{name}/{section}" for section in REPOSITORY_SECTIONS]


def is_last_page(rel: str) -> bool:
    """`v2/<name>/tags/<tag>.~last` (a `last`-keyed tag-list page)."""
    parsed = parse_rel_path(rel)
    return parsed is not None and parsed[1] == "tags" and parsed[2].endswith(LAST_PAGE_SUFFIX)
