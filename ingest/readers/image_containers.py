"""The text an image file carries beside its pixels, read from the container itself.

PNG chunks (tEXt, zTXt, iTXt, eXIf and ComfyUI's private `comf`, before or after the image data),
JPEG segments (APP1 Exif, APP1 XMP, COM) and WebP chunks (EXIF, XMP) are walked here without
decoding any pixels; other formats fall back to what Pillow reports. Every read is bounded: a chunk
is read only up to MAX_CHUNK_BYTES, compressed text is inflated only up to MAX_CHUNK_TEXT, a file
yields at most MAX_TOTAL_TEXT of text, and at most MAX_CHUNKS chunks or segments are looked at. XMP
is hostile XML and is never given to an XML parser: the few fields the readers want are cut out
with plain string search, and only XML's five named entities and numeric references are decoded
(no DTD, so no entity expansion).

The result is a list of Entry(key, text, source): `key` is the name the format readers look for
("parameters", "prompt", "UserComment", "Software", ...), `source` says where it came from for
rejection messages ("PNG tEXt", "EXIF Model", "XMP").
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

MAX_CHUNK_BYTES = 32 * 2**20  # one stored chunk or segment read into memory
MAX_CHUNK_TEXT = 16 * 2**20  # one text value after decompression
MAX_TOTAL_TEXT = 64 * 2**20  # all text of one file (Pillow's PngImagePlugin.MAX_TEXT_MEMORY)
MAX_CHUNKS = 200_000  # PNG chunks, JPEG segments or RIFF chunks walked in one file
MAX_XMP = 4 * 2**20
MAX_IFD_ENTRIES = 4096

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TooLarge(Exception):
    """A compressed value that inflates past its cap."""


class NotAnImage(Exception):
    """The first bytes claim a format that the rest of the file does not follow."""


def inflate(data: bytes, limit: int, wbits: int = zlib.MAX_WBITS) -> bytes:
    """zlib (or gzip, wbits=31) data inflated to at most `limit` bytes; TooLarge past that, so a
    bomb costs `limit` bytes of work and memory, never its full size."""
    inflater = zlib.decompressobj(wbits)
    output = inflater.decompress(data, limit + 1)
    if len(output) > limit:
        raise TooLarge(f"decompresses to more than {limit:,} bytes")
    return output


@dataclass
class Entry:
    key: str
    text: str
    source: str


@dataclass
class Container:
    """What one file holds: its format (as Pillow names it), text entries in file order, the EXIF
    byte order when there is EXIF (UserComment's UTF-16 follows it), and what could not be read."""

    format: str
    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    exif_byte_order: str | None = None
    text_budget: int = MAX_TOTAL_TEXT

    def add(self, key: str, text: str, source: str) -> None:
        if len(text) > self.text_budget:
            self.problems.append(f"{source} {key!r} skipped: the file's text passed {MAX_TOTAL_TEXT:,} bytes")
            return
        self.text_budget -= len(text)
        self.entries.append(Entry(key, text, source))

    def get(self, key: str) -> str | None:
        for entry in self.entries:
            if entry.key == key:
                return entry.text
        return None

    def entry(self, key: str) -> Entry | None:
        for entry in self.entries:
            if entry.key == key:
                return entry
        return None

    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]


def sniff(head: bytes) -> str | None:
    """The container format from the first bytes, or None for anything else."""
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_container(handle, kind: str) -> Container:
    """Walk a PNG, JPEG or WebP file (an open binary file positioned at 0). NotAnImage when the
    file breaks its own format's first rules (no IHDR, say); damage further on is only noted."""
    container = Container(kind)
    try:
        if kind == "PNG":
            _read_png(handle, container)
        elif kind == "JPEG":
            _read_jpeg(handle, container)
        elif kind == "WEBP":
            _read_webp(handle, container)
    except (OSError, struct.error) as problem:
        container.problems.append(f"{kind} could not be read to the end: {problem}")
    return container


# --- text decoding -------------------------------------------------------------------------------


