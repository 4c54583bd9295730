"""Sweeps: per-job status and failure handling, the cache-entry lock, and the summary of a folder of runs."""
