"""Independent reference for msp-features (run once; the outputs are committed).

Writes, next to this script:
  fixture.tsv          LXMERT feature TSV written the way the public extractor does it
                       (lxmert/data/mscoco_imgfeat/extract_coco_image.py: csv.DictWriter,
                       tab delimiter, FIELDNAMES order, base64.b64encode(arr.tobytes()))
  fixture_expected.json  decoded values, pixel and normalised boxes, f16-rounded features,
                       mean-pooled features and the exact 2-NN pool (self excluded)
  hard_negative.pkl    ViLBERT-style pool (script/generate_pool.py): float64 array [N, N]
                       (pymp.shared.array's default dtype), self first, pickled with the
                       default protocol as `cPickle.dump(dict, f)` does
  hard_negative_p2_int.pkl  same content, int64 array, string ids, pickle protocol 2
  hard_negative_p0.pkl / hard_negative_p5.pkl  float64 pool with protocols 0 and 5
                       (text protocol; out-of-band-capable protocol 5 with _frombuffer)

Usage: python3 make_fixture.py   (needs numpy only)
"""
import base64
import csv
import json
import os
import pickle
import sys

import numpy as np

FIELDNAMES = ["img_id", "img_h", "img_w", "objects_id", "objects_conf",
              "attrs_id", "attrs_conf", "num_boxes", "boxes", "features"]
D = 8
HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(20261128)


def make_image(img_id, h, w, n):
    x1 = rng.uniform(0, w / 2, n).astype(np.float32)
    y1 = rng.uniform(0, h / 2, n).astype(np.float32)
    x2 = (x1 + rng.uniform(1, w / 2, n)).astype(np.float32)
    y2 = (y1 + rng.uniform(1, h / 2, n)).astype(np.float32)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    feats = rng.gamma(1.0, 2.0, size=(n, D)).astype(np.float32)
    return {
        "img_id": img_id,
        "img_h": h,
        "img_w": w,
        "objects_id": rng.randint(0, 1600, n).astype(np.int64),
        "objects_conf": rng.uniform(0.2, 1.0, n).astype(np.float32),
        "attrs_id": rng.randint(0, 400, n).astype(np.int64),
        "attrs_conf": rng.uniform(0.0, 1.0, n).astype(np.float32),
        "num_boxes": n,
        "boxes": boxes,
        "features": feats,
    }


images = [
    make_image("COCO_val2014_000000000042", 480, 640, 3),
    make_image("2375429", 500, 333, 5),
    make_image("train-10171-0-img0", 375, 500, 2),
    make_image("n_differs", 427, 640, 4),
]
# Edge cases for normalisation: a box touching the right/bottom border exactly, and one
# a hair outside (within LXMERT's 1e-5 tolerance, so it is clamped to 1).
images[1]["boxes"][0] = np.array([0.0, 0.0, 333.0, 500.0], dtype=np.float32)
images[1]["boxes"][1, 2] = np.float32(333.0 * (1 + 4e-6))

with open(os.path.join(HERE, "fixture.tsv"), "w", newline="") as f:
    writer = csv.DictWriter(f, FIELDNAMES, delimiter="\t")
    for im in images:
        row = dict(im)
        for key in ["objects_id", "objects_conf", "attrs_id", "attrs_conf", "boxes", "features"]:
            row[key] = base64.b64encode(im[key].tobytes()).decode("utf-8")
        writer.writerow(row)


def f32list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float32).ravel()]


expected = {"feature_dim": D, "images": []}
pooled = []
for im in images:
    b = im["boxes"].copy()
    b[:, (0, 2)] /= im["img_w"]  # as lxmert_data.py / vqa_data.py do, in float32
    b[:, (1, 3)] /= im["img_h"]
    np.testing.assert_array_less(-b, 1 + 1e-5)
    np.testing.assert_array_less(b, 1 + 1e-5)
    b = np.clip(b, 0.0, 1.0)
    pooled.append(im["features"].astype(np.float64).sum(0) / im["num_boxes"])
    expected["images"].append({
        "img_id": im["img_id"],
        "img_h": im["img_h"],
        "img_w": im["img_w"],
        "num_boxes": im["num_boxes"],
        "objects_id": [int(v) for v in im["objects_id"]],
        "objects_conf": f32list(im["objects_conf"]),
        "attrs_id": [int(v) for v in im["attrs_id"]],
        "attrs_conf": f32list(im["attrs_conf"]),
        "boxes_pixels": [f32list(r) for r in im["boxes"]],
        "boxes": [f32list(r) for r in b],
        "features": [f32list(r) for r in im["features"]],
        "features_f16": [f32list(r) for r in im["features"].astype(np.float16).astype(np.float32)],
    })
pooled = np.stack(pooled)
dist = np.sqrt(((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1))
order = np.argsort(dist, axis=1, kind="stable")  # self (distance 0) first
expected["mean_pooled"] = [[float(v) for v in r] for r in pooled]
expected["pool_top2"] = [[int(j) for j in order[i] if j != i][:2] for i in range(len(images))]
with open(os.path.join(HERE, "fixture_expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")

# ViLBERT's hard_negative.pkl: train_hard_pool [N, k] (pymp shared array: float64), rows
# index train_image_list; the image itself is neighbour 0.
n = len(images)
pool = np.zeros((n, n))
for i in range(n):
    pool[i] = order[i]
image_list = [42, 2375429, 10171, 7]
with open(os.path.join(HERE, "hard_negative.pkl"), "wb") as f:
    pickle.dump({"train_hard_pool": pool, "train_image_list": image_list}, f)
with open(os.path.join(HERE, "hard_negative_p2_int.pkl"), "wb") as f:
    pickle.dump({"train_hard_pool": pool.astype(np.int64),
                 "train_image_list": [str(i) for i in image_list]}, f, protocol=2)
for proto in (0, 5):
    with open(os.path.join(HERE, "hard_negative_p%d.pkl" % proto), "wb") as f:
        pickle.dump({"train_hard_pool": pool, "train_image_list": image_list}, f, protocol=proto)
print("wrote fixtures with numpy", np.__version__, "python", sys.version.split()[0])
