"""scripts/sync_docs_tables.py: the docs' sweep and final tables replaced by report.md's, between their markers;
a missing marker or table is named and the document left as it was."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "sync_docs_tables.py"


@pytest.fixture(scope="module")
def sync():
    spec = importlib.util.spec_from_file_location("sync_docs_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = """# Sweep report

| strategy | fraction | AutoAttack |
| --- | ---: | ---: |
| random:0.2 | 0.2 | 24.4 ± 0.8% |

Accuracy on the first 1000 test images; new note.

## Final rows

The [final] runs evaluated once more with AutoAttack as named below.

3 of these 5 models were trained again for it (`--rebuild-models`), every epoch record equal to its run's own.

| strategy | fraction | AutoAttack |
| --- | ---: | ---: |
| full | 1 | 31.4 ± 0.4% |

Accuracy on the first 1000 test images; final note.

![robust_vs_fraction](robust_vs_fraction.png)
"""

DOC = """# Doc
before
<!-- sweep table: advprune report sweeps/cpu -->
| strategy | fraction | AutoAttack |
| old | 0.2 | 1.0% |
old note
<!-- end of sweep table -->
between
<!-- final table: advprune report sweeps/cpu -->
old final
<!-- end of final table -->
after
"""


def test_both_tables_are_replaced_between_their_markers_and_nothing_else(tmp_path, sync):
    (tmp_path / "sweeps" / "cpu").mkdir(parents=True)
    (tmp_path / "sweeps" / "cpu" / "report.md").write_text(REPORT)
    folder = str(tmp_path / "sweeps" / "cpu")
    doc = DOC.replace("sweeps/cpu", folder)
    (tmp_path / "doc.md").write_text(doc)
    assert sync.main([folder + "/", "--doc", str(tmp_path / "doc.md")]) == 0
    text = (tmp_path / "doc.md").read_text()
    assert text.startswith("# Doc\nbefore\n") and "\nbetween\n" in text and text.endswith("after\n")
    assert "old" not in text
    sweep_part = text.split("<!-- end of sweep table -->")[0]
    assert "| random:0.2 | 0.2 | 24.4 ± 0.8% |\n\nAccuracy on the first 1000 test images; new note.\n" in sweep_part
    assert "full | 1 |" not in sweep_part
    final_part = text.split("<!-- final table:")[1]
    assert "3 of these 5 models were trained again" in final_part and "| full | 1 | 31.4 ± 0.4% |" in final_part
    assert "final note.\n<!-- end of final table -->" in final_part


def test_a_missing_marker_or_report_is_named_and_the_document_kept(tmp_path, sync, capsys):
    (tmp_path / "report.md").write_text(REPORT)
    (tmp_path / "doc.md").write_text(DOC)
    assert sync.main([str(tmp_path), "--doc", str(tmp_path / "doc.md")]) == 1
    assert f"no marker '<!-- sweep table: advprune report {tmp_path} -->'" in capsys.readouterr().err
    assert (tmp_path / "doc.md").read_text() == DOC
    assert sync.main([str(tmp_path / "nowhere"), "--doc", str(tmp_path / "doc.md")]) == 1
    assert "run advprune report" in capsys.readouterr().err
    (tmp_path / "doc.md").write_text(DOC.replace("sweeps/cpu", str(tmp_path)))
    (tmp_path / "report.md").write_text(REPORT.split("## Final rows")[0])
    assert sync.main([str(tmp_path), "--doc", str(tmp_path / "doc.md")]) == 1
    assert "report.md has no final rows" in capsys.readouterr().err
    assert (tmp_path / "doc.md").read_text() == DOC.replace("sweeps/cpu", str(tmp_path))
