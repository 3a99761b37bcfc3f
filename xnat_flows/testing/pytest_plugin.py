"""pytest fixtures for testing against the XNAT emulator (registered via the ``pytest11`` entry point)."""
