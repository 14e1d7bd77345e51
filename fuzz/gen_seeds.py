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


PEER_OUT = ROOT / "fuzz" / "seeds" / "peer"


def peer_seeds():
    """Cluster messages (realtide_protocol::peer): version 1, a kind byte, then fields as
    big-endian integers and u32-length-prefixed strings."""
    import struct

    def s(text) -> bytes:
        data = text.encode() if isinstance(text, str) else text
        return struct.pack(">I", len(data)) + data

    def opt(text) -> bytes:
        return b"\x00" if text is None else b"\x01" + s(text)

    def msg(kind: int, *fields: bytes) -> bytes:
        return bytes([1, kind]) + b"".join(fields)

    u64 = lambda n: struct.pack(">Q", n)
    u32 = lambda n: struct.pack(">I", n)
    member = lambda key, ref: s(key) + s(ref) + s('{"phx_ref":"%s"}' % ref)
    yield "broadcast payload", msg(1, b"\x00", s("room"), opt(None), b"\x00", s('{"type":"broadcast","event":"e","payload":{}}'))
    yield "broadcast binary with id", msg(1, b"\x01", s("device:1"), opt("id-1"), b"\x01", s("e"), b"\x01", s(b"\x00\xff"), opt('{"id":"id-1"}'))
    yield "presence join", msg(2, s("n1"), u64(1), b"\x00", s("room"), b"\x00", member("k", "F1"), opt(None))
    yield "presence update", msg(2, s("n1"), u64(2), b"\x00", s("room"), b"\x00", member("k", "F2"), opt("F1"))
    yield "presence leave", msg(2, s("n1"), u64(3), b"\x00", s("room"), b"\x01", s("F2"))
    yield "presence snapshot", msg(2, s("n1"), u64(4), b"\x01", s("room"), b"\x02", u32(2), member("a", "F3"), member("b", "F4"))
    yield "presence snapshot forged count", msg(2, s("n1"), u64(4), b"\x01", s("room"), b"\x02", u32(0xFFFFFFFF))
    yield "heartbeat", msg(3, s("n2"), u64(7), u64(10), b"\x01", b"\x00")
    yield "goodbye", msg(3, s("n2"), u64(7), u64(0), b"\x01", b"\x01")
    yield "sync", msg(4, s("n3"), b"\x00", s("room"))
    yield "synced with snapshot", msg(5, s("n1"), b"\x01", u64(4))
    yield "synced empty", msg(5, s("n1"), b"\x00")
    begin = b"\x00" + u64(100) + u32(5) + struct.pack(">q", 1)
    values = b"\x01" + u32(3) + b"\x02" + s("1") + b"\x00" + b"\x01"
    change = b"\x01" + u32(16384) + b"\x01" + b"\x01" + u32(3) + s("id") + s("body") + s("big") + values + values
    message = b"\x02" + s("t") + b"\x00" + s("e") + s("i") + b"\x00" + s("{}")
    commit = b"\x03" + u64(100) + u64(120)
    yield "records transaction", msg(6, u32(4), begin, change, message, commit)
    yield "records empty", msg(6, u32(0))
    yield "records truncated", msg(6, u32(4), begin, change)
    yield "wrong version", bytes([2, 1])


def write_peer_seeds() -> int:
    PEER_OUT.mkdir(parents=True, exist_ok=True)
    for old in PEER_OUT.iterdir():
        old.unlink()
    n = 0
    for name, data in peer_seeds():
        (PEER_OUT / slug(name)).write_bytes(data)
        n += 1
    return n


PLAIN_OUT = ROOT / "fuzz" / "seeds" / "plain"


def plain_seeds():
    """Client messages of the per-app endpoint's plain JSON protocol; names with "bad" are
    refused by the parser."""
    yield "subscribe", '{"type":"subscribe","table":"messages"}'
    yield "subscribe schema and filter", '{"type":"subscribe","table":"app.todos","filter":{"room_id":7,"done":false,"owner":"u1","note":null}}'
    yield "unsubscribe", '{"type":"unsubscribe","table":"messages"}'
    yield "presence track", '{"type":"presence_track","metadata":{"name":"ada","typing":true}}'
    yield "presence track without metadata", '{"type":"presence_track"}'
    yield "event", '{"type":"event","event":"ping","payload":{"n":1,"list":[1,2]}}'
    yield "bad not json", '{"type":'
    yield "bad array", '[{"type":"subscribe"}]'
    yield "bad unknown type", '{"type":"dance"}'
    yield "bad table injection", '{"type":"subscribe","table":"t; drop table x"}'
    yield "bad filter object value", '{"type":"subscribe","table":"t","filter":{"c":{"$gt":1}}}'
    yield "bad event name empty", '{"type":"event","event":""}'
    yield "bad deep nesting", '{"type":"event","event":"e","payload":' + "[" * 200 + "]" * 200 + "}"


def write_plain_seeds() -> int:
    PLAIN_OUT.mkdir(parents=True, exist_ok=True)
    for old in PLAIN_OUT.iterdir():
        old.unlink()
    n = 0
    for name, text in plain_seeds():
        (PLAIN_OUT / slug(name)).write_text(text)
        n += 1
    return n


WRITERS = {
    "plain": (write_plain_seeds, PLAIN_OUT),
    "peer": (write_peer_seeds, PEER_OUT),
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
