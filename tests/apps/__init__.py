"""Tenant apps used only by the tests (importable as tests.apps.<name>:app)."""
