"""The tests' shared fixtures and helpers, as pytest plugins (registered in tests/conftest.py)."""
