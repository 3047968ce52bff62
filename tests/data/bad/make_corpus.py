#!/usr/bin/env python3
"""Writes the bad-input corpus of issue 8 (SPEC §10): one small file per failure class,
each with a sidecar `<case>.expect` listing the words the error message must contain.

Run from anywhere: `python3 tests/data/bad/make_corpus.py`. Only the standard library is
used; the checkpoint cases are derived from crates/model/tests/data/hf0_weights.safetensors
(the HF parity fixture). Output is deterministic. Files and folders starting with `_` are
support files shared by the cases of a kind, not cases. `xtask/tests/bad_corpus.rs` walks
the result through the real commands and APIs.
"""

import base64
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
# Kinds written by this script (fuzz regression cases live in `fuzz-*` files and are kept).
KINDS = ["tsv", "store", "json", "vocab", "checkpoint", "config"]


def path(*parts):
    p = os.path.join(HERE, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def write(rel, data, expect):
    """A case file (bytes or str) and its .expect sidecar (list of words)."""
    p = path(*rel.split("/"))
    with open(p, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    stem = os.path.splitext(p)[0]
    with open(stem + ".expect", "w") as f:
        f.write("\n".join(expect) + "\n")


def support(rel, data):
    p = path(*rel.split("/"))
    with open(p, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def case_dir(rel, files, expect):
    """A directory case (e.g. a feature store) and its sidecar `<dir>.expect`."""
    d = path(*rel.split("/"), "x")
    d = os.path.dirname(d)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    with open(d + ".expect", "w") as f:
        f.write("\n".join(expect) + "\n")


# ---------------------------------------------------------------- LXMERT TSV (SPEC §2.1)

def b64(fmt, values):
    return base64.b64encode(struct.pack("<%d%s" % (len(values), fmt), *values)).decode()


def tsv_line(img_id, h, w, n, d=4, seed=0, boxes=None, feats=None, **over):
    """One TSV line with `n` boxes of width `d`; `over` replaces encoded columns."""
    obj = [(seed + 7 * i) % 1600 for i in range(n)]
    att = [(seed + 3 * i) % 400 for i in range(n)]
    conf = [0.5 + 0.01 * i for i in range(n)]
    if boxes is None:
        boxes = []
        for i in range(n):
            boxes += [1.0 * i, 2.0 * i, w / 2 + i, h / 2 + i]
    if feats is None:
        feats = [0.25 * ((seed + k) % 13) for k in range(n * d)]
    cols = {
        "img_id": img_id,
        "img_h": str(h),
        "img_w": str(w),
        "objects_id": b64("q", obj),
        "objects_conf": b64("f", conf),
        "attrs_id": b64("q", att),
        "attrs_conf": b64("f", conf),
        "num_boxes": str(n),
        "boxes": b64("f", boxes),
        "features": b64("f", feats),
    }
    cols.update(over)
    order = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id",
             "attrs_conf", "num_boxes", "boxes", "features"]
    out = []
    for k in order:
        v = cols[k]
        out.append(v if isinstance(v, bytes) else v.encode())
    return b"\t".join(out) + b"\r\n"


def good_lines():
    return [
        tsv_line("img0", 80, 100, 2, seed=1),
        tsv_line("img1", 60, 90, 3, seed=2),
        tsv_line("img2", 50, 50, 2, seed=3),
    ]


def tsv_cases():
    g = good_lines()
    # Cut inside the features column of the last line (no newline: a killed writer).
    last = g[2]
    cut = last[: last.rindex(b"\t") + 9]
    write("tsv/truncated_mid_line.tsv", g[0] + g[1] + cut,
          ["truncated_mid_line.tsv:3:", "features", "truncated"])
    write("tsv/truncated_before_features.tsv", g[0] + g[1] + last[:40],
          ["truncated_before_features.tsv:3:", "`line`", "found", "truncated"])
    nine = g[1].rstrip(b"\r\n").rsplit(b"\t", 1)[0] + b"\r\n"
    write("tsv/wrong_column_count.tsv", g[0] + nine + g[2],
          ["wrong_column_count.tsv:2:", "`line`", "expected 10", "found 9"])
    eleven = g[1].rstrip(b"\r\n") + b"\textra\r\n"
    write("tsv/too_many_columns.tsv", g[0] + eleven,
          ["too_many_columns.tsv:2:", "`line`", "found 11"])
    write("tsv/bad_base64.tsv",
          tsv_line("img0", 80, 100, 2, seed=1, objects_conf="AAAA!AAAAAAA") + g[1],
          ["bad_base64.tsv:1:", "objects_conf", "base64"])
    write("tsv/unpadded_base64.tsv",
          g[0] + tsv_line("img1", 60, 90, 3, seed=2, attrs_conf=b64("f", [0.5] * 3).rstrip("=")[:-1]),
          ["unpadded_base64.tsv:2:", "attrs_conf", "base64"])
    write("tsv/buffer_length.tsv",
          g[0] + tsv_line("img1", 60, 90, 2, seed=2, boxes=[1.0, 1.0, 2.0, 2.0] * 3),
          ["buffer_length.tsv:2:", "boxes", "expected num_boxes (2)"])
    write("tsv/feature_buffer_length.tsv",
          g[0] + tsv_line("img1", 60, 90, 3, seed=2, feats=[0.5] * (3 * 4 - 1)),
          ["feature_buffer_length.tsv:2:", "features", "num_boxes (3)"])
    write("tsv/feature_width_changes.tsv",
          g[0] + tsv_line("img1", 60, 90, 3, d=5, seed=2),
          ["feature_width_changes.tsv:2:", "features"])
    feats = [0.5] * 8
    feats[6] = float("nan")
    write("tsv/nan_feature.tsv", g[0] + tsv_line("img1", 60, 90, 2, seed=2, feats=feats),
          ["nan_feature.tsv:2:", "features", "box 1, dim 2", "NaN"])
    feats = [0.5] * 8
    feats[3] = float("inf")
    write("tsv/inf_feature.tsv", tsv_line("img0", 80, 100, 2, seed=1, feats=feats),
          ["inf_feature.tsv:1:", "features", "box 0, dim 3", "inf"])
    write("tsv/nan_confidence.tsv",
          tsv_line("img0", 80, 100, 2, seed=1, attrs_conf=b64("f", [0.5, float("nan")])),
          ["nan_confidence.tsv:1:", "attrs_conf", "box 1", "non-finite"])
    write("tsv/box_outside_image.tsv",
          g[0] + g[1] + tsv_line("img2", 50, 50, 2, seed=3,
                                 boxes=[0.0, 0.0, 10.0, 10.0, 5.0, 5.0, 50.5, 20.0]),
          ["box_outside_image.tsv:3:", "boxes", "box 1", "outside the 50×50 image"])
    write("tsv/negative_box.tsv",
          tsv_line("img0", 80, 100, 2, seed=1, boxes=[-1.0, 0.0, 10.0, 10.0, 0.0, 0.0, 1.0, 1.0]),
          ["negative_box.tsv:1:", "boxes", "box 0"])
    write("tsv/duplicate_img_id.tsv", g[0] + g[1] + tsv_line("img0", 50, 50, 2, seed=3),
          ["duplicate_img_id.tsv:3:", "img_id", "duplicate img_id `img0`",
           "duplicate_img_id.tsv:1"])
    write("tsv/non_utf8_img_id.tsv", g[0] + tsv_line(b"caf\xe9", 60, 90, 3, seed=2),
          ["non_utf8_img_id.tsv:2:", "img_id", "UTF-8"])
    write("tsv/empty_img_id.tsv", tsv_line("", 60, 90, 3, seed=2),
          ["empty_img_id.tsv:1:", "img_id", "empty"])
    write("tsv/bad_integer.tsv", g[0] + tsv_line("img1", 60, 90, 3, seed=2, num_boxes="3x"),
          ["bad_integer.tsv:2:", "num_boxes", "not a non-negative integer"])
    write("tsv/zero_image_size.tsv", tsv_line("img0", 0, 100, 2, seed=1),
          ["zero_image_size.tsv:1:", "img_h", "0"])
    write("tsv/negative_class_id.tsv",
          tsv_line("img0", 80, 100, 2, seed=1, attrs_id=b64("q", [3, -1])),
          ["negative_class_id.tsv:1:", "attrs_id", "-1"])
    write("tsv/empty.tsv", b"", ["empty.tsv", "empty file"])
    write("tsv/blank_lines.tsv", b"\r\n\n\r\n", ["blank_lines.tsv", "empty file"])
    write("tsv/binary_garbage.tsv", bytes(range(256)) * 2,
          ["binary_garbage.tsv:1:", "`line`", "found"])


# ------------------------------------------------------------- feature store (SPEC §2.2)

def safetensors(tensors, meta=None):
    """tensors: list of (name, dtype, shape, raw bytes) in file order."""
    header = {}
    start = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, start + len(raw)]}
        start += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def pack(fmt, values):
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def store_files(features_shape=None, drop=None, offsets=None, ids=None, version=1,
                index_text=None, regions_cut=None, dtype="F32"):
    """A valid 2-image, 3-region, D = 4 store, with one thing changed."""
    r, d = 3, 4
    feats = [0.125 * k for k in range(r * d)]
    tensors = [
        ("features", dtype, features_shape or [r, d],
         pack("f", feats) if dtype == "F32" else pack("q", [1] * (r * d))),
        ("boxes", "F32", [r, 4], pack("f", [0.0, 0.0, 0.5, 0.5] * r)),
        ("objects_id", "I64", [r], pack("q", [1, 2, 3])),
        ("objects_conf", "F32", [r], pack("f", [0.5] * r)),
        ("attrs_id", "I64", [r], pack("q", [4, 5, 6])),
        ("attrs_conf", "F32", [r], pack("f", [0.25] * r)),
        ("offsets", "I64", [3], pack("q", offsets or [0, 2, 3])),
        ("img_hw", "I64", [2, 2], pack("q", [80, 100, 60, 90])),
    ]
    tensors = [t for t in tensors if t[0] != drop]
    regions = safetensors(tensors, {"format": "msp-features", "version": "1"})
    if regions_cut is not None:
        regions = regions[:regions_cut]
    index = {"version": version, "feature_dim": d, "dtype": "f32", "num_images": 2,
             "num_regions": r, "ids": ids or ["img0", "img1"]}
    return {
        "index.json": index_text if index_text is not None else json.dumps(index),
        "regions.safetensors": regions,
    }


