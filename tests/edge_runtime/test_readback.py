"""The read-back on the robot: the decision rule, `Engine.understand` on the tiny bundle, the `gen`
and `understand` replies over a real pty, `rescue-edge generate`'s lines, and a bundle without a
read-back (an old checkpoint's) that keeps working as before (docs/PROTOCOL.md § Read-back)."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import bundle as b
from edge_runtime import protocol, readback, vocabulary
from edge_runtime.cli import main
from edge_runtime.client import parse_readback
from edge_runtime.engine import Engine, open_session
from edge_runtime.protocol import format_request
from edge_runtime.service import Service, ServiceConfig

CAPTION = "survivor in an orange jacket lying on rubble, left side"
OFF_DOMAIN = "draw a cat"
"""One of the sentences the tiny bundle's read-back was fitted to flag (export.tiny)."""
SPEC = b.ReadBackSpec(
    attributes=(("colour", ("red", "blue", "green")), ("helmet", ("no", "yes"))),
    off_domain_threshold=0.5,
)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


# -- the decision rule ------------------------------------------------------------------------


def test_decide_takes_each_blocks_winner_and_reads_the_last_class_as_not_stated() -> None:
    probs = np.array([0.1, 0.7, 0.1, 0.1, 0.2, 0.1, 0.7], np.float32)  # blue; not stated
    understood = readback.decide(probs, np.float32(0.2), SPEC)
    assert [(a.name, a.value) for a in understood.attributes] == [
        ("colour", "blue"),
        ("helmet", b.NOT_STATED),
    ]
    assert [a.confidence for a in understood.attributes] == pytest.approx([0.7, 0.7])
    assert not understood.is_off_domain and not understood.nothing_stated
    assert understood.warning is None
    assert understood.summary() == "understood as: colour=blue (0.70) helmet=? (0.70)"


def test_decide_off_domain_is_strictly_above_the_threshold_and_warns_first() -> None:
    nothing = np.array([0.0, 0.0, 0.1, 0.9, 0.1, 0.1, 0.8], np.float32)
    at = readback.decide(nothing, 0.5, SPEC)
    assert not at.is_off_domain and at.nothing_stated
    assert readback.warning_code(at) == readback.WARNING_NOTHING_STATED
    assert at.warning is not None and "none of the attributes" in at.warning
    above = readback.decide(nothing, 0.51, SPEC)
    assert above.is_off_domain and readback.warning_code(above) == readback.WARNING_OFF_DOMAIN
    assert above.warning is not None and "off-domain 0.51" in above.warning
    stricter = b.ReadBackSpec(SPEC.attributes, off_domain_threshold=0.9)
    assert not readback.decide(nothing, 0.89, stricter).is_off_domain


def test_decide_breaks_ties_towards_the_earlier_class_and_clamps_odd_probabilities() -> None:
    tie = np.array([0.4, 0.4, 0.0, 0.2, 0.5, 0.0, 0.5], np.float32)
    understood = readback.decide(tie, np.float32(np.nan), SPEC)
    assert [a.value for a in understood.attributes] == ["red", "no"]
    assert understood.off_domain == 0.0 and not understood.is_off_domain
    over = np.array([1.0000002, 0, 0, 0, 0, 0, 1], np.float32)
    assert readback.decide(over, 1.5, SPEC).attributes[0].confidence == 1.0


def test_decision_indices_agree_with_decide_row_by_row() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((50, SPEC.width)).astype(np.float32)
    off = rng.random(50).astype(np.float32)
    table = readback.decision_indices(probs, off, SPEC)
    for row in range(50):
        understood = readback.decide(probs[row], off[row], SPEC)
        for a, (name, values) in enumerate(SPEC.attributes):
            value = understood.attributes[a].value
            index = len(values) if value == b.NOT_STATED else values.index(value)
            assert table[row, a] == index, name
        assert table[row, -1] == int(understood.is_off_domain)


def test_reply_fields_are_what_the_client_parses_back() -> None:
    probs = np.array([0.05, 0.05, 0.8, 0.1, 0.3, 0.6, 0.1], np.float32)  # green; yes
    understood = readback.decide(probs, 0.93, SPEC)
    fields = [("cmd", "understand"), *readback.reply_fields(understood)]
    body = protocol.reply_body("done", "u1", fields)
    assert (
        b"understood=colour:green:0.80,helmet:yes:0.60 off_domain=0.93 warning=off-domain" in body
    )
    parsed = parse_readback(protocol.parse_reply(protocol.frame(body)))
    assert parsed is not None
    assert parsed.attributes == tuple(
        readback.AttributeReading(a.name, a.value, round(a.confidence, 2))
        for a in understood.attributes
    )
    assert parsed.off_domain == 0.93 and parsed.warning == readback.WARNING_OFF_DOMAIN
    assert parsed.summary() == "understood as: colour=green (0.80) helmet=yes (0.60)"


