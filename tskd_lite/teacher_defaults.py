"""The teacher's training settings that make-teacher and the benchmark share, in a module with no imports: the
command line reads its option defaults from here at start-up without loading the training code."""

TEACHER_DEFAULTS = {
    "rank": 16,
    "learning_rate": 1e-3,
    "epochs": 3,
    "batch_size": 8,
    "max_seq_len": 256,
    "seed": 0,
    "patience": 0,
    "val_fraction": 0.0,
}
