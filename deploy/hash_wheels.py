"""Pin a wheelhouse for an offline robot: write WHEELS/requirements.txt with every wheel's sha256.

Run on the workstation (of the robot's CPU architecture) after
`pip wheel --wheel-dir WHEELS .`:  python deploy/hash_wheels.py WHEELS
install.sh --find-links WHEELS then installs with `pip --require-hashes`: a wheel that was
swapped or damaged on the way (USB stick) is refused. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

# A wheel file name: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl (PEP 427).
_WHEEL = re.compile(
    r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$"
)


def requirements(wheels: Path) -> str:
    """One `name==version --hash=sha256:…` line per wheel in `wheels`."""
    lines = []
    for wheel in sorted(wheels.glob("*.whl")):
        match = _WHEEL.match(wheel.name)
        if match is None:
            raise SystemExit(f"hash_wheels: {wheel}: not a wheel file name (PEP 427)")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        name = match["name"].replace("_", "-")
        lines.append(f"{name}=={match['version']} --hash=sha256:{digest}")
    if not lines:
        raise SystemExit(f"hash_wheels: {wheels}: no .whl files")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, help="the wheelhouse folder")
    args = parser.parse_args(argv)
    text = requirements(args.wheels)
    out = args.wheels / "requirements.txt"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
