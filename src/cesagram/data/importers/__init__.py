"""Importers: one module per input format, each feeding the shared ``Ingestion``."""
