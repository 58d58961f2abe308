"""Serving: what the BentoML service (``serving/service.py``) does, usable without a server.

`runtime.ServingRuntime` answers the four APIs from the exported models; `schemas` holds the
request and response bodies with the serving limits; `settings` reads ``serving/serving.yaml``;
`middleware` and `logs` keep the service keyed, JSON-only and free of message text in logs.
"""
