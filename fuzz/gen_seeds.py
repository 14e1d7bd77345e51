#!/usr/bin/env python3
"""Writes fuzz/seeds/decode_frame/ from protocol-fixtures/: one raw frame per file.

    python3 fuzz/gen_seeds.py

Client frames (text and binary), malformed frames and the encoders' expected outputs (server
frames have the client frame shape too) become seeds named after their fixture entry. Files
with identical contents are written once. The directory is rewritten from scratch.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "protocol-fixtures"
OUT = ROOT / "fuzz" / "seeds" / "decode_frame"


def slug(text: str) -> str:
    text = text.replace("C→S", "c2s").replace("S→C", "s2c").replace("§", "s")
    text = re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.").lower()
    return text[:96].rstrip("-.")


def frames():
    for directory in ("client-frames", "malformed", "server-frames"):
        for path in sorted((FIXTURES / directory).glob("*.json")):
            for entry in json.loads(path.read_text(encoding="utf-8"))["frames"]:
                if "text" in entry:
                    data = entry["text"].encode("utf-8")
                elif "hex" in entry:
                    data = bytes.fromhex(entry["hex"])
                else:
                    continue  # an encoder refusal: no frame
                yield f"{directory}-{path.stem}-{entry['name']}", data


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    seen, names = set(), set()
    for name, data in frames():
        if data in seen:
            continue
        seen.add(data)
        base = slug(name)
        name, n = base, 2
        while name in names:
            name = f"{base}-{n}"
            n += 1
        names.add(name)
        (OUT / name).write_bytes(data)
    print(f"{len(names)} seeds in {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
