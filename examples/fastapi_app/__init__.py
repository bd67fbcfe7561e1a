"""A small metered FastAPI service: see README.md."""