# -- the engine on the tiny bundle --------------------------------------------------------------


def test_tiny_bundle_has_a_readback_for_every_variant(tiny_bundle: Path) -> None:
    manifest = b.load_bundle(tiny_bundle).manifest
    assert manifest.schema_version == b.KNOWN_WORDS_SCHEMA_VERSION
    assert manifest.readback is not None
    assert {"orange", "jacket", "rubble"} <= set(manifest.readback.known_words)
    assert [name for name, _ in manifest.readback.attributes] == [
        "colour", "terrain", "pose", "position", "helmet",
    ]  # fmt: skip
    assert manifest.readback.width == 8 + 6 + 3 + 3 + 2 + 5
    for variant in manifest.variants.values():
        assert variant.readback is not None
        assert manifest.graphs[variant.readback].role == b.READBACK


def test_engine_understand_is_the_decision_rule_on_the_graphs_output(
    engine: Engine, tiny_bundle: Path
) -> None:
    manifest = engine.manifest
    assert manifest.readback is not None and engine.has_readback
    key = manifest.variants["fp32"].readback
    assert key is not None
    session = open_session((tiny_bundle / manifest.graphs[key].file).read_bytes())
    for caption in (CAPTION, OFF_DOMAIN, "red", "x" * 201):
        embedding = engine.embed([caption])
        probs, off = session.run([b.ATTRIBUTE_PROBS, b.OFF_DOMAIN], {b.TEXT_EMBEDDING: embedding})
        # A probability distribution per block: the graph is ReadBack.probabilities.
        start = 0
        for size in manifest.readback.block_sizes:
            assert probs[0, start : start + size].sum() == pytest.approx(1.0, abs=1e-5)
            start += size
        understood = engine.understand(caption)
        assert understood is not None
        decided = readback.decide(probs[0], off[0], manifest.readback)
        assert dataclasses.replace(understood, unknown_words=()) == decided
        # ... plus the words the heads never learnt from, by the bundle's vocabulary.
        known = vocabulary.KnownWords(manifest.readback.known_words)
        assert understood.unknown_words == known.unknown(caption)
    assert engine.understand(CAPTION).unknown_words == ()  # type: ignore[union-attr]
    assert engine.understand(OFF_DOMAIN).unknown_words == ("draw", "cat")  # type: ignore[union-attr]


def test_engine_understand_flags_an_off_domain_caption_and_not_a_rescue_one(
    engine: Engine,
) -> None:
    off = engine.understand(OFF_DOMAIN)
    assert off is not None and off.is_off_domain and off.off_domain > 0.5
    rescue = engine.understand(CAPTION)
    assert rescue is not None and not rescue.is_off_domain


def test_engine_understand_is_cached_by_normalised_text(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, precision="fp32", warmup=False)
    first = engine.understand(CAPTION)
    misses = engine.cache_stats().misses
    assert engine.understand("  " + CAPTION.upper() + " ") is first  # the same cached object
    assert engine.cache_stats().misses == misses  # no second text-encoder run either
    engine.clear_cache()
    assert engine.understand(CAPTION) == first and engine.understand(CAPTION) is not first


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_engine_understand_is_a_function_of_the_caption_alone(
    tiny_bundle: Path, precision: str
) -> None:
    one = Engine(tiny_bundle, precision=precision)
    two = Engine(tiny_bundle, precision=precision, cache_size=0)
    for caption in ("other caption first", CAPTION):
        two.understand(caption)
    assert one.understand(CAPTION) == two.understand(CAPTION)


def test_engine_understand_refuses_an_empty_caption(engine: Engine) -> None:
    from edge_runtime.tokenizer import CaptionError

    with pytest.raises(CaptionError):
        engine.understand("\U0001f600")


