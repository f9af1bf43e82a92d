"""Random AIMET encodings for built models (being written by helper B, see PARALLEL_WORK.md)."""
