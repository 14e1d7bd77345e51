#!/usr/bin/env python3
"""Regenerates the codec fixtures in this directory.

    python3 protocol-fixtures/generate.py [--reference DIR]

DIR is the directory of the Markdown file that holds the recorded wire transcripts A.1-A.16 (see
README.md) under an "## Appendix A" heading; transcript_frames() below names the file. The
default, /work/shared/reference, is the maintainers' copy and is not part of this repository.
Every recorded frame is copied verbatim; the frames that pin the reference server's rules are
written out below by hand.

The expected values are computed here, in Python, from the rules of the reference server
(supabase/realtime and its Phoenix fork; README.md names the files), as an oracle independent of
the Rust codec; `crates/realtide-protocol/tests/fixtures.rs` then checks the codec against them.
Output is deterministic: re-running this script must not change any file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
V1, V2 = "1.0.0", "2.0.0"

# --------------------------------------------------------------------------------------------
# JSON helpers


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def get(value, key):
    """`Value::get`: a key of an object, None for anything else."""
    return value.get(key) if isinstance(value, dict) else None


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flexible_bool(value) -> bool:
    """The reference's flexible booleans (supabase/realtime
    `lib/realtime_web/channels/payloads/flexible_boolean.ex`): JSON booleans, or "true"/"false"
    in any letter case."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.lower() == "true"


# --------------------------------------------------------------------------------------------
# Expected classification (as the reference's `realtime_channel.ex`, `broadcast_handler.ex` and
# `presence_handler.ex` treat each event)


def expect_join(payload) -> dict:
    config = get(payload, "config")
    broadcast = get(config, "broadcast")
    presence = get(config, "presence")
    key = get(presence, "key")
    if isinstance(key, str) and key:
        presence_key = key
    elif is_number(key):
        presence_key = str(key)
    else:
        presence_key = None  # missing, null or "": the server generates one
    changes = get(config, "postgres_changes")
    changes = [e for e in changes if isinstance(e, dict)] if isinstance(changes, list) else []
    token = None
    for name in ("access_token", "user_token"):
        if isinstance(get(payload, name), str):
            token = get(payload, name)
            break
    if token is not None and token.startswith("sb_"):
        token = None  # an opaque API key: the socket token is used
    return {
        "has_config": isinstance(payload, dict) and "config" in payload,
        "broadcast_self": flexible_bool(get(broadcast, "self")),
        "broadcast_ack": flexible_bool(get(broadcast, "ack")),
        "replication_ready": flexible_bool(get(broadcast, "replication_ready")),
        "replay": get(broadcast, "replay"),
        "presence_enabled": flexible_bool(get(presence, "enabled")),
        "presence_key": presence_key,
        "postgres_changes": changes,
        "private": flexible_bool(get(config, "private")),
        "token": token,
    }


def expect_presence(payload) -> dict:
    event = get(payload, "event")
    if not isinstance(event, str):
        return {"kind": "presence_no_event"}
    lowered = event.lower() if event.isascii() else event
    if lowered == "track":
        meta = get(payload, "payload")
        return {"kind": "presence_track", "meta": {} if meta is None else meta}
    if lowered == "untrack":
        return {"kind": "presence_untrack"}
    return {"kind": "presence_unknown", "event": event}


def expect_message(topic: str, event: str, payload_kind: str, payload) -> dict:
    if topic == "phoenix" and event == "heartbeat":
        return {"kind": "heartbeat"}
    if event == "broadcast" and payload_kind == "json":
        return {"kind": "broadcast_json"}
    if event == "broadcast" and payload_kind == "user_broadcast":
        return {"kind": "broadcast_user"}
    if event == "phx_join" and payload_kind == "json":
        return {"kind": "join", "join": expect_join(payload)}
    if event == "phx_leave":
        return {"kind": "leave"}
    if event == "presence" and payload_kind == "json":
        return expect_presence(payload)
    if event == "access_token" and payload_kind == "json":
        token = get(payload, "access_token")
        return {"kind": "access_token", "token": token if isinstance(token, str) else None}
    return {"kind": "other"}


def ref_text(value):
    """A join_ref / ref as the codec reports it: strings as-is, numbers as text, null as None."""
    if value is None or isinstance(value, str):
        return value
    if is_number(value):
        return str(value)
    raise ValueError(f"unexpected ref {value!r}")


def expect_text(vsn: str, text: str) -> dict:
    frame = json.loads(text)
    if vsn == V1:
        join_ref, ref = frame.get("join_ref"), frame["ref"]
        topic, event, payload = frame["topic"], frame["event"], frame["payload"]
    else:
        join_ref, ref, topic, event, payload = frame[:5]
    return {
        "join_ref": ref_text(join_ref),
        "ref": ref_text(ref),
        "topic": topic,
        "event": event,
        "payload": payload,
        "message": expect_message(topic, event, "json", payload),
    }


def body_fields(name: str, data: bytes) -> dict:
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {name + "_hex": data.hex()}


def opt_text(raw: bytes):
    return raw.decode("utf-8") or None


def expect_binary(data: bytes) -> dict:
    """The reference's V2 binary layouts (`v2_serializer.ex`) for the client kinds 0 and 3."""
    kind = data[0]
    if kind == 0:
        jr, rf, tp, ev = data[1:5]
        pos = 5
        fields = []
        for size in (jr, rf, tp, ev):
            fields.append(data[pos : pos + size])
            pos += size
        out = {
            "join_ref": opt_text(fields[0]),
            "ref": opt_text(fields[1]),
            "topic": fields[2].decode("utf-8"),
            "event": fields[3].decode("utf-8"),
            "binary_payload_hex": data[pos:].hex(),
        }
        out["message"] = expect_message(out["topic"], out["event"], "binary", None)
        return out
    assert kind == 3, kind
    jr, rf, tp, ev, meta, enc = data[1:7]
    pos = 7
    fields = []
    for size in (jr, rf, tp, ev, meta):
        fields.append(data[pos : pos + size])
        pos += size
    out = {
        "join_ref": opt_text(fields[0]),
        "ref": opt_text(fields[1]),
        "topic": fields[2].decode("utf-8"),
        "event": "broadcast",
        "user_broadcast": {
            "event": fields[3].decode("utf-8"),
            "metadata": fields[4].decode("utf-8"),
            "encoding": "binary" if enc == 0 else "json",
            **body_fields("body", data[pos:]),
        },
    }
    out["message"] = expect_message(out["topic"], "broadcast", "user_broadcast", None)
    return out


