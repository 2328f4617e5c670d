"""The fleet tier: a site's uplink into NATS JetStream and what the centre makes of it
(docs/fleet.md). Above the roles: the board agent never imports it."""
