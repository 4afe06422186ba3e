#!/usr/bin/env python3
"""Regroups the shipper's published documents into several records per Kafka message.

A measurement aid for BENCHMARKS.md ("What a contract with several records per message would buy"),
not part of any data path. Input: `kcat -C -e -q -f '%k\\t%s\\n'` of a topic the Kafka bench wrote
(one `key<TAB>document` line per record). Output, for `kcat -P -K '\\t' -D '\\x1e' -l <file>`:

    regroup_documents.py docs.tsv whole 128 > batch128.bin   # 128 whole documents per message
    regroup_documents.py docs.tsv frame 128 > frame128.bin   # the per-file part once, then records

Records are grouped per key (one container's stream), as a shipper holding one open message per key
would; a message is closed at N records and at the end of the input.
"""
import json
import sys

PER_RECORD = ("@timestamp", "message", "stream")


def main() -> None:
    path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode not in ("whole", "frame"):
        sys.exit("mode must be `whole` or `frame`")
    out = sys.stdout.buffer
    open_messages: dict[bytes, tuple[bytes, list[bytes]]] = {}

    def close(key: bytes) -> None:
        frame, records = open_messages.pop(key)
        body = b"\n".join(([frame] if frame else []) + records)
        out.write(key + b"\t" + body + b"\x1e")

    with open(path, "rb") as f:
        for line in f:
            key, _, doc = line.rstrip(b"\n").partition(b"\t")
            if mode == "whole":
                frame, record = b"", doc
            else:
                d = json.loads(doc)
                offset = d["log"].pop("offset")
                r = {"id": f"0f3c9a1e2b4d5f60718293a4b5c6d7e8-{offset}", "offset": offset}
                r.update((k, d.pop(k)) for k in PER_RECORD)
                frame = json.dumps(d, separators=(",", ":")).encode()
                record = json.dumps(r, separators=(",", ":")).encode()
            entry = open_messages.setdefault(key, (frame, []))
            entry[1].append(record)
            if len(entry[1]) >= n:
                close(key)
    for key in list(open_messages):
        close(key)


if __name__ == "__main__":
    main()
