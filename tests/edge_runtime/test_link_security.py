"""Link security over a real pty pair: signed requests and replies, hostile lines rejected within
the junk reply budget, the disk budget, fair use of the link, the exclusive port, and what fetch
serves."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import protocol, signing
from edge_runtime.client import ClientError, OperatorClient
from edge_runtime.images import Budget
from edge_runtime.protocol import Reply
from edge_runtime.service import Service, _LogLimiter

KEY = bytes(range(32))
CAPTION = "survivor in an orange jacket lying on rubble, left side"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class SignedLink:
    """The operator's end: signs requests on link 1, reads replies verifying every signature."""

    def __init__(self, port: serial.Serial, key: bytes = KEY, link: int = 1) -> None:
        self.port = port
        self.signer = signing.Signer(key, link)
        self.guard = signing.LinkGuard(key, links={link | signing.REPLY_BIT, signing.ANY_LINK})
        self.buffer = bytearray()
        self.raw: list[bytes] = []

    def send(self, body: str) -> bytes:
        line = self.signer.sign(body) + b"\r\n"
        self.write(line)
        return line

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def read(self, timeout: float = 10.0) -> Reply:
        deadline = time.monotonic() + timeout
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                raw = bytes(self.buffer[: newline + 1])
                del self.buffer[: newline + 1]
                self.raw.append(raw)
                return protocol.parse_reply(raw, self.guard)  # raises on any unsigned reply
            assert time.monotonic() < deadline, f"no reply within {timeout} s"
            self.buffer += self.port.read(max(1, self.port.in_waiting))

    def until(self, request_id: str, timeout: float = 10.0) -> list[Reply]:
        out = []
        while True:
            out.append(self.read(timeout))
            if out[-1].id == request_id and out[-1].kind in ("done", "err"):
                return out

    def quiet(self, seconds: float) -> list[Reply]:
        """Every reply arriving within `seconds`."""
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                out.append(self.read(timeout=max(0.01, end - time.monotonic())))
            except AssertionError:
                break
        return out


@pytest.fixture
def link(operator: serial.Serial) -> SignedLink:
    return SignedLink(operator)


@pytest.fixture
def signed(serve, tmp_path) -> Callable[..., Service]:
    def start(**overrides: object) -> Service:
        options: dict[str, object] = {"key": KEY, "link_state": tmp_path / "link-state.json"}
        options.update(overrides)
        service = serve(**options)
        wait_for(lambda: service.link.is_open, what="the port to open")
        return service

    return start


# ------------------------------------------------------------------------------------------
# Signed round trips
# ------------------------------------------------------------------------------------------


def test_link_security_signed_requests_get_signed_replies(signed, link, tmp_path) -> None:
    service = signed()
    link.send("p1 ping")
    (done,) = link.until("p1")
    assert done.kind == "done" and float(done.get("uptime_s")) >= 0
    link.send("g1 gen n=2 seed=4 -- " + CAPTION)
    ack, done = link.until("g1")
    assert (ack.kind, done.kind, done.get("n")) == ("ack", "done", "2")
    assert "dir" not in done.fields and all("/" not in n for n in done.values("files"))
    link.send(f"f1 fetch {done.values('files')[0]}")
    replies = link.until("f1")
    blob = b"".join(protocol.decode_chunk(r)[1] for r in replies if r.kind == "data")
    assert hashlib.sha256(blob).hexdigest() == done.values("sha256")[0]
    link.send("s1 status")
    *_, status = link.until("s1")
    assert status.get("auth") == "signed" and status.get("rejected") == "0"
    assert str(tmp_path) not in b"".join(link.raw).decode()  # no absolute path on the link
    # Every reply went out on link 1 + 0x80 with strictly increasing timestamps.
    parts = [signing.split_signed(raw.strip()[1:]) for raw in link.raw]
    assert {p.link for p in parts} == {0x81}
    stamps = [p.timestamp for p in parts]
    assert stamps == sorted(set(stamps))
    assert service.status_fields()["ok"] == 4


