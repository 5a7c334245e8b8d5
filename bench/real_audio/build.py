"""Build the real-audio development benchmark from Debian packages, deterministically from a seed.

    sudo python bench/real_audio/build.py [--out /work/data/real_audio] [--seed 0] [--workers 2]

Installs the packages with apt-get (root needed once; skipped when they are present), renders or
collects the audio, writes one manifest per set and shards each with ``python -m data_prep shard``:

* ``corpus``: unlabeled pretraining audio, >= 3 h, mixed formats and sample rates: recorded Asterisk
  voice prompts in five languages (WAV, 8 kHz), Battle for Wesnoth music (Ogg Vorbis, 44.1 kHz),
  espeak-ng speech in many languages (MP3, 22.05 kHz) and General MIDI songs through fluidsynth
  (FLAC, 32 kHz). Only train-split voices, soundfonts and kits are used, so no test source is seen.
* four labeled tasks, each with train/valid/test splits disjoint by what would leak:
  ``keywords`` (10 spoken words; disjoint espeak-ng voice variants), ``language`` (8 languages read
  from word lists; disjoint voice variants and disjoint words), ``instrument`` (10 GM instruments;
  disjoint soundfonts), ``drums`` (6 drum classes; disjoint Hydrogen drum kits).

Everything lands under ``--out`` (outside the repository): ``raw/SET/`` (audio + manifest.csv),
``shards/SET/{train,valid,test}`` and ``summary.json`` (sizes, chance levels, packages, licenses).
This is a benchmark tool, never a test dependency.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402  (a sibling module; bench/ is not a package)

PACKAGES = {  # package -> what it provides
    "espeak-ng": "speech synthesizer (keywords, language, corpus speech)",
    "fluidsynth": "SoundFont synthesizer (instrument, corpus music)",
    "fluid-soundfont-gm": "FluidR3 GM soundfont (instrument train, corpus)",
    "csound-soundfont": "sf_GMbank soundfont (instrument train, corpus)",
    "musescore-general-soundfont": "MuseScore General soundfont (instrument valid)",
    "timgm6mb-soundfont": "TimGM6mb soundfont (instrument test)",
    "hydrogen-drumkits": "recorded drum-kit samples (drums)",
    "asterisk-core-sounds-en-wav": "recorded voice prompts, en-US (corpus)",
    "asterisk-core-sounds-es-wav": "recorded voice prompts, es-MX (corpus)",
    "asterisk-core-sounds-fr-wav": "recorded voice prompts, fr-CA (corpus)",
    "asterisk-core-sounds-it-wav": "recorded voice prompts, it-IT (corpus)",
    "asterisk-core-sounds-ru-wav": "recorded voice prompts, ru-RU (corpus)",
    "wesnoth-1.16-music": "game music, Ogg Vorbis (corpus)",
    "wamerican": "word list (language)", "wfrench": "word list (language)",
    "wngerman": "word list (language)", "wspanish": "word list (language)",
    "witalian": "word list (language)", "wportuguese": "word list (language)",
    "wdutch": "word list (language)", "wpolish": "word list (language)",
}
BY_HAND = {  # copyright files without DEP-5 "License:" lines, summarized by hand from them
    "espeak-ng": "GPL-3+", "fluid-soundfont-gm": "MIT",
    "musescore-general-soundfont": "MIT (parts public domain or CC0)", "wamerican": "public domain (SCOWL)",
    "wspanish": "public domain (word list)", "wdutch": "BSD-3-clause or CC-BY-3.0 (OpenTaal)",
    "wesnoth-1.16-music": "GPL-2+"}
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd"]
LANGUAGES = {"en": ("en-us", "american-english"), "fr": ("fr-fr", "french"), "de": ("de", "ngerman"),
             "es": ("es", "spanish"), "it": ("it", "italian"), "pt": ("pt", "portuguese"),
             "nl": ("nl", "dutch"), "pl": ("pl", "polish")}
INSTRUMENTS = {  # label -> (GM program, lowest, highest MIDI note)
    "piano": (0, 40, 84), "vibraphone": (11, 53, 89), "organ": (16, 36, 84), "guitar": (24, 40, 76),
    "bass": (32, 28, 55), "violin": (40, 55, 91), "trumpet": (56, 55, 82), "saxophone": (65, 49, 80),
    "clarinet": (71, 50, 86), "flute": (73, 60, 96)}
SF2 = Path("/usr/share/sounds/sf2")
FONTS = {"train": [SF2 / "FluidR3_GM.sf2", SF2 / "sf_GMbank.sf2"],
         "valid": [Path("/usr/share/sounds/sf3/MuseScore_General_Full.sf3")],
         "test": [SF2 / "TimGM6mb.sf2"]}
KITS = Path("/usr/share/hydrogen/data/drumkits")
ASTERISK = Path("/usr/share/asterisk/sounds")
WESNOTH = Path("/usr/share/games/wesnoth/1.16/data/core/music")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def install() -> None:
    missing = [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages {missing}: run once as root (apt-get install)")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env)


def write_manifest(root: Path, rows: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "labels", "split", "group"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})


def split_variants(rng: random.Random) -> dict[str, list[str]]:
    """espeak-ng voice variants, shuffled and cut 60/20/20 into train/valid/test."""
    names = render.espeak_variants()
    rng.shuffle(names)
    n_test = n_valid = len(names) // 5
    return {"test": names[:n_test], "valid": names[n_test:n_test + n_valid],
            "train": names[n_test + n_valid:]}


def run_espeak(jobs: list[tuple], workers: int) -> None:
    """Run (text, voice, speed, pitch, wav path, final path, format) jobs; WAV kept or re-encoded."""
    def one(job: tuple) -> None:
        text, voice, speed, pitch, final, fmt = job
        tmp = final.with_suffix(".tmp.wav")
        render.espeak(text, voice, speed, pitch, tmp)
        if fmt == "WAV":
            tmp.replace(final)
            return
        audio, sr = sf.read(tmp, dtype="float32")
        sf.write(final, audio, sr, format=fmt)
        tmp.unlink()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, jobs))


def build_keywords(out: Path, variants: dict, seed: int, workers: int) -> list[dict]:
    rng = random.Random(f"{seed}-keywords")
    rows, jobs = [], []
    for split, names in variants.items():
        for var in names:
            (out / var).mkdir(parents=True, exist_ok=True)
            for word in KEYWORDS:
                for k in range(2):
                    voice = f"{rng.choice(ACCENTS)}+{var}"
                    path = out / var / f"{word}_{k}.wav"
                    jobs.append((word, voice, rng.randint(120, 220), rng.randint(20, 80), path, "WAV"))
                    rows.append({"path": f"{var}/{path.name}", "labels": word, "split": split, "group": var})
    run_espeak(jobs, workers)
    for job in jobs:  # 1 s clips like Speech Commands: the word at a random offset, silence around it
        audio, sr = sf.read(job[4], dtype="float32")
        clip = np.zeros(max(sr, len(audio)), np.float32)
        at = rng.randint(0, len(clip) - len(audio))
        clip[at:at + len(audio)] = audio
        sf.write(job[4], clip, sr, subtype="PCM_16")
    return rows


def build_language(out: Path, variants: dict, pools_of: dict, seed: int, workers: int) -> list[dict]:
    rng = random.Random(f"{seed}-language")
    rows, jobs = [], []
    for lang, (voice, _) in LANGUAGES.items():
        pools = pools_of[lang]
        for split, names in variants.items():
            for var in names:
                (out / var).mkdir(parents=True, exist_ok=True)
                for k in range(2):
                    text = " ".join(rng.sample(pools[split], rng.randint(5, 9)))
                    path = out / var / f"{lang}_{k}.mp3"
                    jobs.append((text, f"{voice}+{var}", rng.randint(130, 200), rng.randint(20, 80), path, "MP3"))
                    rows.append({"path": f"{var}/{path.name}", "labels": lang, "split": split, "group": var})
    run_espeak(jobs, workers)
    return rows


def build_instrument(out: Path, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}-instrument")
    per_font = {"train": 40, "valid": 30, "test": 30}
    rows = []
    for split, fonts in FONTS.items():
        for font in fonts:
            phrases, labels = [], []
            for label, (program, low, high) in INSTRUMENTS.items():
                for _ in range(per_font[split]):
                    phrases.append(render.random_phrase(rng, program, low, high))
                    labels.append(label)
            order = list(range(len(phrases)))
            rng.shuffle(order)
            phrases, labels = [phrases[i] for i in order], [labels[i] for i in order]
            midi = out / f"{font.stem}.mid"
            out.mkdir(parents=True, exist_ok=True)
            render.write_midi(phrases, midi, gap=1.5)
            audio = render.fluidsynth(font, midi, 44100)
            (out / font.stem).mkdir(exist_ok=True)
            for i, (ph, label) in enumerate(zip(phrases, labels, strict=True)):
                a, b = int(ph.start * 44100), int((ph.start + ph.length + 0.6) * 44100)
                name = f"{font.stem}/{i:04d}_{label}.flac"
                clip = audio[a:b]  # peak at -12..-1 dBFS, so loudness says nothing about the soundfont
                clip = clip * (10 ** (rng.uniform(-12, -1) / 20) / max(float(np.abs(clip).max()), 1e-6))
                sf.write(out / name, clip, 44100, subtype="PCM_16")
                rows.append({"path": name, "labels": label, "split": split, "group": font.stem})
            midi.unlink()
    return rows


def split_kits(seed: int) -> dict[str, list[Path]]:
    """Hydrogen kits cut into train/valid/test (about 8/3/3) so every split holds all six classes."""
    kits = sorted(p for p in KITS.iterdir() if (p / "drumkit.xml").is_file())
    classes = {k: {c for c, _ in render.kit_samples(k)} for k in kits}
    rng = random.Random(f"{seed}-kits")
    for _ in range(1000):
        rng.shuffle(kits)
        n = max(2, round(len(kits) * 0.2))
        cut = {"test": kits[:n], "valid": kits[n:2 * n], "train": kits[2 * n:]}
        if all(set().union(*(classes[k] for k in ks)) == set(render.DRUM_CLASSES) for ks in cut.values()):
            return cut
    raise SystemExit(f"cannot split the {len(kits)} kits in {KITS} so each split has all drum classes")


def build_drums(out: Path, kits: dict, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    copies = {"train": 4, "valid": 2, "test": 2}
    rows = []
    for split, ks in kits.items():
        for kit in ks:
            group = kit.name.replace(" ", "_")
            (out / group).mkdir(parents=True, exist_ok=True)
            for j, (cls, src) in enumerate(render.kit_samples(kit)):
                audio, sr = sf.read(src, dtype="float32", always_2d=True)
                audio = audio.mean(axis=1)
                for c in range(copies[split]):
                    name = f"{group}/{j:03d}_{cls}_{c}.ogg"
                    sf.write(out / name, render.drum_variant(audio, sr, rng), sr, format="OGG")
                    rows.append({"path": name, "labels": cls, "split": split, "group": group})
    return rows


def language_pools(seed: int) -> dict[str, dict[str, list[str]]]:
    """Per language, disjoint word pools for train/valid/test (the corpus reads train words only)."""
    rng = random.Random(f"{seed}-words")
    pools = {}
    for lang, (_, dict_name) in LANGUAGES.items():
        words = render.wordlist(Path("/usr/share/dict") / dict_name, rng, 3000)
        pools[lang] = {"train": words[:2000], "valid": words[2000:2500], "test": words[2500:]}
    return pools


def corpus_speech(out: Path, variants: list[str], pools: dict, seed: int, workers: int) -> list[dict]:
    """~30 min of espeak-ng sentences (15-30 train words) in the eight languages, train variants, MP3."""
    rng = random.Random(f"{seed}-corpus-speech")
    rows, jobs = [], []
    (out / "espeak").mkdir(parents=True, exist_ok=True)
    for i in range(240):
        lang = rng.choice(sorted(LANGUAGES))
        text = " ".join(rng.sample(pools[lang]["train"], rng.randint(15, 30)))
        voice = f"{LANGUAGES[lang][0]}+{rng.choice(variants)}"
        path = out / "espeak" / f"{i:04d}_{lang}.mp3"
        jobs.append((text, voice, rng.randint(130, 200), rng.randint(20, 80), path, "MP3"))
        rows.append({"path": f"espeak/{path.name}"})
    run_espeak(jobs, workers)
    return rows


def corpus_music(out: Path, seed: int, minutes: float = 15.0) -> list[dict]:
    """``minutes`` of GM songs per train soundfont (random programs, drums on channel 10), FLAC 32 kHz."""
    rng = random.Random(f"{seed}-corpus-music")
    rows = []
    (out / "music").mkdir(parents=True, exist_ok=True)
    for font in FONTS["train"]:
        events, spans, t = [], [], 0.5
        while t < minutes * 60:
            song = render.random_song(rng, rng.uniform(15, 40))
            programs = (rng.randrange(128), rng.randrange(128), rng.randrange(32, 40))
            events += [(round(t * 960), 0, bytes([0xC0 | ch, programs[ch]])) for ch in range(3)]
            events += render._note_events(song.notes, t)
            spans.append((t, t + song.length + 1.0))
            t += song.length + 2.0
        midi = out / "music" / f"{font.stem}.mid"
        render._write_events(events, midi, tail=1.0)
        audio = render.fluidsynth(font, midi, 32000)
        midi.unlink()
        for i, (a, b) in enumerate(spans):
            name = f"music/{font.stem}_{i:03d}.flac"
            sf.write(out / name, audio[int(a * 32000):int(b * 32000)], 32000, subtype="PCM_16")
            rows.append({"path": name})
    return rows


def corpus_recorded(seed: int, music_minutes: float = 45.0) -> list[dict]:
    """Every Asterisk prompt (absolute paths, read in place) and ``music_minutes`` of Wesnoth music."""
    rows = [{"path": str(p)} for p in sorted(ASTERISK.rglob("*.wav"))]
    songs = sorted(WESNOTH.glob("*.ogg"))
    random.Random(f"{seed}-wesnoth").shuffle(songs)
    total = 0.0
    for song in songs:
        if total >= music_minutes * 60:
            break
        total += sf.info(song).duration
        rows.append({"path": str(song)})
    return rows


def build_corpus(out: Path, variants: list[str], seed: int, workers: int) -> list[dict]:
    rows = corpus_recorded(seed) + corpus_speech(out, variants, language_pools(seed), seed, workers)
    rows += corpus_music(out, seed)
    rng = random.Random(f"{seed}-corpus-split")
    for r in rows:  # 3% of the files validate the pretext loss
        r["split"] = "valid" if rng.random() < 0.03 else "train"
    return rows


def shard(raw: Path, out: Path, seed: int, workers: int, clip_seconds: float | None) -> None:
    cmd = [sys.executable, "-m", "data_prep", "shard", str(raw / "manifest.csv"), str(out),
           "--layout", "manifest", "--seed", str(seed), "--workers", str(workers), "--overwrite", "-q"]
    if clip_seconds:
        cmd += ["--clip-seconds", str(clip_seconds), "--samples-per-shard", "200"]
    else:
        cmd += ["--samples-per-shard", "500", "--min-seconds", "0.05"]  # drum hits may be short
    subprocess.run(cmd, check=True)


def licenses() -> dict[str, dict[str, str]]:
    """Version, source package and the license names from each package's Debian copyright file."""
    out = {}
    for pkg, what in PACKAGES.items():
        q = subprocess.run(["dpkg-query", "-W", "-f", "${Version}\t${Source}\t${Homepage}", pkg],
                           capture_output=True, text=True).stdout.split("\t")
        copyright_file = Path("/usr/share/doc") / pkg / "copyright"
        names: list[str] = []
        if copyright_file.is_file():
            for line in copyright_file.read_text(errors="ignore").splitlines():
                if line.startswith("License:") and line[8:].strip() not in names:
                    names.append(line[8:].strip())
        out[pkg] = {"version": q[0], "source": q[1] or pkg, "homepage": q[2] if len(q) > 2 else "",
                    "licenses": "; ".join(names) or BY_HAND.get(pkg, f"see {copyright_file}"), "use": what}
    return out


