"""MQTT for Hearth's roles: the link to the broker (the only paho user), the outbox, the envelope,
the topic tree and the board's side of the contract in docs/mqtt.md."""
