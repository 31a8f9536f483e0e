"""Everything that imports torch: training, generation, scoring. Runs only in subprocesses."""

from flux_tui.engine import quiet

# Before any engine module imports torch, tqdm or the hub libraries: no progress bars, no known-harmless
# warnings in train.log (engine/quiet.py says which).
quiet.install()
