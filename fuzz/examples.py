"""Bundled example models (being written by helper B, see PARALLEL_WORK.md)."""
