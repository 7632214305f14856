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
    assert set(recorded) == {"chart.js", "@kurkle/color", "cytoscape"}
    for name, (version, integrity) in recorded.items():
        locked = LOCK[f"node_modules/{name}"]
        assert (locked["version"], locked["integrity"]) == (version, integrity), name
    assert json.loads((GATEWAY / "ui" / "package.json").read_text())["dependencies"] == {
        "chart.js": recorded["chart.js"][0], "cytoscape": recorded["cytoscape"][0]}  # exact pins


def test_each_file_is_the_pinned_release_with_its_licence():
    chart = (VENDOR / "chart.umd.min.js").read_text()[:300]
    assert f"Chart.js v{LOCK['node_modules/chart.js']['version']}" in chart and "MIT" in chart
    assert (VENDOR / "cytoscape.min.js").stat().st_size > 100_000
    for licence in ("chart.js.LICENSE.md", "kurkle-color.LICENSE.md", "cytoscape.LICENSE"):
        assert "Permission is hereby granted" in (VENDOR / licence).read_text(), licence  # MIT, all three


def test_the_page_loads_the_vendored_files_from_the_gateway():
    page = (GATEWAY / "ui.html").read_text()
    sources = re.findall(r'<script src="([^"]+)"', page)
    assert "/static/vendor/chart.umd.min.js" in sources and "/static/vendor/cytoscape.min.js" in sources
    assert all(s.startswith("/static/") for s in sources), sources
    for source in sources:
        assert (GATEWAY / source.lstrip("/")).is_file(), source
