"""The workflow_lineage service: owns the lineage graph, dataset/project versions and benchmark reports.

It consumes every `events.*` durably, so it learns what happened without anyone calling it.
"""
