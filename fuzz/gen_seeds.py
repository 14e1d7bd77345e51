#!/usr/bin/env python3
"""Writes the generated seed corpora; each directory is rewritten from scratch.

    python3 fuzz/gen_seeds.py [TARGET ...]      default: decode_frame wsframe

- fuzz/seeds/decode_frame/ from protocol-fixtures/: one raw frame per file. Client frames (text
  and binary), malformed frames and the encoders' expected outputs (server frames have the
  client frame shape too) become seeds named after their fixture entry. Files with identical
  contents are written once.
- fuzz/seeds/wsframe/: RFC 6455 byte streams, one per named case (see WSFRAME_SEEDS), each
  after the target's control byte (sender, payload limit, read size).
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "protocol-fixtures"
OUT = ROOT / "fuzz" / "seeds" / "decode_frame"
WSFRAME_OUT = ROOT / "fuzz" / "seeds" / "wsframe"


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


# wsframe's control byte: bit 0 the sender, bits 1-3 an index into these limits, bits 4-7 the
# read size minus one (fuzz_targets/wsframe.rs).
WSFRAME_LIMITS = [0, 1, 125, 126, 1000, 4096, 65535, 65536]
CLIENT, SERVER = 0, 1
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def control(sender: int, limit: int, read_size: int) -> bytes:
    return bytes([sender | WSFRAME_LIMITS.index(limit) << 1 | (read_size - 1) << 4])


def ws_frame(opcode: int, payload: bytes, fin: bool = True, key=None, length=None,
             first=None, wide=False) -> bytes:
    """One frame; `length` overrides the announced length, `first` the first byte, `wide`
    announces a short length in 16 bits (legal, not minimal)."""
    n = len(payload) if length is None else length
    head = bytes([first if first is not None else (0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if key is not None else 0
    if n < 126 and not wide:
        head += bytes([mask_bit | n])
    elif n <= 0xFFFF:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def client(opcode, payload, **kw):
    return ws_frame(opcode, payload, key=KEY, **kw)


JOIN = b'["1","1","realtime:room","phx_join",{"config":{}}]'


def wsframe_seeds():
    c, s = control, ws_frame
    yield "client-text-join", c(CLIENT, 4096, 16) + client(TEXT, JOIN)
    yield "client-fragmented-text-ping-between", c(CLIENT, 1000, 3) + client(
        TEXT, b"he", fin=False) + client(PING, b"p") + client(
        CONTINUATION, b"l", fin=False) + client(CONTINUATION, b"lo")
    yield "client-ping-pong-close", c(CLIENT, 125, 1) + client(PING, b"1") + client(
        PONG, b"2") + client(CLOSE, (1000).to_bytes(2, "big") + b"bye")
    yield "client-len-125", c(CLIENT, 125, 7) + client(BINARY, bytes(range(125)))
    yield "client-len-126", c(CLIENT, 126, 16) + client(BINARY, bytes(126))
    yield "client-len-126-over-limit-125", c(CLIENT, 125, 16) + client(BINARY, bytes(126))
    yield "client-len-65535-head", c(CLIENT, 65535, 16) + client(
        BINARY, b"abc", length=65535)
    yield "client-len-65536-head", c(CLIENT, 65536, 16) + client(
        BINARY, b"abc", length=65536)
    yield "client-non-minimal-length", c(CLIENT, 1000, 2) + client(TEXT, b"hi", wide=True)
    yield "client-oversize-announced", c(CLIENT, 4096, 16) + client(
        BINARY, b"", length=1 << 40)
    yield "client-top-bit-length", c(CLIENT, 65536, 16) + client(BINARY, b"", length=1 << 63)
    yield "client-unmasked", c(CLIENT, 1000, 16) + s(TEXT, b"x")
    yield "client-reserved-opcode", c(CLIENT, 1000, 16) + client(0x3, b"x")
    yield "client-reserved-control-opcode", c(CLIENT, 1000, 16) + client(0xB, b"x")
    yield "client-rsv-bits", c(CLIENT, 1000, 16) + client(TEXT, b"x", first=0xC1)
    yield "client-fragmented-ping", c(CLIENT, 1000, 16) + client(PING, b"x", fin=False)
    yield "client-long-close", c(CLIENT, 1000, 16) + client(CLOSE, bytes(126))
    yield "client-continuation-first", c(CLIENT, 1000, 16) + client(CONTINUATION, b"x")
    yield "client-interrupted-message", c(CLIENT, 1000, 16) + client(
        TEXT, b"a", fin=False) + client(BINARY, b"b")
    yield "client-fragments-over-message-limit", c(CLIENT, 125, 16) + client(
        BINARY, bytes(125), fin=False) + client(CONTINUATION, bytes(125), fin=False) + client(
        CONTINUATION, bytes(1))
    yield "client-truncated", c(CLIENT, 1000, 1) + client(TEXT, b"hello")[:8]
    yield "server-text", c(SERVER, 4096, 5) + s(TEXT, b'[null,"1","phoenix","phx_reply",{}]')
    yield "server-masked", c(SERVER, 1000, 16) + client(TEXT, b"x")
    yield "server-fragmented-binary", c(SERVER, 1000, 4) + s(
        BINARY, b"\x04ab", fin=False) + s(PING, b"") + s(CONTINUATION, b"cd")
    yield "server-close-1000", c(SERVER, 125, 16) + s(CLOSE, (1000).to_bytes(2, "big"))
    yield "server-empty-limit", c(SERVER, 0, 1) + s(TEXT, b"") + s(TEXT, b"x")


def write_wsframe_seeds() -> int:
    WSFRAME_OUT.mkdir(parents=True, exist_ok=True)
    for old in WSFRAME_OUT.iterdir():
        old.unlink()
    count = 0
    for name, data in wsframe_seeds():
        (WSFRAME_OUT / name).write_bytes(data)
        count += 1
    return count


def write_decode_frame_seeds() -> int:
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
    return len(names)


WRITERS = {
    "decode_frame": (write_decode_frame_seeds, OUT),
    "wsframe": (write_wsframe_seeds, WSFRAME_OUT),
}


def main() -> int:
    targets = sys.argv[1:] or list(WRITERS)
    unknown = [t for t in targets if t not in WRITERS]
    if unknown:
        print(f"no seed generator for {', '.join(unknown)}", file=sys.stderr)
        return 2
    for target in targets:
        write, out = WRITERS[target]
        print(f"{write()} seeds in {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
