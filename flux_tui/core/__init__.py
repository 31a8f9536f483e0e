"""The core wing: study file, run folders, queue and executors, telemetry, results. No Textual, no torch."""
