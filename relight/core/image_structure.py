"""Checking an encoded image's structure without decoding its pixels (what submit does).

The API accepts an inline subject on the strength of this walk: the container is complete
(every JPEG segment, PNG chunk and RIFF chunk lies inside the bytes, with valid CRCs where the
format has them), the header's size is within the pixel limit, and the compressed data can
hold that many pixels. A PNG's zlib stream is inflated in bounded pieces and thrown away, so
its length is checked exactly; a JPEG's entropy-coded data must hold at least one bit per
8×8 block (a Huffman-coded JPEG spends at least that on DC coefficients), which a truncated
file declaring 6000×6600 in 631 bytes does not. Memory stays at a few hundred kilobytes
whatever the image; no pixel buffer is ever made. The worker decodes, with bounded memory
(`relight.core.images.decode_image`).

Hand-written because Pillow offers no check short of decoding (`Image.verify` covers PNG CRCs
only, and `load` allocates every pixel), and a truncated JPEG still decodes, grey-filled.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from relight.core.errors import ImageTooLarge, InvalidImage, RelightError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Huffman-coded JPEG: baseline, extended sequential, progressive. Arithmetic coding (which
# could describe any number of blocks in a few bytes) and lossless JPEG are refused.
JPEG_FRAMES = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
JPEG_UNSUPPORTED_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Bit depths PNG allows per colour type, and the channels of each.
PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x start, y start, x step, y step).
ADAM7 = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
]
INFLATE_PIECE = 1 << 20
VP8X_ANIMATION_FLAG = 0x02


@dataclass(frozen=True)
class ImageHeader:
    format: str  # JPEG, PNG or WEBP
    width: int
    height: int
    bits_per_sample: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's magic bytes, or None when it is not one we take."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def verify_field_structure(
    field: str, data: bytes, *, max_bytes: int, max_pixels: int
) -> ImageHeader:
    """`verify_structure`, its errors naming `field` (the request field the image came in)."""
    try:
        return verify_structure(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except RelightError as exc:
        if field != "subject_image":
            # The checks speak of the subject; this image came in another field.
            exc.message = exc.message.replace("subject_image", field)
            exc.args = (exc.message,)
        raise


def verify_structure(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageHeader:
    """The image's header, once its structure checks out; InvalidImage (400) or
    ImageTooLarge (413) otherwise. Never decodes pixels."""
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"subject_image is {len(data)} bytes; the limit is {max_bytes} bytes",
            extra={"limit_bytes": max_bytes},
        )
    if not data:
        raise InvalidImage("subject_image is empty")
    fmt = sniff_format(data)
    try:
        if fmt == "JPEG":
            return _jpeg(data, max_pixels)
        if fmt == "PNG":
            return _png(data, max_pixels)
        if fmt == "WEBP":
            return _webp(data, max_pixels)
    except struct.error as exc:
        raise InvalidImage("subject_image is truncated (a header is cut short)") from exc
    raise InvalidImage("subject_image is not a JPEG, PNG or WebP image")


def _check_pixels(header: ImageHeader, max_pixels: int) -> ImageHeader:
    if header.width < 1 or header.height < 1:
        raise InvalidImage(f"subject_image declares an empty size ({header.width}x{header.height})")
    if header.pixels > max_pixels:
        raise ImageTooLarge(
            f"subject_image is {header.width}x{header.height} = {header.pixels} pixels; "
            f"the limit is {max_pixels} pixels",
            extra={"limit_pixels": max_pixels},
        )
    return header


def _truncated(fmt: str, where: str) -> InvalidImage:
    return InvalidImage(f"subject_image is a truncated or damaged {fmt}: {where}")


# --- JPEG ----------------------------------------------------------------------------------


def _jpeg(data: bytes, max_pixels: int) -> ImageHeader:
    header: ImageHeader | None = None
    entropy_bytes = 0
    position = 2
    end = len(data)
    while True:
        if position >= end:
            raise _truncated("JPEG", "it ends before its end-of-image marker")
        if data[position] != 0xFF:
            raise _truncated("JPEG", f"no marker at byte {position}")
        while position < end and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= end:
            raise _truncated("JPEG", "it ends inside a marker")
        marker = data[position]
        position += 1
        if marker == 0xD9:  # end of image
            break
        if marker == 0xD8 or marker == 0x00:
            raise _truncated("JPEG", f"unexpected marker 0x{marker:02X}")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if position + 2 > end:
            raise _truncated("JPEG", "it ends inside a segment header")
        (length,) = struct.unpack(">H", data[position : position + 2])
        if length < 2 or position + length > end:
            raise _truncated("JPEG", f"segment 0x{marker:02X} runs past the end of the file")
        segment = data[position + 2 : position + length]
        position += length
        if marker in JPEG_UNSUPPORTED_FRAMES:
            raise InvalidImage(
                "subject_image uses a JPEG coding that is not supported (arithmetic or "
                "lossless); send a baseline or progressive JPEG"
            )
        if marker in JPEG_FRAMES:
            if header is not None:
                raise _truncated("JPEG", "it has more than one frame header")
            precision, height, width = struct.unpack(">BHH", segment[:5])
            if height == 0:
                raise InvalidImage("subject_image declares its height later (DNL); not supported")
            header = _check_pixels(ImageHeader("JPEG", width, height, precision), max_pixels)
        elif marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            if header is None:
                raise _truncated("JPEG", "a scan comes before the frame header")
            scan_end = end_of_entropy_data(data, position)
            if scan_end is None:
                raise _truncated("JPEG", "it ends inside its image data")
            entropy_bytes += scan_end - position
            position = scan_end
    if header is None or entropy_bytes == 0:
        raise _truncated("JPEG", "it has no image data")
    blocks = -(-header.width // 8) * -(-header.height // 8)
    if entropy_bytes * 8 < blocks:
        raise _truncated(
            "JPEG",
            f"{entropy_bytes} bytes of image data cannot hold {header.width}x{header.height} "
            "pixels (at least one bit per 8x8 block)",
        )
    return header


def end_of_entropy_data(data: bytes, position: int) -> int | None:
    """Where the marker after a scan's data starts (0xFF then neither 0x00, a restart marker,
    nor a fill byte), or None when the data runs to the end of the file."""
    while True:
        found = data.find(b"\xff", position)
        if found < 0 or found + 1 >= len(data):
            return None
        following = data[found + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            position = found + 2
        elif following == 0xFF:
            position = found + 1
        else:
            return found


# --- PNG -----------------------------------------------------------------------------------


def _png(data: bytes, max_pixels: int) -> ImageHeader:
    position = len(PNG_SIGNATURE)
    header: ImageHeader | None = None
    color_type = interlace = 0
    seen_palette = seen_data = data_ended = False
    inflater = zlib.decompressobj()
    inflated = 0
    expected = 0
    while True:
        if position + 8 > len(data):
            raise _truncated("PNG", "it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        chunk_end = position + 12 + length
        if length > 0x7FFFFFFF or chunk_end > len(data):
            raise _truncated("PNG", f"chunk {kind!r} runs past the end of the file")
        payload = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[chunk_end - 4 : chunk_end])
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise _truncated("PNG", f"chunk {kind!r} fails its CRC")
        position = chunk_end
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise _truncated("PNG", "it does not start with IHDR")
            width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
                ">IIBBBBB", payload
            )
            if depth not in PNG_DEPTHS.get(color_type, set()) or compression or filtering:
                raise InvalidImage(
                    f"subject_image has an invalid PNG header (bit depth {depth}, "
                    f"colour type {color_type})"
                )
            if interlace not in (0, 1):
                raise InvalidImage("subject_image has an invalid PNG interlace method")
            header = _check_pixels(ImageHeader("PNG", width, height, depth), max_pixels)
            expected = _png_data_size(header, PNG_CHANNELS[color_type], interlace)
        elif kind == b"PLTE":
            seen_palette = True
        elif kind == b"acTL":
            raise InvalidImage("animated images are not supported; send a single frame")
        elif kind == b"IDAT":
            if data_ended:
                raise _truncated("PNG", "its IDAT chunks are not consecutive")
            if color_type == 3 and not seen_palette:
                raise _truncated("PNG", "a palette image without a palette")
            seen_data = True
            inflated += _inflate_counting(inflater, payload, expected - inflated)
        elif kind == b"IEND":
            break
        elif seen_data:
            data_ended = True
    if not seen_data:
        raise _truncated("PNG", "it has no image data")
    if not inflater.eof or inflated != expected:
        raise _truncated(
            "PNG", f"its image data holds {inflated} of the {expected} bytes its size needs"
        )
    assert header is not None
    return header


def _png_data_size(header: ImageHeader, channels: int, interlace: int) -> int:
    """Bytes of filtered scanlines a PNG of this header must inflate to."""
    bits = channels * header.bits_per_sample
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    total = 0
    for x0, y0, dx, dy in passes:
        columns = max(0, -(-(header.width - x0) // dx))
        rows = max(0, -(-(header.height - y0) // dy))
        if columns and rows:
            total += rows * (1 + -(-(columns * bits) // 8))
    return total


def _inflate_counting(inflater: zlib._Decompress, payload: bytes, room: int) -> int:
    """Inflate `payload` in bounded pieces, keeping none of it; the bytes it produced. More
    than `room` (what the header allows) is damage, so it stops there."""
    produced = 0
    pending = payload
    try:
        while pending and not inflater.eof:
            out = inflater.decompress(pending, INFLATE_PIECE)
            produced += len(out)
            if produced > room:
                raise _truncated("PNG", "its image data is longer than its size allows")
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise _truncated("PNG", f"its image data is not a valid zlib stream ({exc})") from exc
    return produced


# --- WebP ----------------------------------------------------------------------------------


def _webp(data: bytes, max_pixels: int) -> ImageHeader:
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data):
        raise _truncated("WebP", "its RIFF header promises more bytes than there are")
    end = riff_size + 8
    position = 12
    header: ImageHeader | None = None
    canvas: tuple[int, int] | None = None
    while position + 8 <= end:
        kind, size = struct.unpack("<4sI", data[position : position + 8])
        body_start = position + 8
        body_end = body_start + size
        if body_end > end:
            raise _truncated("WebP", f"chunk {kind!r} runs past the end of the file")
        body = data[body_start:body_end]
        position = body_end + (size & 1)
        if kind == b"VP8X":
            # Found by fuzzing: a VP8X chunk shorter than its 10 bytes was an IndexError (500).
            if len(body) < 10:
                raise _truncated("WebP", "its VP8X header is damaged")
            flags = body[0]
            if flags & VP8X_ANIMATION_FLAG:
                raise InvalidImage("animated images are not supported; send a single frame")
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
            canvas = (width, height)
            _check_pixels(ImageHeader("WEBP", width, height, 8), max_pixels)
        elif kind in (b"ANIM", b"ANMF"):
            raise InvalidImage("animated images are not supported; send a single frame")
        elif kind == b"VP8 " and header is None:
            if len(body) < 10 or body[3:6] != b"\x9d\x01\x2a":
                raise _truncated("WebP", "its VP8 frame header is damaged")
            width, height = struct.unpack("<HH", body[6:10])
            header = ImageHeader("WEBP", width & 0x3FFF, height & 0x3FFF, 8)
        elif kind == b"VP8L" and header is None:
            if len(body) < 5 or body[0] != 0x2F:
                raise _truncated("WebP", "its VP8L header is damaged")
            (bits,) = struct.unpack("<I", body[1:5])
            header = ImageHeader("WEBP", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), 8)
    if position < end:
        raise _truncated("WebP", "it ends inside a chunk header")
    if header is None:
        raise _truncated("WebP", "it has no VP8 or VP8L image data")
    if canvas is not None and canvas != (header.width, header.height):
        raise InvalidImage("subject_image's WebP canvas and frame sizes differ")
    return _check_pixels(header, max_pixels)
