"""Synthetic head-pose data with exact labels: a face-profiling renderer (see docs/SYNTHETIC_DATA.md)."""
