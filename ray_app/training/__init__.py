"""Ray Train fine-tuning: snapshot examples (data), per-task batches and validation (tasks), the
per-worker loop (loop) and the driver that trains, picks the best checkpoint and registers it
(trainer)."""
