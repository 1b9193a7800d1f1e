"""A real Brazilian Portuguese corpus from Debian packages, for the quickstart.

Why Debian: the packages are reachable wherever ``apt-get`` works (no web crawl, no account), their
licences allow redistribution, and together they hold a few MB of prose written in Brazil or
translated for it. They also show the mess real text comes in: HTML, roff, Latin-1 files.

* ``debian-reference-pt-br``: the Debian Reference, HTML (one document per section);
* ``focalinux-text``: the "Guia Foca GNU/Linux", plain text in ISO-8859-1 (one document per section);
* ``manpages-pt-br``: manual pages, roff (one document per page);
* ``fortunes-br``: Brazilian fortune cookies (one document each).

``apt-get download`` needs no root; ``dpkg-deb -x`` unpacks without installing. Each source becomes
one ``.jsonl`` file of ``{"text": ...}`` documents in the corpus directory, written atomically, and
a ``SOURCES.json`` that says where the text came from.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

from ptbr.errors import PtbrError
from ptbr.fsutil import atomic_write_text

PACKAGES = ("debian-reference-pt-br", "focalinux-text", "manpages-pt-br", "fortunes-br")
SOURCES_FILE = "SOURCES.json"
MIN_CHARS = 80  # shorter pieces (menus, headings alone) are not documents


def _decode(data: bytes) -> str:
    """UTF-8, else ISO-8859-1 (the Foca guide): Latin-1 decodes any bytes, so try UTF-8 first."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _paragraphs(text: str) -> str:
    """Hard-wrapped, indented text -> one line per paragraph, blank line between paragraphs."""
    paras = [
        " ".join(line.strip() for line in block.splitlines() if line.strip()) for block in re.split(r"\n\s*\n", text)
    ]
    return "\n\n".join(p for p in paras if p)


