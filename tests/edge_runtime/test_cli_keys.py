"""`rescue-edge keygen`, `sign`, and the key rules of `serve` and `client`, through `main(argv)`."""

from __future__ import annotations

import io
import stat
import time

from edge_runtime import protocol, signing
from edge_runtime.cli import main


def test_cli_keygen_writes_a_private_key_and_says_how_to_load_it(tmp_path, capsys) -> None:
    path = tmp_path / "operator.key"
    assert main(["keygen", str(path)]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = signing.read_key_file(path)
    assert len(key) == 32 and key.hex() not in out  # the secret is never printed
    assert "LoadCredential=operator-key:/etc/rescue-t2i/operator.key" in out
    assert f"--key-file {path}" in out and "rescue-edge sign" in out
    assert main(["keygen", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"rescue-edge: {path}: exists; pass --force to replace it (then both ends need it)"
    )
    assert signing.read_key_file(path) == key
    assert main(["keygen", str(path), "--force"]) == 0
    assert signing.read_key_file(path) != key


def test_cli_sign_prints_lines_the_robot_accepts(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "k"
    signing.write_key_file(path, bytes(range(32)))
    assert main(["sign", "--key-file", str(path), "1 status", "$2 gen n=2 survivor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    guard = signing.LinkGuard(bytes(range(32)))
    parsed = [guard.accept(line.encode()[1:]) for line in lines]
    assert [p.body for p in parsed] == [b"1 status", b"2 gen n=2 survivor"]
    assert {p.link for p in parsed} == {2}
    request = protocol.parse_request(parsed[1].body, authenticated=True)
    assert request is not None and (request.command, request.n) == ("gen", 2)
    # From stdin, one line each; a key file others can read is refused.
    monkeypatch.setattr("sys.stdin", io.StringIO("3 ping\n\n4 ping\n"))
    assert main(["sign", "--key-file", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    path.chmod(0o640)
    assert main(["sign", "--key-file", str(path), "5 ping"]) == 2
    assert "mode 0640 lets others read it" in capsys.readouterr().err


def test_cli_serve_refuses_a_serial_port_without_a_key(tiny_bundle, tmp_path, capsys) -> None:
    argv = ["serve", "--serial", "loop://", "--bundle", str(tiny_bundle), "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rescue-edge: no operator-link key: pass --key-file PATH")
    assert "--insecure" in err and "\n" not in err
    assert main([*argv, "--insecure", "--key-file", str(tmp_path / "k")]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main([*argv, "--key-file", str(tmp_path / "missing.key")]) == 2
    assert "missing.key: No such file" in capsys.readouterr().err
    assert main([*argv, "--out-max-bytes", "12X", "--insecure"]) == 2
    assert "--out-max-bytes: expected a size" in capsys.readouterr().err


def test_cli_serve_takes_the_key_from_the_systemd_credential(
    tiny_bundle, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    signing.write_key_file(tmp_path / signing.CREDENTIAL_NAME, bytes(range(32)))
    captured = {}

    from edge_runtime import service as service_module

    class Probe(service_module.Service):
        def run(self) -> int:
            captured["config"] = self.config
            captured["status"] = self.status_fields()
            return 0

    monkeypatch.setattr(service_module, "Service", Probe)
    argv = ["serve", "--serial", "loop://", "--bundle", str(tiny_bundle), "--out", str(tmp_path)]
    assert main([*argv, "--out-max-files", "7", "--out-min-free", "none"]) == 0
    config = captured["config"]
    assert config.key == bytes(range(32))
    assert "000102" not in repr(config)  # the key never reaches a log line through repr
    assert config.budget.max_files == 7 and config.budget.min_free_bytes == 0
    assert config.budget.max_bytes == 1 << 30  # the default
    assert captured["status"]["auth"] == "signed"
    assert config.link_state == tmp_path / ".link-state"  # inside --out, never served
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))  # the unit's: the images folder itself
    assert main(argv) == 0
    assert captured["config"].link_state == tmp_path / ".link-state"  # not a result name


def test_cli_client_needs_a_key_or_insecure(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("RESCUE_EDGE_KEY_FILE", raising=False)
    assert main(["client", "--serial", "loop://", "--ping"]) == 2
    assert "no operator-link key" in capsys.readouterr().err
    assert main(["client", "--serial", "loop://", "--ping", "--link", "200", "--insecure"]) == 2
    assert "--link: must be 0..127" in capsys.readouterr().err


def test_cli_client_talks_to_a_signed_robot(serve, cable, tmp_path, capsys, monkeypatch) -> None:
    key_file = tmp_path / "operator.key"
    signing.write_key_file(key_file, bytes(range(32)))
    service = serve(key=bytes(range(32)))
    deadline = time.monotonic() + 10
    while not service.link.is_open:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    monkeypatch.setenv("RESCUE_EDGE_KEY_FILE", str(key_file))
    argv = ["client", "--serial", cable.operator_path, "--timeout", "2"]
    assert main([*argv, "--ping"]) == 0
    assert float(capsys.readouterr().out) > 0
    # Without the key, the client says why it hears nothing.
    monkeypatch.delenv("RESCUE_EDGE_KEY_FILE")
    assert main([*argv, "--ping", "--insecure", "--timeout", "0.3"]) == 1
    assert "the robot signs its replies and this client has no key" in capsys.readouterr().err
