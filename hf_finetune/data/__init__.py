"""Data stage: load labelled data (sources) and check it before training (checks)."""
