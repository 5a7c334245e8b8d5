"""Container checks libsndfile does not make: audio data cut short, and MP3 streams with broken frames.

libsndfile shrinks the frame count of a WAV or AIFF whose file ends before its data chunk does, so a file
cut to half its bytes decodes as a shorter clip without any error. Here the chunk's declared size is
compared with the bytes present. An MP3 has no length field at all: mpg123 skips over garbage and resyncs,
again without an error, so the MPEG frame chain is walked header to header; a gap in it (garbage, a cut)
or a last frame cut short means audio was lost. FLAC and Ogg need no check here: libsndfile reports their
damage itself (the decoder loses sync, or the stream is malformed).

Every check returns ``None`` for a sound file, or a short reason (the sharder lists it as the skip reason).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

_MAX_HEADER_CHUNKS = 64  # chunks scanned before the data chunk (fmt, fact, LIST, bext, JUNK, ...)
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size unset: nothing to compare

# MPEG audio: bitrates (kbit/s) by (MPEG-1?, layer) and index; sample rates by version; samples per frame.
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_TRAILER_SLACK = 512  # junk allowed after the last frame besides the tags (some encoders pad)


def check_container(path: str | Path, fmt: str) -> str | None:
    """The reason ``path`` (libsndfile format name ``fmt``) lost audio, or ``None`` when it did not."""
    fmt = fmt.upper()
    try:
        if fmt in ("WAV", "WAVEX", "RF64"):
            return check_wav(path)
        if fmt == "AIFF":
            return check_aiff(path)
        if fmt == "MP3":
            return check_mp3(path)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    return None


def _shortfall(declared: int, start: int, size: int, what: str) -> str | None:
    present = max(0, size - start)
    if present < declared:
        return f"truncated: the {what} holds {present} of the {declared} bytes its header declares"
    return None


def check_wav(path: str | Path) -> str | None:
    """RIFF/RF64 WAV: the ``data`` chunk's size (RF64: the ``ds64`` chunk's) against the bytes present."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        riff = fh.read(12)
        if len(riff) < 12 or riff[8:12] != b"WAVE" or riff[:4] not in (b"RIFF", b"RF64", b"RIFX"):
            return None
        order = ">" if riff[:4] == b"RIFX" else "<"
        ds64_data = None
        for _ in range(_MAX_HEADER_CHUNKS):
            header = fh.read(8)
            if len(header) < 8:
                return None  # no data chunk at all: libsndfile has already refused such a file
            chunk, length = header[:4], struct.unpack(order + "I", header[4:])[0]
            if chunk == b"ds64":
                body = fh.read(length)
                ds64_data = struct.unpack("<Q", body[8:16])[0] if len(body) >= 16 else None
                fh.seek(length % 2, os.SEEK_CUR)
                continue
            if chunk == b"data":
                declared = ds64_data if length == 0xFFFFFFFF and ds64_data is not None else length
                if declared in _UNKNOWN_SIZES:
                    return None
                return _shortfall(declared, fh.tell(), size, "WAV data chunk")
            fh.seek(length + length % 2, os.SEEK_CUR)
    return None


def check_aiff(path: str | Path) -> str | None:
    """AIFF/AIFF-C: the ``SSND`` chunk's size against the bytes present."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        form = fh.read(12)
        if len(form) < 12 or form[:4] != b"FORM" or form[8:12] not in (b"AIFF", b"AIFC"):
            return None
        for _ in range(_MAX_HEADER_CHUNKS):
            header = fh.read(8)
            if len(header) < 8:
                return None
            chunk, length = header[:4], struct.unpack(">I", header[4:])[0]
            if chunk == b"SSND":
                if length in _UNKNOWN_SIZES:
                    return None
                return _shortfall(length, fh.tell(), size, "AIFF SSND chunk")
            fh.seek(length + length % 2, os.SEEK_CUR)
    return None


def mpeg_frame(header: bytes) -> tuple[int, int] | None:
    """``(frame bytes, samples)`` of the MPEG audio frame starting with these 4 bytes, or ``None``."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, or free format (no length to follow)
    layer, mpeg1 = 4 - layer_bits, version == 3
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384
    samples = 1152 if layer == 2 or mpeg1 else 576
    return samples // 8 * bitrate // rate + padding, samples


def _id3v2_size(data: bytes) -> int:
    if len(data) >= 10 and data[:3] == b"ID3":
        footer = 10 if data[5] & 0x10 else 0
        return 10 + footer + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | data[9] & 0x7F)
    return 0


def _audio_end(data: bytes) -> int:
    """Where the MPEG frames end: before an ID3v1 tag and an APEv2 tag at the end of the file."""
    end = len(data)
    if end >= 128 and data[end - 128 : end - 125] == b"TAG":
        end -= 128
    if end >= 32 and data[end - 32 : end - 24] == b"APETAGEX":
        end -= 32 + struct.unpack("<I", data[end - 20 : end - 16])[0]
    return max(end, 0)


def check_mp3(path: str | Path) -> str | None:
    """Walk the MPEG frame chain from the first frame to the end of the audio; report a gap or a cut frame."""
    data = Path(path).read_bytes()
    pos, end = _id3v2_size(data), _audio_end(data)
    while pos < end and mpeg_frame(data[pos : pos + 4]) is None:  # padding before the first frame
        pos += 1
        if pos > _TRAILER_SLACK + _id3v2_size(data):
            return None  # not a plain MPEG stream we can follow: leave it to the decoder
    frames = 0
    while pos < end:
        frame = mpeg_frame(data[pos : pos + 4])
        if frame is None:
            if end - pos <= _TRAILER_SLACK and frames:
                return None  # a little junk after the last frame loses no audio
            return f"garbled: the MPEG frame chain breaks at byte {pos} of {len(data)} after {frames} frames " \
                   "(audio lost where the decoder resyncs)"
        if pos + frame[0] > end:
            return f"truncated: the last MPEG frame (at byte {pos}) needs {frame[0]} bytes, {end - pos} present"
        pos += frame[0]
        frames += 1
    return None
