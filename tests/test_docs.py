"""The documents as a reader meets them: README.md and benchmarks/RESULTS.md.

Every Markdown table renders (one header row, then one separator row, every row
with the header's number of cells); every link to a file of the repository
resolves and every anchor names a heading; every row of a benchmark table equals
a row of the table that `fusedlstm bench-table` prints from a results JSON linked
in the same section, so a figure cannot drift from its record; and the
documents and the code's comments describe the project, not the work on it (no
issue numbers, no work sessions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fusedlstm.bench import report

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "benchmarks/RESULTS.md")


# --- reading Markdown ---------------------------------------------------------------------------

def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def cells(line: str) -> list[str]:
    """A table row's cells, split at unescaped pipes, without the outer pipes."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    return [c.strip() for c in parts[1:-1]]


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every table: each run of lines starting with '|'."""
    found, current, start, previous = [], [], 0, -1
    for number, line in prose_lines(text):
        if line.lstrip().startswith("|"):
            if not current or number != previous + 1:
                if current:
                    found.append((start, current))
                current, start = [], number
            current.append(line)
            previous = number
    if current:
        found.append((start, current))
    return found


def is_separator(row: list[str]) -> bool:
    return bool(row) and all(re.fullmatch(r":?-+:?", c) for c in row)


def table_problems(text: str) -> list[str]:
    """What keeps each table from rendering as one header row over its data rows."""
    problems = []
    for start, lines in tables(text):
        rows = [cells(line) for line in lines]
        where = f"table at line {start}"
        if len(rows) < 2 or not is_separator(rows[1]) or is_separator(rows[0]):
            problems.append(f"{where}: a header row, then a separator row, expected; came {lines[:2]}")
            continue
        for offset, row in enumerate(rows[2:], 2):
            if is_separator(row) or row == rows[0]:
                problems.append(f"{where}: line {start + offset} repeats the header or separator row")
            elif len(row) != len(rows[0]):
                problems.append(f"{where}: line {start + offset} has {len(row)} cells, "
                                f"the header {len(rows[0])}")
        if len(rows[1]) != len(rows[0]):
            problems.append(f"{where}: separator has {len(rows[1])} cells, the header {len(rows[0])}")
    return problems


def without_code_spans(line: str) -> str:
    return re.sub(r"`[^`]*`", "code", line)


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link and image outside code."""
    found = []
    for number, line in prose_lines(text):
        for match in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", without_code_spans(line)):
            found.append((number, match.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line number, level, text) of every ATX heading outside code."""
    return [(number, len(m.group(1)), m.group(2).strip()) for number, line in prose_lines(text)
            if (m := re.match(r"(#{1,6})\s+(.*)", line))]


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, _, heading in headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_problems(text: str, folder: Path) -> list[str]:
    """Links of a document in `folder` to files that do not exist, or to anchors that
    name no heading."""
    problems = []
    for number, target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (folder / path_part).resolve()
        if not path.exists() or ROOT not in (path, *path.parents):
            problems.append(f"line {number}: {target} is not a file of the repository")
        elif anchor and not path_part and anchor not in anchors(text):
            problems.append(f"line {number}: {target} names no heading here")
        elif anchor and path.suffix == ".md" and path_part and anchor not in anchors(path.read_text()):
            problems.append(f"line {number}: {target} names no heading of {path.name}")
    return problems


def path_problems(text: str, folder: Path) -> list[str]:
    """Code spans that name a path under one of the repository's folders must resolve
    (from the repository's root or the document's folder)."""
    problems = []
    for number, line in prose_lines(text):
        for span in re.findall(r"`([^`\s]+)`", line):
            if "/" not in span or not re.fullmatch(r"[\w.-]+(/[\w.-]+)*/?", span):
                continue
            first = span.split("/")[0]
            bases = [b for b in (ROOT, folder) if (b / first).is_dir() and first not in ("", "..")]
            if bases and not any((b / span).exists() for b in bases):
                problems.append(f"line {number}: `{span}` does not exist")
    return problems


# --- benchmark tables against their records ----------------------------------------------------

def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of each part of the text between two headings."""
    parts, heading, body = [], "", []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6}\s", line):
            parts.append((heading, "\n".join(body)))
            heading, body = line, []
        else:
            body.append(line)
    parts.append((heading, "\n".join(body)))
    return parts


def is_bench_header(header: list[str]) -> bool:
    names = [c.strip("`") for c in header]
    return "shape" in names and any(re.fullmatch(r"\S+ (ms|MiB)|\S+ / nn\.LSTM", n) for n in names)


def recorded_rows(record: Path) -> tuple[list[str], list[list[str]]] | None:
    """The header and rows `fusedlstm bench-table` prints for a results JSON of
    `fusedlstm bench` (None for other JSON files)."""
    results = json.loads(record.read_text()).get("results")
    if not results or not all("shape" in r for r in results):
        return None
    lines = report.table(results).splitlines()
    return cells(lines[0]), [cells(line) for line in lines[2:]]


