"""promptmux serving: one frozen base model, every task's soft prompt, mixed-task batches."""
