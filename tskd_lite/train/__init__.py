"""Supervised fine-tuning of the target on the kept pairs: QLoRA on a CUDA GPU, plain LoRA on the CPU.

The modules, in the order train() uses them:

- setup.py: the device and whether to quantize (NF4 on CUDA), the model with its LoRA, the optimiser, the step
  count and the learning-rate schedule; the two settings that are not [train]'s (gradient clip, weight decay).
- data.py: (prompt, answer) pairs (read_pairs), their tokens (encode, with token-level selection's spans), the
  held-out split, each epoch's batches (batch_order), packed rows (pack; collate is the padded layout it is
  compared with) and the loss on the answer tokens (answer_loss).
- checkpoint.py: the fingerprint of settings, tokens and target; the loop's state (TrainState, saved as a
  checkpoint's state.json); the checkpoint written atomically every `checkpoint_every` steps, recovered after a
  kill and resumed when the fingerprint is unchanged; a finished training recognised by its train.json.
- loop.py: train(), the setup then one `while` loop over the optimiser steps (micro-steps, clip, step, eval at an
  epoch's end with early stopping, log, stop, checkpoint), a first Ctrl-C deferred to the step's end.
- outputs.py: the folder's marker (claim_out), then the adapter, merged model and GGUF LoRA written as .part and
  renamed into place (check_gguf_adapter compares the GGUF LoRA in llama.cpp with the merged model), train.json
  last (TrainResult).
- dist.py: several devices, one process each under torchrun or accelerate launch (DDP: the batches shared out, the
  gradients summed, rank 0 alone writing); with one process every function there does nothing.
- teacher.py: make_teacher, and the teacher's training settings (teacher_settings), which the make-teacher command
  and bench/transfer.py both use.
"""

from tskd_lite.train.checkpoint import TrainState, fingerprint_of, recover_checkpoint
from tskd_lite.train.data import (
    Example,
    Pair,
    answer_loss,
    batch_order,
    collate,
    encode,
    pack,
    read_pairs,
    split,
)
from tskd_lite.train.loop import train
from tskd_lite.train.outputs import TrainResult, check_gguf_adapter, claim_out
from tskd_lite.train.teacher import make_teacher, teacher_settings

_recover_checkpoint = recover_checkpoint  # its name before the package (tests/test_train.py imports it)

__all__ = [
    "Example",
    "Pair",
    "TrainResult",
    "TrainState",
    "answer_loss",
    "batch_order",
    "check_gguf_adapter",
    "claim_out",
    "collate",
    "encode",
    "fingerprint_of",
    "make_teacher",
    "pack",
    "read_pairs",
    "recover_checkpoint",
    "split",
    "teacher_settings",
    "train",
]
