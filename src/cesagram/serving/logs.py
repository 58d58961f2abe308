"""Keeping message text out of the service's logs.

BentoML logs a request that fails validation with its traceback, and a pydantic error's text
repeats the offending input unless the outermost model hides it; BentoML's generated request
models do not. This filter rewrites such records to the error's location and message only.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

REQUEST_LOGGERS = ("bentoml._internal.server.http_app", "_bentoml_impl.server.app")


class RedactValidationErrors(logging.Filter):
    """Replace a logged `ValidationError` (and its traceback) by input-free error lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
                for problem in error.errors(include_url=False, include_input=False)
            )
            record.msg = (
                f"{record.getMessage()}: {error.error_count()} invalid field(s): {problems}"
            )
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def redact_request_errors() -> None:
    """Install the filter on the loggers BentoML reports request errors with."""
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactValidationErrors) for f in logger.filters):
            logger.addFilter(RedactValidationErrors())