# --------------------------------------------------------------------------------------------
# Binary frame builders and their human-readable layout


def kind0(join_ref: str, ref: str, topic: str, event: str, data: bytes) -> bytes:
    parts = [p.encode() for p in (join_ref, ref, topic, event)]
    return bytes([0, *map(len, parts)]) + b"".join(parts) + data


def kind4(topic: str, event: str, meta: bytes, enc: int, body: bytes) -> bytes:
    parts = [topic.encode(), event.encode(), meta]
    return bytes([4, *map(len, parts), enc]) + b"".join(parts) + body


def kind3(join_ref, ref, topic, event, meta: bytes, enc: int, body: bytes) -> bytes:
    parts = [p if isinstance(p, bytes) else p.encode() for p in (join_ref, ref, topic, event)]
    return bytes([3, *map(len, parts), len(meta), enc]) + b"".join(parts) + meta + body


def show(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + raw.hex()
    return text if text.isprintable() else "0x" + raw.hex()


def layout(data: bytes) -> str:
    """A binary frame's fields in `a | b | c` notation, for readers of the fixture."""
    if not data:
        return "(empty)"
    kind = data[0]
    header = {0: 5, 1: 5, 2: 3, 3: 7, 4: 5}.get(kind)
    if header is None or len(data) < header:
        return " ".join(f"{b:02x}" for b in data)
    head = data[:header]
    sizes = {0: head[1:5], 1: head[1:5], 2: head[1:3], 3: head[1:6], 4: head[1:4]}[kind]
    names = {
        0: "kind jr ref topic event",
        1: "kind jr ref topic status",
        2: "kind topic event",
        3: "kind jr ref topic event meta enc",
        4: "kind topic event meta enc",
    }.get(kind, "")
    out = [" ".join(f"{b:02x}" for b in head) + (f" ({names})" if names else "")]
    pos = header
    for size in sizes:
        chunk = data[pos : pos + size]
        if len(chunk) < size:
            out.append(f"{show(chunk)}... (cut off: {len(chunk)} of {size} bytes)")
            return " | ".join(out)
        out.append(show(chunk) if chunk else "(empty)")
        pos += size
    out.append(show(data[pos:]) if pos < len(data) else "(no body)")
    return " | ".join(out)


# --------------------------------------------------------------------------------------------
# Server frames: the encoder call that must reproduce a recorded frame


def meta_spec(meta: dict) -> dict:
    user = {k: v for k, v in meta.items() if k not in ("phx_ref", "phx_ref_prev")}
    return {"meta": user, "phx_ref": meta["phx_ref"], "phx_ref_prev": meta.get("phx_ref_prev")}


def group_spec(group: dict) -> list:
    return [{"key": k, "metas": [meta_spec(m) for m in v["metas"]]} for k, v in group.items()]


def system_order(payload: dict) -> dict:
    """`system` payloads in the order the encoder writes them (key order is irrelevant)."""
    order = ["extension", "status", "message", "channel"]
    return {k: payload[k] for k in order if k in payload}


def payload_spec(event: str, payload) -> dict:
    if event == "presence_state":
        return {"encode": {"fn": "render_state", "group": group_spec(payload)}}
    if event == "presence_diff":
        return {
            "encode": {
                "fn": "render_diff",
                "joins": group_spec(payload["joins"]),
                "leaves": group_spec(payload["leaves"]),
            }
        }
    if event == "system":
        return {
            "encode": {
                "fn": "system_payload",
                "extension": payload["extension"],
                "status": payload["status"],
                "message": payload["message"],
                "channel": payload.get("channel"),
            }
        }
    if event == "broadcast" and isinstance(payload, dict) and "meta" in payload:
        # A user broadcast converted to JSON for a V1 receiver, as the reference converts it.
        return {
            "encode": {
                "fn": "user_broadcast_json",
                "event": payload["event"],
                "body": {"json": payload["payload"]},
                "meta": {"json": payload["meta"]},
            }
        }
    return {"json": payload}


def response_spec(response) -> dict:
    if isinstance(response, dict) and list(response) == ["reason"]:
        return {"encode": {"fn": "reason", "text": response["reason"]}}
    return {"json": response}


def server_call(vsn: str, join_ref, ref, topic: str, event: str, payload) -> dict:
    if event == "phx_reply":
        return {
            "fn": "reply",
            "vsn": vsn,
            "join_ref": join_ref,
            "ref": ref,
            "topic": topic,
            "status": payload["status"],
            "response": response_spec(payload["response"]),
        }
    if event in ("phx_close", "phx_error") and ref == join_ref and payload == {}:
        return {"fn": "channel_end", "vsn": vsn, "join_ref": join_ref, "topic": topic, "event": event}
    return {
        "fn": "text_frame",
        "vsn": vsn,
        "join_ref": join_ref,
        "ref": ref,
        "topic": topic,
        "event": event,
        "payload": payload_spec(event, payload),
    }


def expected_server_text(vsn: str, join_ref, ref, topic, event, payload) -> str:
    """The exact text the encoders write (the reference's V1 object and V2 array forms)."""
    if event == "system":
        payload = system_order(payload)
    if vsn == V2:
        return compact([join_ref, ref, topic, event, payload])
    return compact({"topic": topic, "event": event, "payload": payload, "ref": ref})


def server_text_entry(name: str, recorded: str) -> dict:
    frame = json.loads(recorded)
    if isinstance(frame, list):
        vsn = V2
        join_ref, ref, topic, event, payload = frame
    else:
        vsn = V1
        join_ref, ref = frame.get("join_ref"), frame["ref"]
        topic, event, payload = frame["topic"], frame["event"], frame["payload"]
    text = expected_server_text(vsn, join_ref, ref, topic, event, payload)
    entry = {"name": name, "encode": server_call(vsn, join_ref, ref, topic, event, payload)}
    entry["text"] = text
    if text != recorded:
        notes = []
        if vsn == V1 and "join_ref" in frame:
            notes.append(
                "the logging server added join_ref; V1 server frames never carry it "
                "(Phoenix.Socket.V1.JSONSerializer)"
            )
        if event == "system" and list(payload) != list(system_order(payload)):
            notes.append(
                "the logging server sorted system keys; the encoder writes "
                "extension,status,message,channel (key order is irrelevant)"
            )
        assert notes, (name, recorded, text)
        entry["recorded"] = recorded
        entry["note"] = "; ".join(notes)
    return entry


def kind4_fields(data: bytes) -> dict:
    assert data[0] == 4
    tp, ev, meta, enc = data[1:5]
    pos = 5
    topic = data[pos : pos + tp].decode()
    pos += tp
    event = data[pos : pos + ev].decode()
    pos += ev
    metadata = data[pos : pos + meta].decode()
    pos += meta
    call = {
        "fn": "user_broadcast_binary",
        "topic": topic,
        "event": event,
        "metadata": metadata,
        "encoding": "binary" if enc == 0 else "json",
        **body_fields("body", data[pos:]),
    }
    return call


# --------------------------------------------------------------------------------------------
# Transcript extraction

LINE = re.compile(r"^(\d+)ms\s+(C→S|S→C)( BIN)?\s+(.*)$")


def transcript_frames(reference: Path):
    """Yields (section, time, direction, is_binary, frame, decoded_or_None) for every recorded
    transcript line (sections A.1-A.16)."""
    text = (reference / "client-expectations.md").read_text(encoding="utf-8")
    appendix = text[text.index("## Appendix A") :]
    section = None
    lines = appendix.splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"^### (A\.\d+) ", line)
        if heading:
            section = heading.group(1)
            continue
        match = LINE.match(line)
        if not match:
            continue
        time, direction, binary, frame = match.groups()
        decoded = None
        if binary and i + 1 < len(lines):
            nxt = lines[i + 1].strip()
            if nxt.startswith("decoded="):
                decoded = json.loads(nxt[len("decoded=") :])
        yield section, time, direction, bool(binary), frame.rstrip(), decoded


