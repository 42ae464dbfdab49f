"""Shared test settings."""

import os

import hypothesis


# Deterministic, bounded property tests: CI must be reproducible and fast.
hypothesis.settings.register_profile(
    'kdjax', max_examples=25, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'kdjax'))
