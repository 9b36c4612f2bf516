"""The contract between gates and the collector: pass format, topics, message schemas.

No I/O. Both `edge` and `server` import it; it imports neither.
"""
