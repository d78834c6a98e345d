"""tskd-lite: TuneShift-KD offline. See README.md; the pipeline reads top to bottom in pipeline.py."""

import logging
import os

# Offline by design, enforced for the whole process before any Hugging Face library reads its settings: models
# load from local folders only, and nothing asks a hub for files, updates or telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

# bitsandbytes (imported by every `import peft`), on a CPU with AVX-512 BF16, tries to fetch a faster 4-bit kernel
# from the Hugging Face Hub (the `kernels` package, not installed; offline in any case) and logs "Failed to load CPU
# gemm_4bit_forward from kernels-community" at every import. Its own CPU kernel is used instead (4-bit on a CPU only
# where quantize = "nf4" forces it), so the message changes nothing tskd-lite computes: that one record is dropped,
# from the first import of tskd_lite on; every other record of that logger (and of bitsandbytes) still shows.
BNB_HUB_KERNEL_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_the_hub_kernel_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BNB_HUB_KERNEL_WARNING)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_hub_kernel_warning)
