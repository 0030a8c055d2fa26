"""Mutated image files for fuzzing `predict` and the web API: small valid seeds of every supported format
and encoding, and byte-level mutations of them. Shared by tests/test_fuzz.py (a bounded run) and
tests/fuzz_campaign.py (a long one). Not part of the shipped package."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Values that tend to break parsers when they land in a size, offset, count or tag type.
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
               b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00",
               b"\x00\x00\x01\x00", b"\x01\x00", b"\x00\x01"]


def picture(width: int = 40, height: int = 30) -> np.ndarray:
    """A dark shape on a light, slightly uneven background (RGB uint8): every preprocessing step has work."""
    x = np.full((height, width, 3), 230, np.uint8)
    x[:, : width // 2] -= 20
    x[height // 5: 4 * height // 5, width // 4: 3 * width // 4] = (40, 60, 90)
    return x


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def seeds(width: int = 40, height: int = 30) -> dict[str, bytes]:
    """One small valid file per format, mode and encoding that `predict` accepts."""
    rgb = Image.fromarray(picture(width, height))
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.asarray(gray) < 200).astype(np.uint8) * 255))
    gray16 = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    floats = Image.fromarray(np.asarray(gray).astype(np.float32) / 255)
    frames = [rgb.quantize(8), Image.new("P", rgb.size)]
    found = {
        "png-rgb": encode(rgb, "PNG"), "png-gray": encode(gray, "PNG"), "png-rgba": encode(rgba, "PNG"),
        "png-palette": encode(rgb.quantize(8), "PNG"), "png-16": encode(gray16, "PNG"),
        "png-interlaced": encode(rgb, "PNG", interlace=1),
        "jpeg": encode(rgb, "JPEG", quality=80), "jpeg-gray": encode(gray, "JPEG"),
        "jpeg-progressive": encode(rgb, "JPEG", progressive=True), "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "gif": encode(rgb, "GIF"),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "bmp": encode(rgb, "BMP"), "bmp-gray": encode(gray, "BMP"), "bmp-rle": encode(rgb.quantize(8), "BMP"),
        "webp": encode(rgb, "WEBP", quality=80), "webp-lossless": encode(rgba, "WEBP", lossless=True),
        "tiff": encode(rgb, "TIFF"), "tiff-gray": encode(gray, "TIFF"), "tiff-16": encode(gray16, "TIFF"),
        "tiff-float": encode(floats, "TIFF"), "tiff-rgba": encode(rgba, "TIFF"),
        "tiff-cmyk": encode(rgb.convert("CMYK"), "TIFF"), "tiff-palette": encode(rgb.quantize(8), "TIFF"),
    }
    for compression in ("tiff_lzw", "tiff_deflate", "packbits", "jpeg"):
        found[f"tiff-{compression}"] = encode(rgb, "TIFF", compression=compression)
    found["tiff-float-deflate"] = encode(floats, "TIFF", compression="tiff_adobe_deflate")
    found["tiff-16-lzw"] = encode(gray16, "TIFF", compression="tiff_lzw")
    return found


def mutate(data: bytes, rng: np.random.Generator, max_edits: int = 4) -> bytes:
    """data with 1 to max_edits random edits: bit flips, random or interesting bytes overwritten, bytes
    inserted, deleted or duplicated, or the tail cut off."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, max_edits + 1))):
        if not out:
            break
        at = int(rng.integers(0, len(out)))
        kind = int(rng.integers(0, 7))
        if kind == 0:
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            out[at] = int(rng.integers(0, 256))
        elif kind == 2:
            value = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
            out[at:at + len(value)] = value
        elif kind == 3:
            out[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        elif kind == 4:
            del out[at:at + int(rng.integers(1, 9))]
        elif kind == 5:
            length = int(rng.integers(1, 33))
            out[at:at] = out[at:at + length]
        else:
            del out[at:]
    return bytes(out)


def mutants(n: int, seed: int) -> list[tuple[str, bytes]]:
    """n mutated files, (seed name, bytes), cycling through every seed format."""
    rng = np.random.default_rng(seed)
    sources = list(seeds().items())
    return [(name, mutate(data, rng)) for name, data in (sources[i % len(sources)] for i in range(n))]
