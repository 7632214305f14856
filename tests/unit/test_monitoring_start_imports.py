"""What a monitoring process imports to start (services/monitoring/__main__.py's imports; docs/monitoring.md "Start
time"): not the lineage service's models, which only some commands use (a target datalake, a continuous training's
dataset or project, the feedback loop's writes) and which the first of them imports. Checked in a fresh interpreter,
as the service starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_monitoring_service_starts_without_the_lineage_models_and_its_commands_still_have_them():
    """Before, continuous.py, datalake.py and feedback.py imported shared.messages.lineage at the top (~30-50 ms of a
    start's CPU, ~2 MiB of RSS): this failed at the first assert."""
    code = textwrap.dedent("""
        import sys
        from shared.lean_imports import decline_unused
        decline_unused()
        import services.monitoring.app, shared.service
        from services.monitoring import continuous, datalake, feedback
        assert "shared.messages.lineage" not in sys.modules, "lineage's models imported at start"
        ref = datalake.lineage.DatasetRef(dataset_id=7)  # the first use imports them
        assert "shared.messages.lineage" in sys.modules
        assert continuous.lineage.DatasetRef is feedback.lineage.DatasetRef is type(ref)
        print(ref.dataset_id, feedback.lineage.a_dataset_of_kind("images"))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "7"
