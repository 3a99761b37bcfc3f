"""The ``xnat-flows`` command line. Heavy imports (prefect) happen inside commands."""
