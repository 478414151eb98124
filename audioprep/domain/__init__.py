"""The job domain: kinds, events, the view and its fold, recipes, errors. No I/O here.

Everything that decides what a job *is* lives in this package; services and adapters
(`audioprep.shared`) import it, never the other way round (docs/architecture.md).
"""
