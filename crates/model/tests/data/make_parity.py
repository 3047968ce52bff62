"""Makes the committed parity fixtures of msp-model (run once; tests never run Python).

    python -m venv .venv-fixture && .venv-fixture/bin/pip install torch transformers safetensors
    .venv-fixture/bin/python crates/model/tests/data/make_parity.py

Writes, next to this script:
  hf_config.json            HF LxmertConfig (l=1, x=2, r=1), read by the Rust config loader
  hf_weights.safetensors    random HF LxmertForPreTraining state dict (HF names, tied decoder key kept)
  hf_io.safetensors         inputs (HF names), outputs of the backbone and every pre-training head,
                            the fixed loss weights `r.*` and the gradients `grad.<param>` of
                            loss = sum_k sum(out_k * r_k) for every parameter
  hf0_*                     the same for l_layers = r_layers = 0 (outputs only, no visual mask)
  ls_weights.safetensors    LXMERT-S weights in the original naming (`bert.` prefix,
                            `bert.word_embeddings` [vocab, feat] table, `bert.pooler_f`,
                            `cls.seq_relationship_new`, `cls.LayerNorm`)
  ls_io.safetensors         inputs incl. word-level `position_ids`, outputs, `r.*`, `grad.<our name>`

The LXMERT-S reference is a few lines on top of HF's modules following
reference/lxmert-facts.md §7 (word positions, visual [CLS] with box (0,0,1,1), product of two
tanh poolers, visual heads gated by the pooled vector on regions 1.., topic head = LN(GELU(Linear))).
"""
import os

import torch
from safetensors.torch import save_file
from transformers import LxmertConfig, LxmertForPreTraining
from transformers.models.lxmert.modeling_lxmert import LxmertPooler

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)

B, L, N = 2, 6, 5
CLS = 2


def config(l, r):
    return LxmertConfig(
        vocab_size=30, hidden_size=16, num_attention_heads=4, intermediate_size=24,
        l_layers=l, x_layers=2, r_layers=r, visual_feat_dim=10, visual_pos_dim=4,
        max_position_embeddings=12, type_vocab_size=2, num_qa_labels=5,
        num_object_labels=7, num_attr_labels=6, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def randomize(model):
    # Non-trivial values everywhere (LayerNorm weights and biases too), so a wrong mapping shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if "LayerNorm" in name and name.endswith("weight") else 0.0))


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([[CLS, 5, 9, 13, 7, 3], [CLS, 11, 4, 3, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    tt = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.int64)
    feats = torch.rand(B, N, 10, generator=g)
    xy = torch.rand(B, N, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.4], dim=-1)
    vmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.int64)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, visual_feats=feats, visual_pos=boxes, visual_attention_mask=vmask)


def loss_and_grads(model, outs, named_params, rename=lambda n: n):
    g = torch.Generator().manual_seed(7)
    rs = {k: torch.randn(v.shape, generator=g) for k, v in outs.items()}
    loss = sum((v * rs[k]).sum() for k, v in outs.items())
    model.zero_grad()
    loss.backward()
    grads = {}
    for n, p in named_params:
        grads["grad." + rename(n)] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
    return {"r." + k: v for k, v in rs.items()}, grads


def head_outputs(model, lang, vis, pooled):
    mlm, itm = model.cls(lang, pooled)
    vd = model.obj_predict_head(vis)
    return dict(mlm_logits=mlm, itm_logits=itm, obj_logits=vd["obj"], attr_logits=vd["attr"], feat=vd["feat"], answer_logits=model.answer_head(pooled))


def hf_case(prefix, l, r, with_vmask, with_grads):
    cfg = config(l, r)
    model = LxmertForPreTraining(cfg).eval()
    randomize(model)
    model.cls.predictions.decoder.weight = model.lxmert.embeddings.word_embeddings.weight
    x = inputs()
    kw = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"], token_type_ids=x["token_type_ids"], visual_feats=x["visual_feats"], visual_pos=x["visual_pos"])
    if with_vmask:
        kw["visual_attention_mask"] = x["visual_attention_mask"]
    o = model.lxmert(**kw)
    outs = dict(language_output=o.language_output, vision_output=o.vision_output, pooled_output=o.pooled_output)
    outs.update(head_outputs(model, o.language_output, o.vision_output, o.pooled_output))
    tensors = {k: v.contiguous() for k, v in kw.items()}
    tensors.update({k: v.detach().contiguous() for k, v in outs.items()})
    if with_grads:
        rs, grads = loss_and_grads(model, outs, model.named_parameters())
        tensors.update(rs)
        tensors.update(grads)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(HERE, f"{prefix}_weights.safetensors"))
    save_file(tensors, os.path.join(HERE, f"{prefix}_io.safetensors"))
    cfg.to_json_file(os.path.join(HERE, f"{prefix}_config.json"))


