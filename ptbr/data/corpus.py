"""Corpus discovery and document reading: .txt and .jsonl files, plain, .gz or .zst.

Reading never fails on bad bytes: invalid UTF-8 is replaced with U+FFFD and counted, and jsonl
lines that are not JSON objects with a string text field are skipped and counted, because one
broken record must not cost a multi-hour tokenization run. The counts end up in the manifest.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ptbr.errors import DataError

KINDS = {".txt": "txt", ".jsonl": "jsonl"}
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}
TXT_DOC_MODES = ("file", "paragraph", "line")
SUPPORTED = ".txt, .jsonl (optionally .gz or .zst)"

_ERRORS = "ptbr-count-replace"
_invalid_count = [0]


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _invalid_count[0] += 1
    return "\ufffd", exc.end


codecs.register_error(_ERRORS, _count_and_replace)


@dataclass(frozen=True)
class InputFile:
    """One corpus file: where it is, how it is shown (relative to its input), how to read it."""

    path: Path
    name: str
    rel: str
    kind: str
    compression: str | None
    size: int


@dataclass
class ReadStats:
    """What reading saw; ``bytes_read`` counts raw (compressed) bytes for progress and ETA."""

    files: int = 0
    documents: int = 0
    empty_documents: int = 0
    invalid_utf8: int = 0
    bad_records: int = 0
    bytes_read: int = 0
    bad_record_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {"files": self.files, "documents": self.documents, "empty_documents": self.empty_documents,
                "invalid_utf8_replaced": self.invalid_utf8, "bad_records_skipped": self.bad_records}


def file_format(path: Path) -> tuple[str, str | None] | None:
    """(kind, compression) from the file name, or None when the file is not a corpus file."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = COMPRESSIONS[suffixes.pop()]
    if suffixes and suffixes[-1] in KINDS:
        return KINDS[suffixes[-1]], compression
    return None


def discover_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[InputFile]:
    """Expand files and directories (recursively, sorted, hidden entries skipped) into input files."""
    if not inputs:
        raise DataError("no --input given")
    files: list[InputFile] = []
    for item in inputs:
        root = Path(item)
        if root.is_file():
            kind = file_format(root)
            if kind is None:
                raise DataError(f"{root}: unsupported file type; supported: {SUPPORTED}")
            files.append(InputFile(root, str(item), root.name, kind[0], kind[1], root.stat().st_size))
        elif root.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in sorted(filenames):
                    p = Path(dirpath) / fname
                    kind = file_format(p)
                    if kind is not None and not fname.startswith(".") and p.is_file():
                        rel = p.relative_to(root).as_posix()
                        found.append(InputFile(p, str(Path(str(item)) / rel), rel, kind[0], kind[1],
                                               p.stat().st_size))
            if not found:
                raise DataError(f"{root}: no corpus files found ({SUPPORTED})")
            files.extend(sorted(found, key=lambda f: f.rel))
        else:
            raise DataError(f"input not found: {root}")
    return files


class _CountingReader(io.RawIOBase):
    """Counts the raw bytes read from the underlying file (progress for compressed inputs too)."""

    def __init__(self, raw: BinaryIO, stats: ReadStats) -> None:
        self._raw, self._stats = raw, stats

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(b)  # type: ignore[attr-defined]
        self._stats.bytes_read += n or 0
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(f: InputFile, stats: ReadStats) -> BinaryIO:
    """Decompressed byte stream of an input file."""
    raw = io.BufferedReader(_CountingReader(open(f.path, "rb"), stats), buffer_size=1 << 20)  # noqa: SIM115
    try:
        if f.compression == "gz":
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        if f.compression == "zst":
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore
    except Exception:
        raw.close()
        raise
    return raw  # type: ignore[return-value]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors=_ERRORS)


def _clean_str(text: str) -> str:
    """Lone surrogates (from JSON escapes) cannot be encoded: replace them like invalid bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", errors=_ERRORS)


def _text_lines(stream: BinaryIO) -> Iterator[str]:
    wrapper = io.TextIOWrapper(stream, encoding="utf-8", errors=_ERRORS, newline=None)  # type: ignore
    yield from wrapper


def _iter_file(f: InputFile, stream: BinaryIO, text_field: str, txt_docs: str,
               stats: ReadStats) -> Iterator[str]:
    if f.kind == "jsonl":
        for lineno, line in enumerate(_text_lines(stream), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj[text_field]
                if not isinstance(text, str):
                    raise TypeError(f"field {text_field!r} is not a string")
            except (ValueError, KeyError, TypeError) as exc:
                stats.bad_records += 1
                if len(stats.bad_record_examples) < 5:
                    what = f"missing field {text_field!r}" if isinstance(exc, KeyError) else str(exc)[:80]
                    stats.bad_record_examples.append(f"{f.name}:{lineno}: {what}")
                continue
            yield _clean_str(text)
    elif txt_docs == "file":
        yield _decode(stream.read())
    elif txt_docs == "line":
        for line in _text_lines(stream):
            yield line.rstrip("\n")
    else:  # paragraph: blank lines separate documents
        para: list[str] = []
        for line in _text_lines(stream):
            if line.strip():
                para.append(line.rstrip("\n"))
            elif para:
                yield "\n".join(para)
                para = []
        if para:
            yield "\n".join(para)


def iter_documents(files: Sequence[InputFile], stats: ReadStats, *, text_field: str = "text",
                   txt_docs: str = "file") -> Iterator[str]:
    """Yield every non-empty document in order; ``stats`` is updated as reading goes."""
    if txt_docs not in TXT_DOC_MODES:
        raise DataError(f"--txt-docs must be one of {', '.join(TXT_DOC_MODES)}, not {txt_docs!r}")
    for f in files:
        stats.files += 1
        before = _invalid_count[0]
        try:
            with open_binary(f, stats) as stream:
                for text in _iter_file(f, stream, text_field, txt_docs, stats):
                    stats.invalid_utf8 += _invalid_count[0] - before
                    before = _invalid_count[0]
                    if not text.strip():
                        stats.empty_documents += 1
                        continue
                    stats.documents += 1
                    yield text
        except (OSError, EOFError) as exc:
            raise DataError(f"{f.name}: cannot read ({exc.__class__.__name__}: {exc})") from None
        except Exception as exc:
            if exc.__class__.__module__.startswith("zstd"):
                raise DataError(f"{f.name}: corrupt zstd stream ({exc})") from None
            raise
        stats.invalid_utf8 += _invalid_count[0] - before
