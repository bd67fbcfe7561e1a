"""Test helpers for apps that use fluxrate-web (pytest plugin, registered via ``pytest11``)."""
