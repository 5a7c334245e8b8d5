"""core/allocator.py: the training entry points re-run themselves once with a tuned allocator."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core import allocator
from tests.conftest import REPO, run_cli

_SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
from core.allocator import rerun_with_tuned_allocator
print("run", os.getpid(), os.environ.get("SSL_AUDIO_ALLOCATOR_APPLIED"), flush=True)
rerun_with_tuned_allocator()
print("kept", os.getpid(), os.environ.get("GLIBC_TUNABLES"), os.environ.get("LD_PRELOAD"), flush=True)
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", allocator.CHOICE_ENV, allocator.APPLIED_ENV)}
    return env | extra


def test_choices_and_when_nothing_changes(monkeypatch):
    assert allocator.tuned_environment(_clean_env(SSL_AUDIO_ALLOCATOR="system")) is None
    assert allocator.tuned_environment(_clean_env(SSL_AUDIO_ALLOCATOR_APPLIED="1")) is None
    assert allocator.tuned_environment(_clean_env(LD_PRELOAD="/opt/libjemalloc.so.2")) is None
    with pytest.raises(ValueError, match="SSL_AUDIO_ALLOCATOR='fast'"):
        allocator.tuned_environment(_clean_env(SSL_AUDIO_ALLOCATOR="fast"))


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_a_found_library_is_preloaded_before_the_users_preloads(tmp_path):
    lib = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    env, change = allocator.tuned_environment(_clean_env(CONDA_PREFIX=str(tmp_path), LD_PRELOAD="/opt/libx.so"))
    assert env["LD_PRELOAD"] == f"{lib}:/opt/libx.so" and env[allocator.APPLIED_ENV] == "1"
    assert str(lib) in change and "GLIBC_TUNABLES" not in env


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_without_a_library_auto_tunes_glibc(monkeypatch):
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    monkeypatch.setattr(allocator, "PRELOAD_LIBRARIES", ("libnot-an-allocator.so.9",))
    for choice in ("auto", "glibc-tuned"):
        tuned = _clean_env(SSL_AUDIO_ALLOCATOR=choice, GLIBC_TUNABLES="glibc.rtld.optional_static_tls=512")
        env, change = allocator.tuned_environment(tuned)
        assert env["GLIBC_TUNABLES"] == "glibc.rtld.optional_static_tls=512:" + allocator.GLIBC_SETTINGS
        assert "LD_PRELOAD" not in env and "GLIBC_TUNABLES=" in change
    assert "glibc.malloc.tcache_count=0" in allocator.GLIBC_SETTINGS
    mine = _clean_env(GLIBC_TUNABLES="glibc.malloc.arena_max=2")  # the user's own malloc tunables win
    assert allocator.tuned_environment(mine) is None


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_glibc_tuned_is_used_even_where_tcmalloc_is_installed(tmp_path):
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    lib = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    env, _ = allocator.tuned_environment(_clean_env(CONDA_PREFIX=str(tmp_path), SSL_AUDIO_ALLOCATOR="glibc-tuned"))
    assert env["GLIBC_TUNABLES"] == allocator.GLIBC_SETTINGS and "LD_PRELOAD" not in env


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_the_process_reruns_itself_once_with_the_same_pid(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(_SCRIPT.format(repo=str(REPO)))
    # glibc-tuned re-runs the same way on any glibc machine, with or without tcmalloc
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                         env=_clean_env(SSL_AUDIO_ALLOCATOR="glibc-tuned"))
    lines = out.stdout.split("\n")
    first, second, kept = lines[0].split(), lines[1].split(), lines[2].split()
    assert first[0] == second[0] == "run" and first[1] == second[1] == kept[1]  # execve keeps the pid
    assert first[2] == "None" and second[2] == "1"  # re-run exactly once
    assert "tcache_count=0" in kept[2]
    assert out.stderr.count("note: training with a tuned memory allocator") == 1
    system = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                            env=_clean_env(SSL_AUDIO_ALLOCATOR="system"))
    assert system.stdout.split("\n")[1].startswith("kept") and "note:" not in system.stderr


def test_only_training_commands_rerun():
    env = _clean_env(SSL_AUDIO_ALLOCATOR="glibc-tuned")
    assert "note: training with a tuned" in run_cli("pretrain", "train", "--help", env=env).stderr
    assert "note:" not in run_cli("pretrain", "stats", "--help", env=env).stderr
    bad = run_cli("finetune", "train", "--help", env=env | {"SSL_AUDIO_ALLOCATOR": "fast"}, check=False)
    assert bad.returncode == 2 and "error: SSL_AUDIO_ALLOCATOR='fast'" in bad.stderr
