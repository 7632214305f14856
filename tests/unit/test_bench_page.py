"""`python -m bench logs assays` (bench/__main__.py's splice): a section re-run alone takes the place of its own on
docs/benchmarks.md, says when it was re-run, and leaves the other sections' figures and bench-peers' block as they
were."""

from __future__ import annotations

import pytest

from bench.__main__ import PEERS_END, PEERS_START, splice

PAGE = (
    "# Benchmarks\n\nWritten by `make bench`.\n\nLast run: 2026-11-22 11:51 UTC, Python 3.11.7, x86_64, 2 cores.\n\n"
    "## Inference log store\n\nold logs text\n\n| measure | Railyard |\n|---|---|\n| ingestion | 1 rows/s |\n\n"
    "## Assays\n\nold assays text\n\n| measure | Railyard |\n|---|---|\n| one assay run | 277 ms |\n\n"
    f"## Bus command round trip\n\n| a | b |\n\n{PEERS_START}\n## Side by side\n\n| peers | 9 |\n{PEERS_END}\n"
)


def section(title: str, figure: str) -> str:
    return "\n".join([f"## {title}", "", "new text", "", "| measure | Railyard |", "|---|---|", f"| x | {figure} |",
                      ""])


def test_a_section_takes_the_place_of_its_own_and_says_when():
    page = splice(PAGE, section("Assays", "250 ms"), "2026-12-06 07:30 UTC, load average 0.50 at its start")
    assert "277 ms" not in page and "old assays text" not in page
    assert "| x | 250 ms |\n\n## Bus command round trip\n" in page
    assert page.count("## Assays\n") == 1
    assert page.replace(section("Assays", "250 ms"), "") == PAGE.replace(
        PAGE[PAGE.index("## Assays"):PAGE.index("## Bus") - 1], "").replace(
        "2 cores.\n\n", "2 cores.\n\nAssays: re-run alone 2026-12-06 07:30 UTC, load average 0.50 at its start.\n\n")


def test_the_last_section_before_bench_peers_block_and_a_second_run():
    new = section("Bus command round trip", "5 us")
    page = splice(splice(PAGE, new, "first"), new, "second")
    assert page.endswith(f"| x | 5 us |\n\n{PEERS_START}\n## Side by side\n\n| peers | 9 |\n{PEERS_END}\n")
    assert "Bus command round trip: re-run alone second." in page and "re-run alone first" not in page
    assert "| ingestion | 1 rows/s |" in page and "| one assay run | 277 ms |" in page


def test_a_section_not_on_the_page_or_in_bench_peers_block_is_refused():
    with pytest.raises(ValueError, match="no section"):
        splice(PAGE, section("Something new", "1"), "now")
    with pytest.raises(ValueError, match="no section"):
        splice(PAGE, section("Side by side", "1"), "now")
