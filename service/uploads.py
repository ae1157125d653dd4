"""Streaming multipart/form-data intake: parts go straight to files in a staging directory, so memory
stays flat whatever the upload size, and the size limit is enforced while bytes arrive (413 at once).

Original file names are not kept (they may hold patient names); files are stored as `0000.<ext>` with the
extension taken from the name, which the readers use only as a hint beside the content.

A multi-channel model takes one field per input channel, `image.<channel>` (e.g. `image.flair`), stored
under `image/<channel>/`. Which channels a model wants is checked by the route, once the model is known.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import parse_options_header

from models.card import ModelCard, input_channels
from segserve.storage import DiskReserve
from service.disk import close_upload_file, write_chunk
from service.multipart_feed import PartCollector, feed_multipart
from service.problems import Problem

FILE_FIELDS = ("image", "reference")
TEXT_FIELDS = ("model", "priority")
CHANNEL_PREFIX = "image."
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
_MAX_CHANNELS = 16
_MAX_TEXT_BYTES = 4096
_MAX_PARTS = 10_000
_EXT = re.compile(r"(\.nii\.gz|\.nii|\.mgz|\.mgh|\.nrrd|\.zip|\.dcm|\.dicom|\.ima)$", re.IGNORECASE)


@dataclass
class ParsedUpload:
    """What the form held: text fields, and for each file field the stored file names in order.

    ``files`` is keyed by the folder under ``root`` holding the field's files: "image", "reference", and
    "image/<channel>" for each `image.<channel>` field.
    """

    root: Path
    text: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=lambda: {f: [] for f in FILE_FIELDS})
    total_bytes: int = 0

    @property
    def channels(self) -> dict[str, list[str]]:
        """Channel name -> stored file names, for the `image.<channel>` fields, in upload order."""
        return {k.split("/", 1)[1]: v for k, v in self.files.items() if k.startswith("image/")}


def _stored_name(index: int, filename: str) -> str:
    match = _EXT.search(filename)
    return f"{index:04d}{match.group(1).lower() if match else ''}"


class _Collector:
    def __init__(self, root: Path, max_bytes: int, reserve: DiskReserve | None) -> None:
        self.result = ParsedUpload(root=root)
        self._max_bytes = max_bytes
        self._reserve = reserve
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None
        self._file: IO[bytes] | None = None
        self._text = bytearray()
        self._parts = 0
        self.error: Problem | None = None

    # python-multipart callbacks
    def on_part_begin(self) -> None:
        self._headers = {}
        self._field = None
        self._text = bytearray()
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise Problem(413, f"too many form parts (more than {_MAX_PARTS})", code="too_many_parts")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        folder = name if name in FILE_FIELDS else self._channel_folder(name)
        if folder is not None:
            if filename is None:
                raise Problem(422, f"form field '{name}' must be a file upload", code="field_not_a_file")
            names = self.result.files.setdefault(folder, [])
            stored = _stored_name(len(names), filename.decode("utf-8", "replace"))
            directory = self.result.root / folder
            directory.mkdir(parents=True, exist_ok=True)
            self._file = (directory / stored).open("wb")
            names.append(stored)
        elif name in TEXT_FIELDS:
            if filename is not None:
                raise Problem(422, f"form field '{name}' must be text, not a file", code="field_not_text")
        else:
            expected = ", ".join((*TEXT_FIELDS, *FILE_FIELDS, f"{CHANNEL_PREFIX}<channel>"))
            raise Problem(422, f"unknown form field '{name}'; expected {expected}", code="unknown_field")
        self._field = name

    def _channel_folder(self, name: str) -> str | None:
        """The folder of an `image.<channel>` field, "image/<channel>" (lower-cased); None for others."""
        if not name.startswith(CHANNEL_PREFIX):
            return None
        channel = name[len(CHANNEL_PREFIX) :].lower()
        if not _CHANNEL.fullmatch(channel):
            raise Problem(
                422,
                f"form field '{name}': a channel name is 1-32 letters, digits or '_' (e.g. image.flair)",
                code="bad_channel_name",
            )
        folder = f"image/{channel}"
        if folder not in self.result.files and len(self.result.channels) >= _MAX_CHANNELS:
            raise Problem(422, f"more than {_MAX_CHANNELS} image channels", code="too_many_channels")
        return folder

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        self.result.total_bytes += size
        if self.result.total_bytes > self._max_bytes:
            raise Problem(
                413, f"upload exceeds the limit of {self._max_bytes} bytes", code="upload_too_large"
            )
        if self._file is not None:
            write_chunk(self._file, data[start:end], self._reserve, "jobs")
        else:
            self._text += data[start:end]
            if len(self._text) > _MAX_TEXT_BYTES:
                raise Problem(422, f"form field '{self._field}' is too long", code="field_too_long")

    def on_part_end(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            close_upload_file(file)
        elif self._field is not None:
            if self._field in self.result.text:
                raise Problem(422, f"form field '{self._field}' given twice", code="duplicate_field")
            self.result.text[self._field] = self._text.decode("utf-8", "replace").strip()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            close_upload_file(file)


async def receive_form(
    content_type: str,
    body: AsyncIterator[bytes],
    root: Path,
    max_bytes: int,
    reserve: DiskReserve | None = None,
    observer: PartCollector | None = None,
) -> ParsedUpload:
    """Parse a multipart body into `root` (`observer` sees every part too, see feed_multipart). Raises
    Problem (415, 413, 422, 400) on bad input, 507 when a file part would cross the disk `reserve` or the
    disk is full; the caller removes `root` on failure."""
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise Problem(
            415,
            f"expected multipart/form-data, got {media_type.decode('latin-1') or 'no content type'}",
            code="unsupported_media_type",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary", code="bad_multipart")
    collector = _Collector(root, max_bytes, reserve)
    await feed_multipart(collector, boundary, body, "multipart/form-data", observer)
    return collector.result


def check_image_parts(card: ModelCard, form: ParsedUpload) -> tuple[str, ...]:
    """Check that the form's image parts are what the model takes; return its input channels in order.

    A one-image model (returns ()) takes the `image` field and no `image.<channel>` field; a multi-channel
    model takes exactly one `image.<channel>` field per input channel (each one or more files) and no
    `image` field. Raises a 422 Problem naming the missing or unexpected fields.
    """
    wanted = input_channels(card)
    given = form.channels
    expected = ", ".join(f"{CHANNEL_PREFIX}{c}" for c in wanted)
    if not wanted:
        if given:
            fields = ", ".join(f"{CHANNEL_PREFIX}{c}" for c in given)
            raise Problem(
                422,
                f"model '{card.id}' takes one scan in the form field 'image', not channel fields ({fields})",
                code="unexpected_channel",
            )
        if not form.files["image"]:
            raise Problem(422, "missing form field 'image' (the scan file or files)", code="missing_image")
        return ()
    if form.files["image"]:
        raise Problem(
            422,
            f"model '{card.id}' takes one form field per input channel ({expected}), not 'image'",
            code="channels_required",
        )
    missing = [f"{CHANNEL_PREFIX}{c}" for c in wanted if c not in given]
    if missing:
        raise Problem(
            422,
            f"missing form field {', '.join(missing)}; model '{card.id}' takes {expected}",
            code="missing_channel",
        )
    extra = [f"{CHANNEL_PREFIX}{c}" for c in given if c not in wanted]
    if extra:
        raise Problem(
            422,
            f"unexpected form field {', '.join(extra)}; model '{card.id}' takes {expected}",
            code="unexpected_channel",
        )
    return wanted
