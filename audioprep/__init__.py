"""audioprep: the one top-level package an install adds (layout: docs/architecture.md)."""