@pytest.fixture(scope="module")
def bundle_without_readback(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
    """The tiny bundle as an old checkpoint exports it: no read-back, schema version 1."""
    root = tmp_path_factory.mktemp("old") / "bundle"
    shutil.copytree(tiny_bundle, root)
    data = json.loads((root / b.MANIFEST_NAME).read_text())
    for key in [k for k, g in data["graphs"].items() if g["role"] == b.READBACK]:
        (root / data["graphs"].pop(key)["file"]).unlink(missing_ok=True)
    for variant in data["variants"].values():
        variant.pop("readback")
    del data["readback"]
    data["schema_version"] = 1
    (root / b.MANIFEST_NAME).write_text(json.dumps(data))
    return root


def test_engine_without_readback_understands_nothing_and_still_draws(
    bundle_without_readback: Path,
) -> None:
    engine = Engine(bundle_without_readback, precision="fp32")
    assert not engine.has_readback and engine.understand(CAPTION) is None
    assert engine.generate(CAPTION, seed=1).shape == (1, 64, 64, 3)


# -- the serial link ---------------------------------------------------------------------------


def test_gen_reply_carries_the_readback(serve, reader, engine: Engine) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open)
    reader.send(format_request("g1", "gen", caption=CAPTION, n=2, seed=4))
    _, done = reader.until("g1")
    assert done.kind == "done" and len(done.values("files")) == 2
    parsed = parse_readback(done)
    expected = engine.understand(CAPTION)
    assert parsed is not None and expected is not None
    assert [(a.name, a.value) for a in parsed.attributes] == [
        (a.name, a.value) for a in expected.attributes
    ]
    assert [a.confidence for a in parsed.attributes] == [
        round(a.confidence, 2) for a in expected.attributes
    ]
    assert parsed.off_domain == round(expected.off_domain, 2)
    assert parsed.warning == readback.warning_code(expected)


def test_off_domain_gen_still_draws_with_a_warning_unless_strict(
    serve, reader, tmp_path: Path
) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open)
    reader.send(format_request("g2", "gen", caption=OFF_DOMAIN, seed=1))
    _, done = reader.until("g2")
    assert done.get("warning") == readback.WARNING_OFF_DOMAIN
    assert float(done.get("off_domain")) > 0.5 and len(done.values("files")) == 1
    before = sorted((tmp_path / "out").iterdir())
    reader.send(format_request("g3", "gen", caption=OFF_DOMAIN, seed=1, strict=True))
    ack, err = reader.until("g3")
    assert ack.kind == "ack"
    assert (err.kind, err.code) == ("err", protocol.Code.OFF_DOMAIN)
    assert "no image made" in err.text
    assert sorted((tmp_path / "out").iterdir()) == before
    # A rescue caption with strict=1 is drawn as usual.
    reader.send(format_request("g4", "gen", caption=CAPTION, seed=1, strict=True))
    _, done = reader.until("g4")
    assert done.kind == "done" and "warning" not in done.fields


def test_understand_command_answers_at_once_without_an_image(
    serve, reader, engine: Engine, tmp_path: Path
) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open)
    reader.send(b"u1 understand draw a cat\r\n")  # typed by hand
    (done,) = reader.read(1)
    assert (done.kind, done.id, done.get("cmd")) == ("done", "u1", "understand")
    assert done.get("warning") == readback.WARNING_OFF_DOMAIN
    assert set(done.fields) == {"cmd", "understood", "off_domain", "warning", "unknown"}
    assert done.values("unknown") == ["draw", "cat"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    reader.send(b"s1 status\r\n")
    *_, status = reader.until("s1")
    assert status.get("readback") == "yes"
    reader.send(b"u2 understand n=2 red\r\n")
    (err,) = reader.read(1)
    assert (err.kind, err.code) == ("err", protocol.Code.BAD_ARGS)
    reader.send(b"u3 understand\r\n")
    (err,) = reader.read(1)
    assert (err.kind, err.code) == ("err", protocol.Code.BAD_CAPTION)


def test_readback_reply_stays_short(serve, reader) -> None:
    """The bound the manifest limits promise: read-back fields of a reply < 1 KiB (here ~150 B)."""
    service = serve()
    wait_for(lambda: service.link.is_open)
    reader.send(format_request("u4", "understand", caption="x" * 201))
    reader.port.timeout = 0.05
    (done,) = reader.read(1)
    line = protocol.reply_body("done", "u4", list(done.fields.items()))
    assert len(line) < 300


def test_a_robot_without_readback_says_so(bundle_without_readback: Path, cable, reader) -> None:
    engine = Engine(bundle_without_readback, precision="fp32")
    out = cable.robot_path.parent / "out-old"
    service = Service(engine, ServiceConfig(port=str(cable.robot_path), out_dir=out))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: service.link.is_open)
        reader.send(format_request("g1", "gen", caption=CAPTION, seed=2))
        _, done = reader.until("g1")
        assert done.kind == "done" and parse_readback(done) is None
        assert not {"understood", "off_domain", "warning"} & set(done.fields)
        reader.send(format_request("u1", "understand", caption=CAPTION))
        (err,) = reader.read(1)
        assert (err.kind, err.code) == ("err", protocol.Code.NO_READBACK)
        reader.send(format_request("s1", "status"))
        *_, status = reader.until("s1")  # an info line with the last error comes first
        assert status.get("readback") == "no"
        reader.send(format_request("g2", "gen", caption=CAPTION, seed=2, strict=True))
        _, err = reader.until("g2")
        assert (err.kind, err.code) == ("err", protocol.Code.NO_READBACK)
    finally:
        service.request_stop()
        thread.join(timeout=20)


