#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the committed bad-input corpus (tests/data/bad) and
fixtures, in each target's input format. Run before `cargo +nightly fuzz run <target>`."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
BAD = os.path.join(HERE, "..", "tests", "data", "bad")
# json target: the first byte picks the reader (see fuzz_targets/json.rs).
JSON_READER = {"vqa": 0, "vqa_vocab": 0, "refs": 0, "gqa": 1, "nlvr2": 2, "flickr30k": 3,
               "coco": 4, "lxmert": 5, "vg": 6}


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def files(d):
    for root, _, names in os.walk(d):
        for n in sorted(names):
            if not n.endswith(".expect"):
                yield os.path.join(root, n)


def main():
    for p in files(os.path.join(BAD, "tsv")):
        put("tsv", os.path.basename(p), open(p, "rb").read())
    fixture = os.path.join(HERE, "..", "crates", "features", "tests", "data", "fixture.tsv")
    put("tsv", "fixture.tsv", open(fixture, "rb").read())
    store = os.path.join(BAD, "store")
    for case in sorted(os.listdir(store)):
        d = os.path.join(store, case)
        if not os.path.isdir(d):
            continue
        read = lambda n: open(os.path.join(d, n), "rb").read() if os.path.exists(os.path.join(d, n)) else b""
        index, regions = read("index.json"), read("regions.safetensors")
        put("store", case, struct.pack("<I", len(index)) + index + regions)
    for kind, sel in JSON_READER.items():
        for p in files(os.path.join(BAD, "json", kind)):
            put("json", kind + "-" + os.path.basename(p), bytes([sel]) + open(p, "rb").read())
    for d in sorted(os.listdir(os.path.join(BAD, "json", "answer_vocab"))):
        full = os.path.join(BAD, "json", "answer_vocab", d)
        if os.path.isdir(full):
            a = open(os.path.join(full, "ans2label.json"), "rb").read()
            l = open(os.path.join(full, "label2ans.json"), "rb").read()
            put("json", "answers-" + d, bytes([7]) + a + b"\0" + l)
    for p in files(os.path.join(BAD, "vocab", "labels")):
        put("json", "labels-" + os.path.basename(p), bytes([8]) + open(p, "rb").read())
    for p in files(os.path.join(BAD, "vocab")):
        if os.path.dirname(p).endswith("vocab"):
            put("json", "vocab-" + os.path.basename(p), bytes([9]) + open(p, "rb").read())
    for p in files(os.path.join(BAD, "checkpoint")):
        if p.endswith(".safetensors"):
            put("checkpoint", os.path.basename(p), open(p, "rb").read())


if __name__ == "__main__":
    main()