def store_cases():
    good = store_files()
    # The walker opens every store case with `features show --img-id img0`; this one must
    # work, so the corpus' base store is known to be valid.
    case_dir("store/_good", good, ["img0"])
    os.remove(os.path.join(HERE, "store", "_good.expect"))
    case_dir("store/index_not_json", store_files(index_text='{"version": 1, "feature_dim": '),
             ["index_not_json", "index.json", "EOF"])
    case_dir("store/index_wrong_shape", store_files(index_text='"a store"'),
             ["index_wrong_shape", "index.json", "invalid type: string"])
    idx = json.loads(good["index.json"])
    del idx["ids"]
    case_dir("store/index_missing_ids", store_files(index_text=json.dumps(idx)),
             ["index_missing_ids", "index.json", "missing field `ids`"])
    case_dir("store/index_wrong_version", store_files(version=7),
             ["index_wrong_version", "index.json", "version 7"])
    case_dir("store/duplicate_id", store_files(ids=["img0", "img0"]),
             ["duplicate_id", "index.json", "duplicate img_id `img0`"])
    case_dir("store/missing_tensor", store_files(drop="attrs_conf"),
             ["missing_tensor", "regions.safetensors", "missing tensor `attrs_conf`"])
    case_dir("store/wrong_shape", store_files(features_shape=[4, 3]),
             ["wrong_shape", "regions.safetensors", "tensor `features`", "[4, 3]"])
    case_dir("store/wrong_dtype", store_files(dtype="I64"),
             ["wrong_dtype", "regions.safetensors", "tensor `features`", "I64"])
    case_dir("store/bad_offsets", store_files(offsets=[0, 4, 3]),
             ["bad_offsets", "regions.safetensors", "offsets[1]"])
    full = len(good["regions.safetensors"])
    case_dir("store/truncated_regions", store_files(regions_cut=full - 10),
             ["truncated_regions", "regions.safetensors"])
    case_dir("store/truncated_header", store_files(regions_cut=5),
             ["truncated_header", "regions.safetensors", "header"])
    case_dir("store/missing_regions", {"index.json": good["index.json"]},
             ["missing_regions", "regions.safetensors", "No such file"])


