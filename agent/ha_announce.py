"""A role's Home Assistant discovery messages, kept retained on the broker and sent again
whenever Home Assistant says it came online.

Why the role holds them: no state lives only in a broker, so the Link re-asserts each one at
every connect (`Link.assert_retained`); and Home Assistant, restarted or reloaded, publishes
`online` on `homeassistant/status` and expects discovery again. Payloads are the exact bytes of
agent/ha_discovery.py, never re-encoded, so the same device is the same message every time.
"""

from agent.errors import MessageError
from agent.ha_discovery import HA_STATUS_TOPIC


class DiscoveryAnnouncer:
    def __init__(self, link):
        self.link = link
        self.messages: dict[str, bytes] = {}
        """discovery topic -> the payload this role asserts there"""

    def start(self) -> "DiscoveryAnnouncer":
        self.link.subscribe(HA_STATUS_TOPIC, self._on_ha_status)
        return self

    def announce(self, topic: str, payload: bytes) -> None:
        """Assert one device's discovery; the same bytes again send nothing."""
        if self.messages.get(topic) == payload:
            return
        self.messages[topic] = payload
        self.link.assert_retained(topic, payload)

    def _on_ha_status(self, message) -> None:
        try:
            online = message.text().strip() == "online"
        except MessageError:
            return
        if online:
            for topic, payload in self.messages.items():
                self.link.assert_retained(topic, payload)