def client_label(frame_text: str) -> str:
    try:
        frame = json.loads(frame_text)
    except json.JSONDecodeError:
        return "(cut off by the recorder)"
    event = frame[3] if isinstance(frame, list) else frame["event"]
    payload = frame[4] if isinstance(frame, list) else frame["payload"]
    if event == "presence" and isinstance(get(payload, "event"), str):
        return f"presence {payload['event']}"
    return event


def server_label(frame_text: str) -> str:
    frame = json.loads(frame_text)
    if isinstance(frame, list):
        topic, event, payload = frame[2:5]
    else:
        topic, event, payload = frame["topic"], frame["event"], frame["payload"]
    if event != "phx_reply":
        return event
    response = payload["response"]
    if topic == "phoenix":
        what = "to heartbeat"
    elif isinstance(response, dict) and "postgres_changes" in response:
        what = "to join"
    elif isinstance(response, dict) and "reason" in response:
        what = "to join"
    else:
        what = "to push"
    return f"phx_reply {payload['status']} {what}"


def from_appendix(reference: Path):
    client = {"js-v2": [], "js-v1": [], "python-v1": []}
    server = {"js-v2": [], "js-v1": [], "python-v1": []}
    malformed = []
    names = set()

    def unique(name: str) -> str:
        base, n = name, 2
        while name in names:
            name = f"{base} #{n}"
            n += 1
        names.add(name)
        return name

    python_sections = {"A.12", "A.13", "A.14", "A.15"}
    for section, time, direction, binary, frame, decoded in transcript_frames(reference):
        if binary:
            vsn = V2
        else:
            vsn = V2 if frame.startswith("[") else V1
        if vsn == V2:
            group = "js-v2"
        elif section in python_sections or (section == "A.16" and frame.startswith('{"event"')):
            group = "python-v1"
        else:
            group = "js-v1"
        if direction == "C→S":
            if binary:
                data = bytes.fromhex(frame)
                exp = expect_binary(data)
                label = f"BIN kind {data[0]} {exp['event']} {exp['user_broadcast']['event']}"
                entry = {
                    "name": unique(f"{section} {time}ms C→S {label}"),
                    "vsn": vsn,
                    "hex": frame,
                    "layout": layout(data),
                    "expect": exp,
                }
                if decoded is not None:
                    entry["recorded_decoded"] = decoded
                client[group].append(entry)
                continue
            try:
                exp = expect_text(vsn, frame)
            except json.JSONDecodeError:
                malformed.append(
                    {
                        "name": unique(
                            f"{section} {time}ms C→S text cut off by the recorder (invalid JSON)"
                        ),
                        "vsn": vsn,
                        "text": frame,
                        "error": "Json",
                    }
                )
                continue
            client[group].append(
                {
                    "name": unique(f"{section} {time}ms C→S {client_label(frame)}"),
                    "vsn": vsn,
                    "text": frame,
                    "expect": exp,
                }
            )
        else:
            if binary:
                data = bytes.fromhex(frame)
                call = kind4_fields(data)
                server[group].append(
                    {
                        "name": unique(f"{section} {time}ms S→C BIN kind 4 {call['event']}"),
                        "encode": call,
                        "hex": frame,
                        "layout": layout(data),
                    }
                )
                continue
            server[group].append(server_text_entry(unique(f"{section} {time}ms S→C {server_label(frame)}"), frame))
    return client, server, malformed


# --------------------------------------------------------------------------------------------
# Frames written from the reference server's rules (and from what the clients send)

CURSOR = b'{"x":10,"y":20}'
ROOM = "realtime:room1"


