"""Golden fixtures of tests/test_golden.py (see make_golden.py)."""
