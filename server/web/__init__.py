"""The operator dashboard: a Starlette app served beside the collector."""
