"""The pure signing layer: tags, the per-link replay guard, key files, and the worked example of
docs/PROTOCOL.md. Most of the ≥ 10,000 generated hostile cases of the link-security targets run
here, against the verifier alone (fast); test_link_security.py sends a smaller number over a
real pty."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import signing
from edge_runtime.signing import AuthError, LinkGuard, Signer

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
T0 = signing.now_ticks(1_780_000_000)  # mid-2026

bodies = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    min_size=1,
    max_size=120,
)
links = st.integers(0, signing.MAX_OPERATOR_LINK)
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reason(guard: LinkGuard, line: bytes) -> str:
    with pytest.raises(AuthError) as info:
        guard.accept(line)
    return info.value.reason


def test_signing_accepts_a_strictly_increasing_stream_per_link() -> None:
    guard = LinkGuard(KEY)
    signer = Signer(KEY, 3, clock=lambda: 1_780_000_000.0)  # a frozen clock: +1 tick each
    stamps = [guard.accept(signer.sign(f"{i} ping")[1:]).timestamp for i in range(50)]
    assert stamps == sorted(set(stamps)) and guard.last[3] == stamps[-1]
    # Links are independent: link 4 starts lower than link 3's last and is still accepted.
    other = Signer(KEY, 4, clock=lambda: 1_780_000_000.0 - 1.0)
    assert guard.accept(other.sign("x ping")[1:]).link == 4


@settings(FAST, max_examples=3000)
@given(
    body=bodies,
    link=links,
    stamp=st.integers(0, signing.MAX_TIMESTAMP),
    tag=st.binary(min_size=8, max_size=8),
)
def test_signing_rejects_forged_tags(body: str, link: int, stamp: int, tag: bytes) -> None:
    line = body.encode() + b"*%02X%012X" % (link, stamp) + tag.hex().upper().encode()
    real = signing.tag(KEY, line[:-16])
    guard = LinkGuard(KEY)
    if real == tag.hex().upper():  # 2**-64: a forgery that is a real signature
        return
    assert _reason(guard, line) == signing.BAD_TAG
    assert guard.last == {} and guard.high_water == 0


@settings(FAST, max_examples=2000)
@given(body=bodies, link=links, stamp=st.integers(0, signing.MAX_TIMESTAMP))
def test_signing_rejects_a_wrong_key(body: str, link: int, stamp: int) -> None:
    line = signing.sign_body(OTHER_KEY, body, link, stamp)[1:]
    assert _reason(LinkGuard(KEY), line) == signing.BAD_TAG


@settings(FAST, max_examples=2000)
@given(body=bodies, link=links, data=st.data())
def test_signing_rejects_any_single_changed_byte(body: str, link: int, data) -> None:
    line = bytearray(signing.sign_body(KEY, body, link, T0)[1:])
    position = data.draw(st.integers(0, len(line) - 1))
    line[position] = data.draw(st.integers(0, 255).filter(lambda b: b != line[position]))
    guard = LinkGuard(KEY)
    with pytest.raises(AuthError):
        guard.accept(bytes(line))
    assert guard.last == {}


@settings(FAST, max_examples=2000)
@given(body=bodies, link=links, back=st.integers(0, 10**9), later=bodies)
def test_signing_rejects_replayed_and_older_lines(
    body: str, link: int, back: int, later: str
) -> None:
    guard = LinkGuard(KEY)
    line = signing.sign_body(KEY, body, link, T0)[1:]
    guard.accept(line)
    assert _reason(guard, line) == signing.STALE  # the same line again
    older = signing.sign_body(KEY, later, link, max(0, T0 - back))[1:]
    assert _reason(guard, older) == signing.STALE  # any line not newer on that link
    assert guard.last == {link: T0}


@settings(FAST, max_examples=1000)
@given(body=bodies, link=links, age=st.integers(signing.STALE_WINDOW + 1, 10**12))
def test_signing_rejects_a_new_link_older_than_the_window(body: str, link: int, age: int) -> None:
    guard = LinkGuard(KEY)
    newest = 5 * 10**12
    guard.accept(signing.sign_body(KEY, "0 ping", (link + 1) % 128, newest)[1:])
    assert _reason(guard, signing.sign_body(KEY, body, link, newest - age)[1:]) == signing.STALE
    # Within the window a new link is accepted (the property can fail).
    assert guard.accept(signing.sign_body(KEY, body, link, newest - 1)[1:]).link == link


@settings(FAST, max_examples=500)
@given(body=bodies, link=st.integers(signing.REPLY_BIT, 0xFF))
def test_signing_robot_refuses_reply_direction_links(body: str, link: int) -> None:
    # A robot's own signed reply, reflected back at it, is not a request.
    assert _reason(LinkGuard(KEY), signing.sign_body(KEY, body, link, T0)[1:]) == (
        signing.WRONG_DIRECTION
    )


@settings(FAST, max_examples=2000)
@given(line=st.binary(min_size=0, max_size=200))
def test_signing_rejects_arbitrary_bytes(line: bytes) -> None:
    guard = LinkGuard(KEY)
    with pytest.raises(AuthError) as info:
        guard.accept(line)
    assert info.value.reason in (signing.UNSIGNED, signing.BAD_TAG)
    assert guard.last == {}


def test_signing_state_survives_a_restart_and_raises_every_floor(tmp_path: Path) -> None:
    guard = LinkGuard(KEY)
    accepted = [signing.sign_body(KEY, "1 ping", 5, T0 + i)[1:] for i in range(3)]
    for line in accepted:
        guard.accept(line)
    restarted = LinkGuard(KEY)
    restarted.load_json(guard.to_json())
    for line in accepted:
        assert _reason(restarted, line) == signing.STALE
    # A line accepted after the last save (1 s later) is refused too: the floor's margin.
    unsaved = signing.sign_body(KEY, "2 ping", 5, T0 + signing.TICKS_PER_S)[1:]
    assert _reason(restarted, unsaved) == signing.STALE
    fresh = signing.sign_body(KEY, "3 ping", 5, T0 + 3 * signing.TICKS_PER_S)[1:]
    assert restarted.accept(fresh).link == 5
    with pytest.raises(ValueError, match="version 1"):
        LinkGuard(KEY).load_json(json.dumps({"version": 9}))
    with pytest.raises(ValueError, match="not a link timestamp"):
        LinkGuard(KEY).load_json(json.dumps({"version": 1, "last": {"200": 1}}))


# ------------------------------------------------------------------------------------------
# Key files
# ------------------------------------------------------------------------------------------


def test_signing_key_file_is_private_atomic_and_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "operator.key"
    key = signing.generate_key()
    old_umask = os.umask(0)  # the file must be 0600 whatever the umask
    try:
        signing.write_key_file(path, key)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.read_key_file(path) == key
    assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
    with pytest.raises(signing.KeyFileError, match="exists; pass --force"):
        signing.write_key_file(path, signing.generate_key())
    assert signing.read_key_file(path) == key
    signing.write_key_file(path, OTHER_KEY, force=True)
    assert signing.read_key_file(path) == OTHER_KEY
    assert [p.name for p in tmp_path.iterdir()] == ["operator.key"]  # no temp file left


def test_signing_key_file_refuses_readable_short_and_odd_files(tmp_path: Path) -> None:
    path = tmp_path / "k"
    signing.write_key_file(path, KEY)
    path.chmod(0o644)
    with pytest.raises(signing.KeyFileError, match="mode 0644 lets others read it; chmod 600"):
        signing.read_key_file(path)
    assert signing.read_key_file(path, private=False) == KEY  # a systemd credential
    path.chmod(0o600)
    path.write_text("abc\n")
    with pytest.raises(signing.KeyFileError, match="expected 64 hex digits"):
        signing.read_key_file(path)
    with pytest.raises(signing.KeyFileError, match="No such file"):
        signing.read_key_file(tmp_path / "missing")
    with pytest.raises(signing.KeyFileError, match="not a regular file"):
        signing.read_key_file(tmp_path)


def test_signing_finds_the_systemd_credential(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert signing.credential_path() is None
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert signing.credential_path() is None
    signing.write_key_file(tmp_path / signing.CREDENTIAL_NAME, KEY)
    assert signing.credential_path() == tmp_path / signing.CREDENTIAL_NAME


# ------------------------------------------------------------------------------------------
# docs/PROTOCOL.md's worked example recomputes
# ------------------------------------------------------------------------------------------


def _doc_example() -> dict[str, str]:
    text = (REPO / "docs" / "PROTOCOL.md").read_text()
    section = text[text.index("### Worked example") :]
    values = dict(re.findall(r"^\| ([a-z ]+) \| `([^`]+)` \|", section, re.MULTILINE))
    command = re.search(r"^python -c (.+)$", section, re.MULTILINE)
    assert command, "the worked example has no python -c line"
    values["command"] = command.group(1)
    return values


def test_signing_doc_worked_example_recomputes() -> None:
    doc = _doc_example()
    key = bytes.fromhex(doc["key"])
    link, stamp = int(doc["link id"]), int(doc["timestamp"])
    line = signing.sign_body(key, doc["body"], link, stamp)
    assert line.decode() == doc["signed line"]
    assert signing.tag(key, line[1:-16]).lower() == doc["tag"].lower()
    assert signing.now_ticks(float(doc["unix time"])) == stamp
    expected = hmac.new(key, line[1:-16], hashlib.sha256).hexdigest()[:16]
    # The reader's one-liner, run as the doc prints it (stdlib only), prints the same tag.
    done = subprocess.run(
        [sys.executable, "-c", shlex.split(doc["command"])[0]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() == expected == doc["tag"].lower()
