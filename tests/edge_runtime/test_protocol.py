"""The line protocol without any I/O: checksums, parsing, reply grammar, framing, chunks."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import protocol, signing
from edge_runtime.protocol import Code, LineFramer, ProtocolError, parse_reply, parse_request


def test_checksum_matches_a_real_nmea_sentence() -> None:
    # A GPS receiver's sentence, checksum as transmitted: XOR of the bytes between $ and *.
    sentence = b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76"
    body = sentence[1 : sentence.index(b"*")]
    assert f"{protocol.checksum(body):02X}" == "76"
    assert protocol.with_checksum("7 ping") == f"$7 ping*{protocol.checksum(b'7 ping'):02X}"


def _code(line: bytes, **kwargs: int) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_request(line, **kwargs)
    return info.value.code


def test_parse_request_reads_typed_and_checksummed_lines() -> None:
    typed = parse_request(b"7 gen n=2 seed=42 survivor  on rubble")
    assert typed is not None
    assert (typed.id, typed.command, typed.n, typed.seed) == ("7", "gen", 2, 42)
    assert typed.caption == "survivor  on rubble" and not typed.checksummed
    checked = parse_request(protocol.with_checksum("A_b-9 GENERATE -- n=3 people").encode())
    assert checked is not None and checked.checksummed
    assert (checked.id, checked.command, checked.n, checked.caption) == (
        "A_b-9",
        "gen",
        1,
        "n=3 people",
    )
    fetch = parse_request(b"  $f1 fetch 2025_x_s1_0.png from=3 count=2\t")
    assert fetch is not None and (fetch.file, fetch.start, fetch.count) == ("2025_x_s1_0.png", 3, 2)
    assert parse_request(b" \t ") is None


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"x" * 513, Code.LINE_TOO_LONG),
        (b"1 ping*00", Code.BAD_CHECKSUM),
        (b"1 ping*G1", Code.BAD_CHECKSUM),
        (b"1 gen caf\xe9", Code.BAD_UTF8),
        (b"1 gen \xed\xa0\x80 surrogate", Code.BAD_UTF8),
        (b"gen survivor on rubble", Code.BAD_ID),
        (b"ping", Code.BAD_ID),
        (b"12345678901234567 ping", Code.BAD_ID),
        (b"$$1 ping", Code.BAD_ID),
        (b"1", Code.UNKNOWN_COMMAND),
        (b"1 reboot now", Code.UNKNOWN_COMMAND),
        (b"1 ping now", Code.BAD_ARGS),
        (b"1 gen n=0 x", Code.BAD_ARGS),
        (b"1 gen n=17 x", Code.BAD_ARGS),
        (b"1 gen seed=4294967296 x", Code.BAD_ARGS),
        (b"1 gen seed=-1 x", Code.BAD_ARGS),
        (b"1 gen sed=4 x", Code.BAD_ARGS),
        (b"1 gen n=1 n=2 x", Code.BAD_ARGS),
        (b"1 gen", Code.BAD_CAPTION),
        (b"1 gen n=2 \xf0\x9f\x9a\x91", Code.BAD_CAPTION),
        (b"1 fetch", Code.BAD_ARGS),
        (b"1 fetch ../etc/passwd", Code.BAD_ARGS),
        (b"1 fetch .hidden.tmp", Code.BAD_ARGS),
        (b"1 fetch a.png from=x", Code.BAD_ARGS),
        (b"1 fetch a.png count=0", Code.BAD_ARGS),
        (b"1 fetch a.png extra", Code.BAD_ARGS),
    ],
)
def test_parse_request_reports_the_first_problem(line: bytes, code: str) -> None:
    assert _code(line) == code


def test_parse_request_addresses_errors_to_the_id_when_it_can() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(b"$k9 gen n=x*" + b"%02X" % protocol.checksum(b"k9 gen n=x"))
    assert (info.value.request_id, info.value.code) == ("k9", Code.BAD_ARGS)
    with pytest.raises(ProtocolError) as info:
        parse_request(b"k9 gen \xff*00")
    assert (info.value.request_id, info.value.code) == ("k9", Code.BAD_CHECKSUM)
    with pytest.raises(ProtocolError) as info:
        parse_request(b"\xffk9 ping")
    assert info.value.request_id == protocol.NO_ID


def test_limits_follow_the_configuration() -> None:
    assert _code(b"1 gen n=5 x", max_images=4) == Code.BAD_ARGS
    assert parse_request(b"1 gen n=5 x", max_images=5) is not None
    assert _code(b"1 ping" + b" " * 60, max_line=64) == Code.LINE_TOO_LONG


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=80),
        st.text(alphabet=st.sampled_from("19aZ _-$*=.gnpstfchxoe\t\x7fé\x00"), max_size=40).map(
            str.encode
        ),
        st.tuples(
            st.sampled_from(["1", "id_9", "x", "", "$2", "gen"]),
            st.sampled_from(["gen", "GEN", "fetch", "ping", "status", "help", "nope", ""]),
            st.lists(
                st.sampled_from(["n=2", "n=0", "seed=7", "seed=x", "--", "a.png", "from=1", "x"]),
                max_size=4,
            ),
            st.sampled_from(["", "survivor", "🚑", "\xe9", "*4F", "*zz"]),
            st.booleans(),
        ).map(
            lambda t: (
                protocol.with_checksum(" ".join([t[0], t[1], *t[2], t[3]]))
                if t[4]
                else " ".join([t[0], t[1], *t[2], t[3]])
            ).encode()
        ),
    )
)
def test_framing_and_parsing_agree_with_the_documented_rules(oracle, line: bytes) -> None:
    line = line.replace(b"\r", b"").replace(b"\n", b"")
    expected = oracle(line)
    framed = LineFramer().feed(line + b"\n")
    if not framed:
        assert expected is None, line
        return
    (frame,) = framed
    if frame.overlong:
        assert expected == ("err", Code.LINE_TOO_LONG, protocol.guess_id(frame.data)), line
        return
    try:
        request = parse_request(frame.data)
    except ProtocolError as err:
        assert expected == ("err", err.code, err.request_id), line
        assert err.message and "\n" not in err.message
        return
    assert request is not None
    if request.command == "fetch":
        assert expected == ("err", Code.NOT_FOUND, request.id), line
    else:
        kind = "ack" if request.command == "gen" else "done"
        assert expected == (kind, "", request.id), line


@given(
    st.sampled_from(["ack", "done", "data", "err", "info"]),
    st.text(max_size=60),
    st.lists(st.tuples(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.text(max_size=30))),
)
def test_replies_are_ascii_one_line_and_round_trip(kind: str, text: str, fields) -> None:
    if kind in ("err", "info"):
        line = protocol.format_text(kind, "id7", f"CODE {text}")
        reply = parse_reply(line)
        assert reply.id == "id7"
    else:
        line = protocol.format_reply(kind, "id7", fields)
        reply = parse_reply(line)
        assert reply.kind == kind and reply.id == "id7"
        for key, value in dict(fields).items():
            assert reply.get(key) == value
    assert line.isascii() and line.endswith(b"\r\n") and b"\n" not in line[:-2]
    assert b"\r" not in line[:-2]


def test_parse_reply_refuses_corruption() -> None:
    line = protocol.format_reply("done", "7", [("cmd", "ping")])
    with pytest.raises(protocol.ReplyError):
        parse_reply(line.replace(b"ping", b"pong"))
    with pytest.raises(protocol.ReplyError):
        parse_reply(line[: line.index(b"*")] + b"\r\n")
    lists = parse_reply(protocol.format_reply("done", "7", [("files", ["a,b.png", "c d.png"])]))
    assert lists.values("files") == ["a,b.png", "c d.png"]


def test_data_lines_carry_crc_checked_base64_chunks() -> None:
    blob = bytes(range(256)) * 5
    lines = [protocol.data_line("f", i, c) for i, c in protocol.chunks(blob, chunk_size=300)]
    assert len(lines) == protocol.chunk_count(len(blob), 300) == 5
    decoded = [protocol.decode_chunk(parse_reply(line)) for line in lines]
    assert b"".join(c for _, c in decoded) == blob and [i for i, _ in decoded] == [0, 1, 2, 3, 4]
    reply = parse_reply(lines[1])
    damaged = bytearray(base64.b64decode(reply.get("b64")))
    damaged[0] ^= 1
    forged = protocol.format_reply(
        "data",
        "f",
        [
            ("i", 1),
            ("crc", reply.get("crc")),
            ("b64", base64.b64encode(bytes(damaged)).decode()),
        ],
    )
    with pytest.raises(protocol.ReplyError, match="CRC"):
        protocol.decode_chunk(parse_reply(forged))
    assert int(reply.get("crc"), 16) == binascii.crc32(blob[300:600])


def test_framer_splits_on_cr_lf_and_crlf_and_drops_blank_lines() -> None:
    framer = LineFramer()
    lines = framer.feed(b"1 ping\r\n2 ping\n3 ping\r\r\n  \n4 pi")
    assert [line.data for line in lines] == [b"1 ping", b"2 ping", b"3 ping"]
    assert framer.pending == 4
    assert [line.data for line in framer.feed(b"ng\n")] == [b"4 ping"]


def test_framer_applies_backspace_and_delete_like_a_terminal() -> None:
    framer = LineFramer()
    (line,) = framer.feed(b"1 pinx\x7fg caf\xc3\xa9\x08e\x08\x08\x08\x08\x08\n")
    assert line.data == b"1 ping"


def test_framer_reports_overlong_once_and_discards_to_the_line_end() -> None:
    framer = LineFramer(max_line=16)
    out = framer.feed(b"7 gen " + b"x" * 40)
    assert len(out) == 1 and out[0].overlong and out[0].data.startswith(b"7 gen ")
    assert framer.pending == 0
    assert framer.feed(b"y" * 10_000) == []  # still discarding: memory stays bounded
    assert framer.pending == 0
    assert [line.data for line in framer.feed(b"zzz\n8 ping\n")] == [b"8 ping"]


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_framer_verdicts_do_not_depend_on_how_reads_split_the_input(data: bytes, cuts) -> None:
    whole = LineFramer(max_line=32).feed(data)
    framer = LineFramer(max_line=32)
    pieces = []
    previous = 0
    for cut in sorted(min(c, len(data)) for c in cuts):
        pieces.append(data[previous:cut])
        previous = cut
    pieces.append(data[previous:])
    split = [line for piece in pieces for line in framer.feed(piece)]
    assert split == whole


def test_format_request_builds_lines_the_parser_accepts() -> None:
    line = protocol.format_request("c7", "gen", caption="n=2 people\non the roof", n=3, seed=9)
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    request = parse_request(line.rstrip(b"\r\n"))
    assert request is not None and request.checksummed
    assert (request.caption, request.n, request.seed) == ("n=2 people on the roof", 3, 9)
    with pytest.raises(ValueError, match="bad request id"):
        protocol.format_request("a b", "ping")


DOC_KEY = bytes(range(32))
DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
REPLY_KINDS = ("$ack ", "$done ", "$err ", "$info ", "$data ")


@pytest.mark.skipif(not DOC.is_file(), reason="docs/ is not part of an installed package")
def _doc_block_after(text: str, marker: str) -> list[str]:
    """The lines of the first ``` block after `marker` in the document."""
    block = text.split(marker, 1)[1].split("```")[1]
    return [line for line in block.splitlines() if line.strip()]


