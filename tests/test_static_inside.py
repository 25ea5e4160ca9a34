"""The symlink check of static paths (front/static.py ``resolve``): one lstat a segment
in the common case, and still no way out of the root through a link at any depth."""

from __future__ import annotations

import os
from pathlib import Path

from gantry.config.front_model import Location
from gantry.front.static import resolve


def test_links_out_of_the_root_are_refused_at_any_depth(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret.php").write_text("secret")
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "ok.php").write_text("ok")
    os.symlink(outside, root / "a" / "out")  # a directory link in the middle
    os.symlink(outside / "deep" / "secret.php", root / "a" / "b" / "file.php")
    os.symlink(root / "a" / "b", root / "inner")  # stays inside: allowed
    location = Location("/", root=str(root))
    assert resolve(location, "/", "/a/b/ok.php") == f"{root}/a/b/ok.php"
    assert resolve(location, "/", "/a/out/deep/secret.php") is None
    assert resolve(location, "/", "/a/b/file.php") is None
    assert resolve(location, "/", "/inner/ok.php") == f"{root}/inner/ok.php"
    assert resolve(location, "/", "/a/missing/x.php") == f"{root}/a/missing/x.php"
    allowed = Location("/", root=str(root), follow_symlinks_outside_root=True)
    assert resolve(allowed, "/", "/a/out/deep/secret.php") is not None


def test_a_root_that_is_a_link_is_followed_as_it_is_now(tmp_path: Path) -> None:
    # a deploy swaps the root's link: each request resolves it anew
    for release in ("r1", "r2"):
        (tmp_path / release).mkdir()
        (tmp_path / release / f"{release}.php").write_text(release)
    current = tmp_path / "current"
    os.symlink(tmp_path / "r1", current)
    location = Location("/", root=str(current))
    assert resolve(location, "/", "/r1.php") == f"{current}/r1.php"
    os.unlink(current)
    os.symlink(tmp_path / "r2", current)
    assert resolve(location, "/", "/r2.php") == f"{current}/r2.php"