def spec_client_frames() -> list:
    text_frames = [
        ("v2_serializer.ex: V2 elements after the fifth are ignored", V2,
         '["9","10","realtime:room1","broadcast",{"type":"broadcast","event":"cursor","payload":{"x":1}},"extra",7]'),
        ("v2_serializer.ex: V2 payload kept verbatim (number formatting, whitespace)", V2,
         '["9","10","realtime:room1","broadcast", {"b":1.50, "a":[1e3,-0.0]} ]'),
        ("v1_json_serializer.ex: V1 join_ref is optional (JS vsn 1 heartbeat)", V1,
         '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"14"}'),
        ("v1_json_serializer.ex: V1 keys in any order, extra keys ignored", V1,
         '{"ref":"2","payload":{},"extra":true,"join_ref":"1","event":"phx_leave","topic":"realtime:room1"}'),
        ("phoenix/socket.ex: heartbeat with null ref (Python)", V1,
         '{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}'),
        ("phoenix/socket.ex: V2 heartbeat with null ref", V2, '[null,null,"phoenix","heartbeat",{}]'),
        ("phoenix/socket.ex: V1 phx_join without join_ref (Phoenix then uses ref)", V1,
         '{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"5"}'),
        ("realtime_channel.ex: topic with colons kept verbatim", V2,
         '["1","1","realtime:room:123","phx_join",{"config":{"private":false}}]'),
        ("realtime_channel.ex: legacy join without config", V2, '["1","1","realtime:public:messages","phx_join",{}]'),
        ("realtime_channel.ex: lenient join: flexible booleans, numeric presence key, null entries dropped", V2,
         '["1","1","realtime:room1","phx_join",{"config":{"broadcast":{"self":"TRUE","ack":"nope",'
         '"replication_ready":"True"},"presence":{"enabled":"true","key":42},'
         '"postgres_changes":[null,{"event":"*","schema":"public","select":["a"]}],"private":"False"},'
         '"user_token":"legacy-token"}]'),
        ("realtime_channel.ex: postgres_changes null behaves as []", V2,
         '["1","1","realtime:room1","phx_join",{"config":{"postgres_changes":null}}]'),
        ("realtime_channel.ex: sb_ API key as channel token is ignored", V2,
         '["1","1","realtime:room1","phx_join",{"config":{},"access_token":"sb_publishable_abc"}]'),
        ("realtime_channel.ex: access_token wins over user_token", V1,
         '{"topic":"realtime:room1","event":"phx_join","payload":{"config":{},"access_token":"a",'
         '"user_token":"u"},"ref":"1","join_ref":"1"}'),
        ("realtime_channel.ex: invalid config values fall back to defaults", V2,
         '["1","1","realtime:room1","phx_join",{"config":{"broadcast":[],"presence":"x","private":1}}]'),
        ("realtime_channel.ex: join with a non-object payload", V2, '["1","1","realtime:room1","phx_join",[1,2]]'),
        ("realtime_channel.ex: access_token null is ignored", V2,
         '["1","3","realtime:room1","access_token",{"access_token":null}]'),
        ("realtime_channel.ex: access_token empty string is a token", V2,
         '["1","3","realtime:room1","access_token",{"access_token":""}]'),
        ("realtime_channel.ex: access_token not a string", V2,
         '["1","3","realtime:room1","access_token",{"access_token":12}]'),
        ("broadcast_handler.ex: broadcast non-map payload is relayed", V2, '["1","4","realtime:room1","broadcast","hello"]'),
        ("broadcast_handler.ex: broadcast map payload without type is relayed", V2,
         '["1","4","realtime:room1","broadcast",{"a":1}]'),
        ("presence_handler.ex: presence event is lower-cased", V2,
         '["1","5","realtime:room1","presence",{"type":"presence","event":"TRACK","payload":{"a":1}}]'),
        ("presence_handler.ex: presence track without payload tracks {}", V2,
         '["1","5","realtime:room1","presence",{"event":"track"}]'),
        ("presence_handler.ex: presence track with null payload tracks {}", V2,
         '["1","5","realtime:room1","presence",{"event":"track","payload":null}]'),
        ("presence_handler.ex: presence track with a non-object meta (server replies error)", V2,
         '["1","5","realtime:room1","presence",{"event":"track","payload":[1]}]'),
        ("presence_handler.ex: presence payload without event", V2, '["1","5","realtime:room1","presence",{"type":"presence"}]'),
        ("presence_handler.ex: presence unknown event", V2, '["1","5","realtime:room1","presence",{"event":"dance"}]'),
        ("realtime_channel.ex: any other event is classified Other", V2, '["1","6","realtime:room1","custom_event",{}]'),
        ("realtime_channel.ex: heartbeat on a channel topic is not a heartbeat", V2, '["1","7","realtime:room1","heartbeat",{}]'),
        ("codec: numeric refs are accepted as text", V2, '[1,2,"phoenix","heartbeat",{}]'),
        ("codec: escaped topic and event are unescaped", V2,
         '["1","1","realtime:r\\u00e9sum\\u00e9 \\"q\\"","ph\\u0078_leave",{}]'),
    ]
    raw_payloads = {
        "v2_serializer.ex: V2 payload kept verbatim (number formatting, whitespace)": '{"b":1.50, "a":[1e3,-0.0]}',
        "broadcast_handler.ex: broadcast non-map payload is relayed": '"hello"',
    }
    out = []
    for name, vsn, text in text_frames:
        expect = expect_text(vsn, text)
        if name in raw_payloads:
            expect["payload_raw"] = raw_payloads[name]
        out.append({"name": name, "vsn": vsn, "text": text, "expect": expect})

    binary_frames = [
        ("v2_serializer.ex: worked example: kind 3 cursor {x:10,y:20}, join_ref 9, ref 10",
         bytes.fromhex("0301020e0600013931307265616c74696d653a726f6f6d31637572736f727b2278223a31302c2279223a32307d")),
        ("v2_serializer.ex: kind 0 push (client→server layout)",
         kind0("9", "5", ROOM, "custom", b"\x00\xff\x10binary")),
        ("v2_serializer.ex: kind 0 push with empty join_ref/ref and no data", kind0("", "", "phoenix", "heartbeat", b"")),
        ("v2_serializer.ex: kind 3 encoding 0 = raw binary body", kind3("9", "11", ROOM, "blob", b"", 0, b"\x00\x01\xfe\xff")),
        ("v2_serializer.ex: kind 3 any non-zero encoding byte means JSON", kind3("9", "12", ROOM, "cursor", b"", 7, CURSOR)),
        ("v2_serializer.ex: kind 3 with metadata (persist, as client 2.119.1 sends it)",
         kind3("6", "7", "realtime:priv", "e", b'{"persist":{"ttl":60}}', 1, b'{"a":1}')),
        ("v2_serializer.ex: kind 3 with empty body", kind3("9", "13", ROOM, "ping", b"", 1, b"")),
        ("v2_serializer.ex: kind 3 with empty join_ref and ref", kind3("", "", ROOM, "cursor", b"", 1, CURSOR)),
        ("v2_serializer.ex: kind 3 with 255-byte fields", kind3("j" * 255, "r" * 255, "realtime:" + "t" * 246,
                                                     "e" * 255, b'{"k":"' + b"m" * 247 + b'"}', 1, CURSOR)),
    ]
    for name, data in binary_frames:
        out.append({"name": name, "vsn": V2, "hex": data.hex(), "layout": layout(data),
                    "expect": expect_binary(data)})
    return out


