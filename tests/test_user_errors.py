"""Bad input is refused early with one line naming the key, the value and what is allowed (issue 13).

Recipe ranges (both schemas), ``--set key=null``, a backbone table that belongs to another backbone,
shard errors that name their recipe key, one ``error:`` line with exit status 2 from every CLI (bugs keep
their traceback), tampered export configs, the head count of imported checkpoints, file modes of exports,
and a ``--help`` that imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from core.cli import positive_float, run_command
from core.limits import Limit
from finetune import recipe_checks as ft_checks
from finetune.config import FinetuneRecipe, load_finetune_recipe
from pretrain import recipe_checks as pt_checks
from pretrain.__main__ import main as pretrain_main
from pretrain.config import Recipe, RecipeError, load_recipe
from pretrain.data import DataError, resolve_shards
from pretrain.encoder import Encoder, EncoderConfig, ExportError
from pretrain.import_ssast import import_checkpoint
from tests.test_interop import make_ssast_state, save_pth

REPO = Path(__file__).resolve().parents[1]
PT_DEMO = REPO / "recipes" / "pretrain" / "demo.toml"
FT_DEMO = REPO / "recipes" / "finetune" / "demo.toml"
TINY = {"dim": 32, "depth": 1, "num_heads": 2}


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------- recipe ranges
@pytest.mark.parametrize("override,key,range_text", [
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("train.batch_size=-3", "train.batch_size", ">= 1"),
    ("train.grad_accum=0", "train.grad_accum", ">= 1"),
    ("data.target_frames=0", "data.target_frames", ">= 1"),
    ("optim.lr=-1", "optim.lr", "> 0"),
    ("train.max_steps=0", "train.max_steps", ">= 1"),
    ("train.max_steps=-5", "train.max_steps", ">= 1"),
    ("optim.betas=[1.5, 0.9]", "optim.betas", "[0, 1)"),
    ("schedule.plateau_factor=0", "schedule.plateau_factor", "(0, 1]"),
    ("masking.count=0", "masking.count", ">= 1"),
    ("features.std=0", "features.std", "> 0"),
    ("train.seed=-1", "train.seed", "[0, 4294967295]"),
    ("data.num_workers=-1", "data.num_workers", ">= 0"),
    ("model.patch=[0, 16]", "model.patch", ">= 1"),
])
def test_pretraining_ranges_are_checked_at_load(override, key, range_text):
    with pytest.raises(RecipeError) as e:
        load_recipe(PT_DEMO, [override])
    value = override.split("=", 1)[1]
    msg = one_line(e.value)
    assert f"{key} = " in msg and range_text in msg and value.split(",")[0].strip("[") in msg, msg


@pytest.mark.parametrize("override,key", [
    ("train.batch_size=0", "train.batch_size"), ("train.epochs=0", "train.epochs"),
    ("optim.lr=-1", "optim.lr"), ("augment.mixup=1.5", "augment.mixup"),
    ("model.head_dropout=1", "model.head_dropout"), ("data.target_frames=0", "data.target_frames"),
    ("schedule.decay=0", "schedule.decay"), ("train.weight_averaging=[5, 2]", "train.weight_averaging"),
])
def test_finetuning_ranges_are_checked_at_load(override, key):
    with pytest.raises(RecipeError, match=re.escape(key)) as e:
        load_finetune_recipe(FT_DEMO, [override])
    one_line(e.value)


@pytest.mark.parametrize("override,words", [
    ("model.mode=probe", ["model.mode", "'probe'", "full, linear_probe"]),
    ("task.loss=mse", ["task.loss", "'mse'", "ce, bce"]),
])
def test_enums_name_key_value_and_choices(override, words):
    with pytest.raises(RecipeError) as e:
        load_finetune_recipe(FT_DEMO, [override])
    assert all(w in one_line(e.value) for w in words)


def _numeric_keys(cls: type) -> set[str]:
    keys = set()
    for section in dataclasses.fields(cls):
        sub = typing.get_type_hints(cls)[section.name]
        for f in dataclasses.fields(sub):
            text = str(typing.get_type_hints(sub)[f.name])
            if re.search(r"\b(int|float)\b", text) and f.name != "folds_unused":
                keys.add(f"{section.name}.{f.name}")
    return keys


@pytest.mark.parametrize("cls,table", [(Recipe, pt_checks.LIMITS), (FinetuneRecipe, ft_checks.LIMITS)])
def test_every_numeric_key_has_a_range(cls, table):
    numeric = _numeric_keys(cls)
    assert numeric - set(table) == set(), "numeric keys without a range"
    assert set(table) - numeric == set(), "ranges of keys that do not exist"


def test_readme_key_tables_show_every_range():
    readme = (REPO / "README.md").read_text()
    for table in (pt_checks.LIMITS, ft_checks.LIMITS):
        for key, limit in table.items():
            rows = [line for line in readme.splitlines() if line.startswith(f"| `{key}` |")]
            assert rows and all(f"`{limit.text()}`" in row for row in rows), (key, limit.text(), rows)


def test_limit_text():
    assert Limit(0, 1, high_inclusive=False).text() == "[0, 1)"
    assert Limit(0, low_inclusive=False).text() == "> 0"
    assert not Limit(1).contains(float("inf")) and not Limit().contains(float("nan"))


# ----------------------------------------------------------------------------- --set null, backbone switch
def test_set_null_unsets_an_optional_key_and_none_stays_a_path():
    r = load_recipe(PT_DEMO, ["data.valid=null", "model.preset=null"])
    assert r.data.valid is None and r.model.preset is None
    assert load_recipe(PT_DEMO, ['data.valid="null"']).data.valid == "null"  # quoted: a string
    assert load_recipe(PT_DEMO, ["data.valid=none"]).data.valid == "none"  # a path, as documented
    with pytest.raises(RecipeError, match="train.batch_size: null only unsets optional keys"):
        load_recipe(PT_DEMO, ["train.batch_size=null"])
    with pytest.raises(DataError, match=r"^data.valid: shard none not found .*--set data.valid=null"):
        resolve_shards("none", key="data.valid")


def test_switching_backbone_names_the_stale_table():
    with pytest.raises(RecipeError) as e:
        load_recipe(PT_DEMO, ["model.backbone=rwkv7"])
    msg = one_line(e.value)
    assert "model.backbone_config" in msg and "['num_heads']" in msg and "another backbone (vit)" in msg
    assert "--set 'model.backbone_config={}'" in msg
    assert load_recipe(PT_DEMO, ["model.backbone=rwkv7", "model.backbone_config={}"]).model.backbone == "rwkv7"


@pytest.mark.parametrize("override,words", [
    ("model.backbone=transformer", ["model.backbone = 'transformer'", "vit"]),
    ("model.preset=huge", ["model.preset = 'huge'", "tiny"]),
    ('model.backbone_config.dim="128"', ["model.backbone_config.dim = '128'", "not a number"]),
    ("model.backbone_config.num_heads=3", ["model.backbone_config", "not divisible by num_heads 3"]),
    ("data.target_frames=8", ["data.target_frames = 8", "shorter than one patch"]),
    ("features.mean=1.0", ["features.mean and features.std"]),
])
def test_backbone_and_cross_key_checks(override, words):
    with pytest.raises(RecipeError) as e:
        load_recipe(PT_DEMO, [override])
    assert all(w in one_line(e.value) for w in words), str(e.value)


def test_shard_errors_name_their_recipe_key(tmp_path):
    with pytest.raises(DataError, match=r"^data.valid: shard demo/shards/valid not found$"):
        resolve_shards("demo/shards/valid", key="data.valid")
    wav = tmp_path / "clip.wav"
    wav.write_bytes(b"RIFF....WAVEfmt ")
    with pytest.raises(DataError, match=r"^data.train: .*clip.wav is not a tar shard; make shards first"):
        resolve_shards(str(wav), key="data.train")


# ----------------------------------------------------------------------------- the CLIs
def cli(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        pretrain_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("sets,words", [
    (["model.backbone=transformer"], ["model.backbone = 'transformer'"]),
    (["train.batch_size=0"], ["train.batch_size = 0", ">= 1"]),
    (["model.backbone=rwkv7"], ["model.backbone_config"]),
])
def test_pretrain_train_refuses_bad_recipes_in_one_line(sets, words, capsys):
    argv = ["train", "--recipe", str(PT_DEMO)] + [a for s in sets for a in ("--set", s)]
    line = cli(argv, capsys)
    assert all(w in line for w in words), line


def test_pretrain_train_names_the_key_of_a_missing_path(tiny_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's relative demo/shards/valid does not exist here
    line = cli(["train", "--recipe", str(PT_DEMO), "--set", f"data.train={tiny_shards / 'train'}",
                "--set", f"run.output_dir={tmp_path}"], capsys)
    assert line == "error: data.valid: shard demo/shards/valid not found"


def test_a_wav_as_data_train_is_one_line(tmp_path, capsys, corpus):
    wav = next(Path(corpus).rglob("*.wav"))
    line = cli(["train", "--recipe", str(PT_DEMO), "--set", f"data.train={wav}"], capsys)
    assert "data.train" in line and "is not a tar shard" in line


def test_pretrain_options_are_checked(capsys):
    for argv in (["stats", "x", "--workers", "-2"], ["stats", "x", "--max-samples", "0"],
                 ["import-checkpoint", "a.pth", "out", "--num-heads", "0"]):
        with pytest.raises(SystemExit) as e:
            pretrain_main(argv)
        assert e.value.code == 2 and "error: argument" in capsys.readouterr().err


class TrainingError(RuntimeError):
    """Same name as pretrain.train.TrainingError, another type: must not be taken for a user error."""


def test_user_errors_are_matched_by_type_and_bugs_keep_their_traceback(capsys):
    def raises(exc: BaseException):
        def func(_args):
            raise exc
        return func

    args = argparse.Namespace()
    with pytest.raises(SystemExit) as e:
        run_command(raises(RecipeError("train.batch_size = 0")), args, lambda: (RecipeError,))
    assert e.value.code == 2 and capsys.readouterr().err == "error: train.batch_size = 0\n"
    with pytest.raises(SystemExit):
        run_command(raises(FileNotFoundError(2, "No such file or directory", "x.json")), args, lambda: ())
    assert capsys.readouterr().err == "error: x.json: No such file or directory\n"
    for bug in (KeyError("oops"), TrainingError("a look-alike"), ZeroDivisionError()):
        with pytest.raises(type(bug)):
            run_command(raises(bug), args, lambda: (RecipeError,))


def test_positive_float_refuses_zero_negative_and_nan():
    for text in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(text)
    assert positive_float("0.5") == 0.5


@pytest.mark.timeout(120)
def test_help_imports_no_torch():
    code = ("import sys, contextlib, io\n"
            "from {m}.__main__ import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])\n"
            "heavy = sorted(n for n in ('torch', 'torchaudio', 'accelerate', 'numpy') if n in sys.modules)\n"
            "print(heavy)\n")
    for module in ("pretrain", "finetune"):
        out = subprocess.run([sys.executable, "-c", code.format(m=module)], capture_output=True, text=True,
                             cwd=REPO, timeout=120, check=True).stdout
        assert out.strip() == "[]", (module, out)


# ----------------------------------------------------------------------------- exports
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(backbone="vit", backbone_config=dict(TINY), input_frames=64))
    return enc.save_pretrained(tmp_path_factory.mktemp("export") / "export")


def _tampered(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("name,edit,words", [
    ("dim_str", lambda c: c["backbone_config"].update(dim="32"), ["backbone_config.dim = '32'", "not a number"]),
    ("heads", lambda c: c["backbone_config"].update(num_heads=3), ["num_heads"]),
    ("std0", lambda c: c["normalization"].update(std=0.0), ["normalization.std = 0.0", "> 0"]),
    ("mel64", lambda c: c.update(num_mel_bins=64), ["num_mel_bins = 64", "features.num_mel_bins = 128"]),
    ("patch", lambda c: c.update(patch=["a", 16]), ["patch = ['a', 16]"]),
    ("width", lambda c: c["backbone_config"].update(dim=64, num_heads=2), ["dim"]),
])
def test_tampered_export_configs_are_refused_at_load(export_dir, tmp_path, name, edit, words):
    bad = _tampered(export_dir, tmp_path / name, edit)
    with pytest.raises(ExportError) as e:
        Encoder.from_pretrained(bad)
    msg = one_line(e.value)
    assert str(bad / "config.json") in msg or str(bad / "model.safetensors") in msg, msg
    assert all(w in msg for w in words), msg


def test_exports_honour_the_umask(export_dir, tmp_path):
    enc = Encoder.from_pretrained(export_dir)
    old = os.umask(0o002)
    try:
        out = enc.save_pretrained(tmp_path / "shared")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"config.json": 0o664, "model.safetensors": 0o664}, modes


# ----------------------------------------------------------------------------- import-checkpoint heads
def test_import_reads_or_takes_the_head_count_and_never_guesses_an_odd_width(tmp_path):
    src = save_pth(tmp_path, make_ssast_state(depth=1, dim=96))  # 96 wide: not a multiple of 64
    with pytest.raises(ExportError, match="not a multiple of 64.*--num-heads"):
        import_checkpoint(src, tmp_path / "guess")
    out = import_checkpoint(src, tmp_path / "given", num_heads=4)
    assert json.loads((out / "config.json").read_text())["backbone_config"]["num_heads"] == 4
    with pytest.raises(ExportError, match="5 heads do not divide the embedding width 96"):
        import_checkpoint(src, tmp_path / "bad", num_heads=5)
    wide = tmp_path / "hf"
    wide.mkdir()
    src = save_pth(wide, make_ssast_state(depth=1, dim=128))  # 128 wide: 2 heads of 64 would be the guess
    (wide / "config.json").write_text(json.dumps({"num_attention_heads": 4, "hidden_size": 128}))
    out = import_checkpoint(src, tmp_path / "from_config")
    assert json.loads((out / "config.json").read_text())["backbone_config"]["num_heads"] == 4


def test_data_prep_reports_an_unusable_output_path(corpus, tmp_path, capsys):
    from data_prep.__main__ import main as data_prep_main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as e:
        data_prep_main(["shard", str(corpus), str(blocker / "out"), "-q", "--workers", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"error: {blocker / 'out'}: Not a directory\n", err


@pytest.mark.parametrize("override,words", [
    ("masking.count=1000", ["masking.count = 1000", "128 patches"]),
    ("objective.nce_weight=0", None),
])
def test_masking_must_leave_patches_visible(override, words):
    if words is None:  # one loss weight at 0 is fine, both are not
        load_recipe(PT_DEMO, [override])
        with pytest.raises(RecipeError, match="both 0"):
            load_recipe(PT_DEMO, [override, "objective.mse_weight=0"])
        return
    with pytest.raises(RecipeError) as e:
        load_recipe(PT_DEMO, [override])
    assert all(w in one_line(e.value) for w in words)