def _utf8_or_latin1(data: bytes) -> str:
    """PNG tEXt is Latin-1 by the spec, but several tools (TensorArt among them) write UTF-8 bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _utf16_order(body: bytes, byte_order: str | None) -> str:
    """'be' or 'le' for UTF-16 text without a BOM: the zero bytes of ASCII characters show which
    half comes first; the EXIF byte order breaks a tie (text with no ASCII at all)."""
    sample = body[:4096]
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if even > odd:
        return "be"
    if odd > even:
        return "le"
    return "le" if byte_order == "<" else "be"


def decode_user_comment(raw, byte_order: str | None = None) -> str | None:
    """EXIF UserComment: an 8-byte charset prefix, then the text. A1111, Easy Diffusion and the
    piexif-based saver nodes write UNICODE + UTF-16 big-endian; ImageSharp (SwarmUI) writes it in
    the file's (little-endian) byte order; Pillow-based savers write plain text with no prefix."""
    if isinstance(raw, str):
        return raw.rstrip("\0") or None
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None
    raw = bytes(raw)
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        if body[:2] == b"\xfe\xff":
            text = body[2:].decode("utf-16-be", "replace")
        elif body[:2] == b"\xff\xfe":
            text = body[2:].decode("utf-16-le", "replace")
        elif body and 0 not in body[:64] and len(body) % 2 == 1:
            text = body.decode("utf-8", "replace")  # UTF-8 under the UNICODE label (some writers)
        else:
            text = body.decode(f"utf-16-{_utf16_order(body, byte_order)}", "replace")
    elif prefix == b"ASCII\0\0\0":
        text = _utf8_or_latin1(body)  # tools write UTF-8 under the ASCII label
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", "replace")
    elif prefix == b"\0" * 8:
        zeros = body[:4096].count(0)
        if body and zeros > len(body[:4096]) // 4:
            text = body.decode(f"utf-16-{_utf16_order(body, byte_order)}", "replace")
        else:
            text = _utf8_or_latin1(body)
    else:
        text = _utf8_or_latin1(raw)
    return text.rstrip("\0") or None


# --- PNG -----------------------------------------------------------------------------------------


def _read_png(handle, container: Container) -> None:
    if handle.read(8) != PNG_SIGNATURE:
        raise NotAnImage("not a PNG signature")
    first = True
    for _ in range(MAX_CHUNKS):
        header = handle.read(8)
        if len(header) < 8:
            container.problems.append("the PNG ends before its IEND chunk")
            return
        length, kind = struct.unpack(">I4s", header)
        if first:
            if kind != b"IHDR":
                raise NotAnImage("the PNG does not start with an IHDR chunk")
            first = False
        if kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"comf"):
            if length > MAX_CHUNK_BYTES:
                container.problems.append(f"a {length:,}-byte PNG {kind.decode()} chunk was skipped")
                handle.seek(length + 4, 1)
                continue
            data = handle.read(length)
            if len(data) < length:
                container.problems.append(f"the PNG is cut short inside a {kind.decode()} chunk")
                return
            handle.seek(4, 1)  # CRC
            _png_text_chunk(kind, data, container)
        elif kind == b"IEND":
            return
        else:
            handle.seek(length + 4, 1)
    container.problems.append(f"more than {MAX_CHUNKS:,} PNG chunks; the rest were not read")


def _png_text_chunk(kind: bytes, data: bytes, container: Container) -> None:
    name = kind.decode()
    keyword, _, rest = data.partition(b"\0")
    key = keyword.decode("latin-1")
    try:
        if kind == b"tEXt":
            text = _utf8_or_latin1(rest)
        elif kind == b"comf":  # ComfyUI's animated PNGs: "prompt\0{json}" after the image data
            text = _utf8_or_latin1(rest)
        elif kind == b"zTXt":
            if rest[:1] != b"\0":
                container.problems.append(f"PNG zTXt {key!r} uses an unknown compression method")
                return
            text = _utf8_or_latin1(inflate(rest[1:], MAX_CHUNK_TEXT))
        elif kind == b"iTXt":
            if len(rest) < 2:
                return
            compressed, method, rest = rest[0], rest[1], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, rest = rest.partition(b"\0")
            if compressed:
                if method != 0:
                    container.problems.append(f"PNG iTXt {key!r} uses an unknown compression method")
                    return
                rest = inflate(rest, MAX_CHUNK_TEXT)
            text = rest.decode("utf-8", "replace")
        else:  # eXIf
            read_exif(data, container, "PNG eXIf")
            return
    except TooLarge as problem:
        container.problems.append(f"PNG {name} {key!r} {problem}; it was not read")
        return
    except zlib.error as problem:
        container.problems.append(f"PNG {name} {key!r} is damaged ({problem})")
        return
    if len(text) > MAX_CHUNK_TEXT:
        container.problems.append(f"PNG {name} {key!r} is longer than {MAX_CHUNK_TEXT:,} characters; it was not read")
        return
    if key == "XML:com.adobe.xmp":
        read_xmp(text, container, f"PNG {name} XMP")
    else:
        container.add(key, text, f"PNG {name}")


# --- JPEG ----------------------------------------------------------------------------------------

_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\0"


