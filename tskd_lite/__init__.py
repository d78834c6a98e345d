"""tskd-lite: TuneShift-KD offline. See README.md; the pipeline reads top to bottom in pipeline.py."""

import logging
import os

# Offline by design, enforced for the whole process before any Hugging Face library reads its settings: models
# load from local folders only, and nothing asks a hub for files, updates or telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

# bitsandbytes (imported by every `import peft`), on a CPU with AVX-512 BF16, tries to fetch a faster 4-bit kernel
# from the Hugging Face Hub through the `kernels` package (which transformers installs) and, offline, two records
# say so at every import: kernels' "Skipping publisher trust check for 'kernels-community/..." and bitsandbytes'
# "Failed to load CPU gemm_4bit_forward from kernels-community". Its own CPU kernel is used instead (4-bit on a CPU
# only where quantize = "nf4" forces it), so neither changes anything tskd-lite computes: those two records are
# dropped, from the first import of tskd_lite on; every other record of those loggers still shows.
BNB_HUB_KERNEL_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"
HUB_KERNEL_RECORDS = {  # logger: the start of the one record of it that is dropped
    "bitsandbytes.backends.cpu.ops": BNB_HUB_KERNEL_WARNING,
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/",
}


def _dropping(prefix: str):
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    return keep


for _name, _prefix in HUB_KERNEL_RECORDS.items():
    logging.getLogger(_name).addFilter(_dropping(_prefix))
