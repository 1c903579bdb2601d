"""The segmented, append-only commit log."""
