"""fluxdemo: a small API billed per organisation with fluxrate-web."""
