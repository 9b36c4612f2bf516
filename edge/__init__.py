"""The gate daemon: config, the pure decision core, local store with its outbox, MQTT sync,
and the loop that ties them. Imports `protocol` and `drivers`; never `server`."""
