"""Renderers for the real-audio development benchmark: espeak-ng speech, General MIDI phrases through
fluidsynth, and Hydrogen drum-kit samples. Each returns float32 mono audio and its sample rate."""

from __future__ import annotations

import random
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

# ----------------------------------------------------------------------------------------------
# espeak-ng


def espeak(text: str, voice: str, speed: int, pitch: int, out: Path) -> None:
    """Speak ``text`` with an espeak-ng voice (``lang+variant``) into a 22.05 kHz WAV."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text]
    subprocess.run(cmd, check=True, capture_output=True)


def espeak_variants() -> list[str]:
    """The names of espeak-ng's voice variants (``!v/NAME``), sorted, so a seed fixes the split."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True,
                             text=True).stdout.splitlines()[1:]
    names = sorted({line.split()[-1].split("/")[-1] for line in listing if "!v/" in line})
    if len(names) < 30:
        raise SystemExit(f"espeak-ng lists only {len(names)} voice variants; expected ~100")
    return names


def wordlist(path: Path, rng: random.Random, n: int) -> list[str]:
    """``n`` plain words (letters only, 3-10 long) drawn from a /usr/share/dict list."""
    words = [w.strip() for w in path.read_text(encoding="utf-8", errors="ignore").splitlines()]
    words = sorted({w for w in words if w.isalpha() and 3 <= len(w) <= 10 and w.lower() == w})
    if len(words) < n:
        raise SystemExit(f"{path} has only {len(words)} usable words; need {n}")
    return rng.sample(words, n)


# ----------------------------------------------------------------------------------------------
# General MIDI through fluidsynth


@dataclass
class Note:
    start: float  # seconds
    dur: float
    pitch: int
    vel: int
    channel: int = 0


@dataclass
class Phrase:
    """A short passage for one program; ``start`` is its position in the rendered file."""
    program: int
    notes: list[Note]
    start: float = 0.0

    @property
    def length(self) -> float:
        return max(n.start + n.dur for n in self.notes)


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def write_midi(phrases: list[Phrase], path: Path, gap: float) -> None:
    """A type-0 standard MIDI file (480 ticks/beat at 120 bpm, so 960 ticks/s) playing the phrases
    one after another, ``gap`` seconds apart; sets each phrase's ``start``."""
    events: list[tuple[int, int, bytes]] = []  # (tick, order, message); program changes sort first
    t = 0.5
    for ph in phrases:
        ph.start = t
        channels = sorted({n.channel for n in ph.notes})
        for ch in channels:
            if ch != 9:
                events.append((round(t * 960), 0, bytes([0xC0 | ch, ph.program])))
        for n in ph.notes:
            on, off = round((t + n.start) * 960), round((t + n.start + n.dur) * 960)
            events.append((on, 2, bytes([0x90 | n.channel, n.pitch, n.vel])))
            events.append((off, 1, bytes([0x80 | n.channel, n.pitch, 0])))
        t += ph.length + gap
    _write_events(events, path, gap)


def _write_events(events: list[tuple[int, int, bytes]], path: Path, tail: float) -> None:
    events.sort(key=lambda e: (e[0], e[1]))
    track, last = bytearray(), 0
    for tick, _, msg in events:
        track += _vlq(tick - last) + msg
        last = tick
    track += _vlq(round(tail * 960)) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480)
    path.write_bytes(header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track))


