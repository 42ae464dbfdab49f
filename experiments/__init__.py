"""kdjax experiments: configs, runners and results (not part of the library)."""