class LxmertSRef(torch.nn.Module):
    """LXMERT-S (reference §7) on top of HF modules."""

    def __init__(self, cfg):
        super().__init__()
        self.hf = LxmertForPreTraining(cfg)
        self.pooler_f = LxmertPooler(cfg)
        self.visual_cls = torch.nn.Parameter(torch.zeros(cfg.visual_feat_dim))
        self.topic_dense = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.topic_ln = torch.nn.LayerNorm(cfg.vocab_size, eps=1e-12)

    def forward(self, input_ids, attention_mask, token_type_ids, position_ids, visual_feats, visual_pos):
        emb = self.hf.lxmert.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids) + emb.token_type_embeddings(token_type_ids)
        x = emb.LayerNorm(x)
        b = input_ids.shape[0]
        feats = torch.cat([self.visual_cls.view(1, 1, -1).expand(b, 1, -1), visual_feats], dim=1)
        unit = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 4).expand(b, 1, 4)
        boxes = torch.cat([unit, visual_pos], dim=1)
        ext = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        enc = self.hf.lxmert.encoder(x, ext, feats, boxes, None)
        vis, lang = enc[0][0][-1], enc[1][0][-1]
        pooled = self.hf.lxmert.pooler(lang) * self.pooler_f(vis)
        mlm, itm = self.hf.cls(lang, pooled)
        head = self.hf.obj_predict_head
        t = head.transform(vis[:, 1:]) * pooled.unsqueeze(1)
        topic = self.topic_ln(torch.nn.functional.gelu(self.topic_dense(pooled)))
        return dict(
            language_output=lang, vision_output=vis, pooled_output=pooled, mlm_logits=mlm, itm_logits=itm,
            obj_logits=head.decoder_dict["obj"](t), attr_logits=head.decoder_dict["attr"](t), feat=head.decoder_dict["feat"](t),
            topic_logits=topic, answer_logits=self.hf.answer_head(pooled),
        )


def our_name(n):
    if n.startswith("hf."):
        return n[3:]
    return {
        "pooler_f.dense.weight": "lxmert.pooler_f.dense.weight",
        "pooler_f.dense.bias": "lxmert.pooler_f.dense.bias",
        "visual_cls": "lxmert.visual_cls.weight",
        "topic_dense.weight": "cls.seq_relationship_new.weight",
        "topic_dense.bias": "cls.seq_relationship_new.bias",
        "topic_ln.weight": "cls.LayerNorm.weight",
        "topic_ln.bias": "cls.LayerNorm.bias",
    }[n]


def ls_case():
    cfg = config(0, 0)
    model = LxmertSRef(cfg).eval()
    randomize(model)
    x = inputs()
    # Word-level positions: [CLS]/[SEP] 1, words from 2, '##' pieces and punctuation share, pad 0.
    pos = torch.tensor([[1, 2, 3, 3, 4, 1], [1, 2, 2, 1, 0, 0]], dtype=torch.int64)
    kw = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"], token_type_ids=x["token_type_ids"], position_ids=pos, visual_feats=x["visual_feats"], visual_pos=x["visual_pos"])
    outs = model(**kw)
    tensors = {k: v.contiguous() for k, v in kw.items()}
    tensors.update({k: v.detach().contiguous() for k, v in outs.items()})
    rs, grads = loss_and_grads(model, outs, model.named_parameters(), our_name)
    tensors.update(rs)
    tensors.update(grads)
    # Original LXMERT-S naming: `bert.` prefix, visual [CLS] = row CLS of a [vocab, feat] table.
    sd = {}
    for n, p in model.named_parameters():
        name = our_name(n)
        if name == "lxmert.visual_cls.weight":
            table = torch.randn(cfg.vocab_size, cfg.visual_feat_dim)
            table[CLS] = p.detach()
            sd["bert.word_embeddings.weight"] = table
            continue
        if name.startswith("lxmert."):
            name = "bert." + name[len("lxmert."):]
        sd[name] = p.detach().clone().contiguous()
    save_file(sd, os.path.join(HERE, "ls_weights.safetensors"))
    save_file(tensors, os.path.join(HERE, "ls_io.safetensors"))


hf_case("hf", 1, 1, True, True)
hf_case("hf0", 0, 0, False, False)
ls_case()
print("written to", HERE)