# -- rescue-edge generate ----------------------------------------------------------------------


def test_cli_generate_prints_what_it_understood_before_the_paths(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: Engine
) -> None:
    argv = ["generate", CAPTION, "--bundle", str(tiny_bundle), "--out", str(tmp_path)]
    assert main([*argv, "--precision", "fp32", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    (path,) = out.splitlines()  # stdout stays one path a line
    assert Path(path).is_file()
    expected = engine.understand(CAPTION)
    assert expected is not None
    assert err.splitlines()[0] == expected.summary()
    assert err.startswith("understood as: colour=")


def test_cli_generate_warns_off_domain_and_strict_writes_nothing(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", OFF_DOMAIN, "--bundle", str(tiny_bundle), "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    summary, warning, unknown = err.splitlines()
    assert summary.startswith("understood as: ")
    assert warning.startswith("warning: the caption reads as nothing this robot knows")
    assert unknown == "not in the robot's vocabulary: draw, cat"
    assert main([*argv, "--out", str(tmp_path / "b"), "--strict"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1].startswith("rescue-edge: --strict: ")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_cli_generate_without_readback_prints_no_readback_and_strict_refuses(
    bundle_without_readback: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", CAPTION, "--bundle", str(bundle_without_readback), "--out", str(tmp_path)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "understood" not in err
    assert main([*argv, "--strict"]) == 2
    assert "has no read-back" in capsys.readouterr().err


# -- rescue-edge client ------------------------------------------------------------------------


def test_cli_client_shows_the_readback_and_strict_and_understand_work(
    serve, cable, tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: Engine
) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open)
    argv = ["client", "--serial", cable.operator_path, "--timeout", "5", "--insecure"]
    argv += ["--out", str(tmp_path / "received")]

    def client_lines(err: str) -> list[str]:
        # The in-process service logs its --insecure warning through the same stderr.
        return [line for line in err.splitlines() if "NOT authenticated" not in line]

    assert main([*argv, CAPTION, "--seed", "5"]) == 0
    out, err = capsys.readouterr()
    (path,) = out.split()  # stdout: one fetched path
    assert Path(path).is_file()
    expected = engine.understand(CAPTION)
    assert expected is not None and client_lines(err)[0] == expected.summary()
    # Read-back only: no image asked for, the warning shown.
    assert main([*argv, "--understand", OFF_DOMAIN]) == 0
    out, err = capsys.readouterr()
    summary, warning, unknown = client_lines(err)
    assert out == "" and summary.startswith("understood as: ")
    assert warning.startswith("warning: the caption reads as nothing")
    assert unknown == "not in the robot's vocabulary: draw, cat"
    # strict: the robot refuses the off-domain caption; bad input, exit 2, one line.
    assert main([*argv, "--strict", OFF_DOMAIN]) == 2
    out, err = capsys.readouterr()
    (line,) = client_lines(err)
    assert out == "" and "OFF_DOMAIN" in line
    assert sorted(p.name for p in (tmp_path / "received").iterdir()) == [Path(path).name]
    # Typed at the client's prompt: /understand CAPTION, then quit.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(f"/understand {OFF_DOMAIN}\n/quit\n"))
        assert main(argv) == 0
    out, err = capsys.readouterr()
    summary, warning, _ = client_lines(err)
    assert out == "" and summary.startswith("understood as: ") and warning.startswith("warning:")


def test_cli_info_describes_the_readback(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tiny_bundle)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["readback"]["attributes"][0]["name"] == "colour"
    assert summary["readback"]["off_domain_threshold"] == 0.5
    assert summary["variants"]["int8"]["readback"] in summary["graphs"]


def test_cli_generate_sheet_shows_the_readback_under_the_caption(
    tiny_bundle: Path,
    bundle_without_readback: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge_runtime.images import decode_png

    heights = {}
    for name, bundle in (("with", tiny_bundle), ("without", bundle_without_readback)):
        argv = ["generate", CAPTION, "-n", "2", "--seed", "1", "--sheet", "--precision", "fp32"]
        assert main([*argv, "--bundle", str(bundle), "--out", str(tmp_path / name)]) == 0
        *_, sheet = capsys.readouterr().out.split()
        heights[name] = decode_png(Path(sheet).read_bytes()).shape[0]
    assert heights["with"] > heights["without"]  # the read-back's own line(s) in the header
