"""The state layer: every file under state_dir, how it is written, read and recovered."""
