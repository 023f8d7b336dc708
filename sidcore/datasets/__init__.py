"""Data set readers shared by the demo, the trainer and the studies."""
