"""VictoriaMetrics' HTTP API as the fleet's metrics feed uses it: a batch of samples imported in
Prometheus' text format with the senders' own timestamps, and, at start, whether the server
keeps one copy of a sample it is sent twice (docs/fleet.md "Metrics at the centre").

Why the check: VictoriaMetrics stores every sample it is sent, identical ones included, unless
it runs with `-dedup.minScrapeInterval`; with it, samples of one series at one timestamp are
kept once. The feed replays what it had sent but not yet recorded after a crash, so without
deduplication a replay would count those samples twice (`count_over_time`, `sum_over_time`).
"""

import re
import urllib.error
import urllib.request

from agent.errors import HearthError

IMPORT_PATH = "/api/v1/import/prometheus"
FLAGS_PATH = "/flags"
DEDUP_FLAG = "dedup.minScrapeInterval"
DEDUP_MAX_MS = 1000.0
"""A longer interval would merge a module's own states (sent every few seconds) into one."""
DURATION_MS = {"ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
ANSWER_SHOWN_MAX = 300


class MetricsStoreError(HearthError, ConnectionError):
    """VictoriaMetrics did not take a batch or cannot be used; the message says which and why."""


def duration_ms(text: str) -> float | None:
    """A Go duration as VictoriaMetrics prints its flags (`1ms`, `1.5s`, `1m30s`), or None."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * DURATION_MS[unit] for number, unit in parts)


class VictoriaMetrics:
    """One VictoriaMetrics server (single-node) at `url`, e.g. `http://127.0.0.1:8428`."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=(
            "POST" if body is not None else "GET"))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return answer.read()
        except urllib.error.HTTPError as error:
            detail = error.read(ANSWER_SHOWN_MAX).decode("utf-8", "replace").strip()
            raise MetricsStoreError(
                f"VictoriaMetrics at {self.url} answered {path} with HTTP {error.code} "
                f"({detail or error.reason}); check its log") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise MetricsStoreError(
                f"VictoriaMetrics at {self.url} cannot be reached ({reason}); check that it "
                "runs and listens there") from None

    def import_text(self, text: str) -> None:
        """Send samples in the text format (each with its timestamp in ms); returns once the
        server has taken them (HTTP 2xx), raises MetricsStoreError otherwise."""
        self._request(IMPORT_PATH, text.encode("utf-8"))

    def check_deduplicates(self) -> None:
        """Raise MetricsStoreError unless the server keeps one copy of a repeated sample."""
        flags = self._request(FLAGS_PATH).decode("utf-8", "replace")
        found = re.search(rf'^-{re.escape(DEDUP_FLAG)}="([^"]*)"', flags, re.MULTILINE)
        interval_ms = duration_ms(found.group(1)) if found else None
        if interval_ms is None or not 0.0 < interval_ms <= DEDUP_MAX_MS:
            shown = found.group(1) if found else "not set"
            raise MetricsStoreError(
                f"VictoriaMetrics at {self.url} runs with -{DEDUP_FLAG} {shown}: a batch sent "
                "again after a restart of the feed would be stored twice; start it with "
                f"-{DEDUP_FLAG}=1ms")
