"""The central side: collector (MQTT → store, acks), store, register and pass issuing,
policy publishing. Imports `protocol`; never `edge`."""