def _read_jpeg(handle, container: Container) -> None:
    if handle.read(2) != b"\xff\xd8":
        raise NotAnImage("not a JPEG")
    exif_seen = False
    for _ in range(MAX_CHUNKS):
        byte = handle.read(1)
        if not byte:
            return
        if byte != b"\xff":
            continue  # garbage between segments; keep looking for a marker
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes
            marker = handle.read(1)
        if not marker:
            return
        code = marker[0]
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
            continue  # markers without a length
        if code in (0xD9, 0xDA):  # end of image, start of scan: no metadata after this
            return
        size_bytes = handle.read(2)
        if len(size_bytes) < 2:
            return
        size = struct.unpack(">H", size_bytes)[0] - 2
        if size < 0:
            container.problems.append("a JPEG segment has a bad length")
            return
        if code in (0xE1, 0xFE):
            data = handle.read(size)
            if len(data) < size:
                container.problems.append("the JPEG is cut short inside a metadata segment")
                return
            if code == 0xFE:
                container.add("jpeg_comment", _utf8_or_latin1(data).rstrip("\0"), "JPEG COM")
            elif data.startswith(b"Exif\0\0") and not exif_seen:
                exif_seen = True
                read_exif(data[6:], container, "EXIF")
            elif data.startswith(_XMP_APP1):
                read_xmp(data[len(_XMP_APP1) :].decode("utf-8", "replace"), container, "XMP")
        else:
            handle.seek(size, 1)
    container.problems.append(f"more than {MAX_CHUNKS:,} JPEG segments; the rest were not read")


# --- WebP ----------------------------------------------------------------------------------------


def _read_webp(handle, container: Container) -> None:
    header = handle.read(12)
    if header[:4] != b"RIFF" or header[8:12] != b"WEBP":
        raise NotAnImage("not a WebP")
    for _ in range(MAX_CHUNKS):
        chunk = handle.read(8)
        if len(chunk) < 8:
            return
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        padded = size + (size & 1)
        if kind in (b"EXIF", b"XMP ") and size <= MAX_CHUNK_BYTES:
            data = handle.read(size)
            if len(data) < size:
                container.problems.append("the WebP is cut short inside a metadata chunk")
                return
            handle.seek(padded - size, 1)
            if kind == b"EXIF":
                read_exif(data, container, "EXIF")
            else:
                read_xmp(data.decode("utf-8", "replace"), container, "XMP")
        else:
            handle.seek(padded, 1)
    container.problems.append(f"more than {MAX_CHUNKS:,} WebP chunks; the rest were not read")


# --- EXIF ----------------------------------------------------------------------------------------

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_EXIF_POINTER = 0x8769
# IFD0 text tags that generators write (ComfyUI: prompt in Model, workflow in Make; SaveImage
# variants: ImageDescription; Fooocus: Software and MakerNote; Windows XP* tags are UTF-16LE).
_TEXT_TAGS = {
    0x010D: "DocumentName",
    0x010E: "ImageDescription",
    0x010F: "Make",
    0x0110: "Model",
    0x0131: "Software",
    0x013B: "Artist",
    0x8298: "Copyright",
    0x9286: "UserComment",
    0x927C: "MakerNote",
    0x9C9B: "XPTitle",
    0x9C9C: "XPComment",
    0x9C9F: "XPSubject",
}
# "prompt:{...}" / "Workflow: {...}" / "parameters:text" as ComfyUI's own WebP saver and the saver
# nodes write them into IFD0 text tags
_PREFIXED = re.compile(r"\A([A-Za-z_][\w\- ]{0,40}?):\s?(?=[\[{])|\A(parameters|Parameters):\s?")


def _ifd(data: bytes, offset: int, order: str) -> dict[int, tuple[int, bytes]]:
    """{tag: (type, raw value bytes)} for the tags we want from one IFD; out-of-range entries are skipped."""
    found: dict[int, tuple[int, bytes]] = {}
    if offset <= 0 or offset + 2 > len(data):
        return found
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    for index in range(min(count, MAX_IFD_ENTRIES)):
        start = offset + 2 + 12 * index
        if start + 12 > len(data):
            break
        tag, kind, number = struct.unpack(order + "HHI", data[start : start + 8])
        if tag not in _TEXT_TAGS and tag != _EXIF_POINTER:
            continue
        size = _TYPE_SIZES.get(kind, 1) * number
        if size <= 4:
            value = data[start + 8 : start + 8 + size]
        else:
            (where,) = struct.unpack(order + "I", data[start + 8 : start + 12])
            if where + size > len(data):
                continue
            value = data[where : where + size]
        found[tag] = (kind, value)
    return found


