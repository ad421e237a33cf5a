"""Training runs: the job that trains one run, what it records, and the executors that host it."""