# ------------------------------------------------------------------- JSON (SPEC §2.3-2.4)

def js(v):
    return json.dumps(v, indent=1)


def vqa_q(qid, img, sent, label=None):
    return {"question_id": qid, "img_id": img, "sent": sent,
            "label": label if label is not None else {"yes": 1.0},
            "answer_type": "yes/no", "question_type": "is the"}


def json_cases():
    # VQA / GQA / NLVR2 gold files: `cargo xtask eval score --task <t> --gold <case>`.
    support("json/vqa/_pred.json", js([{"question_id": 1, "answer": "yes"}]))
    write("json/vqa/invalid.json", '[{"question_id": 1, "img_id": "img0",\n "sent": "is it',
          ["invalid.json", "invalid JSON", "line 2"])
    write("json/vqa/wrong_shape.json", js({"question_id": 1, "img_id": "img0"}),
          ["wrong_shape.json", "invalid type: map, expected a sequence"])
    write("json/vqa/wrong_field_type.json",
          js([vqa_q(1, "img0", "is it red?"), dict(vqa_q(2, "img0", "x"), question_id="two")]),
          ["wrong_field_type.json", "invalid type: string \"two\""])
    write("json/vqa/missing_field.json", js([{"question_id": 1, "img_id": "img0"}]),
          ["missing_field.json", "missing field `sent`"])
    write("json/vqa/empty_question.json",
          js([vqa_q(1, "img0", "is it red?"), vqa_q(2, "img0", "   ")]),
          ["empty_question.json", "record 1", "`sent`", "empty"])
    write("json/vqa/empty_img_id.json", js([vqa_q(1, "", "is it red?")]),
          ["empty_img_id.json", "record 0", "`img_id`", "empty"])
    write("json/vqa/bad_score.json", js([vqa_q(1, "img0", "is it red?", {"yes": 1.5})]),
          ["bad_score.json", "record 0", "`label`", "outside [0, 1]"])
    write("json/vqa/non_utf8.json",
          b'[{"question_id": 1, "img_id": "img0",\n "sent": "caf\xe9?", "label": {}}]',
          ["non_utf8.json", "line 2", "UTF-8"])
    support("json/gqa/_pred.json", js([{"questionId": "1", "prediction": "yes"}]))
    write("json/gqa/two_answers.json",
          js([{"question_id": "01", "img_id": "img0", "sent": "what is it?",
               "label": {"cat": 1.0, "dog": 1.0}}]),
          ["two_answers.json", "record 0", "`label`", "2 answers"])
    write("json/gqa/empty_question_id.json",
          js([{"question_id": "", "img_id": "img0", "sent": "what?", "label": {}}]),
          ["empty_question_id.json", "record 0", "`question_id`", "empty"])
    support("json/nlvr2/_pred.csv", "dev-1-0-0,True\n")
    nl = {"identifier": "dev-1-0-0", "img0": "dev-1-0-img0", "img1": "dev-1-0-img1",
          "sent": "two dogs", "label": 1, "uid": "nlvr2_dev_0"}
    write("json/nlvr2/label_not_binary.json", js([nl, dict(nl, label=2)]),
          ["label_not_binary.json", "record 1", "`label`", "2 is not 0 or 1"])
    write("json/nlvr2/empty_statement.json", js([dict(nl, sent="")]),
          ["empty_statement.json", "record 0", "`sent`", "empty"])

    # VQA with an answer vocabulary: msp_text::read_vqa_checked.
    support("json/vqa_vocab/_ans2label.json", js({"yes": 0, "no": 1, "red": 2}))
    support("json/vqa_vocab/_label2ans.json", js(["yes", "no", "red"]))
    write("json/vqa_vocab/answer_not_in_vocab.json",
          js([vqa_q(1, "img0", "is it red?"), vqa_q(2, "img0", "what color?", {"blue": 1.0})]),
          ["answer_not_in_vocab.json", "record 1", "`label`", "`blue`",
           "not in the answer vocabulary"])

    # Answer vocabularies: directories holding ans2label.json + label2ans.json.
    case_dir("json/answer_vocab/disagree",
             {"ans2label.json": js({"yes": 0, "no": 2}), "label2ans.json": js(["yes", "no"])},
             ["ans2label.json", "record 1", "expected index 1"])
    case_dir("json/answer_vocab/empty",
             {"ans2label.json": js({}), "label2ans.json": js([])},
             ["label2ans.json", "empty answer vocabulary"])
    case_dir("json/answer_vocab/sizes_differ",
             {"ans2label.json": js({"yes": 0}), "label2ans.json": js(["yes", "no"])},
             ["ans2label.json", "1 answers", "label2ans.json", "has 2"])

    # Unknown img_id referenced by a question: msp_eval::QaData::read over a data directory
    # whose store holds img0..img2 (`_data/regions.tsv`); the case is copied in as the VQA
    # train split, so the message names `vqa/train.json`.
    support("json/refs/_data/regions.tsv", b"".join(good_lines()))
    support("json/refs/_data/vocab.txt",
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", "it", "red",
                       "what", "color", "?"]) + "\n")
    support("json/refs/_data/vqa/trainval_ans2label.json", js({"yes": 0, "no": 1}))
    support("json/refs/_data/vqa/trainval_label2ans.json", js(["yes", "no"]))
    support("json/refs/_data/vqa/minival.json", js([vqa_q(5, "img1", "is it red?")]))
    support("json/refs/_data/vqa/test.json", js([vqa_q(6, "img2", "is it red?")]))
    write("json/refs/unknown_img_id.json",
          js([vqa_q(1, "img0", "is it red?"), vqa_q(2, "img9", "what color?")]),
          ["vqa/train.json", "record 1", "img_id", "\"img9\"", "no feature store"])

    # COCO captions: msp_text::read_coco_captions.
    coco_img = [{"id": 9, "file_name": "COCO_val2014_000000000009.jpg"}]
    write("json/coco/unknown_image_id.json",
          js({"images": coco_img, "annotations": [
              {"image_id": 9, "id": 1, "caption": "a plate"},
              {"image_id": 7, "id": 2, "caption": "a dog"}]}),
          ["unknown_image_id.json", "record 1", "annotations.image_id", "image 7"])
    write("json/coco/empty_caption.json",
          js({"images": coco_img, "annotations": [{"image_id": 9, "id": 1, "caption": ""}]}),
          ["empty_caption.json", "record 0", "annotations.caption", "empty caption"])
    write("json/coco/wrong_shape.json", js({"images": coco_img}),
          ["wrong_shape.json", "missing field `annotations`"])
    write("json/coco/non_utf8.json",
          b'{"images": [],\n\n "annotations": [{"image_id": 9, "id": 1, "caption": "caf\xe9"}]}',
          ["non_utf8.json", "line 3", "UTF-8"])
    write("json/coco/invalid.json", '{"images": [', ["invalid.json", "invalid JSON"])

    # LXMERT pre-training JSON: msp_text::read_lxmert_pretrain.
    write("json/lxmert/empty_sentence.json",
          js([{"img_id": "img0", "sentf": {"mscoco": ["a cat", " "]}, "labelf": {}}]),
          ["empty_sentence.json", "record 0", "sentf.mscoco[1]", "empty sentence"])
    write("json/lxmert/empty_img_id.json",
          js([{"img_id": "", "sentf": {"mscoco": ["a cat"]}}]),
          ["empty_img_id.json", "record 0", "`img_id`", "empty"])
    write("json/lxmert/labels_mismatch.json",
          js([{"img_id": "img0", "sentf": {"vqa": ["q1", "q2"]}, "labelf": {"vqa": [{"a": 1}]}}]),
          ["labels_mismatch.json", "labelf.vqa", "1 labels for 2 sentences"])

    # Visual Genome region descriptions: msp_text::for_each_vg_image (streamed).
    reg = {"region_id": 1, "image_id": 5, "phrase": "a red ball", "x": 1, "y": 2,
           "width": 3, "height": 4}
    write("json/vg/empty_phrase.json",
          js([{"id": 5, "regions": [reg]}, {"id": 6, "regions": [reg, dict(reg, phrase="")]}]),
          ["empty_phrase.json", "record 1", "regions[1].phrase", "empty phrase"])
    write("json/vg/truncated.json", js([{"id": 5, "regions": [reg]}])[:-30],
          ["truncated.json", "EOF"])
    write("json/vg/wrong_shape.json", js({"id": 5, "regions": []}),
          ["wrong_shape.json", "invalid type: map"])

    # Flickr30k retrieval: msp_text::read_flickr30k.
    write("json/flickr30k/empty_sentence.json",
          js([{"img_path": "1.jpg", "sentences": ["a dog", "", "a cat"]}]),
          ["empty_sentence.json", "record 0", "sentences[1]", "empty"])
    write("json/flickr30k/no_sentences.json",
          js([{"img_path": "1.jpg", "sentences": ["a"]}, {"img_path": "2.jpg", "sentences": []}]),
          ["no_sentences.json", "record 1", "`sentences`", "no sentences"])