def spec_server_frames() -> list:
    def reply(vsn, jr, ref, topic, status, response):
        return {"fn": "reply", "vsn": vsn, "join_ref": jr, "ref": ref, "topic": topic,
                "status": status, "response": response}

    def frame(vsn, jr, ref, topic, event, payload):
        return {"fn": "text_frame", "vsn": vsn, "join_ref": jr, "ref": ref, "topic": topic,
                "event": event, "payload": payload}

    def system(ext, status, message, channel):
        return {"encode": {"fn": "system_payload", "extension": ext, "status": status,
                           "message": message, "channel": channel}}

    def reason(text):
        return {"encode": {"fn": "reason", "text": text}}

    entries = [
        ("phoenix/socket.ex: heartbeat reply V2", reply(V2, None, "14", "phoenix", "ok", {"json": {}}),
         '[null,"14","phoenix","phx_reply",{"status":"ok","response":{}}]'),
        ("phoenix/socket.ex: heartbeat reply V1", reply(V1, None, "14", "phoenix", "ok", {"json": {}}),
         '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"14"}'),
        ("phoenix/socket.ex: heartbeat reply V1 echoes a null ref", reply(V1, None, None, "phoenix", "ok", {"json": {}}),
         '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null}'),
        ("phoenix/socket.ex: heartbeat reply V2 echoes a null ref", reply(V2, None, None, "phoenix", "ok", {"json": {}}),
         '[null,null,"phoenix","phx_reply",{"status":"ok","response":{}}]'),
        ("v1_json_serializer.ex: V1 reply never carries join_ref", reply(V1, "1", "2", ROOM, "ok", {"json": {}}),
         '{"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}'),
        ("realtime_channel.ex: join reply without postgres_changes",
         reply(V2, "1", "1", ROOM, "ok", {"json": {"postgres_changes": []}}),
         '["1","1","realtime:room1","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]'),
        ("realtime_channel.ex: join reply echoing a binding with its id",
         reply(V2, "1", "1", "realtime:chat", "ok", {"json": {"postgres_changes": [
             {"event": "*", "schema": "public", "table": "test", "id": 106243155}]}}),
         '["1","1","realtime:chat","phx_reply",{"status":"ok","response":{"postgres_changes":'
         '[{"event":"*","schema":"public","table":"test","id":106243155}]}}]'),
        ("realtime_channel.ex: join error reply (V2)",
         reply(V2, "6", "6", ROOM, "error", reason("ChannelRateLimitReached: Too many channels")),
         '["6","6","realtime:room1","phx_reply",{"status":"error","response":'
         '{"reason":"ChannelRateLimitReached: Too many channels"}}]'),
        ("realtime_channel.ex: join error reason with backticks (V1)",
         reply(V1, "1", "1", ROOM, "error", reason("InvalidJWTToken: Fields `role` and `exp` are required in JWT")),
         '{"topic":"realtime:room1","event":"phx_reply","payload":{"status":"error","response":'
         '{"reason":"InvalidJWTToken: Fields `role` and `exp` are required in JWT"}},"ref":"1"}'),
        ("realtime_channel.ex: join error reason with quotes is escaped",
         reply(V2, "1", "1", ROOM, "error", reason(
             'JwtSignerError: Failed to generate JWT signer for key ID (kid) "k1", check your JWT '
             'secret or JWKS configuration')),
         '["1","1","realtime:room1","phx_reply",{"status":"error","response":{"reason":'
         '"JwtSignerError: Failed to generate JWT signer for key ID (kid) \\"k1\\", check your JWT '
         'secret or JWKS configuration"}}]'),
        ("phoenix/socket.ex: unmatched topic error with null join_ref",
         reply(V2, None, "3", "other:topic", "error", reason("unmatched topic")),
         '[null,"3","other:topic","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]'),
        ("presence_handler.ex: presence error reply with empty response",
         reply(V2, "1", "5", ROOM, "error", {"json": {}}),
         '["1","5","realtime:room1","phx_reply",{"status":"error","response":{}}]'),
        ("broadcast_handler.ex: oversized broadcast with ack: string response",
         reply(V2, "1", "4", ROOM, "error", {"raw": '"payload_size_exceeded"'}),
         '["1","4","realtime:room1","phx_reply",{"status":"error","response":"payload_size_exceeded"}]'),
        ("v2_serializer.ex: fastlaned broadcast [null,null,topic,event,payload] relays the payload verbatim",
         frame(V2, None, None, ROOM, "broadcast", {"raw": '{"b":1.50, "a":[1e3]}'}),
         '[null,null,"realtime:room1","broadcast",{"b":1.50, "a":[1e3]}]'),
        ("v1_json_serializer.ex: V1 broadcast carries ref null",
         frame(V1, None, None, ROOM, "broadcast", {"raw": '"hello"'}),
         '{"topic":"realtime:room1","event":"broadcast","payload":"hello","ref":null}'),
        ("v2_serializer.ex: channel push (system) carries the channel's join_ref",
         frame(V2, "9", None, ROOM, "system",
               system("postgres_changes", "ok", "Subscribed to PostgreSQL", "room1")),
         '["9",null,"realtime:room1","system",{"extension":"postgres_changes","status":"ok",'
         '"message":"Subscribed to PostgreSQL","channel":"room1"}]'),
        ("v2_serializer.ex: channel push (presence_state) carries the channel's join_ref",
         frame(V2, "9", None, ROOM, "presence_state", {"encode": {"fn": "render_state", "group": []}}),
         '["9",null,"realtime:room1","presence_state",{}]'),
        ("v2_serializer.ex: phx_close [join_ref,join_ref,topic,event,{}]",
         {"fn": "channel_end", "vsn": V2, "join_ref": "9", "topic": ROOM, "event": "phx_close"},
         '["9","9","realtime:room1","phx_close",{}]'),
        ("v2_serializer.ex: phx_error [join_ref,join_ref,topic,event,{}]",
         {"fn": "channel_end", "vsn": V2, "join_ref": "6", "topic": ROOM, "event": "phx_error"},
         '["6","6","realtime:room1","phx_error",{}]'),
        ("phoenix/channel/server.ex: V1 phx_close has ref = join_ref and no join_ref key",
         {"fn": "channel_end", "vsn": V1, "join_ref": "1", "topic": ROOM, "event": "phx_close"},
         '{"topic":"realtime:room1","event":"phx_close","payload":{},"ref":"1"}'),
        ("realtime_channel.ex: system replication ready",
         frame(V2, "9", None, ROOM, "system",
               system("system", "ok", "Replication connection established", "room1")),
         '["9",null,"realtime:room1","system",{"extension":"system","status":"ok",'
         '"message":"Replication connection established","channel":"room1"}]'),
        ("realtime_channel.ex: channel is the sub-topic, colons kept",
         frame(V2, "2", None, "realtime:room:123", "system",
               system("postgres_changes", "error", "fake error", "room:123")),
         '["2",null,"realtime:room:123","system",{"extension":"postgres_changes","status":"error",'
         '"message":"fake error","channel":"room:123"}]'),
        ("realtime_channel.ex: shutdown system error (V1)",
         frame(V1, None, None, ROOM, "system",
               system("system", "error", "Token has expired 3 seconds ago", "room1")),
         '{"topic":"realtime:room1","event":"system","payload":{"extension":"system","status":"error",'
         '"message":"Token has expired 3 seconds ago","channel":"room1"},"ref":null}'),
        ("connection_lifecycle_test.exs: Server requested disconnect has no channel key",
         frame(V2, "9", None, ROOM, "system",
               system("system", "ok", "Server requested disconnect", None)),
         '["9",null,"realtime:room1","system",{"extension":"system","status":"ok",'
         '"message":"Server requested disconnect"}]'),
        ("presence.ex: presence_state with two metas under one key",
         frame(V2, "9", None, ROOM, "presence_state", {"encode": {"fn": "render_state", "group": [
             {"key": "user-1", "metas": [
                 {"meta": {"name": "A"}, "phx_ref": "F1", "phx_ref_prev": None},
                 {"meta": {"name": "B", "phx_ref": "spoofed"}, "phx_ref": "F2", "phx_ref_prev": None}]},
             {"key": "42", "metas": [{"meta": {}, "phx_ref": "F3", "phx_ref_prev": None}]}]}}),
         '["9",null,"realtime:room1","presence_state",{"user-1":{"metas":[{"phx_ref":"F1","name":"A"},'
         '{"phx_ref":"F2","name":"B"}]},"42":{"metas":[{"phx_ref":"F3"}]}}]'),
        ("presence_handler.ex: presence_diff of an update: leave of old meta, join with phx_ref_prev",
         frame(V2, None, None, ROOM, "presence_diff", {"encode": {
             "fn": "render_diff",
             "joins": [{"key": "user-1", "metas": [
                 {"meta": {"name": "new"}, "phx_ref": "F2", "phx_ref_prev": "F1"}]}],
             "leaves": [{"key": "user-1", "metas": [
                 {"meta": {"name": "old"}, "phx_ref": "F1", "phx_ref_prev": None}]}]}}),
         '[null,null,"realtime:room1","presence_diff",{"joins":{"user-1":{"metas":[{"phx_ref":"F2",'
         '"phx_ref_prev":"F1","name":"new"}]}},"leaves":{"user-1":{"metas":[{"phx_ref":"F1","name":"old"}]}}}]'),
        ("presence.ex: presence_diff with empty joins and leaves",
         frame(V2, None, None, ROOM, "presence_diff",
               {"encode": {"fn": "render_diff", "joins": [], "leaves": []}}),
         '[null,null,"realtime:room1","presence_diff",{"joins":{},"leaves":{}}]'),
        ("message_dispatcher_test.exs: user broadcast converted for a V1 receiver, no meta",
         frame(V1, None, None, ROOM, "broadcast", {"encode": {
             "fn": "user_broadcast_json", "event": "cursor", "body": {"raw": '{"x":10,"y":20}'}, "meta": None}}),
         '{"topic":"realtime:room1","event":"broadcast","payload":{"type":"broadcast","event":"cursor",'
         '"payload":{"x":10,"y":20}},"ref":null}'),
        ("codec: topic and event with control characters and unicode are escaped",
         frame(V2, None, None, 'realtime:a"b\\c\n\t\u0001é', "ev\u001f", {"json": {}}),
         '[null,null,"realtime:a\\"b\\\\c\\n\\t\\u0001é","ev\\u001f",{}]'),
    ]
    out = [{"name": name, "encode": call, "text": text} for name, call, text in entries]

    kind4_entries = [
        ("v2_serializer.ex: worked example: kind 4 without metadata, JSON body",
         {"fn": "user_broadcast_binary", "topic": ROOM, "event": "cursor", "metadata": "",
          "encoding": "json", "body": '{"x":10,"y":20}'},
         "040e0600017265616c74696d653a726f6f6d31637572736f727b2278223a31302c2279223a32307d"),
        ("v2_serializer.ex: worked example: kind 4 with 35 bytes of metadata",
         {"fn": "user_broadcast_binary", "topic": ROOM, "event": "cursor",
          "metadata": '{"id":"msg-uuid-1","replayed":true}', "encoding": "json", "body": '{"x":3,"y":4}'},
         kind4(ROOM, "cursor", b'{"id":"msg-uuid-1","replayed":true}', 1, b'{"x":3,"y":4}').hex()),
        ("v2_serializer.ex: kind 4 binary body (encoding 0), database broadcast metadata",
         {"fn": "user_broadcast_binary", "topic": ROOM, "event": "blob",
          "metadata": '{"id":"00000000-0000-0000-0000-000000000001"}', "encoding": "binary",
          "body_hex": "0001feff"},
         kind4(ROOM, "blob", b'{"id":"00000000-0000-0000-0000-000000000001"}', 0,
               bytes.fromhex("0001feff")).hex()),
        ("v2_serializer.ex: kind 4 with empty body",
         {"fn": "user_broadcast_binary", "topic": ROOM, "event": "e", "metadata": "",
          "encoding": "json", "body": ""},
         kind4(ROOM, "e", b"", 1, b"").hex()),
    ]
    for name, call, hexed in kind4_entries:
        out.append({"name": name, "encode": call, "hex": hexed, "layout": layout(bytes.fromhex(hexed))})

    too_long = [
        ("v2_serializer.ex: kind 4 topic over 255 bytes is refused",
         {"fn": "user_broadcast_binary", "topic": "realtime:" + "t" * 247, "event": "e", "metadata": "",
          "encoding": "json", "body": "{}"}, {"field": "topic", "len": 256}),
        ("v2_serializer.ex: kind 4 event over 255 bytes is refused",
         {"fn": "user_broadcast_binary", "topic": ROOM, "event": "é" * 128, "metadata": "",
          "encoding": "json", "body": "{}"}, {"field": "event", "len": 256}),
        ("v2_serializer.ex: kind 4 metadata over 255 bytes is refused",
         {"fn": "user_broadcast_binary", "topic": ROOM, "event": "e",
          "metadata": '{"k":"' + "m" * 250 + '"}', "encoding": "json", "body": "{}"},
         {"field": "metadata", "len": 258}),
    ]
    for name, call, err in too_long:
        out.append({"name": name, "encode": call, "error": err})
    return out


