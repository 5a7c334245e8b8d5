"""bench/gpu_check.py's CPU-runnable parts: arguments, wheel folder handling, report formatting, and
one dry-run part end to end (toy sizes on CPU; the GPU numbers come only from a GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_arguments_and_their_errors(tmp_path, capsys):
    args = gpu_check.parse_args([])
    assert args.parts == "abcd" and not args.dry_run and args.wheels is None
    assert sum(gpu_check.BUDGETS.values()) + 20 <= 8 * 60  # the parts fit the 8-minute promise
    args = gpu_check.parse_args(["--parts", "bc", "--budget-c", "30", "--wheels", str(tmp_path)])
    assert args.parts == "bc" and args.budget_c == 30 and args.wheels == tmp_path
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--parts", "xz"])
    assert "--parts must be letters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--wheels", str(tmp_path / "missing")])
    assert "not a directory" in capsys.readouterr().err
    assert "no .whl files" in gpu_check.install_wheels(tmp_path)


def test_report_formats_every_part_and_failures():
    results = {
        "a": {"rc": 0, "summary": "12 passed, 3 skipped in 40.1s", "failures": [], "wall_s": 41},
        "b": {"batch": 32, "frames": 1024, "device": "cuda", "wall_s": 80, "rows": {
            "RWKV-7 (A-RWKV-T)": {"samples_per_s": 250.0, "step_s": 0.128, "peak_mb": 9000.0, "loss": 3.2,
                                  "masked": 400, "patches": 512},
            "Mamba (SSAMBA-tiny)": {"error": "OutOfMemoryError: boom"}}},
        "c": {"tokens": [1024, 4096], "device": "cuda", "wall_s": 90, "rows": {
            "RWKV-7-T kernel": {"1024": {"seconds": 0.05, "peak_mb": 300.0}, "4096": {"error": "skipped (time budget)"}}}},
        "d": {"error": "timed out after 160 s", "wall_s": 160},
    }
    env = {"python": "3.11", "torch": "2.x", "device": "NVIDIA H200"}
    text = gpu_check.format_report(env, results, dry=False, install="installed from w/", total_s=400)
    assert text.startswith("# GPU check\n") and "DRY RUN" not in text
    assert "12 passed, 3 skipped" in text
    assert "| RWKV-7 (A-RWKV-T) | 250.0 | 0.128 | 9000 | 400 / 512 | 3.200 |" in text
    assert "OutOfMemoryError: boom" in text
    assert "| RWKV-7-T kernel | 0.050 / 300 | skipped (time budget) |" in text
    assert "**failed:** timed out after 160 s" in text
    assert "Wheels: installed from w/" in text and "Total wall time 400 s." in text
    assert "DRY RUN" in gpu_check.format_report(env, {}, dry=True, install=None, total_s=1)


def test_a_part_stopped_at_its_limit_still_reports_its_finished_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "_PARTIAL", tmp_path / "result.json")
    gpu_check._save_partial({"tokens": [1024], "device": "cuda", "rows": {"ViT-tiny (SDPA)": {"1024": {
        "seconds": 0.02, "peak_mb": 100.0}}}})
    partial = json.loads((tmp_path / "result.json").read_text())
    assert not (tmp_path / "result.tmp").exists()
    res = partial | {"error": "timed out after 150 s (the cells above finished)", "wall_s": 150}
    text = gpu_check.format_report({}, {"c": res}, dry=False, install=None, total_s=150)
    assert "| ViT-tiny (SDPA) | 0.020 / 100 |" in text
    assert "**stopped:** timed out after 150 s (the cells above finished)" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dry_run_of_the_length_sweep_prints_a_report(tmp_path):
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--parts", "c",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=580)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "DRY RUN on CPU" in text and "## c. forward + backward" in text
    for label in ("ViT-tiny (SDPA)", "Mamba-tiny pure", "RWKV-7-T pure", "RWKV-7-T kernel"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert "Error" not in row and " / " in row, row  # a time / memory cell, not an error


def test_progress_rate_is_read_in_both_tqdm_units():
    log = "pretrain:  96%|#| 48/50 [00:09<00:00, 5.1step/s]\npretrain: 100%|#| 50/50 [00:10<00:00, 4.85step/s]\n"
    assert gpu_check._steps_per_s(log, 50) == 4.85
    assert gpu_check._steps_per_s("x 2/2 [00:38<00:00, 19.38s/step]", 2) == pytest.approx(1 / 19.38)
    assert gpu_check._steps_per_s("no bar here", 2) is None
