"""What a run needs from the machine: processes, checkpoints, locks, signals, memory, compile."""
