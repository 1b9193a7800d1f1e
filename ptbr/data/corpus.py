"""Corpus discovery and document reading: .txt and .jsonl files (plain, .gz or .zst) and .parquet.

Reading never fails on bad bytes: invalid UTF-8 is replaced with U+FFFD and counted, and jsonl
lines that are not JSON objects with a string text field are skipped and counted, because one
broken record must not cost a multi-hour tokenization run. The counts end up in the manifest.

Parquet files (FineWeb-2 ships its Portuguese this way) are read one row group at a time, only the text
column, in batches: never a whole file in memory. A row group is also the unit that ``--part I/N`` hands
to a part (:func:`units_of`), so one large file can be cleaned or tokenized by several machines.
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
from typing import Any, BinaryIO

from ptbr.errors import DataError

KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}
TXT_DOC_MODES = ("file", "paragraph", "line")
SUPPORTED = ".txt, .jsonl (optionally .gz or .zst), .parquet"
PARQUET_BATCH_ROWS = 1024

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
        return {
            "files": self.files,
            "documents": self.documents,
            "empty_documents": self.empty_documents,
            "invalid_utf8_replaced": self.invalid_utf8,
            "bad_records_skipped": self.bad_records,
        }


@dataclass(frozen=True)
class Unit:
    """The smallest piece of the corpus a part reads: a whole file, or one row group of a parquet file.

    ``index`` is its place in the input order (files sorted as :func:`discover_inputs` gives them, row
    groups in file order); document order within the corpus is (unit index, position in the unit)."""

    index: int
    file: InputFile
    row_group: int | None
    size: int  # bytes on disk (a row group: its compressed column chunks)

    @property
    def name(self) -> str:
        return self.file.name if self.row_group is None else f"{self.file.name}#row-group-{self.row_group}"


def file_format(path: Path) -> tuple[str, str | None] | None:
    """(kind, compression) from the file name, or None when the file is not a corpus file."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = COMPRESSIONS[suffixes.pop()]
    if suffixes and suffixes[-1] in KINDS:
        if KINDS[suffixes[-1]] == "parquet" and compression:
            return None  # parquet compresses inside the file
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
                        found.append(InputFile(p, str(Path(str(item)) / rel), rel, kind[0], kind[1], p.stat().st_size))
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


def _parquet(f: InputFile, text_field: str) -> Any:
    """The opened parquet file (footer read only), checked to have a string column ``text_field``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{f.name}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(f.path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{f.name}: cannot read as parquet ({str(exc).splitlines()[0][:120]})") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise DataError(
            f"{f.name}: no column {text_field!r} (columns: {', '.join(schema.names[:8])}); "
            "name the text column with --text-field"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(
            f"{f.name}: column {text_field!r} holds {kind}, not text; name the text column with --text-field"
        )
    return pf


def _row_group_size(pf: Any, i: int) -> int:
    rg = pf.metadata.row_group(i)
    return sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))


def units_of(files: Sequence[InputFile], text_field: str = "text") -> list[Unit]:
    """Every file as one unit, parquet files as one unit per row group (their footers are read here, so a
    parquet file without ``text_field`` is refused before any work starts)."""
    units: list[Unit] = []
    for f in files:
        if f.kind != "parquet":
            units.append(Unit(len(units), f, None, f.size))
            continue
        pf = _parquet(f, text_field)
        for i in range(pf.num_row_groups):
            units.append(Unit(len(units), f, i, _row_group_size(pf, i)))
    return units


def _iter_parquet(f: InputFile, text_field: str, stats: ReadStats, row_groups: Sequence[int] | None) -> Iterator[str]:
    import pyarrow as pa

    pf = _parquet(f, text_field)
    for i in range(pf.num_row_groups) if row_groups is None else row_groups:
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[i], columns=[text_field]):
                for text in batch.column(0).to_pylist():
                    if text is None:
                        stats.bad_records += 1
                        if len(stats.bad_record_examples) < 5:
                            stats.bad_record_examples.append(f"{f.name}: row group {i}: null {text_field!r}")
                        continue
                    yield _clean_str(text)
        except pa.ArrowException as exc:
            raise DataError(f"{f.name}: row group {i} cannot be read ({str(exc).splitlines()[0][:120]})") from None
        stats.bytes_read += _row_group_size(pf, i)


def _iter_file(f: InputFile, stream: BinaryIO, text_field: str, txt_docs: str, stats: ReadStats) -> Iterator[str]:
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


def iter_documents(
    files: Sequence[InputFile], stats: ReadStats, *, text_field: str = "text", txt_docs: str = "file"
) -> Iterator[str]:
    """Yield every non-empty document in order; ``stats`` is updated as reading goes."""
    if txt_docs not in TXT_DOC_MODES:
        raise DataError(f"--txt-docs must be one of {', '.join(TXT_DOC_MODES)}, not {txt_docs!r}")
    for f in files:
        stats.files += 1
        yield from _read(f, None, stats, text_field, txt_docs)


def iter_units(
    units: Sequence[Unit], stats: ReadStats, *, text_field: str = "text", txt_docs: str = "file"
) -> Iterator[tuple[Unit, str]]:
    """(unit, document) for every non-empty document of ``units``, in order. ``stats.files`` counts
    distinct files (several row groups of one file count once)."""
    if txt_docs not in TXT_DOC_MODES:
        raise DataError(f"--txt-docs must be one of {', '.join(TXT_DOC_MODES)}, not {txt_docs!r}")
    seen: set[Path] = set()
    for unit in units:
        if unit.file.path not in seen:
            seen.add(unit.file.path)
            stats.files += 1
        for text in _read(unit.file, None if unit.row_group is None else [unit.row_group], stats, text_field, txt_docs):
            yield unit, text


def _read(
    f: InputFile, row_groups: Sequence[int] | None, stats: ReadStats, text_field: str, txt_docs: str
) -> Iterator[str]:
    before = _invalid_count[0]
    try:
        if f.kind == "parquet":
            texts = _iter_parquet(f, text_field, stats, row_groups)
            stream = None
        else:
            stream = open_binary(f, stats)
            texts = _iter_file(f, stream, text_field, txt_docs, stats)
        try:
            for text in texts:
                stats.invalid_utf8 += _invalid_count[0] - before
                before = _invalid_count[0]
                if not text.strip():
                    stats.empty_documents += 1
                    continue
                stats.documents += 1
                yield text
        finally:
            if stream is not None:
                stream.close()
    except (OSError, EOFError) as exc:
        raise DataError(f"{f.name}: cannot read ({exc.__class__.__name__}: {exc})") from None
    except Exception as exc:
        if exc.__class__.__module__.startswith("zstd"):
            raise DataError(f"{f.name}: corrupt zstd stream ({exc})") from None
        raise
    stats.invalid_utf8 += _invalid_count[0] - before
