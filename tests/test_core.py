"""The shared kit: atomic strict JSON and the progress display (rate window, resume, logs and terminals)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from core.jsonio import write_json_atomic
from core.progress import Progress, RateWindow


def test_json_is_strict_sorted_utf8_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"b": [1.0, math.nan], "a": {"z": math.inf, "y": "é"}})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"a": {"y": "é", "z": None}, "b": [1.0, None]}
    assert text.index('"a"') < text.index('"b"') and "é" in text and text.endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    write_json_atomic(path, {"c": 1}, indent=None)  # replaces the old file whole
    assert path.read_text() == '{"c": 1}\n'


def test_rate_window_skips_warmup_and_forgets_old_speed():
    w = RateWindow(start=0, warmup=1, window_s=10.0)
    w.add(0.0, 0)
    w.add(30.0, 1)  # the first step took 30 s of start-up: not throughput
    assert w.rate() is None
    for i in range(2, 12):
        w.add(30.0 + (i - 1) * 0.5, i)
    assert w.rate() == 2.0
    for i in range(12, 52):  # slows down to 1 step/s: after 10 s the window only sees the new speed
        w.add(35.0 + (i - 11), i)
    assert w.rate() == 1.0


def test_resumed_progress_counts_only_steps_since_restart():
    t = [1000.0]
    out = io.StringIO()
    p = Progress(100, "pretrain", initial=90, file=out, clock=lambda: t[0], log_interval_s=1e9)
    for step in range(91, 101):
        t[0] += 1.0  # 1 step/s since the restart; 90 steps before it must not count
        p.update(step, f"loss {step}", log=step % 5 == 0)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "95/100" in lines[0] and "1.00step/s" in lines[0] and "<00:05" in lines[0]
    assert "100/100" in lines[-1] and "1.00step/s" in lines[-1] and "loss 100" in lines[-1]
    assert p.window.rate() == 1.0


def test_logs_get_periodic_plain_lines_with_rate_and_eta():
    t = [0.0]
    out = io.StringIO()
    p = Progress(40, "finetune", file=out, tty=False, clock=lambda: t[0], log_interval_s=5.0)
    for step in range(1, 21):
        t[0] += 1.0
        p.update(step)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()  # one line per 5 s, never a carriage return
    assert "20/40" in lines[-1] and "1.00step/s" in lines[-1] and "<00:20" in lines[-1]  # ETA 20 s


def test_terminal_gets_a_redrawn_bar_and_messages_above_it():
    out = io.StringIO()
    with Progress(3, "stats", unit="clip", file=out, tty=True) as p:
        for _ in range(3):
            p.advance()
        p.write("warning: something")
    text = out.getvalue()
    assert "\r" in text and "3/3" in text and "warning: something\n" in text


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    p = Progress(10, "x", file=out, enabled=False)
    p.update(5, "loss", log=True)
    p.close()
    assert out.getvalue() == ""


def test_one_run_section_keeps_each_recipes_default_name(tmp_path):
    from finetune.config import load_finetune_recipe
    from pretrain.config import load_recipe

    toml = tmp_path / "r.toml"
    toml.write_text('[run]\noutput_dir = "out"\n')  # a [run] table without a name keeps the recipe's default
    assert str(load_recipe(toml).run_dir) == str(Path("out") / "pretrain")
    assert str(load_finetune_recipe(toml).run_dir) == str(Path("out") / "finetune")
    assert load_finetune_recipe(None, ["run.name=x"]).run_dir == Path("runs") / "x"


def test_one_optimizer_builder_passes_eps_and_per_group_decay():
    import torch

    from core.optim import build_optimizer, decay_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer("adamw", decay_groups(model, 0.05, set()), 1e-3, [0.9, 0.95], 1e-6)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["eps"] == 1e-6
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]  # only the Linear's matrix decays


def test_end_training_leaves_no_prepared_model_alive(tmp_path):
    """The prepared model (DDP-wrapped on several ranks) must be collected before the process group is
    destroyed: one left to interpreter shutdown aborted ~10% of two-rank runs (core.accel.end_training)."""
    import gc
    import weakref

    import torch

    from core.accel import end_training, make_accelerator

    acc = make_accelerator("no", tmp_path)
    model, optimizer = acc.prepare(torch.nn.Linear(4, 2), torch.optim.SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1))
    ref = weakref.ref(model)
    del model, optimizer
    gc.disable()  # only end_training's own collection may free it
    try:
        assert ref() is not None  # accelerate still holds it
        end_training(acc)
        assert ref() is None
    finally:
        gc.enable()
