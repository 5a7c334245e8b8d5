"""Resumability: SIGKILL mid-run then rerun gives the uninterrupted result; finished shards are kept."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.shards import ShardError, ShardOptions, shard_corpus

CLIPS = 24  # the shared `corpus` fixture (conftest.py)
PER_SHARD = 2
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """An uninterrupted run: what every interrupted-and-resumed run must end up with."""
    out = tmp_path_factory.mktemp("ref") / "out"
    shard_corpus(ShardOptions(src=corpus, out=out, samples_per_shard=PER_SHARD, workers=1, progress=False))
    return out


def _outputs(out: Path) -> dict[str, bytes]:
    """Every shard's bytes and every index.json, by path relative to OUT."""
    files = sorted([*out.rglob("*.tar"), *out.rglob("index.json")])
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and SIGKILL semantics of Linux")
def test_sigkill_then_rerun_gives_the_uninterrupted_result(corpus, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "data_prep",
        "shard",
        str(corpus),
        str(out),
        "--samples-per-shard",
        str(PER_SHARD),
        "--workers",
        "2",
        "-q",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not list(out.rglob("*.tar")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.005)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The workers die with their parent (no orphan keeps writing shards behind the rerun's back).
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers and not any(_alive(pid) for pid in workers)

    total = len(list(reference.rglob("*.tar")))
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*.tar")}
    assert 1 <= len(finished) < total, "the kill should land mid-run"
    assert not (out / "index.json").exists()

    summary = shard_corpus(
        ShardOptions(src=corpus, out=out, samples_per_shard=PER_SHARD, workers=2, progress=False)
    )
    assert summary.rendered_shards == total - len(finished)
    assert _outputs(out) == _outputs(reference)  # same samples in the same shards, byte for byte
    for path, stamp in finished.items():
        assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp, f"{path} was rewritten"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.timeout(60)
def test_rerun_renders_only_unfinished_shards_and_cleans_leftovers(corpus, reference, tmp_path):
    out = tmp_path / "out"
    opts = ShardOptions(src=corpus, out=out, samples_per_shard=PER_SHARD, workers=1, progress=False)
    shard_corpus(opts)
    train = out / "train"
    tars = sorted(train.glob("*.tar"))
    tars[0].unlink()  # killed after the sidecar was written, before the rename
    (train / ".progress" / (tars[1].name + ".json")).unlink()  # sidecar lost: not trusted as finished
    (train / (tars[2].name + ".tmp")).write_bytes(b"half a shard")  # a killed render's leftover
    (train / ".progress" / "junk.json.tmp").write_bytes(b"{")
    (out / "index.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in tars[2:]}

    summary = shard_corpus(opts)
    assert summary.rendered_shards == 2
    assert _outputs(out) == _outputs(reference)
    assert {p: p.stat().st_mtime_ns for p in tars[2:]} == kept
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    again = shard_corpus(opts)  # all done: nothing rendered, same result
    assert again.rendered_shards == 0 and again.samples == summary.samples
    assert _outputs(out) == _outputs(reference)


@pytest.mark.timeout(60)
def test_a_finished_shard_damaged_later_is_noticed_and_rebuilt(corpus, reference, tmp_path, capsys):
    out = tmp_path / "out"
    opts = ShardOptions(src=corpus, out=out, samples_per_shard=PER_SHARD, workers=1, progress=False)
    shard_corpus(opts)
    index = json.loads((out / "train" / "index.json").read_text())
    for entry in index["shards"]:  # the index records each tar's size and hash, for readers too
        data = (out / "train" / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    tars = sorted((out / "train").glob("*.tar"))
    with open(tars[0], "r+b") as fh:  # cut off mid-member, as `truncate -s 60%` does
        fh.truncate(int(tars[0].stat().st_size * 0.6))
    data = bytearray(tars[1].read_bytes())  # same size, one byte altered inside a member
    data[len(data) // 2] ^= 0xFF
    tars[1].write_bytes(bytes(data))
    st = tars[2].stat()
    data = bytearray(tars[2].read_bytes())  # altered with size and mtime restored (e.g. copied with rsync -a)
    data[700] ^= 0x01
    tars[2].write_bytes(bytes(data))
    os.utime(tars[2], ns=(st.st_atime_ns, st.st_mtime_ns))

    summary = shard_corpus(opts)
    assert summary.rendered_shards == 3
    assert summary.rebuilt_shards == [f"train/{t.name}" for t in tars[:3]]
    assert _outputs(out) == _outputs(reference)

    tars[3].write_bytes(tars[3].read_bytes()[:1000])  # the CLI says what it rebuilds
    main(["shard", str(corpus), str(out), "--samples-per-shard", str(PER_SHARD), "--workers", "1"])
    err = capsys.readouterr().err
    assert f"rebuilding 1 finished shards whose tar no longer has the size and SHA-256 recorded when it was " \
           f"written (or was written without them): train/{tars[3].name}" in err
    assert "verify: 100%" in err and _outputs(out) == _outputs(reference)


@pytest.mark.timeout(60)
def test_other_arguments_are_refused_unless_overwrite(corpus, reference, tmp_path):
    out = tmp_path / "out"
    opts = ShardOptions(src=corpus, out=out, samples_per_shard=PER_SHARD, workers=1, progress=False)
    shard_corpus(opts)
    (out / "notes.txt").write_text("mine")
    (out / "mine.tar").write_bytes(b"not a shard of ours")
    old_train = sorted((out / "train").glob("*.tar"))
    changed = ShardOptions(src=corpus, out=out, samples_per_shard=5, seed=3, workers=1, progress=False)
    with pytest.raises(ShardError, match=r"samples_per_shard: 2 -> 5.*seed: 0 -> 3|seed.*--overwrite"):
        shard_corpus(changed)
    assert {k: v for k, v in _outputs(out).items() if k != "mine.tar"} == _outputs(reference)  # untouched

    summary = shard_corpus(
        ShardOptions(
            src=corpus, out=out, samples_per_shard=5, seed=3, workers=1, overwrite=True, progress=False
        )
    )
    assert summary.samples == CLIPS
    index = json.loads((out / "train" / "index.json").read_text())
    assert index["params"]["seed"] == 3 and index["params"]["samples_per_shard"] == 5
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [s["name"] for s in index["shards"]]
    # --overwrite removes only what the previous plan wrote
    assert (out / "notes.txt").read_text() == "mine" and (out / "mine.tar").exists()
    assert len(old_train) > len(index["shards"])  # the old plan's extra shards are gone (listing above)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    with pytest.raises(ShardError, match="not empty"):
        shard_corpus(ShardOptions(src=corpus, out=foreign, workers=1, progress=False))


@pytest.mark.timeout(120)
def test_a_changed_source_is_refused_unless_overwrite(corpus, tmp_path):
    """Resuming from a plan of other inputs would leave stale shards that look complete."""
    src = tmp_path / "src"
    shutil.copytree(corpus, src)
    out = tmp_path / "out"
    opts = ShardOptions(src=src, out=out, samples_per_shard=PER_SHARD, workers=1, progress=False)
    shard_corpus(opts)
    assert shard_corpus(opts).rendered_shards == 0  # unchanged: nothing to do

    lines = (src / "manifest.csv").read_text().splitlines(keepends=True)
    touched = lines[1].split(",")[0]
    st = (src / touched).stat()
    os.utime(src / touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten file
    (src / "manifest.csv").write_text("".join(lines[:-1]))  # and one row fewer
    with pytest.raises(ShardError, match=rf"changed since.*1 removed.*1 changed \(e\.g\. {touched}\).*--overwrite"):
        shard_corpus(opts)
    summary = shard_corpus(ShardOptions(src=src, out=out, samples_per_shard=PER_SHARD, workers=1,
                                        overwrite=True, progress=False))
    assert summary.samples == CLIPS - 1
