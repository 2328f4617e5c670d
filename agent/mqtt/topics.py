"""Hearth's MQTT topic tree (docs/mqtt.md "Topics"), spelled in one place for every role."""

import dataclasses

ROOT = "hearth/v1"
LEADER = "leader"
"""The leader's topic level inside its module: no board may be named this."""


def site_prefix(site: str) -> str:
    return f"{ROOT}/{site}"


@dataclasses.dataclass(frozen=True)
class BoardTopics:
    """What one board publishes and listens to."""

    site: str
    module: str
    board: str

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.site}/{self.module}/{self.board}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    @property
    def update(self) -> str:
        """The board updater's report (retained): installed version, slot, update state."""
        return f"{self.base}/update"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    @property
    def commands(self) -> str:
        """Subscription pattern for every command sent to this board."""
        return f"{self.base}/cmd/+"

    @property
    def setpoint(self) -> str:
        return f"{ROOT}/{self.site}/{self.module}/{LEADER}/setpoint/{self.board}"

    @property
    def interlock(self) -> str:
        return f"{ROOT}/{self.site}/{self.module}/{LEADER}/interlock"

    @property
    def client_id(self) -> str:
        return f"hearth-{self.site}-{self.module}-{self.board}"


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1's matching rules for one filter: `+` one level, `#` the rest (and the
    parent), `$` topics never matched by a leading wildcard: how the Link dispatches received
    messages to its handlers."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)
