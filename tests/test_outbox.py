"""The outbox stores only what can be sent: a message it cannot encode is refused at the door
(counted, reported), and a spill file poisoned by an older version or a torn write is read back
line by line, the bad lines skipped and reported, never a crash at start."""

import json

from agent.mqtt import envelope
from agent.mqtt.outbox import SPILL_DAMAGED, SPILL_FILE, UNENCODABLE, Outbox, Pending

STAMP = {"v": 1, "boot": "b", "seq": 1, "ts": 1.0}


def _pending(**fields) -> Pending:
    return Pending("hearth/v1/s1/m1/b01/reply", {**STAMP, **fields}, qos=1)


def _drain(outbox: Outbox) -> list[Pending]:
    taken = []
    while outbox.peek_kept() is not None:
        taken.append(outbox.pop_kept())
    return taken


def test_a_message_that_cannot_be_encoded_is_refused_and_reported(tmp_path):
    outbox = Outbox(tmp_path, keep_ram=1)
    outbox.put(_pending(id="ok-1"), keep=True)
    outbox.put(_pending(id="\ud800"), keep=True)  # would spill: RAM holds one
    outbox.put(_pending(reason={"\udc00": 1}), keep=True)  # a key that cannot be encoded
    outbox.put(_pending(mode="\ud83d"), keep=False)  # telemetry too
    assert len(outbox) == 1 and outbox.unencodable == 3
    problems = outbox.take_problems()
    assert [cause for cause, _ in problems] == [UNENCODABLE] * 3
    assert all("hearth/v1/s1/m1/b01/reply" in text and "surrogate" in text
               for _, text in problems), problems
    " ".join(text for _, text in problems).encode("utf-8")  # the report itself can be sent
    assert outbox.take_problems() == []
    outbox.put(_pending(id="ok-2"), keep=True)  # spills: the file holds only what can be sent
    lines = (tmp_path / SPILL_FILE).read_bytes().splitlines()
    assert [json.loads(line)["message"]["id"] for line in lines] == ["ok-2"]
    assert [p.message["id"] for p in _drain(outbox)] == ["ok-1", "ok-2"]


def test_non_finite_numbers_are_sent_as_null_and_spill_without_error(tmp_path):
    outbox = Outbox(tmp_path, keep_ram=1)
    outbox.put(_pending(value=1.0), keep=True)
    outbox.put(_pending(value=float("nan"), power_w=float("inf")), keep=True)  # spills
    outbox.persist([])
    reread = Outbox(tmp_path)
    sent = [json.loads(p.payload()) for p in _drain(reread)]
    assert [(m["value"], m.get("power_w")) for m in sent] == [(1.0, None), (None, None)]
    assert all(m["hist"] is True for m in sent)


def test_a_poisoned_spill_file_is_read_line_by_line_and_reported(tmp_path):
    good = [Pending("t/event", {**STAMP, "seq": n, "cause": "c"}, 1) for n in (1, 2, 3)]
    for pending in good:
        pending.payload()
    lines = [
        good[0].to_line().encode(),
        # what the previous version wrote for a reply to a command with id "\ud800"
        json.dumps({"topic": "t/reply", "message": {**STAMP, "id": "\ud800"}, "qos": 1,
                    "retain": False}).encode(),
        b'{"topic":"t/event","message":{"cause":"\xff\xfe"},"qos":1,"retain":false}',
        good[1].to_line().encode(),
        b"[" * 5000 + b"]" * 5000,
        b'{"topic":"t/event","message":{"v":1},"qos":1,"retain":false',  # torn write
        b'{"topic":"t/event","message":{"n":' + b"9" * 500 + b'},"qos":1,"retain":false}',
        good[2].to_line().encode(),
    ]
    (tmp_path / SPILL_FILE).write_bytes(b"\n".join(lines) + b"\n")
    outbox = Outbox(tmp_path)
    assert outbox.spilled == 3 and outbox.spill_damaged == 5
    (cause, text), = outbox.take_problems()
    assert cause == SPILL_DAMAGED and "5 of 8 lines" in text and SPILL_FILE in text
    sent = _drain(outbox)
    assert [p.message["seq"] for p in sent] == [1, 2, 3]
    assert all(envelope.decode(p.payload())["hist"] is True for p in sent)
    # the damaged lines are gone from the file and counted once, not at every read
    assert outbox.spill_damaged == 5 and not (tmp_path / SPILL_FILE).exists()
    assert outbox.take_problems() == []
