"""docs/benchmarks.md keeps each benchmark's own section when another benchmark rewrites it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

from sections import keep_sections, write_section


def test_make_bench_keeps_the_reports_section_and_bench_reports_replaces_only_its_own(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nthroughput: 1\n")
    write_section(doc, "reports", "## Reports\n\nfirst run\n")
    write_section(doc, "reports", "## Reports\n\nsecond run\n")
    text = doc.read_text()
    assert text.count("## Reports") == 1 and "second run" in text and "throughput: 1" in text
    rewritten = keep_sections(text, "# Benchmarks\n\nthroughput: 2\n")
    assert "throughput: 2" in rewritten and "second run" in rewritten
    assert "throughput: 1" not in rewritten