def test_link_security_client_signs_and_verifies(signed, cable, tmp_path) -> None:
    signed()
    with OperatorClient.open(cable.operator_path, timeout=2, key=KEY, link=9) as client:
        assert client.ping() > 0
        result, paths = client.generate_and_fetch(CAPTION, tmp_path / "got", n=2, seed=5)
        assert [p.read_bytes() for p in paths] == [
            (tmp_path / "out" / name).read_bytes() for name, _ in result.files
        ]
        assert client.status()["auth"] == "signed"
    wrong = OperatorClient.open(cable.operator_path, timeout=0.5, retries=1, key=KEY[::-1])
    with wrong, pytest.raises(ClientError, match="gave up after 2 attempts"):
        wrong.ping()  # wrong key: the robot's AUTH replies do not verify either


def test_link_security_unsigned_ping_answered_everything_else_refused(signed, link) -> None:
    service = signed()
    link.write(b"1 ping\r\n")
    (pong,) = link.until("1")
    assert pong.kind == "done" and dict(pong.fields) == {"cmd": "ping"}  # no uptime
    assert signing.split_signed(link.raw[-1].strip()[1:]).link == signing.ANY_LINK
    for number, line in enumerate(
        [b"2 status", b"$3 help*13", b"4 gen survivor", b"5 fetch x.png"]
    ):
        link.write(line + b"\r\n")
        (err,) = link.until(str(number + 2))
        assert (err.kind, err.code, err.text) == ("err", "AUTH", "unsigned")
    assert service.status_fields()["rejected"] == 4 and service.status_fields()["ok"] == 1


def test_link_security_insecure_robot_refuses_signed_lines(serve, reader) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open)
    reader.send(signing.Signer(KEY, 1).sign("1 ping") + b"\r\n")
    (err,) = reader.read(1)
    assert (err.code, err.text) == ("AUTH", "robot has no key")
    reader.send(b"2 status\r\n")
    assert reader.until("2")[-1].get("auth") == "insecure"


def test_link_security_replay_refused_after_a_restart(serve, operator, tmp_path) -> None:
    state = tmp_path / "state.json"
    first = serve(key=KEY, link_state=state)
    wait_for(lambda: first.link.is_open)
    link = SignedLink(operator)
    recorded = [link.send(f"r{i} ping") for i in range(3)]
    for i in range(3):
        assert link.until(f"r{i}")[-1].kind == "done"
    first.request_stop()
    wait_for(lambda: state.exists() and '"1"' in state.read_text(), what="the saved state")
    time.sleep(0.5)
    second = serve(key=KEY, link_state=state)
    wait_for(lambda: second.link.is_open)
    link.quiet(0.2)
    for line in recorded:  # the attacker's recording, played back after the restart
        link.write(line)
    replies = link.quiet(1.5)
    assert replies and all(r.kind == "err" and r.code == "AUTH" for r in replies)
    assert second.status_fields()["rejected"] == 3 and second.status_fields()["ok"] == 0


# ------------------------------------------------------------------------------------------
# Hostile lines over the pty: 100 % rejected, at most one short error each, within the budget
# ------------------------------------------------------------------------------------------

_hostile_body = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60
)


@st.composite
def hostile_line(draw, recorded: list[bytes]) -> bytes:
    body = draw(_hostile_body)
    kind = draw(st.sampled_from(["unsigned", "forged", "wrong_key", "replay", "stale", "reply"]))
    link = draw(st.integers(0, 0x7F))
    if kind == "unsigned":
        return body.encode() + draw(
            st.sampled_from([b"", b"*%02X" % protocol.checksum(body.encode())])
        )
    if kind == "forged":
        tag = draw(st.binary(min_size=8, max_size=8)).hex().upper()
        return b"$" + body.encode() + b"*%02X%012X" % (link, signing.now_ticks()) + tag.encode()
    if kind == "wrong_key":
        return signing.sign_body(KEY[::-1], body, link, signing.now_ticks())
    if kind == "replay" and recorded:
        return draw(st.sampled_from(recorded)).rstrip(b"\r\n")
    if kind == "reply":  # a robot → operator line reflected back
        return signing.sign_body(KEY, body, 0x81, signing.now_ticks() + 10**9)
    # stale: a link never seen, older than the one-minute window
    return signing.sign_body(KEY, body, 0x42, signing.now_ticks() - 120 * signing.TICKS_PER_S)


