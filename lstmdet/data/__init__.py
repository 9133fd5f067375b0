"""Data readers and datasets."""