# ---------------------------------------------------------------------------------------------- HTML
class _HtmlSections(HTMLParser):
    """Text of an HTML page, cut at every h1-h3 heading; scripts, styles and navigation dropped."""

    SKIP = {"script", "style", "head", "nav"}
    BLOCK = {"p", "div", "li", "tr", "pre", "br", "dt", "dd", "table", "ul", "ol", "blockquote"}
    HEADING = {"h1", "h2", "h3"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[list[str]] = [[]]
        self._skip = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.HEADING:
            self.sections.append([])
        if tag in self.BLOCK or tag in self.HEADING:
            self.sections[-1].append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        elif tag in self.BLOCK or tag in self.HEADING:
            self.sections[-1].append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.sections[-1].append(data)


def html_documents(data: bytes) -> Iterator[str]:
    parser = _HtmlSections()
    parser.feed(_decode(data))
    parser.close()
    for section in parser.sections:
        yield _paragraphs("".join(section))


# ---------------------------------------------------------------------------------------------- roff
_ROFF_ESCAPES = [
    (re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\s[+-]?\d"), ""),
    (re.compile(r"\\\((em|en)"), "—"),
    (re.compile(r"\\\(aq"), "'"),
    (re.compile(r"\\\((lq|rq)"), '"'),
    (re.compile(r"\\\(bu"), "•"),
    (re.compile(r"\\[-&|^%]"), lambda m: "-" if m.group() == "\\-" else ""),
    (re.compile(r"\\e"), lambda m: "\\"),
    (re.compile(r"\\\(.."), ""),
]


def roff_document(data: bytes) -> str:
    """A manual page as plain text: comments and layout requests dropped, font escapes removed."""
    lines = []
    for line in _decode(data).splitlines():
        if line.startswith(('.\\"', "'\\\"")) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            request, _, rest = line[1:].partition(" ")
            if request in ("SH", "SS"):
                lines += ["", rest.strip('"'), ""]
            elif request in ("B", "I", "BI", "BR", "IR", "RB", "RI", "IB") and rest:
                lines.append(rest.replace('"', ""))
            elif request in ("PP", "P", "LP", "TP", "IP", "sp", "br"):
                lines.append("")
            continue
        for pattern, repl in _ROFF_ESCAPES:
            line = pattern.sub(repl, line)
        lines.append(line)
    return _paragraphs("\n".join(lines))


# ---------------------------------------------------------------------------------------------- plain text
def text_sections(data: bytes) -> Iterator[str]:
    """Plain text cut at underlined headings (a line followed by ----- or =====)."""
    rule = re.compile(r"\s*[-=]{4,}\s*")
    lines = _decode(data).splitlines()
    section: list[str] = []
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and rule.fullmatch(lines[i + 1]) and line.strip() and section:
            yield _paragraphs("\n".join(section))
            section = []
        if rule.fullmatch(line):
            section.append("")  # the heading stands alone as a paragraph
        else:
            section.append(line)
    yield _paragraphs("\n".join(section))


def fortunes(data: bytes) -> Iterator[str]:
    for entry in _decode(data).split("\n%\n"):
        entry = entry.strip("%\n")
        if entry.strip():
            yield entry.rstrip()


# ---------------------------------------------------------------------------------------------- the corpus
def _maybe_gunzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def documents_of(package: str, root: Path) -> Iterator[str]:
    """The documents of one unpacked package."""
    if package == "debian-reference-pt-br":
        for f in sorted(root.rglob("*.pt-br.html")):
            yield from html_documents(f.read_bytes())
    elif package == "focalinux-text":
        for f in sorted(root.rglob("index.txt.gz")):
            yield from text_sections(_maybe_gunzip(f))
    elif package == "manpages-pt-br":
        for f in sorted((root / "usr/share/man").rglob("*.gz")):
            yield roff_document(_maybe_gunzip(f))
    elif package == "fortunes-br":
        for f in sorted(root.rglob("games/fortunes/*")):
            if f.is_file() and f.suffix != ".dat" and not f.is_symlink():
                yield from fortunes(f.read_bytes())


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise PtbrError(
            f"{cmd[0]} is not installed: the quickstart fetches its corpus with apt-get (Debian/Ubuntu); "
            "pass --corpus DIR with your own .txt/.jsonl files instead"
        ) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise PtbrError(
            f"{' '.join(cmd[:3])} failed ({last}); check the network or the apt sources, or pass "
            "--corpus DIR with your own .txt/.jsonl files"
        )


def fetch_debian_corpus(
    out_dir: Path, log: Callable[[str], None] = print, packages: tuple[str, ...] = PACKAGES
) -> dict:
    """Download and extract the packages into ``out_dir`` (skipped if ``SOURCES.json`` is there)."""
    done = out_dir / SOURCES_FILE
    if done.is_file():
        return json.loads(done.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {"packages": {}, "how": "apt-get download + dpkg-deb -x (Debian archive)"}
    with tempfile.TemporaryDirectory(prefix="ptbr-debs-") as tmp:
        work = Path(tmp)
        log(f"corpus: apt-get download {' '.join(packages)}")
        _run(["apt-get", "download", *packages], work)
        for deb in sorted(work.glob("*.deb")):
            package, version = deb.name.split("_")[:2]
            root = work / package
            _run(["dpkg-deb", "-x", str(deb), str(root)], work)
            docs = [d for d in documents_of(package, root) if len(d) >= MIN_CHARS]
            text = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
            atomic_write_text(out_dir / f"{package}.jsonl", text)
            sources["packages"][package] = {
                "version": version,
                "documents": len(docs),
                "bytes": len(text.encode()),
                "deb": deb.name,
            }
            log(f"corpus: {package} {version}: {len(docs):,} documents, {len(text.encode()) / 1e6:.1f} MB")
            shutil.rmtree(root)
    missing = set(packages) - set(sources["packages"])
    if missing:
        raise PtbrError(f"apt-get did not deliver {', '.join(sorted(missing))}; pass --corpus DIR instead")
    atomic_write_text(done, json.dumps(sources, indent=2) + "\n")
    return sources
