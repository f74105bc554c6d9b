"""The pre-flight at scale: one manifest per datalist, written chunk by chunk and pruned; parallel reads
give the serial verdicts; slides are opened one at a time (no false rejection at ``ulimit -n 256``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lilaw_med.data import preflight
from lilaw_med.data.datalist import Datalist
from lilaw_med.data.preflight import check_datalist, default_cache_dir, manifest_path


def _pngs(folder: Path, n: int, bad: set[int] = frozenset()) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = folder / f"{i}.png"
        if i in bad:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(np.full((4, 4), i % 250, np.uint8)).save(path)
        items.append({"id": f"{folder.name}/{i}", "image": str(path), "label": 0})
    return items


def _datalist(items: list[dict], source: Path) -> Datalist:
    source.write_text("{}")
    return Datalist(training=items, validation=[], test=[], class_names=["a"], source=source)


def _entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LILAW_MED_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LILAW_MED_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lilaw-med"


def test_each_datalist_has_its_own_manifest(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = _datalist(_pngs(tmp_path / "a", 3), tmp_path / "a.json")
    b = _datalist(_pngs(tmp_path / "b", 5), tmp_path / "b.json")
    check_datalist(a, 2, cache_dir=cache)
    check_datalist(b, 2, cache_dir=cache)
    files = sorted((cache / "preflight").glob("*.jsonl"))
    assert files == sorted([manifest_path(cache, a.source), manifest_path(cache, b.source)])
    assert len(_entries(manifest_path(cache, a.source))) == 3
    assert len(_entries(manifest_path(cache, b.source))) == 5


def test_verdicts_reach_the_manifest_chunk_by_chunk_and_survive_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    dl = _datalist(_pngs(tmp_path / "img", 10), tmp_path / "dl.json")
    monkeypatch.setattr(preflight, "_CHUNK", 4)
    real, calls = preflight.read_header, []

    def crash_at_the_seventh(path: str, decode: bool = False) -> object:
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt  # killed in the second chunk
        return real(path, decode)

    monkeypatch.setattr(preflight, "read_header", crash_at_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        check_datalist(dl, 2, cache_dir=cache)
    file = manifest_path(cache, dl.source)
    assert len(_entries(file)) == 4  # the first chunk was on disk before the crash
    with file.open("a") as f:
        f.write('{"key": "cut short')  # a line a crash cut in the middle
    calls.clear()
    monkeypatch.setattr(preflight, "read_header", lambda p, decode=False: calls.append(p) or real(p, decode))
    assert check_datalist(dl, 2, cache_dir=cache) == []
    assert sorted(calls) == sorted(it["image"] for it in dl.training[4:])  # only what was not recorded
    calls.clear()
    check_datalist(dl, 2, cache_dir=cache)
    assert calls == []


def test_the_manifest_drops_entries_of_removed_files_and_old_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    items = _pngs(tmp_path / "img", 40)
    dl = _datalist(items, tmp_path / "dl.json")
    check_datalist(dl, 2, cache_dir=cache)
    for it in items[10:]:
        os.remove(it["image"])
    dl.training = items[:10]  # the datalist lost 30 items and their files are gone
    check_datalist(dl, 2, cache_dir=cache)
    assert {e["path"] for e in _entries(manifest_path(cache, dl.source))} == {it["image"] for it in items[:10]}
    monkeypatch.setattr(preflight, "_MAX_MANIFESTS", 2)
    others = [_datalist(_pngs(tmp_path / f"o{i}", 1), tmp_path / f"o{i}.json") for i in range(3)]
    os.utime(manifest_path(cache, dl.source), (1, 1))  # the first datalist: checked longest ago
    for i, other in enumerate(others):
        check_datalist(other, 2, cache_dir=cache)
        os.utime(manifest_path(cache, other.source), (10 + i, 10 + i))
    left = set((cache / "preflight").glob("*.jsonl"))
    assert left == {manifest_path(cache, others[1].source), manifest_path(cache, others[2].source)}


def test_a_pool_of_processes_gives_the_serial_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = _pngs(tmp_path / "img", 30, bad={3, 17, 29})
    items.append({"id": "gone", "image": str(tmp_path / "gone.png"), "label": 0})
    items += [dict(items[0], label=None), {"id": "vol", "image": str(tmp_path / "v.npy"), "label": 0}]
    np.save(tmp_path / "v.npy", np.zeros((4, 4, 4), np.float32))
    dl = Datalist(training=items, validation=[], test=[], class_names=["a"])
    serial = check_datalist(dl, 2, cache_dir=None)
    monkeypatch.setattr(preflight, "_CHUNK", 4)
    monkeypatch.setattr(preflight, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(preflight.os, "sched_getaffinity", lambda _: {0, 1})
    parallel = check_datalist(dl, 2, cache_dir=tmp_path / "cache")
    assert parallel == serial
    assert {p.kind for p in serial} == {"unreadable", "missing_file", "duplicate", "missing_label", "wrong_dims"}
    assert sum(p.kind == "unreadable" for p in serial) == 3


def test_two_thousand_slides_pass_at_256_open_files(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("tiffslide")
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, np.zeros((64, 64, 3), np.uint8), tile=(16, 16))
    blob = one.read_bytes()
    items = []
    for i in range(2000):
        path = tmp_path / f"s{i}.tif"
        path.write_bytes(blob)
        items.append({"id": f"s{i}", "image": str(path), "label": 0, "location": [0, 0], "size": [16, 16]})
    items[1999]["location"] = [60, 60]  # 16 x 16 at (60, 60) leaves a 64 x 64 slide: a true rejection
    datalist = tmp_path / "slides.json"
    datalist.write_text(json.dumps({"class_names": ["a"], "training": items}))
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from lilaw_med.data.datalist import load_datalist
        from lilaw_med.data.preflight import check_datalist
        problems = check_datalist(load_datalist({str(datalist)!r}, val_fraction=0.1), expected_dims=2)
        print([(p.id, p.kind) for p in problems])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[('s1999', 'bad_patch')]"