def test_link_security_hostile_lines_all_rejected_within_the_junk_budget(signed, link) -> None:
    service = signed()
    recorded = [link.send(f"ok{i} ping") for i in range(5)]
    for i in range(5):
        link.until(f"ok{i}")
    stats = {"lines": 0, "errors": 0}
    started = time.monotonic()

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(lines=st.lists(hostile_line(recorded), min_size=10, max_size=25))
    def attack(lines: list[bytes]) -> None:
        link.write(b"".join(line + b"\r\n" for line in lines))
        stats["lines"] += len(lines)

    attack()
    # Wait until every line is accounted for: each answered by its own error or a coalesced one.
    replies: list[Reply] = []
    answered = 0
    # A liveness bound, not a speed claim (the byte budget below is what is tested): 30 s ran
    # out once on a 2-core box shared with two training runs.
    deadline = time.monotonic() + 90
    while answered < stats["lines"]:
        assert time.monotonic() < deadline, (answered, stats, service.status_fields())
        reply = link.read(timeout=90)
        replies.append(reply)
        assert reply.kind == "err" and reply.code == "AUTH", reply  # 0 accepted
        match = re.fullmatch(r"(\d+) bad lines; last: .+", reply.text)
        answered += int(match.group(1)) if match else 1
    elapsed = time.monotonic() - started
    assert answered == stats["lines"] >= 500
    status = service.status_fields()
    assert status["rejected"] == stats["lines"] and status["ok"] == 5
    # Short errors, within 5 % of 11,520 B/s plus the 2 s burst.
    error_bytes = sum(len(raw) for raw in link.raw[5:])
    assert max(len(raw) for raw in link.raw[5:]) <= 120
    assert error_bytes <= 576 * (elapsed + 2.5), (error_bytes, elapsed)
    # The operator still gets through at once.
    link.send("after ping")
    assert link.until("after")[-1].kind == "done"


def test_link_security_a_burst_of_junk_is_coalesced_and_never_delays_the_operator(
    signed, link
) -> None:
    service = signed()
    link.write(b"".join(b"junk%d status\r\n" % i for i in range(400)))
    t0 = time.monotonic()
    link.send("op ping")
    replies = link.until("op")
    assert time.monotonic() - t0 < 1.0
    individual = [r for r in replies if r.kind == "err" and r.id.startswith("junk")]
    assert len(individual) < 30  # the burst allowance, not 400 replies
    rest = link.quiet(3.0)
    coalesced = [r for r in rest if r.id == protocol.NO_ID]
    assert len(coalesced) == 1 and coalesced[0].text.startswith(
        f"{400 - len(individual)} bad lines"
    )
    assert service.status_fields()["coalesced"] == 400 - len(individual)


def test_link_security_ping_overtakes_a_long_fetch(signed, link, tmp_path) -> None:
    service = signed()
    # The order in which the service frames lines for the wire (a pty's own buffer, tens of KB,
    # would hide it from the far end; a UART's is ~4 KB).
    order: list[str] = []
    real_frame, real_dispatch = service._frame, service._dispatch

    def frame(item):  # type: ignore[no-untyped-def]
        kind, request_id = item.body.split(b" ", 2)[:2]
        order.append(f"{kind.decode()}:{request_id.decode()}")
        return real_frame(item)

    def dispatch(request, received):  # type: ignore[no-untyped-def]
        order.append(f"request:{request.id}")
        return real_dispatch(request, received)

    service._frame, service._dispatch = frame, dispatch
    (tmp_path / "out" / "big.png").write_bytes(os.urandom(512 * 400))
    link.send("f fetch big.png")
    while link.read().kind != "data":
        pass
    link.send("p ping")
    replies = link.until("f", timeout=30)
    assert any(r.id == "p" for r in replies)
    asked = order.index("request:p")
    answered = order.index("done:p")
    assert order[asked + 1 :].count("data:f") > 300  # the fetch was far from done
    assert order[asked:answered].count("data:f") <= 1  # the ping jumped the bulk data
    assert service.status_fields()["ok"] == 2


