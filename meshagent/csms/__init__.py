"""CSMS fallback over OCPP 2.0.1: the durable queue, the trio client and its config (see docs/csms.md)."""
