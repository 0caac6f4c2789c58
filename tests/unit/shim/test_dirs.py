"""make_dirs against a parent removed between making it and making the child: the race
between one task's bundle being made and another's delete removing their namespace's
directory once it looked empty (a StartContainer once failed with FileNotFoundError so)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from shim import dirs
from supervisor.runtime.bundle import Bundle


def test_a_parent_removed_in_between_is_made_again(tmp_path: Path, monkeypatch):
    real_mkdir = os.mkdir
    removed = []

    def mkdir(path, mode=0o777, **kw):
        if str(path).endswith("/child") and not removed:
            os.rmdir(tmp_path / "ns")  # the other side's rmdir of the emptied namespace
            removed.append(path)
        return real_mkdir(path, mode, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert dirs.make_dirs(tmp_path / "ns" / "child", mode=0o700, parent_mode=0o711) is True
    assert removed
    assert (tmp_path / "ns" / "child").is_dir()
    assert (tmp_path / "ns" / "child").stat().st_mode & 0o777 == 0o700 & ~_umask()


def test_an_existing_directory_is_reported_not_remade(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert dirs.make_dirs(tmp_path / "a" / "b") is False


def test_a_parent_that_keeps_going_is_an_error_in_the_end(tmp_path: Path, monkeypatch):
    def mkdir(path, mode=0o777, **kw):
        raise FileNotFoundError(2, "gone", str(path))

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "makedirs", lambda *a, **kw: None)
    with pytest.raises(FileNotFoundError):
        dirs.make_dirs(tmp_path / "x" / "y")


def test_bundles_made_and_deleted_side_by_side_in_one_namespace(tmp_path: Path):
    """Two threads: one makes and deletes bundles over and over, the other makes them; no
    make fails for its namespace's directory going away under it."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def churn(prefix: str) -> None:
        n = 0
        while not stop.is_set():
            bundle = Bundle.at(tmp_path, "k8s.io", f"{prefix}{n}")
            try:
                bundle.create(b"{}", [])
            except BaseException as e:
                failures.append(e)
                return
            bundle.delete()
            n += 1

    threads = [threading.Thread(target=churn, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    threading.Event().wait(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
