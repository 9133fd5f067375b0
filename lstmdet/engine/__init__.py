"""Training, evaluation and detection: the same code runs in-process (CLI, Python) and in workers."""
