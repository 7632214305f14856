"""The web UI's vendored browser libraries are the ones the lockfile pins (`make ui-vendor` copies them), each with
its licence, and the page loads them from the gateway itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "services" / "gateway"
VENDOR = GATEWAY / "static" / "vendor"
LOCK = json.loads((GATEWAY / "ui" / "package-lock.json").read_text())["packages"]


def test_versions_file_matches_the_lockfile():
    recorded = {}
    for line in (VENDOR / "VERSIONS").read_text().splitlines():
        name, version, integrity = line.split()
        recorded[name] = (version, integrity)
    assert set(recorded) == {"chart.js", "@kurkle/color", "cytoscape", "@mdi/svg"}
    for name, (version, integrity) in recorded.items():
        locked = LOCK[f"node_modules/{name}"]
        assert (locked["version"], locked["integrity"]) == (version, integrity), name
    assert json.loads((GATEWAY / "ui" / "package.json").read_text())["dependencies"] == {
        "chart.js": recorded["chart.js"][0], "cytoscape": recorded["cytoscape"][0],
        "@mdi/svg": recorded["@mdi/svg"][0]}  # exact pins


def test_each_file_is_the_pinned_release_with_its_licence():
    chart = (VENDOR / "chart.umd.min.js").read_text()[:300]
    assert f"Chart.js v{LOCK['node_modules/chart.js']['version']}" in chart and "MIT" in chart
    assert (VENDOR / "cytoscape.min.js").stat().st_size > 100_000
    for licence in ("chart.js.LICENSE.md", "kurkle-color.LICENSE.md", "cytoscape.LICENSE"):
        assert "Permission is hereby granted" in (VENDOR / licence).read_text(), licence  # MIT, all three
    assert "Apache 2.0" in (VENDOR / "mdi-svg.LICENSE").read_text()


def test_card_icons_cover_the_lineage_defaults():
    """The lineage service's default card icons (zmdi names) each have a Material Design Icons glyph."""
    from services.workflow_lineage.graph import DEFAULT_LOOK

    icons = json.loads((VENDOR / "mdi-icons.json").read_text())
    assert len(icons) > 300 and all(re.fullmatch(r"[MmLlHhVvCcSsQqTtAaZz0-9.,\s-]+", d) for d in icons.values())
    missing = {look["icon"] for look in DEFAULT_LOOK.values()} - set(icons)
    assert not missing, missing


def test_the_page_loads_the_vendored_files_from_the_gateway():
    page = (GATEWAY / "ui.html").read_text()
    sources = re.findall(r'<script src="([^"]+)"', page)
    assert "/static/vendor/chart.umd.min.js" in sources and "/static/vendor/cytoscape.min.js" in sources
    assert all(s.startswith("/static/") for s in sources), sources
    for source in sources:
        assert (GATEWAY / source.lstrip("/")).is_file(), source
