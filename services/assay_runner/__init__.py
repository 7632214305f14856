"""The assay_runner service: owns assays, baselines, windows, results and alerts."""
