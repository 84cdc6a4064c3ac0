"""Removing metadata (EXIF with GPS, XMP, IPTC, comments, text chunks) from stored images
without re-encoding them: the pixels, and so the results, stay exactly as sent.

Only the EXIF orientation survives, in a minimal EXIF block of its own, because it decides
which way up the image is. Colour profiles (ICC) are kept: they are not personal data and they
change how the pixels look.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from relight.core.image_structure import end_of_entropy_data, sniff_format
from relight.core.pillow_settings import configure_pillow

configure_pillow()

ORIENTATION_TAG = 0x0112
# JPEG segments kept: APP0 (JFIF), APP2 (ICC profile only: an MPO's APP2 "MPF" index of further
# pictures goes), APP14 (Adobe colour transform).
JPEG_KEEP = {0xE0, 0xE2, 0xEE}
ICC_PROFILE = b"ICC_PROFILE\0"
PNG_DROP = {b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"}
WEBP_DROP = {b"EXIF", b"XMP "}
VP8X_EXIF_FLAG = 0x08
VP8X_XMP_FLAG = 0x04


def orientation_of(data: bytes) -> int:
    try:
        if sniff_format(data) == "PNG":
            # Pillow's PNG `getexif` decodes every pixel to find an eXIf after the image
            # data; the API never decodes, so the chunk is looked up here.
            exif = Image.Exif()
            raw = _png_exif(data)
            if raw:
                exif.load(raw)
            value = exif.get(ORIENTATION_TAG, 1)
        else:
            with Image.open(io.BytesIO(data)) as image:
                value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_exif(data: bytes) -> bytes | None:
    """The payload of a PNG's eXIf chunk, wherever it is, or None."""
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"eXIf":
            return data[position + 8 : position + 8 + length]
        if kind == b"IEND":
            break
        position += 12 + length
    return None


def minimal_exif(orientation: int) -> bytes:
    """An EXIF block (with its `Exif\\0\\0` header) that holds only the orientation."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()


def strip_metadata(data: bytes) -> bytes:
    """The same image without metadata; unknown or damaged files come back unchanged."""
    fmt = sniff_format(data)
    try:
        if fmt == "JPEG":
            return _strip_jpeg(data, orientation_of(data))
        if fmt == "PNG":
            return _strip_png(data, orientation_of(data))
        if fmt == "WEBP":
            return _strip_webp(data, orientation_of(data))
    except (IndexError, struct.error, ValueError):
        return data
    return data


def _strip_jpeg(data: bytes, orientation: int) -> bytes:
    """The primary picture's segments without metadata, up to its end (EOI).

    What follows the EOI goes: a multi-picture file's (MPO, as phones write) further pictures
    with their own EXIF and GPS, or appended bytes. Scans are copied as they are (progressive
    JPEGs have several, with tables between them).
    """
    out = bytearray(data[:2])  # SOI
    if orientation != 1:
        block = minimal_exif(orientation)
        out += b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block
    position = 2
    while position < len(data):
        if data[position] != 0xFF:
            raise ValueError("not at a JPEG marker")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:  # EOI: the primary picture ends here
            out += data[position : position + 2]
            return bytes(out)
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            out += data[position : position + 2]
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker == 0xDA:  # start of scan: its header, then entropy-coded data
            scan_end = end_of_entropy_data(data, position + 2 + length)
            if scan_end is None:  # the data runs to the end of the file (no EOI)
                out += data[position:]
                return bytes(out)
            out += data[position:scan_end]
            position = scan_end
            continue
        segment = data[position : position + 2 + length]
        is_app_or_comment = 0xE0 <= marker <= 0xEF or marker == 0xFE
        keep = not is_app_or_comment or marker in JPEG_KEEP
        if marker == 0xE2 and not segment[4:].startswith(ICC_PROFILE):
            keep = False
        if keep:
            out += segment
        position += 2 + length
    return bytes(out)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _strip_png(data: bytes, orientation: int) -> bytes:
    out = bytearray(data[:8])
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if kind == b"IDAT" and orientation != 1:
            out += _png_chunk(b"eXIf", minimal_exif(orientation)[len(b"Exif\x00\x00") :])
            orientation = 1
        if kind not in PNG_DROP:
            out += data[position:end]
        position = end
        if kind == b"IEND":
            break
    return bytes(out)


def _strip_webp(data: bytes, orientation: int) -> bytes:
    chunks = bytearray()
    position = 12
    # Only the chunks inside the RIFF size are the image (what `verify_structure` checks);
    # found by fuzzing: bytes after it were kept as a chunk, and the result no longer verified.
    (riff_size,) = struct.unpack("<I", data[4:8])
    riff_end = min(len(data), 8 + riff_size)
    while position + 8 <= riff_end:
        kind = data[position : position + 4]
        (size,) = struct.unpack("<I", data[position + 4 : position + 8])
        end = position + 8 + size + (size & 1)
        chunk = bytearray(data[position:end])
        if kind == b"VP8X":
            chunk[8] &= ~(VP8X_EXIF_FLAG | VP8X_XMP_FLAG) & 0xFF
            if orientation != 1:
                chunk[8] |= VP8X_EXIF_FLAG
        if kind not in WEBP_DROP:
            chunks += chunk
        position = end
    if orientation != 1 and data[12:16] == b"VP8X":
        payload = minimal_exif(orientation)[len(b"Exif\x00\x00") :]
        chunks += b"EXIF" + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + bytes(chunks)