# ---------------------------------------------------------------- vocabularies (SPEC §2.3)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocab_cases():
    words = ["a", "cat", "dog", "##s"]
    for tok in ["[CLS]", "[SEP]", "[MASK]"]:
        name = "no_" + tok.strip("[]").lower()
        write("vocab/%s.txt" % name, "\n".join([t for t in SPECIAL if t != tok] + words) + "\n",
              ["%s.txt" % name, tok])
    write("vocab/empty.txt", "", ["empty.txt", "empty vocabulary"])
    write("vocab/non_utf8.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncaf\xe9\n",
          ["non_utf8.txt", "line 6", "UTF-8"])
    # Object / attribute label vocabularies: msp_text::LabelVocab::read.
    write("vocab/labels/empty.txt", "\n\n", ["empty.txt", "empty label vocabulary"])
    write("vocab/labels/blank_line.txt", "cat\n\ndog\n",
          ["blank_line.txt", "record 1", "empty label on line 2"])
    write("vocab/labels/non_utf8.txt", b"cat\ndog\ncaf\xe9\n",
          ["non_utf8.txt", "line 3", "UTF-8"])


# ------------------------------------------------------------------ checkpoints (SPEC §4)

def read_safetensors(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    meta = header.pop("__metadata__", None)
    data = b[8 + n:]
    out = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        s, e = info["data_offsets"]
        out.append((name, info["dtype"], info["shape"], data[s:e]))
    return out, meta


def checkpoint_cases():
    fixtures = os.path.join(ROOT, "crates", "model", "tests", "data")
    weights, _ = read_safetensors(os.path.join(fixtures, "hf0_weights.safetensors"))
    # The backbone only (what `model forward` loads); heads would be extra tensors.
    weights = [t for t in weights if t[0].startswith("lxmert.")]
    io, _ = read_safetensors(os.path.join(fixtures, "hf0_io.safetensors"))
    inputs = [t for t in io if t[0] in ("input_ids", "attention_mask", "token_type_ids",
                                        "visual_feats", "visual_pos")]
    shutil.copyfile(os.path.join(fixtures, "hf0_config.json"),
                    path("checkpoint", "_config.json"))
    support("checkpoint/_inputs.safetensors", safetensors(inputs))
    support("checkpoint/_good.safetensors", safetensors(weights))

    missing = "lxmert.encoder.x_layers.1.visn_output.dense.weight"
    write("checkpoint/missing_tensor.safetensors",
          safetensors([t for t in weights if t[0] != missing]),
          ["missing_tensor.safetensors", "1 missing", missing])
    shaped = "lxmert.encoder.visn_fc.visn_fc.weight"
    out = []
    for name, dtype, shape, raw in weights:
        if name == shaped:
            shape = [shape[0], shape[1] - 1]
            raw = raw[: 4 * shape[0] * shape[1]]
        out.append((name, dtype, shape, raw))
    write("checkpoint/wrong_shape.safetensors", safetensors(out),
          ["wrong_shape.safetensors", "shape", shaped, "[16, 10] vs file [16, 9]"])
    typed = "lxmert.embeddings.LayerNorm.weight"
    out = []
    for name, dtype, shape, raw in weights:
        if name == typed:
            vals = struct.unpack("<%df" % (len(raw) // 4), raw)
            dtype, raw = "I64", pack("q", [int(v) for v in vals])
        out.append((name, dtype, shape, raw))
    write("checkpoint/wrong_dtype.safetensors", safetensors(out),
          ["wrong_dtype.safetensors", typed, "dtype", "I64"])
    good = safetensors(weights)
    write("checkpoint/truncated.safetensors", good[: len(good) // 2],
          ["truncated.safetensors"])
    write("checkpoint/truncated_header.safetensors", good[:100],
          ["truncated_header.safetensors"])
    write("checkpoint/not_safetensors.safetensors", "this is not a checkpoint\n" * 4,
          ["not_safetensors.safetensors"])
    write("checkpoint/empty.safetensors", b"", ["empty.safetensors"])


# ------------------------------------------------------------------------ configurations

PRESET = """[model]
hidden_size = 32
num_attention_heads = 4
intermediate_size = 64
x_layers = 1
max_position_embeddings = 40

[pretrain]
lr = 1e-4
warmup = 0.1
optimizer = "bertadam"
grad_clip = 1.0
accumulation = 1
max_len = 16
token_max_len = 32
phrase_max_words = 12
checkpoint_every = 1
log_every = 1
workers = 1
token = { epochs = 1, batch_size = 8 }
phrase = { epochs = 1, batch_size = 8 }
sentence = { epochs = 1, batch_size = 8 }
"""


def config_cases():
    # Presets: `cargo xtask pretrain --preset <case> --presets-dir config/preset`.
    write("config/preset/unknown_key.toml", PRESET.replace("x_layers = 1", "x_layers = 1\nlayers = 3"),
          ["unknown_key.toml", "[model]", "unknown field `layers`"])
    write("config/preset/unknown_stage_key.toml",
          PRESET.replace("token = { epochs = 1,", "token = { epoch = 1,"),
          ["unknown_stage_key.toml", "[pretrain]", "unknown field `epoch`"])
    write("config/preset/heads_not_dividing.toml", PRESET.replace("hidden_size = 32", "hidden_size = 30"),
          ["heads_not_dividing.toml", "num_attention_heads", "not divisible"])
    write("config/preset/negative_lr.toml", PRESET.replace("lr = 1e-4", "lr = -1.0"),
          ["negative_lr.toml", "pretrain.lr", "positive"])
    write("config/preset/zero_batch.toml",
          PRESET.replace("sentence = { epochs = 1, batch_size = 8 }",
                         "sentence = { epochs = 1, batch_size = 0 }"),
          ["zero_batch.toml", "sentence", "batch_size"])
    write("config/preset/bad_dropout.toml",
          PRESET.replace("max_position_embeddings = 40", "max_position_embeddings = 40\ndropout = 1.5"),
          ["bad_dropout.toml", "dropout", "1.5"])
    write("config/preset/wrong_type.toml", PRESET.replace("x_layers = 1", 'x_layers = "one"'),
          ["wrong_type.toml", "x_layers", "invalid type"])
    write("config/preset/invalid_toml.toml", PRESET.replace("[pretrain]", "[pretrain"),
          ["invalid_toml.toml", "line 8"])
    write("config/preset/no_model_table.toml", PRESET.split("[pretrain]")[1],
          ["no_model_table.toml", "no [model] table"])
    # Model config.json: `cargo xtask model params --config <case>`.
    cfg = json.load(open(os.path.join(ROOT, "crates", "model", "tests", "data", "hf0_config.json")))
    write("config/model/heads_not_dividing.json", js(dict(cfg, hidden_size=18)),
          ["heads_not_dividing.json", "num_attention_heads", "not divisible"])
    write("config/model/bad_dropout.json", js(dict(cfg, hidden_dropout_prob=1.0)),
          ["bad_dropout.json", "hidden_dropout_prob", "1"])
    write("config/model/zero_vocab.json", js(dict(cfg, vocab_size=0)),
          ["zero_vocab.json", "vocab_size", "must be > 0"])
    write("config/model/wrong_type.json", js(dict(cfg, hidden_size="big")),
          ["wrong_type.json", "invalid type: string \"big\""])
    write("config/model/invalid.json", '{"hidden_size": 16,\n "x_layers": }',
          ["invalid.json", "line 2"])
    write("config/model/unsupported_activation.json", js(dict(cfg, hidden_act="relu")),
          ["unsupported_activation.json", "hidden_act", "relu"])


def main():
    for kind in KINDS:
        d = os.path.join(HERE, kind)
        if os.path.isdir(d):
            # Keep the fuzzers' regression cases (`fuzz-*`); rewrite everything else.
            for root, dirs, files in os.walk(d, topdown=False):
                for f in files:
                    if not f.startswith("fuzz-"):
                        os.remove(os.path.join(root, f))
                for sub in dirs:
                    p = os.path.join(root, sub)
                    if not os.listdir(p):
                        os.rmdir(p)
    tsv_cases()
    store_cases()
    json_cases()
    vocab_cases()
    checkpoint_cases()
    config_cases()


if __name__ == "__main__":
    main()