def spec_malformed() -> list:
    recorded_k3 = bytes.fromhex(
        "0301020e0600013931307265616c74696d653a726f6f6d31637572736f727b2278223a31302c2279223a32307d")
    a10_k3 = bytes.fromhex(
        "0301010d01160136377265616c74696d653a70726976657b2270657273697374223a7b2274746c223a36307d7d7b2261223a317d")
    text = [
        ("realtime_web/socket.ex: V2 array with too few items", V2, '[null,"1","realtime:room1","phx_join"]', "ShortArray"),
        ("realtime_web/socket.ex: V2 empty array", V2, "[]", "ShortArray"),
        ("realtime_web/socket.ex: V2 object instead of array", V2,
         '{"topic":"realtime:room1","event":"phx_join","payload":{},"ref":"1"}', "Json"),
        ("realtime_web/socket.ex: V2 empty string", V2, "", "Json"),
        ("realtime_web/socket.ex: V1 empty string", V1, "", "Json"),
        ("realtime_web/socket.ex: V2 invalid JSON", V2, "not json", "Json"),
        ("realtime_web/socket.ex: V1 invalid JSON", V1, "{not json}", "Json"),
        ("realtime_web/socket.ex: V2 unterminated array", V2, '[null,"1","phoenix","heartbeat",{}', "Json"),
        ("realtime_web/socket.ex: V2 trailing garbage", V2, '[null,"1","phoenix","heartbeat",{}] x', "Json"),
        ("realtime_web/socket.ex: V2 JSON string instead of array", V2, '"hello"', "Json"),
        ("realtime_web/socket.ex: V2 JSON null", V2, "null", "Json"),
        ("v1_json_serializer.ex: V1 array instead of object", V1, '[null,"1","phoenix","heartbeat",{}]', "Json"),
        ("v1_json_serializer.ex: V1 JSON string instead of object", V1, '"hello"', "Json"),
        ("v1_json_serializer.ex: V1 array shaped like a V1 object's fields (topic,event,payload,ref)", V1,
         '["realtime:room1","phx_join",{},"1"]', "Json"),
        ("v1_json_serializer.ex: V1 V2-shaped array whose items would fit the V1 fields", V1,
         '["1","4","realtime:room1","broadcast","hello"]', "Json"),
        ("v1_json_serializer.ex: V1 missing ref", V1, '{"topic":"phoenix","event":"heartbeat","payload":{}}', "Json"),
        ("v1_json_serializer.ex: V1 missing topic", V1, '{"event":"heartbeat","payload":{},"ref":"1"}', "Json"),
        ("v1_json_serializer.ex: V1 missing event", V1, '{"topic":"phoenix","payload":{},"ref":"1"}', "Json"),
        ("v1_json_serializer.ex: V1 missing payload", V1, '{"topic":"phoenix","event":"heartbeat","ref":"1"}', "Json"),
        ("codec: V2 topic must be a string", V2, '[null,"1",7,"heartbeat",{}]', "Json"),
        ("codec: V2 event must be a string", V2, '[null,"1","phoenix",null,{}]', "Json"),
        ("codec: V2 ref must be a string, number or null", V2, '[null,{},"phoenix","heartbeat",{}]', "Json"),
        ("codec: V1 ref must be a string, number or null", V1,
         '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":[1]}', "Json"),
    ]
    out = [{"name": n, "vsn": v, "text": t, "error": e} for n, v, t, e in text]

    binary = [
        ("v2_serializer.ex: empty binary frame", V2, b"", "Truncated"),
        ("v2_serializer.ex: kind 3 header only", V2, recorded_k3[:7], "Truncated"),
        ("v2_serializer.ex: kind 3 header cut short", V2, recorded_k3[:4], "Truncated"),
        ("v2_serializer.ex: kind 3 cut inside the topic (A.1 frame)", V2, recorded_k3[:15], "Truncated"),
        ("v2_serializer.ex: kind 3 cut inside the user event (A.1 frame)", V2, recorded_k3[:25], "Truncated"),
        ("v2_serializer.ex: kind 3 cut inside the metadata (A.10 frame)", V2, a10_k3[:30], "Truncated"),
        ("v2_serializer.ex: kind 0 cut inside the event", V2, kind0("9", "5", ROOM, "custom", b"")[:-2], "Truncated"),
        ("v2_serializer.ex: kind 0 header only", V2, bytes([0, 1, 1, 14]), "Truncated"),
        ("v2_serializer.ex: kind 1 (server reply) is not a client kind", V2,
         bytes([1, 1, 1, 14, 2]) + b"11realtime:room1ok", "UnknownKind(1)"),
        ("v2_serializer.ex: kind 2 (server broadcast) is not a client kind", V2,
         bytes([2, 14, 6]) + b"realtime:room1cursor{}", "UnknownKind(2)"),
        ("v2_serializer.ex: kind 4 (A.1 server frame) is not a client kind", V2,
         bytes.fromhex("040e0600017265616c74696d653a726f6f6d31637572736f727b2278223a31302c2279223a32307d"),
         "UnknownKind(4)"),
        ("v2_serializer.ex: unknown kind 5", V2, bytes([5, 0, 0, 0, 0]), "UnknownKind(5)"),
        ("v2_serializer.ex: unknown kind 255", V2, bytes([255]), "UnknownKind(255)"),
        ("v2_serializer.ex: unknown kind '[' (text sent as binary)", V2, b'[null,"1","phoenix","heartbeat",{}]',
         "UnknownKind(91)"),
        ("v1_json_serializer.ex: binary frame on a V1 socket (A.1 kind 3)", V1, recorded_k3, "BinaryOnV1"),
        ("v1_json_serializer.ex: empty binary frame on a V1 socket", V1, b"", "BinaryOnV1"),
        ("codec: kind 3 topic not UTF-8", V2, kind3("9", "10", b"realtime:\xff", "cursor", b"", 1, CURSOR),
         "NotUtf8"),
        ("codec: kind 0 event not UTF-8", V2, bytes([0, 0, 0, 7, 2]) + b"phoenix\xc3\x28", "NotUtf8"),
        ("v2_serializer.ex decode_binary: kind 3 metadata must be JSON", V2,
         kind3("9", "10", ROOM, "cursor", b"not json", 1, CURSOR), "Json"),
        ("v2_serializer.ex decode_binary: kind 3 metadata cut JSON", V2,
         kind3("6", "7", "realtime:priv", "e", b'{"persist":{"ttl":60}', 1, b'{"a":1}'), "Json"),
        ("v2_serializer.ex decode_binary: kind 3 metadata not UTF-8", V2,
         kind3("9", "10", ROOM, "cursor", b'{"a":"\xff"}', 1, CURSOR), "NotUtf8"),
    ]
    for name, vsn, data, err in binary:
        out.append({"name": name, "vsn": vsn, "hex": data.hex(), "layout": layout(data), "error": err})
    return out