def summarize(shards: Path, rows_of: dict[str, list[dict]]) -> dict:
    """Per set and split: clips, hours, classes, chance (1/classes) and the test majority-class rate."""
    out = {}
    for name, rows in rows_of.items():
        entry: dict = {"files": len(rows), "splits": {}}
        for split in ("train", "valid", "test"):
            index = shards / name / split / "index.json"
            if not index.is_file():
                continue
            info = json.loads(index.read_text())
            labels = [r["labels"] for r in rows if r.get("split") == split and r.get("labels")]
            counts = {lab: labels.count(lab) for lab in sorted(set(labels))}
            entry["splits"][split] = {"clips": info["samples"], "hours": round(info["seconds"] / 3600, 3),
                                      "groups": len({r.get("group") for r in rows if r.get("split") == split}),
                                      "per_class": counts}
        if any(r.get("labels") for r in rows):
            test = entry["splits"]["test"]["per_class"]
            entry["classes"] = len(test)
            entry["chance"] = round(1 / len(test), 4)
            entry["test_majority"] = round(max(test.values()) / sum(test.values()), 4)
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("REAL_AUDIO_DIR", "/work/data/real_audio")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    start = time.time()
    install()
    raw, shards = args.out / "raw", args.out / "shards"
    variants = split_variants(random.Random(f"{args.seed}-variants"))
    pools = language_pools(args.seed)
    kits = split_kits(args.seed)
    builders = {
        "keywords": lambda d: build_keywords(d, variants, args.seed, args.workers),
        "language": lambda d: build_language(d, variants, pools, args.seed, args.workers),
        "instrument": lambda d: build_instrument(d, args.seed),
        "drums": lambda d: build_drums(d, kits, args.seed),
        "corpus": lambda d: build_corpus(d, variants["train"], args.seed, args.workers),
    }
    rows_of = {}
    for name, build in builders.items():
        log(f"render {name}")
        rows_of[name] = build(raw / name)
        write_manifest(raw / name, rows_of[name])
        log(f"shard {name} ({len(rows_of[name])} files)")
        shard(raw / name, shards / name, args.seed, args.workers, 10.0 if name == "corpus" else None)
    summary = {"seed": args.seed, "seconds_to_build": round(time.time() - start, 1),
               "splits_by": {"keywords": "espeak-ng voice variant", "language": "voice variant and words",
                             "instrument": "soundfont", "drums": "drum kit"},
               "split_members": {"variants": variants, "soundfonts": {k: [p.name for p in v] for k, v in FONTS.items()},
                                 "kits": {k: [p.name for p in v] for k, v in kits.items()}},
               "sets": summarize(shards, rows_of), "packages": licenses()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    report(summary, args.out)


def report(summary: dict, out: Path) -> None:
    print("\npackages (Debian; versions, licenses from /usr/share/doc/PKG/copyright):")
    for pkg, info in summary["packages"].items():
        print(f"  {pkg} {info['version']} [{info['licenses']}] {info['homepage']} - {info['use']}")
    print("\nset         split  clips   hours  groups  classes  chance  test-majority")
    for name, entry in summary["sets"].items():
        for split, s in entry["splits"].items():
            print(f"  {name:<10} {split:<5} {s['clips']:>6} {s['hours']:>7.2f} {s['groups']:>7}"
                  f" {entry.get('classes', '-'):>8} {entry.get('chance', '-'):>7} {entry.get('test_majority', '-'):>8}")
    print(f"\nbuilt in {summary['seconds_to_build'] / 60:.1f} min; shards in {out / 'shards'}, summary "
          f"{out / 'summary.json'}")


if __name__ == "__main__":
    main()
