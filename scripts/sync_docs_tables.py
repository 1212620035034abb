"""Copies a sweep's tables from its report.md (made by `advprune report FOLDER`) into a Markdown document,
between the document's markers, so that the tables the docs show are the command's, to the digit:

    <!-- sweep table: advprune report FOLDER -->  ...  <!-- end of sweep table -->
    <!-- final table: advprune report FOLDER -->  ...  <!-- end of final table -->   (optional)

The sweep table is report.md's first table with the note under it; the final table is the one under "## Final
rows", with the line that counts the models trained again. A marker the document lacks, or a table
report.md lacks, is an error that names it, and the document is left as it was.

    python scripts/sync_docs_tables.py sweeps/paper-cifar10-cpu [--doc docs/reproduction.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advprune._files import write_bytes_atomic

END_OF_NOTE = "Accuracy on the first"  # the report's note under each table starts so


def table_from(report: list[str], start: int) -> str:
    """The table at or after line `start` of report.md, through the note under it."""
    first = next((i for i in range(start, len(report)) if report[i].startswith("| strategy")), None)
    if first is None:
        raise ValueError("report.md has no table there: run advprune report on the folder first")
    last = next(i for i in range(first, len(report)) if report[i].startswith(END_OF_NOTE))
    return "\n".join(report[first : last + 1]) + "\n"


def replace_between(doc: str, start_marker: str, end_marker: str, text: str) -> str:
    """doc with what stands between the two markers replaced by text."""
    if start_marker not in doc:
        raise ValueError(f"the document has no marker {start_marker.strip()!r}")
    begin = doc.index(start_marker) + len(start_marker)
    end = doc.find(end_marker, begin)
    if end < 0:
        raise ValueError(f"the document has no {end_marker!r} after {start_marker.strip()!r}")
    return doc[:begin] + text + doc[end:]


def synced(doc: str, report: list[str], folder: str) -> str:
    """doc with its sweep table (and its final table, where it has that marker) of folder taken from report."""
    doc = replace_between(
        doc, f"<!-- sweep table: advprune report {folder} -->\n", "<!-- end of sweep table -->", table_from(report, 0)
    )
    final_marker = f"<!-- final table: advprune report {folder} -->\n"
    if final_marker in doc:
        if "## Final rows" not in report:
            raise ValueError(f"the document has {final_marker.strip()!r} but report.md has no final rows")
        start = report.index("## Final rows")
        rebuilt = "".join(line + "\n\n" for line in report[start : start + 6] if "were trained again" in line)
        doc = replace_between(doc, final_marker, "<!-- end of final table -->", rebuilt + table_from(report, start))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the sweep folder, as the document's markers name it")
    parser.add_argument("--doc", default="docs/reproduction.md")
    args = parser.parse_args(argv)
    report_file, doc_file = Path(args.folder) / "report.md", Path(args.doc)
    try:
        if not report_file.is_file():
            raise ValueError(f"no {report_file}: run advprune report {args.folder} first")
        doc = synced(doc_file.read_text(), report_file.read_text().splitlines(), args.folder.rstrip("/"))
    except ValueError as exc:
        print(f"sync_docs_tables: {doc_file}: {exc}", file=sys.stderr)
        return 1
    write_bytes_atomic(doc_file, doc.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
