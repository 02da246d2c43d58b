"""`make demo`: the whole product on the embedded rescue-scenes data, stage by stage.

Stages whose code does not exist yet in this checkout are reported as skipped, plainly.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out")
PY = sys.executable

# (title, module that must exist, command)
STAGES: list[tuple[str, str, list[str]]] = [
    ("render rescue-scenes", "train.data.cli",
     [PY, "-m", "train", "data", "synth", "--out", str(OUT / "rescue_scenes.h5")]),
]  # fmt: skip


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    skipped = []
    for title, module, command in STAGES:
        if importlib.util.find_spec(module) is None:
            print(f"[demo] SKIPPED {title}: not built yet ({module} does not exist)", flush=True)
            skipped.append(title)
            continue
        print(f"[demo] {title}: {' '.join(command)}", flush=True)
        start = time.monotonic()
        subprocess.run(command, check=True)
        print(f"[demo] {title}: done in {time.monotonic() - start:.1f} s", flush=True)
    if skipped:
        print(f"[demo] skipped {len(skipped)} stage(s): {', '.join(skipped)}")
    print(f"[demo] outputs in {OUT.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
