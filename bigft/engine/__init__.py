"""The training engine: optimizer and schedule, batch plan, checkpoints, and the loop."""