# --------------------------------------------------------------------------------------------
# Output: one entry per object, one field per line, values compact (readable diffs)


def dump(path: Path, about: str, frames: list) -> None:
    lines = ["{", f'  "about": {compact(about)},', '  "frames": [']
    for i, entry in enumerate(frames):
        lines.append("    {")
        keys = list(entry)
        for j, key in enumerate(keys):
            value = entry[key]
            comma = "," if j + 1 < len(keys) else ""
            if key == "expect":
                lines.append(f'      "{key}": {{')
                sub = list(value)
                for k, name in enumerate(sub):
                    sub_comma = "," if k + 1 < len(sub) else ""
                    lines.append(f'        "{name}": {compact(value[name])}{sub_comma}')
                lines.append(f"      }}{comma}")
            else:
                lines.append(f'      "{key}": {compact(value)}{comma}')
        lines.append("    }" + ("," if i + 1 < len(frames) else ""))
    lines += ["  ]", "}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    args = parser.parse_args()

    client, server, cut_off = from_appendix(args.reference)
    src = "Recorded wire transcripts (README.md)"
    about_client = {
        "js-v2": f"{src}: every JS vsn 2.0.0 client frame (text arrays and BIN kind 3), verbatim.",
        "js-v1": f"{src}: every JS vsn 1.0.0 client frame (A.3), verbatim.",
        "python-v1": f"{src}: every Python (vsn 1.0.0) client frame (A.12-A.16), verbatim.",
    }
    about_server = {
        "js-v2": f"{src}: every S→C frame sent to JS vsn 2.0.0 clients, with the encoder call that "
                 "reproduces it.",
        "js-v1": f"{src}: every S→C frame sent to JS vsn 1.0.0 (A.3). The logging server added "
                 "join_ref to V1 frames; the expected text drops it (the reference's V1 "
                 "serializer never writes it).",
        "python-v1": f"{src}: every S→C frame sent to Python (A.12-A.16). The logging server added "
                     "join_ref to V1 frames; the expected text drops it (the reference's V1 "
                     "serializer never writes it).",
    }
    for group, frames in client.items():
        dump(HERE / "client-frames" / f"{group}.json", about_client[group], frames)
    for group, frames in server.items():
        dump(HERE / "server-frames" / f"{group}.json", about_server[group], frames)
    dump(HERE / "client-frames" / "spec.json",
         "The reference server's frame shapes, binary layouts and parsing rules written out as "
         "client frames; each name starts with the reference file whose behaviour it pins (see "
         "README.md). Names starting with 'codec:' pin a choice of this codec where the reference "
         "is silent.", spec_client_frames())
    dump(HERE / "server-frames" / "spec.json",
         "The reference server's frames and payloads (replies, pushes, system, presence, kind 4) "
         "with the exact bytes the encoders must produce; each name starts with the reference file "
         "whose behaviour it pins (see README.md).", spec_server_frames())
    dump(HERE / "malformed" / "malformed.json",
         "Frames that must decode to an error (the reference's V1 and V2 serializers and "
         "lib/realtime_web/socket.ex; recorded transcript lines cut off by the recorder in "
         "A.8/A.11). The server drops them and keeps the socket.", spec_malformed() + cut_off)
    counts = {g: len(f) for g, f in client.items()}
    print(f"client frames {counts}, server frames { {g: len(f) for g, f in server.items()} }, "
          f"cut-off lines {len(cut_off)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