def fluidsynth(font: Path, midi: Path, rate: int) -> np.ndarray:
    """Render a MIDI file with a soundfont (reverb and chorus off, so cut phrases do not bleed)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = ["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(rate),
               "-F", str(wav), "-O", "s16", str(font), str(midi)]
        subprocess.run(cmd, check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    if sr != rate:
        raise SystemExit(f"fluidsynth wrote {sr} Hz, asked for {rate}")
    return audio.mean(axis=1)


def random_phrase(rng: random.Random, program: int, low: int, high: int) -> Phrase:
    """3-8 notes (sometimes two at once) in [low, high], 0.15-0.6 s each, within ~3 s."""
    notes, t = [], 0.0
    for _ in range(rng.randint(3, 8)):
        dur = rng.uniform(0.15, 0.6)
        pitch = rng.randint(low, high)
        vel = rng.randint(60, 120)
        notes.append(Note(t, dur, pitch, vel))
        if rng.random() < 0.25:
            notes.append(Note(t, dur, min(high, pitch + rng.choice([3, 4, 7])), vel))
        t += dur * rng.uniform(0.8, 1.2)
        if t > 2.6:
            break
    return Phrase(program, notes)


def random_song(rng: random.Random, seconds: float) -> Phrase:
    """A multi-part piece for the unlabeled corpus: a melody, a bass line, chords and GM drums."""
    notes: list[Note] = []
    beat = rng.uniform(0.25, 0.6)
    root = rng.randint(45, 57)
    scale = [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10]
    t = 0.0
    while t < seconds:
        degree = rng.randrange(7)
        chord = [root + scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        notes += [Note(t, beat * 4, p + 12, rng.randint(50, 80), 1) for p in chord]
        notes.append(Note(t, beat * 2, chord[0] - 12, rng.randint(70, 100), 2))
        for b in range(4):
            if rng.random() < 0.8:
                p = root + 24 + scale[rng.randrange(7)]
                notes.append(Note(t + b * beat, beat * rng.choice([0.5, 1.0]), p, rng.randint(70, 110), 0))
            drum = 36 if b % 2 == 0 else 38
            notes.append(Note(t + b * beat, 0.1, drum, rng.randint(80, 120), 9))
            notes.append(Note(t + b * beat + beat / 2, 0.05, 42, rng.randint(50, 90), 9))
        t += 4 * beat
    return Phrase(-1, notes)


def write_song_midi(song: Phrase, programs: tuple[int, int, int], path: Path) -> None:
    """One song, with a program per channel 0-2 (melody, chords, bass) and GM drums on channel 9."""
    events = [(0, 0, bytes([0xC0 | ch, programs[ch]])) for ch in range(3)]
    _write_events(events + _note_events(song.notes, 0.5), path, tail=1.0)


def _note_events(notes: list[Note], offset: float) -> list[tuple[int, int, bytes]]:
    out = []
    for n in notes:
        out.append((round((offset + n.start) * 960), 2, bytes([0x90 | n.channel, n.pitch, n.vel])))
        out.append((round((offset + n.start + n.dur) * 960), 1, bytes([0x80 | n.channel, n.pitch, 0])))
    return out


# ----------------------------------------------------------------------------------------------
# Hydrogen drum kits

DRUM_CLASSES = {  # class -> name fragments (lower case), checked in this order
    "clap": ("clap",),
    "kick": ("kick", "bass drum", "bassdrum", "bd "),
    "snare": ("snare",),
    "hihat": ("hh", "hat", "hi-hat"),
    "tom": ("tom",),
    "cymbal": ("crash", "ride", "splash", "cymbal", "china"),
}


def drum_class(name: str) -> str | None:
    """The class of a Hydrogen instrument name, or None for instruments outside the six classes."""
    low = name.lower()
    for cls, keys in DRUM_CLASSES.items():
        if any(k in low for k in keys):
            return cls
    return None


def kit_samples(kit: Path) -> list[tuple[str, Path]]:
    """``(class, sample file)`` for every layer of every classified instrument of a Hydrogen kit."""
    root = ET.parse(kit / "drumkit.xml").getroot()
    out = []
    for inst in root.iter():
        if not inst.tag.endswith("instrument"):
            continue
        name = next((c.text or "" for c in inst if c.tag.endswith("name")), "")
        cls = drum_class(name)
        if cls is None:
            continue
        for f in inst.iter():
            if f.tag.endswith("filename") and f.text and (kit / f.text).is_file():
                out.append((cls, kit / f.text))
    return sorted(set(out))


def drum_variant(audio: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A drum hit with a random pitch shift (+-2 semitones, by resampling), gain (-12..0 dB), a little
    noise (35-50 dB below the hit's peak) and at most 1.5 s long."""
    factor = 2 ** (rng.uniform(-2, 2) / 12)
    idx = np.arange(0, len(audio) - 1, factor)
    shifted = np.interp(idx, np.arange(len(audio)), audio).astype(np.float32)[: int(1.5 * sr)]
    peak = float(np.abs(shifted).max()) or 1.0
    noise = rng.standard_normal(len(shifted)).astype(np.float32) * peak * 10 ** (-rng.uniform(35, 50) / 20)
    out = (shifted + noise) * 10 ** (rng.uniform(-12, 0) / 20)
    return out / max(1.0, float(np.abs(out).max()) / 0.99)