def _doc_reply(line: str) -> object:
    """A reply quoted in the doc: a checksummed one parses; a signed one verifies under the
    worked example's key (the doc's sessions use it so that readers can check them)."""
    parts = signing.split_signed(line.encode()[1:])
    if parts is None:
        return parse_reply(line.encode() + b"\r\n")
    assert signing.verify_tag(DOC_KEY, line.encode()[1:], parts), line
    return parts


def test_protocol_doc_examples_are_what_the_parser_says() -> None:
    """Every reply in docs/PROTOCOL.md has a valid checksum or signature, and every request in
    its miniterm sessions gets the reply shown after it."""
    text = DOC.read_text()
    lines = _doc_block_after(text, "On a robot started `--insecure`")
    checked = 0
    for i, line in enumerate(lines):
        if line.startswith(REPLY_KINDS):
            if "…" not in line:
                parse_reply(line.encode() + b"\r\n")
            continue
        reply = parse_reply(lines[i + 1].encode() + b"\r\n")
        try:
            request = parse_request(line.encode())
        except ProtocolError as err:
            assert (reply.kind, reply.code, reply.id) == ("err", err.code, err.request_id), line
        else:
            assert request is not None and reply.id == request.id
            if request.command == "gen":
                assert reply.kind == "ack" and reply.get("n") == str(request.n)
        checked += 1
    assert checked >= 9
    # The signed session: replayed through a robot's guard and a client's guard, in order.
    robot = signing.LinkGuard(DOC_KEY)
    client = signing.LinkGuard(DOC_KEY, links={0x82, signing.ANY_LINK})
    signed = _doc_block_after(text, "In miniterm (typed or pasted lines first")
    outcomes = []
    for i, line in enumerate(signed):
        if line.startswith(REPLY_KINDS):
            client.accept(line.encode()[1:])  # every reply verifies, in order
            continue
        reply = parse_reply(signed[i + 1].encode() + b"\r\n", client_copy(client))
        try:
            verdict = "accepted" if robot.accept(line.encode().lstrip(b"$")) else ""
        except signing.AuthError as err:
            verdict = err.reason
        outcomes.append((line.split()[0].lstrip("$"), verdict, reply.kind, reply.text))
    assert outcomes == [
        ("1", "unsigned", "done", ""),  # an unsigned ping is answered
        ("2", "accepted", "ack", ""),
        ("3", "unsigned", "err", "unsigned"),
        ("2", "replayed or stale", "err", "replayed or stale"),
        ("4", "accepted", "err", "no such image: nope.png"),
        ("5", "accepted", "done", ""),
    ]
    for line in text.splitlines():  # replies quoted anywhere else
        if line.startswith(REPLY_KINDS) and "…" not in line:
            _doc_reply(line)


def client_copy(guard: signing.LinkGuard) -> signing.LinkGuard:
    """A throwaway copy, so peeking at the next reply does not consume its timestamp."""
    copy = signing.LinkGuard(guard.key, links=guard.links)
    copy.last, copy.high_water = dict(guard.last), guard.high_water
    return copy
