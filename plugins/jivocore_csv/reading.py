"""Reading CSV files as spreadsheets write them: encoding, delimiter, records with line numbers.

Everything here streams: a file is read a line at a time, a record may not grow past a bound
(so an unterminated quote never pulls the rest of the file into memory), and bytes that are not
valid in the file's encoding are kept (as surrogate escapes) for the record's own error instead
of stopping the file.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterator
from typing import IO, Any

import attrs

from jivocore import ValidationError

SAMPLE = 64 * 1024  # bytes read to detect the encoding and the delimiter
DELIMITERS = (",", ";", "\t", "|")
_MAGIC = {
    b"PK\x03\x04": "a ZIP archive (an .xlsx or .ods workbook? save it as CSV)",
    b"\xd0\xcf\x11\xe0": "an old Excel workbook (.xls; save it as CSV)",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x1f\x8b": "a gzip archive",
}


class CsvRefused(ValidationError):
    """The file cannot be imported at all; nothing was written. `record` and `line` say where,
    when the trouble lies at one place in it."""


@attrs.frozen
class Format:
    """How a file is written: its encoding (a Python codec name) and delimiter."""

    encoding: str
    delimiter: str


def detect(
    path: str,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    known: Callable[[str], bool] | None = None,
) -> Format:
    """The file's format: `encoding` and `delimiter` when given, otherwise detected from its
    first 64 KiB (`known` tells the headers an import recognises, see `sniff`). Refuses
    (CsvRefused) an empty or binary file, or an unknown encoding."""
    with open(path, "rb") as f:
        sample = f.read(SAMPLE)
    if not sample.strip(b" \t\r\n\xef\xbb\xbf\xff\xfe\x00"):
        raise CsvRefused("the file is empty: there is no header and no row to import")
    for magic, what in _MAGIC.items():
        if sample.startswith(magic):
            raise CsvRefused(f"the file is binary, not CSV: it is {what}")
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise CsvRefused(f"{encoding!r} is not an encoding Python knows") from None
    else:
        encoding = _encoding(sample)
    text = _decode_sample(sample, encoding)
    # Text with a byte order mark, or valid UTF-8, is text whatever characters it holds; a
    # single-byte guess decodes any bytes, so there control characters mean binary.
    if encoding not in ("utf-8-sig", "utf-16", "utf-8") and _binary(text):
        raise CsvRefused(
            "the file is binary, not CSV text (control characters where text should be); "
            "if it is text in another encoding, give it with --encoding"
        )
    if delimiter is None:
        delimiter = sniff(text, known)
    elif len(delimiter) != 1 or delimiter in '"\r\n':
        raise CsvRefused(f"a delimiter is one character other than a quote, not {delimiter!r}")
    return Format(encoding, delimiter)


def _encoding(sample: bytes) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in sample:
        # UTF-16 without a byte order mark: every other byte of ASCII text is zero.
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        if odd > len(sample) // 4 and even < odd // 8:
            return "utf-16-le"
        if even > len(sample) // 4 and odd < even // 8:
            return "utf-16-be"
        raise CsvRefused("the file is binary, not CSV text (it holds NUL bytes)")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=len(sample) < SAMPLE)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _decode_sample(sample: bytes, encoding: str) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
    try:
        return str(decoder.decode(sample, final=len(sample) < SAMPLE))
    except UnicodeDecodeError as exc:  # e.g. UTF-16 cut in the middle of a character
        raise CsvRefused(f"the file is not valid {encoding} text: {exc.reason}") from None


def _binary(text: str) -> bool:
    controls = sum(1 for c in text if c < " " and c not in "\t\r\n\f")
    return "\x00" in text or controls > max(8, len(text) // 50)


def sniff(text: str, known: Callable[[str], bool] | None = None) -> str:
    """The delimiter of these first lines: among `DELIMITERS`, the one that splits the header
    into the most headers `known` recognises, then into columns the following records agree
    on, then into the most columns."""
    lines = text.splitlines(keepends=True)
    if len(text) >= SAMPLE - 4 and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut short
    best, score = ",", (-1, -1, -1)
    for candidate in DELIMITERS:
        try:
            records = [r for r in csv.reader(lines, delimiter=candidate) if r][:50]
        except csv.Error:
            continue
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        agree = sum(1 for r in records[1:] if len(r) == width)
        recognised = sum(1 for h in records[0] if known(h)) if known is not None else 0
        if (recognised, agree, width) > score:
            best, score = candidate, (recognised, agree, width)
    return best


@attrs.frozen
class Record:
    """One record of the file: its number (the header is record 0), the physical line it starts
    on, and its cells."""

    number: int
    line: int
    cells: list[str]


class _Lines:
    """The file's lines for `csv.reader`, counting what the current record has consumed so a
    runaway record stops at the bound instead of at the end of the file."""

    def __init__(self, stream: IO[str], max_record: int) -> None:
        self.stream = stream
        self.max_record = max_record
        self.taken = 0  # characters of the current record
        self.quotes = 0  # quote characters in the current record
        self.at_end = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self.stream.readline(self.max_record + 1)
        if not line:
            self.at_end = True
            raise StopIteration
        self.taken += len(line)
        self.quotes += line.count('"')
        if self.taken > self.max_record:
            raise _TooLong
        return line


class _TooLong(Exception):
    pass


def records(
    path: str,
    fmt: Format,
    *,
    max_field: int,
    max_record: int,
    progress: Any = None,
) -> Iterator[Record]:
    """The file's records in order, the header first (number 0); empty lines are skipped.

    Refuses (CsvRefused, at the record's number and line) a field longer than `max_field`
    characters, a record longer than `max_record`, and a quoted field still open at the end of
    the file. `progress(bytes)` is told how far into the file reading has come."""
    with open(path, "rb") as raw:
        stream = io.TextIOWrapper(raw, encoding=fmt.encoding, errors="surrogateescape", newline="")
        lines = _Lines(stream, max_record)
        reader = csv.reader(lines, delimiter=fmt.delimiter, strict=False)
        number, done = 0, 0
        while True:
            start = reader.line_num + 1
            lines.taken = lines.quotes = 0
            try:
                cells = next(reader)
            except StopIteration:
                return
            except _TooLong:
                raise CsvRefused(
                    f"record {number} (line {start}) is longer than {max_record:,} characters: "
                    "a quoted field is not closed, or the record is over the size limit",
                    record=number,
                    line=start,
                ) from None
            except csv.Error as exc:
                raise CsvRefused(
                    f"record {number} (line {start}) cannot be read: {exc}",
                    record=number,
                    line=start,
                ) from None
            except UnicodeDecodeError as exc:  # what surrogateescape cannot take: truncation
                raise CsvRefused(
                    f"record {number} (line {start}) is not valid {fmt.encoding} text: "
                    f"{exc.reason}",
                    record=number,
                    line=start,
                ) from None
            if lines.at_end and lines.quotes % 2:
                raise CsvRefused(
                    f"record {number} (line {start}): a quoted field is not closed before the "
                    "end of the file",
                    record=number,
                    line=start,
                )
            if not cells or cells == [""]:
                continue
            for column, cell in enumerate(cells, 1):
                if len(cell) > max_field:
                    raise CsvRefused(
                        f"record {number} (line {start}), column {column}: a field of "
                        f"{len(cell):,} characters is over the limit of {max_field:,}",
                        record=number,
                        line=start,
                        column=column,
                    )
            yield Record(number, start, cells)
            number += 1
            if progress is not None and number % 1000 == 0:
                position = raw.tell()
                progress(position - done)
                done = position