def test_link_security_outbox_is_bounded(signed, link) -> None:
    service = signed()
    for _ in range(5000):
        service._send(b"x" * 200)
    assert service._outbox_bytes <= 256 << 10
    assert service.status_fields()["dropped"] > 0
    with service._outbox_lock:  # nobody reads these: let the service stop promptly
        service._outbox.clear()
        service._outbox_bytes = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        link.port.reset_input_buffer()
        time.sleep(0.02)


def test_link_security_bad_input_log_lines_are_rate_limited(caplog) -> None:
    now = [0.0]
    limiter = _LogLimiter(lambda: now[0], burst=5, period=10.0)
    with caplog.at_level(logging.INFO, logger="edge_runtime.service"):
        for i in range(1000):
            limiter.log(logging.INFO, "bad line %d", i)
        now[0] = 10.5
        limiter.log(logging.INFO, "bad line %d", 1000)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6
    assert messages[-1] == "bad line 1000 (995 similar lines suppressed)"


# ------------------------------------------------------------------------------------------
# The exclusive port
# ------------------------------------------------------------------------------------------


def _open_as_another_process(path: str) -> str:
    """Open the tty from a forked child (as 'nobody' when we are root: root ignores TIOCEXCL);
    returns 'ok' or the errno name."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        result = b"ok"
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        except OSError as err:
            result = errno.errorcode.get(err.errno, str(err.errno)).encode()
        os.write(write_end, result)
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read().decode()


@pytest.mark.skipif(sys.platform != "linux", reason="TIOCEXCL on Linux ptys")
def test_link_security_port_is_exclusive_while_served(signed, cable) -> None:
    robot_tty = os.path.realpath(cable.robot_path)
    os.chmod(robot_tty, 0o666)  # so only TIOCEXCL, not permissions, can refuse the open
    assert _open_as_another_process(robot_tty) == "ok"  # control: nobody holds it yet
    service = signed()
    assert _open_as_another_process(robot_tty) == "EBUSY"
    service.request_stop()  # the service closes the port: the lock goes with it
    wait_for(lambda: not service.link.is_open, what="the service to close the port")
    assert _open_as_another_process(robot_tty) == "ok"


# ------------------------------------------------------------------------------------------
# Disk budget
# ------------------------------------------------------------------------------------------


def test_link_security_disk_budget_prunes_fetched_then_oldest(signed, link, tmp_path) -> None:
    service = signed(budget=Budget(max_files=4))
    out = tmp_path / "out"
    link.send("a gen n=2 seed=1 -- " + CAPTION)
    first = link.until("a")[-1].values("files")
    link.send(f"f fetch {first[1]}")  # the newer of the two is fetched
    link.until("f")
    time.sleep(0.01)
    link.send("b gen n=2 seed=2 -- " + CAPTION)
    second = link.until("b")[-1].values("files")
    link.send("c gen n=1 seed=3 -- " + CAPTION)
    (third,) = link.until("c")[-1].values("files")
    kept = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert kept == sorted([first[0], *second, third])  # the fetched one went first
    link.send("d gen n=2 seed=4 -- " + CAPTION)
    fourth = link.until("d")[-1].values("files")
    kept = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert kept == sorted([second[1], third, *fourth])  # then the oldest
    link.send("s status")
    status = link.until("s")[-1]
    assert (status.get("disk_files"), status.get("pruned"), status.get("disk_max_files")) == (
        "4", "3", "4",
    )  # fmt: skip
    assert int(status.get("disk_bytes")) == sum(
        (out / n).stat().st_size for n in [second[1], third, *fourth]
    )
    assert service.status_fields()["disk_fetched"] == 0


def test_link_security_gen_that_cannot_fit_gets_a_clear_error(signed, link, tmp_path) -> None:
    signed(budget=Budget(max_bytes=200))
    link.send("a gen seed=1 -- " + CAPTION)
    err = link.until("a")[-1]
    assert err.code == "OUTPUT" and "exceed the output budget of 200 bytes" in err.text
    link.send("p ping")
    assert link.until("p")[-1].kind == "done"


def test_link_security_free_space_floor_is_kept(signed, link, tmp_path) -> None:
    signed(budget=Budget(min_free_bytes=1 << 62))  # more than any disk has
    link.send("a gen seed=1 -- " + CAPTION)
    err = link.until("a")[-1]
    assert err.code == "OUTPUT" and "floor" in err.text and str(tmp_path) not in err.text
    assert not any(p.suffix == ".png" for p in (tmp_path / "out").iterdir())
    link.send("p ping")
    assert link.until("p")[-1].kind == "done"


def test_link_security_flooding_gen_stays_within_the_budget(signed, link, tmp_path) -> None:
    budget = Budget(max_bytes=400_000, max_files=40)
    service = signed(budget=budget, queue_size=2)
    out = tmp_path / "out"

    def within_budget() -> None:
        # The service evicts old images while it serves: one listed here may be gone by its
        # stat, which only makes the folder smaller (seen once in CI as FileNotFoundError).
        sizes = []
        for p in out.iterdir():
            if p.suffix == ".png":
                with contextlib.suppress(FileNotFoundError):
                    sizes.append(p.stat().st_size)
        assert len(sizes) <= 40 and sum(sizes) <= 400_000

    # A burst: what does not fit the queue gets BUSY; what runs stays within the budget.
    burst = [f"g{i}" for i in range(12)]
    for i, request_id in enumerate(burst):
        link.send(f"{request_id} gen n=16 seed={i} -- {CAPTION}")
    finals = {}
    while len(finals) < len(burst):
        reply = link.read(timeout=30)
        if reply.kind in ("done", "err"):
            finals[reply.id] = reply
        within_budget()
    assert {r.code for r in finals.values() if r.kind == "err"} <= {"BUSY"}
    # Then back to back: 5 × 16 images through a 40-image budget.
    for i in range(5):
        link.send(f"s{i} gen n=16 seed={100 + i} -- {CAPTION}")
        assert link.until(f"s{i}", timeout=30)[-1].kind == "done"
        within_budget()
    assert service.status_fields()["pruned"] >= 40
    link.send("after gen seed=9 -- " + CAPTION)
    assert link.until("after")[-1].kind == "done"


def test_link_security_delete_after_fetch(signed, link, tmp_path) -> None:
    signed(delete_after_fetch=True)
    link.send("a gen seed=1 -- " + CAPTION)
    (name,) = link.until("a")[-1].values("files")
    link.send(f"f fetch {name} from=1")  # a partial fetch keeps it
    link.until("f")
    assert (tmp_path / "out" / name).exists()
    link.send(f"g fetch {name}")
    link.until("g")
    wait_for(lambda: not (tmp_path / "out" / name).exists(), what="the delete")


# ------------------------------------------------------------------------------------------
# What fetch serves
# ------------------------------------------------------------------------------------------


def test_link_security_fetch_serves_only_our_own_regular_files(signed, link, tmp_path) -> None:
    signed()
    out = tmp_path / "out"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside the output directory")
    os.link(secret, out / "hard.png")  # a hard link planted in the output directory
    (out / "soft.png").symlink_to(secret)
    os.mkfifo(out / "fifo.png")
    (out / "dir.png").mkdir()
    (out / "mine.png").write_bytes(b"png")
    answers = {}
    for name in ["hard.png", "soft.png", "fifo.png", "dir.png", "missing.png"]:
        link.send(f"x fetch {name}")
        err = link.until("x")[-1]
        answers[name] = (err.code, err.text)
    assert answers == {n: ("NOT_FOUND", f"no such image: {n}") for n in answers}
    link.send("y fetch mine.png")
    assert link.until("y")[-1].kind == "done"


def test_link_security_client_heals_a_clock_behind_the_robots_memory(signed, cable) -> None:
    service = signed()
    # The robot last saw link 1 an hour ahead of our clock (another laptop, a wrong clock).
    ahead = signing.Signer(KEY, 1, clock=lambda: time.time() + 3600)
    with serial.Serial(cable.operator_path, timeout=0.05) as raw:
        raw.write(ahead.sign("early ping") + b"\r\n")
        wait_for(lambda: service.status_fields()["ok"] == 1, what="the early ping")
    with OperatorClient.open(cable.operator_path, timeout=2, key=KEY, link=1) as client:
        assert client.ping() > 0  # first try: AUTH replayed or stale; the resend is newer
    status = service.status_fields()
    assert status["rejected"] == 1 and status["ok"] == 2
