"""The process manager shared by every role: master, workers, signals, shared counters."""
