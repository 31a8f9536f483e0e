"""Everything that imports torch: training, generation, scoring. Runs only in subprocesses."""
