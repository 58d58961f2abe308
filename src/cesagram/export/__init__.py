"""Export: registered models into the BentoML model store, with their hash and settings."""

from cesagram.export.bento import (
    ExportIntegrityError,
    ExportResult,
    export_to_bento,
    folder_sha256,
    verify_exported,
)

__all__ = [
    "ExportIntegrityError",
    "ExportResult",
    "export_to_bento",
    "folder_sha256",
    "verify_exported",
]
