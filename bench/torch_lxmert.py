"""PyTorch reference throughput for `cargo xtask bench model` (optional; needs torch + transformers).

Measures HF `LxmertForPreTraining` with the configuration of the Rust benchmark's
`--config paper --variant lxmert`: l_layers 0, x_layers 5, r_layers 0, hidden 768, 12 heads,
FFN 3072, vocab 30522, 9500 QA answers, 20 tokens + 36 regions, CPU f32, the same heads
(MLM, ITM, obj/attr/feat, QA) through HF's own loss path, dropout on in training, plain SGD.
One warm-up iteration, then `--iters` timed ones. Prints JSON.

    .venv-fixture/bin/python bench/torch_lxmert.py --batch 32 --iters 3
"""
import argparse
import json
import resource
import time

import torch
from transformers import LxmertConfig, LxmertForPreTraining


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--regions", type=int, default=36)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LxmertConfig(l_layers=0, x_layers=5, r_layers=0)
    model = LxmertForPreTraining(cfg)
    b, l, n = args.batch, args.text_len, args.regions
    ids = torch.randint(1, cfg.vocab_size, (b, l))
    ids[:, 0] = 101
    labels = torch.full((b, l), -100, dtype=torch.long)
    mask = torch.rand(b, l) < 0.15
    mask[:, 1] = True
    mask[:, 0] = False
    labels[mask] = ids[mask]
    feats = torch.rand(b, n, cfg.visual_feat_dim)
    xy = torch.rand(b, n, 2) * 0.5
    boxes = torch.cat([xy, xy + 0.5], -1)
    kw = dict(
        input_ids=ids, visual_feats=feats, visual_pos=boxes, attention_mask=torch.ones(b, l, dtype=torch.long),
        labels=labels, matched_label=torch.randint(0, 2, (b,)), ans=torch.randint(0, cfg.num_qa_labels, (b,)),
        obj_labels={
            "obj": (torch.randint(0, cfg.num_object_labels, (b, n)), torch.ones(b, n)),
            "attr": (torch.randint(0, cfg.num_attr_labels, (b, n)), torch.ones(b, n)),
            "feat": (feats, torch.ones(b, n)),
        },
    )
    model.eval()
    with torch.no_grad():
        model(**kw).loss.item()
        t = time.perf_counter()
        for _ in range(args.iters):
            model(**kw).loss.item()
        fwd = (time.perf_counter() - t) / args.iters
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    tf = tb = tu = 0.0
    for i in range(args.iters + 1):
        a = time.perf_counter()
        loss = model(**kw).loss
        loss.item()
        c = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        d = time.perf_counter()
        opt.step()
        e = time.perf_counter()
        if i > 0:
            tf, tb, tu = tf + c - a, tb + d - c, tu + e - d
    step = (tf + tb + tu) / args.iters
    print(json.dumps({
        "impl": f"torch {torch.__version__} / transformers LxmertForPreTraining",
        "threads": torch.get_num_threads(), "batch": b, "text_len": l, "regions": n, "iters": args.iters,
        "forward_samples_per_s": b / fwd, "train_samples_per_s": b / step, "train_step_s": step,
        "train_forward_s": tf / args.iters, "train_backward_s": tb / args.iters, "train_update_s": tu / args.iters,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params_total": sum(p.numel() for p in model.parameters()),
    }, indent=2))


if __name__ == "__main__":
    main()
