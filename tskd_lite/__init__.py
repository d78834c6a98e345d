"""tskd-lite: TuneShift-KD offline. See README.md; the pipeline reads top to bottom in pipeline.py."""

import os

# Offline by design, enforced for the whole process before any Hugging Face library reads its settings: models
# load from local folders only, and nothing asks a hub for files, updates or telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