def read_exif(data: bytes, container: Container, source: str) -> None:
    """The text tags of IFD0 and the Exif IFD, decoded, as entries named after the tag."""
    if data.startswith(b"Exif\0\0"):
        data = data[6:]
    if data[:2] == b"II":
        order = "<"
    elif data[:2] == b"MM":
        order = ">"
    else:
        container.problems.append(f"{source} is not TIFF-structured")
        return
    if len(data) < 8 or struct.unpack(order + "H", data[2:4])[0] != 42:
        container.problems.append(f"{source} has a bad TIFF header")
        return
    (first,) = struct.unpack(order + "I", data[4:8])
    ifd0 = _ifd(data, first, order)
    exif_ifd = {}
    if _EXIF_POINTER in ifd0 and len(ifd0[_EXIF_POINTER][1]) == 4:
        (pointer,) = struct.unpack(order + "I", ifd0[_EXIF_POINTER][1])
        if pointer != first:
            exif_ifd = _ifd(data, pointer, order)
    # the Exif IFD's UserComment is the standard place; Fooocus and Pillow-based savers use IFD0
    for where, tags in (("Exif", exif_ifd), ("IFD0", ifd0)):
        for tag, (kind, value) in tags.items():
            if tag == _EXIF_POINTER:
                continue
            name = _TEXT_TAGS[tag]
            if name == "UserComment":
                text = decode_user_comment(value, order)
            elif name.startswith("XP"):
                text = value.decode("utf-16-le", "replace").rstrip("\0")
            else:
                text = _utf8_or_latin1(value).rstrip("\0")
            if not text:
                continue
            label = f"{source} {name}"
            container.add(name, text, label)
            if name != "UserComment":
                match = _PREFIXED.match(text)
                if match:
                    key = (match.group(1) or match.group(2)).strip().lower()
                    container.add(key, text[match.end() :], f"{label} ({key}:)")
    container.exif_byte_order = container.exif_byte_order or order


# --- XMP -----------------------------------------------------------------------------------------

_ENTITY = re.compile(r"&(#x[0-9A-Fa-f]{1,6}|#[0-9]{1,7}|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _unescape(text: str) -> str:
    """XML's predefined entities and character references only; anything a DTD might define is
    left as it stands (no entity expansion, so no billion laughs)."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name in _NAMED:
            return _NAMED[name]
        try:
            return chr(int(name[2:], 16) if name[1] in "xX" else int(name[1:]))
        except (ValueError, OverflowError):
            return match.group(0)

    return _ENTITY.sub(replace, text)


def _xmp_field(xmp: str, name: str) -> str | None:
    """The value of one XMP property, as an element (`<name>value</name>`, or the first `rdf:li`
    of an Alt/Seq/Bag inside it) or as an attribute (`name="value"`). Plain `str.find`, so linear."""
    start = xmp.find(f"<{name}")
    while start >= 0:
        after = start + len(name) + 1
        if after < len(xmp) and xmp[after] in "> \t\r\n/":
            break
        start = xmp.find(f"<{name}", after)
    if start >= 0:
        open_end = xmp.find(">", start)
        if open_end > 0 and xmp[open_end - 1] != "/":
            close = xmp.find(f"</{name}>", open_end)
            if close > 0:
                inner = xmp[open_end + 1 : close]
                item = inner.find("<rdf:li")
                if item >= 0:
                    item_end = inner.find(">", item)
                    item_close = inner.find("</rdf:li>", item_end)
                    if item_end > 0 and item_close > 0:
                        inner = inner[item_end + 1 : item_close]
                return _unescape(inner.strip() if "<" not in inner else inner)
    for quote in ('"', "'"):
        attribute = xmp.find(f"{name}={quote}")
        if attribute >= 0:
            value_start = attribute + len(name) + 2
            value_end = xmp.find(quote, value_start)
            if value_end > 0:
                return _unescape(xmp[value_start:value_end])
    return None


def read_xmp(xmp: str, container: Container, source: str) -> None:
    """CreatorTool, UserComment and description (Draw Things writes all three) out of an XMP packet."""
    if len(xmp) > MAX_XMP:
        container.problems.append(f"{source} is longer than {MAX_XMP:,} characters; it was not read")
        return
    for name, key in (
        ("xmp:CreatorTool", "CreatorTool"),
        ("exif:UserComment", "xmp_UserComment"),
        ("dc:description", "xmp_description"),
        ("tiff:ImageDescription", "xmp_ImageDescription"),
    ):
        value = _xmp_field(xmp, name)
        if value:
            container.add(key, value, f"{source} {name}")
