"""PyTorch reference for `cargo xtask bench train --config paper` (optional; needs torch + transformers).

Measures HF `LxmertForPreTraining` with the configuration of the Rust benchmark's paper
config: l_layers 0, x_layers 5, r_layers 0, hidden 768, 12 heads, FFN 3072, vocab 30522,
9500 QA answers, 20 tokens + 36 regions, CPU f32, the same heads (MLM, ITM, obj/attr/feat,
QA) through HF's own loss path, dropout on, and an Adam-family update (torch.optim.AdamW,
foreach; the Rust side uses LXMERT's BertAdam, the same amount of work). `--warmup` untimed
steps, then `--steps` timed ones; prints JSON with the median and spread, like the Rust side.
`--model-config config.json` takes other sizes (HF field names, as `bench train
--model-config` reads them; `cargo xtask bench compare --config tiny` writes one); a config
with `num_qa_labels` 0 has no QA head, as on the Rust side. `--device cuda:0` runs on a GPU,
`--bf16` under `torch.autocast(dtype=torch.bfloat16)` (f32 weights, bf16 products: what the Rust
side's `--precision bf16` does), `--flush-denormal` with `torch.set_flush_denormal(True)`
(denormal floats read and written as zero, as the Rust side runs unless `--keep-denormals`).
See bench/README.md.

    .venv-bench/bin/python bench/torch_lxmert.py --batch 32 --steps 5
    python bench/torch_lxmert.py --device cuda:0 --bf16
"""
import argparse
import contextlib
import json
import resource
import statistics
import time

import torch
from transformers import LxmertConfig, LxmertForPreTraining


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--model-config", help="config.json with other model sizes (HF field names)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (f32 weights)")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True): denormal floats read and written as zero")
    args = ap.parse_args()
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("torch.set_flush_denormal(True): not supported on this CPU")
    dev = torch.device(args.device)
    torch.manual_seed(0)
    sizes, cls_id = dict(l_layers=0, x_layers=5, r_layers=0), 101
    if args.model_config:
        with open(args.model_config) as f:
            given = json.load(f)
        keys = ("vocab_size hidden_size num_attention_heads intermediate_size l_layers x_layers r_layers "
                "visual_feat_dim visual_pos_dim max_position_embeddings type_vocab_size hidden_dropout_prob "
                "attention_probs_dropout_prob initializer_range num_qa_labels num_object_labels "
                "num_attr_labels visual_obj_loss visual_attr_loss visual_feat_loss").split()
        sizes.update({k: given[k] for k in keys if k in given})
        cls_id = given.get("cls_token_id", cls_id)
        if sizes.get("num_qa_labels") == 0:
            sizes.update(task_qa=False, num_qa_labels=1)
    cfg = LxmertConfig(**sizes)
    model = LxmertForPreTraining(cfg).to(dev)
    b, l, n = args.batch, args.text_len, args.regions
    ids = torch.randint(1, cfg.vocab_size, (b, l))
    ids[:, 0] = cls_id
    labels = torch.full((b, l), -100, dtype=torch.long)
    mask = torch.rand(b, l) < 0.15
    mask[:, 1] = True
    mask[:, 0] = False
    labels[mask] = ids[mask]
    feats = torch.rand(b, n, cfg.visual_feat_dim)
    # Feature regression at ≈ 15% of the regions, at least one per example (LXMERT's mask).
    feat_mask = torch.rand(b, n) < 0.15
    feat_mask[torch.arange(b), torch.randint(0, n, (b,))] = True
    xy = torch.rand(b, n, 2) * 0.5
    boxes = torch.cat([xy, xy + 0.5], -1)
    kw = dict(
        input_ids=ids, visual_feats=feats, visual_pos=boxes, attention_mask=torch.ones(b, l, dtype=torch.long),
        labels=labels, matched_label=torch.randint(0, 2, (b,)),
        obj_labels={
            "obj": (torch.randint(0, cfg.num_object_labels, (b, n)), torch.ones(b, n)),
            "attr": (torch.randint(0, cfg.num_attr_labels, (b, n)), torch.ones(b, n)),
            "feat": (feats, feat_mask.float()),
        },
    )
    if cfg.task_qa:
        kw["ans"] = torch.randint(0, cfg.num_qa_labels, (b,))
    kw = {k: to_device(v, dev) for k, v in kw.items()}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-6, weight_decay=0.01)
    autocast = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    for i in range(args.warmup + max(args.steps, 1)):
        sync()
        a = time.perf_counter()
        with autocast:
            loss = model(**kw).loss
        loss.item()
        c = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        d = time.perf_counter()
        opt.step()
        sync()
        e = time.perf_counter()
        if i >= args.warmup:
            rows.append((c - a, d - c, e - d))
    steps = sorted(sum(r) for r in rows)
    med = statistics.median
    print(json.dumps({
        "impl": f"torch {torch.__version__} / transformers LxmertForPreTraining",
        "device": str(dev), "precision": "bf16" if args.bf16 else "f32",
        "flush_denormal": args.flush_denormal,
        "threads": torch.get_num_threads(), "batch": b, "text_len": l, "regions": n, "steps": len(rows),
        "samples_per_s": {"median": med([b / s for s in steps]), "min": b / steps[-1], "max": b / steps[0]},
        "step_s": {"median": med(steps), "min": steps[0], "max": steps[-1]},
        "split": {"forward_s": med([r[0] for r in rows]), "backward_s": med([r[1] for r in rows]),
                  "optimizer_s": med([r[2] for r in rows]), "data_s": 0.0},
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "params": sum(p.numel() for p in model.parameters()),
    }, indent=2))


def peak_rss_bytes():
    """This process's peak resident memory: VmHWM, as the Rust side reads it. (ru_maxrss is
    not used where /proc is: Linux carries it over exec from the parent, so a child of a
    large `cargo xtask bench compare` reported the parent's peak.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def to_device(v, dev):
    """`v` (a tensor, or a dict / tuple of them) on `dev`."""
    if isinstance(v, dict):
        return {k: to_device(x, dev) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(to_device(x, dev) for x in v)
    return v.to(dev)


if __name__ == "__main__":
    main()
