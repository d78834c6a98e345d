"""tskd-lite: TuneShift-KD offline. See README.md; the pipeline reads top to bottom in pipeline.py."""