def figure_problems(text: str, folder: Path) -> list[str]:
    """Rows of benchmark tables that are in no results JSON linked in their section."""
    problems = []
    for heading, body in sections(text):
        records = [(folder / target).resolve() for _, target in links(body)
                   if target.endswith(".json")]
        recorded = [rows for r in records if r.exists() and (rows := recorded_rows(r)) is not None]
        for _, lines in tables(body):
            header = [c.strip("`") for c in cells(lines[0])]
            if not is_bench_header(header):
                continue
            if not recorded:
                problems.append(f"{heading!r}: a table of figures with no results JSON linked beside it")
                continue
            for line in lines[2:]:
                row = dict(zip(header, (c.strip("`") for c in cells(line))))
                if not any(set(header) <= set(rec_header)
                           and any(all(rec[rec_header.index(k)] == v for k, v in row.items()) for rec in rows)
                           for rec_header, rows in recorded):
                    problems.append(f"{heading!r}: {line.strip()} is in none of {[r.name for r in records]}")
    return problems


# --- the project, not the work on it ------------------------------------------------------------

# In the documents: no issue numbers or mentions of issues, no work sessions, no
# remarks about which tools or machines the work had.
DOCUMENT_HISTORY = re.compile(
    r"\bsessions?\b|\bissues?\b|(?<![\w/])#\d+\b|\bthis stretch\b|\blent\b|\bdevice tool\b", re.IGNORECASE)

# In code and comments, where "session" (pytest's, a training run's) and "issue" (a
# launch) have their own meanings: only the forms that tell the story of the work.
CODE_HISTORY = re.compile(
    r"\bissues?\s+#?\d+|\(issues?\b|\bissues?'s?|\b(this|that|the) issue\b"
    r"|\b(this|that|next|previous|last|earlier|later|first|second|third|fourth|fifth|work|helper)"
    r"\s+sessions?\b|\bsessions? \d+\b|\bthis stretch\b|\blent (to|us|this)\b|\bdevice tool\b",
    re.IGNORECASE)

CODE_FOLDERS = ("fusedlstm", "tests", "benchmarks", "csrc", "cmake")
CODE_SUFFIXES = {".py", ".sh", ".cpp", ".h", ".cu", ".cuh", ".txt", ".cmake"}


def history_problems(text: str, pattern: re.Pattern) -> list[str]:
    return [f"line {number}: {match.group(0)!r} in {line.strip()!r}"
            for number, line in enumerate(text.splitlines(), 1) for match in pattern.finditer(line)]


def code_files() -> list[Path]:
    """The project's code, build files and scripts (not build outputs or caches: no
    folder whose name starts with '.', '_' or 'build')."""
    files = [ROOT / name for name in ("setup.py", "CMakeLists.txt", "pyproject.toml", ".ci/run")]
    for folder in CODE_FOLDERS:
        files += [p for p in (ROOT / folder).rglob("*")
                  if p.is_file() and p.suffix in CODE_SUFFIXES
                  and not any(part.startswith((".", "_", "build")) for part in p.relative_to(ROOT).parts[:-1])]
    return sorted(p for p in files if p.exists() and p.resolve() != Path(__file__).resolve())


# --- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DOCUMENTS)
def test_tables_render(name):
    assert table_problems((ROOT / name).read_text()) == []


@pytest.mark.parametrize("name", DOCUMENTS)
def test_links_and_paths_resolve(name):
    document = ROOT / name
    text = document.read_text()
    assert link_problems(text, document.parent) + path_problems(text, document.parent) == []


@pytest.mark.parametrize("name", DOCUMENTS)
def test_figures_match_their_records(name):
    document = ROOT / name
    assert figure_problems(document.read_text(), document.parent) == []


@pytest.mark.parametrize("name", DOCUMENTS)
def test_documents_hold_no_work_history(name):
    assert history_problems((ROOT / name).read_text(), DOCUMENT_HISTORY) == []


def test_code_comments_hold_no_work_history():
    problems = {str(p.relative_to(ROOT)): found for p in code_files()
                if (found := history_problems(p.read_text(errors="replace"), CODE_HISTORY))}
    assert problems == {}


def test_the_checks_catch_what_they_are_for():
    """Each check fails on the defect it exists for: a header printed twice, a row
    with a cell too many, a figure that is not in its record, a dead link, history."""
    twice = "| a | b |\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert table_problems(twice) and table_problems("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n")
    assert table_problems("| a | b |\n|---|---|\n| 1 | 2 |\n") == []
    record = ROOT / "benchmarks/results/cpu-float32-2threads-isolated-2026-11-28.json"
    _, rows = recorded_rows(record)
    row = next(r for r in rows if r[0] == "char" and r[1] == "forward+backward")
    header = "| shape | nn.LSTM ms | cpu ms | cpu / nn.LSTM |\n|---|---:|---:|---:|\n"
    link = f"[raw]({record.relative_to(ROOT)})\n\n"
    good = f"## x\n\n{link}{header}| char | {row[3]} | {row[4]} | {row[5]} |\n"
    bad = f"## x\n\n{link}{header}| char | {row[3]} | {row[4]} | 0.01 |\n"
    unlinked = f"## x\n\n{header}| char | {row[3]} | {row[4]} | {row[5]} |\n"
    for text, expect_problems in ((good, False), (bad, True), (unlinked, True)):
        assert bool(figure_problems(text, ROOT)) == expect_problems, text
    dead = "[gone](benchmarks/results/none.json) [here](#x) [there](#y) `fusedlstm/none.py`\n"
    assert len(link_problems("# x\n" + dead, ROOT)) == 2 and len(path_problems(dead, ROOT)) == 1
    assert history_problems("as measured in the fourth session (issue 12)", DOCUMENT_HISTORY)
    assert history_problems("# the issues' shapes; see issue 2", CODE_HISTORY)
    assert history_problems("pytest's session-wide setup; the host issues the launch", CODE_HISTORY) == []
