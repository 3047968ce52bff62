//! One training step of the whole model with every head gives every variable a finite,
//! non-zero gradient (catches ops without a backward, which silently stop learning).

use candle_core::{DType, Device, Tensor};
use msp_model::{
    bce_with_logits, cross_entropy, pretraining_loss, AnswerHead, Config, Lxmert, MatchHead,
    Nlvr2Head, SyntheticBatch, Variant,
};

/// The loss of a training step through every head: pre-training (MLM, ITM, obj/attr/feat,
/// QA, topic for LXMERT-S, with dropout on) and the fine-tuning heads.
fn all_heads_loss(model: &Lxmert, cfg: &Config, dev: &Device) -> Tensor {
    // Fine-tuning heads, added to the same variable store (the same variables each call).
    let vb = model.var_builder();
    let vqa = AnswerHead::load(vb.pp("vqa_head"), cfg, 4).unwrap();
    let nlvr2 = Nlvr2Head::load(vb.pp("nlvr2_head"), cfg).unwrap();
    let retrieval = MatchHead::load(vb.pp("seq_relationship_new_ft"), cfg).unwrap();

    let batch = SyntheticBatch::new(cfg, 4, 7, 5, 5, dev).unwrap();
    let mut loss = pretraining_loss(model, &batch, true).unwrap();
    let out = model.model().forward_t(&batch.inputs(), true).unwrap();
    let p = &out.pooled_output;
    let soft = Tensor::new(
        &[
            [1f32, 0., 0.3, 0.],
            [0., 1., 0., 0.],
            [0., 0., 0., 0.9],
            [0.6, 0., 0., 1.],
        ],
        dev,
    )
    .unwrap();
    loss = (loss + bce_with_logits(&vqa.forward(p).unwrap(), &soft).unwrap()).unwrap();
    let pair_labels = Tensor::new(&[1u32, 0], dev).unwrap();
    loss = (loss + cross_entropy(&nlvr2.forward(p).unwrap(), &pair_labels).unwrap()).unwrap();
    let match_labels = Tensor::new(&[1u32, 0, 0, 1], dev).unwrap();
    loss = (loss + cross_entropy(&retrieval.forward(p).unwrap(), &match_labels).unwrap()).unwrap();
    loss
}

fn all_heads_step(variant: Variant) {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Lxmert::new(&cfg, variant, 11, &dev).unwrap();
    let loss = all_heads_loss(&model, &cfg, &dev);
    let l: f32 = loss.to_dtype(DType::F32).unwrap().to_scalar().unwrap();
    assert!(l.is_finite());

    let grads = loss.backward().unwrap();
    let vars = model.named_vars();
    assert!(vars.iter().any(|(n, _)| n == "vqa_head.logit_fc.3.weight"));
    assert!(vars
        .iter()
        .any(|(n, _)| n == "nlvr2_head.logit_fc.0.weight"));
    for (name, var) in &vars {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("{variant}: {name} got no gradient"));
        // f32 master weights get f32 gradients, also with bf16 products.
        assert_eq!(g.dtype(), DType::F32, "{variant}: {name}");
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{variant}: {name} has a non-finite gradient"
        );
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{variant}: {name} has a zero gradient");
    }
    let expected = if variant == Variant::LxmertS { 16 } else { 0 };
    assert!(vars.len() > 100 + expected, "{}", vars.len());
}

#[test]
fn every_variable_gets_a_gradient_lxmert_s() {
    all_heads_step(Variant::LxmertS);
}

#[test]
fn every_variable_gets_a_gradient_lxmert() {
    all_heads_step(Variant::Lxmert);
}

/// The gradients the fused ops write into a `GradSink` (linear weights and biases, the
/// embedding tables; the cross-attention is used by both streams and the word table is also
/// the MLM decoder, so several uses add up) are those of candle's own backward.
fn sink_matches_backward(variant: Variant) {
    use msp_model::ops::GradSink;
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Lxmert::new(&cfg, variant, 11, &dev).unwrap();
    model.reseed_dropout(3);
    let plain = all_heads_loss(&model, &cfg, &dev).backward().unwrap();
    model.reseed_dropout(3);
    let sink = GradSink::new();
    let loss = sink.collect(|| all_heads_loss(&model, &cfg, &dev));
    let sunk = sink.backward(&loss).unwrap();
    for (name, var) in model.named_vars() {
        let (a, b) = (plain.get(&var), sunk.get(&var));
        let (Some(a), Some(b)) = (a, b) else {
            panic!("{variant}: {name}: gradient with the sink {b:?}, without {a:?}")
        };
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = a.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "{variant}: {name} differs by {diff} (scale {scale})"
        );
    }
}

#[test]
fn gradient_sink_matches_backward_lxmert_s() {
    sink_matches_backward(Variant::LxmertS);
}

#[test]
fn gradient_sink_matches_backward_lxmert() {
    sink_matches_backward(Variant::Lxmert);
}

#[test]
fn every_variable_gets_a_gradient_with_bf16_products() {
    use msp_model::ops::{with_precision, Precision};
    with_precision(Precision::Bf16, || all_heads_step(Variant::LxmertS));
}

#[test]
fn padding_rows_get_no_gradient_from_lookup() {
    let dev = Device::Cpu;
    let cfg = Config {
        num_qa_labels: 0,
        ..Config::tiny()
    };
    let model = Lxmert::new(&cfg, Variant::Lxmert, 1, &dev).unwrap();
    let ids = Tensor::new(&[[2u32, 5, 0]], &dev).unwrap();
    let feats = Tensor::ones((1, 3, cfg.visual_feat_dim), DType::F32, &dev).unwrap();
    let boxes = Tensor::ones((1, 3, 4), DType::F32, &dev).unwrap();
    let out = model
        .model()
        .forward_t(&msp_model::LxmertInputs::new(&ids, &feats, &boxes), false)
        .unwrap();
    let loss = out.language_output.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = model.named_vars();
    let get = |n: &str| {
        let v = &vars.iter().find(|(k, _)| k == n).unwrap().1;
        grads
            .get(v)
            .unwrap()
            .get(0)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(get("lxmert.embeddings.word_embeddings.weight"), 0.0);
    assert_eq!(get("lxmert.embeddings.position_embeddings.weight"), 0.0);
    assert_eq!(get("lxmert.embeddings.token_type_embeddings.weight"), 0.0);
}

/// The IFRS hook permutes the *embedded* regions. Nothing after the visual feature encoder
/// knows region order (no region positions; attention is permutation-equivariant), so the
/// permuted run must give the permuted vision output and the same text output: an
/// independent check that the permutation lands after the encoder and nowhere else.
#[test]
fn visual_permutation_permutes_the_vision_stream_only() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    for variant in [Variant::Lxmert, Variant::LxmertS] {
        let model = Lxmert::new(&cfg, variant, 5, &dev).unwrap();
        let batch = SyntheticBatch::new(&cfg, 2, 7, 6, 6, &dev).unwrap();
        let perm_rows = [[1u32, 2, 0, 3, 5, 4], [0, 1, 2, 5, 3, 4]];
        let perm = Tensor::new(&perm_rows, &dev).unwrap();
        let plain = model.model().forward_t(&batch.inputs(), false).unwrap();
        let shuffled = model
            .model()
            .forward_t(
                &msp_model::LxmertInputs {
                    visual_permutation: Some(&perm),
                    ..batch.inputs()
                },
                false,
            )
            .unwrap();
        let lang_a: Vec<Vec<Vec<f32>>> = plain.language_output.to_vec3().unwrap();
        let lang_b: Vec<Vec<Vec<f32>>> = shuffled.language_output.to_vec3().unwrap();
        let vis_a: Vec<Vec<Vec<f32>>> = plain.vision_output.to_vec3().unwrap();
        let vis_b: Vec<Vec<Vec<f32>>> = shuffled.vision_output.to_vec3().unwrap();
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 1e-5);
        let k = vis_a[0].len() - 6; // the visual [CLS] prefix of LXMERT-S
        for b in 0..2 {
            for t in 0..lang_a[b].len() {
                assert!(
                    close(&lang_a[b][t], &lang_b[b][t]),
                    "{variant:?} text {b},{t}"
                );
            }
            for j in 0..k {
                assert!(close(&vis_a[b][j], &vis_b[b][j]), "{variant:?} prefix");
            }
            for (i, &src) in perm_rows[b].iter().enumerate() {
                assert!(
                    close(&vis_b[b][k + i], &vis_a[b][k + src as usize]),
                    "{variant:?} region {b},{i}"
                );
            }
        }
        assert!(
            !close(&vis_a[0][k], &vis_b[0][k]),
            "the permutation had no effect"
        );
    }
}

#[test]
fn gate_visual_heads_off_feeds_the_decoders_the_ungated_transform() {
    let dev = Device::Cpu;
    let on = Config::tiny();
    let off = Config {
        gate_visual_heads: false,
        ..Config::tiny()
    };
    // Same seed, so both models have the same weights; the switch adds or removes none.
    let gated = Lxmert::new(&on, Variant::LxmertS, 5, &dev).unwrap();
    let plain = Lxmert::new(&off, Variant::LxmertS, 5, &dev).unwrap();
    assert_eq!(gated.named_vars().len(), plain.named_vars().len());
    let batch = SyntheticBatch::new(&on, 3, 6, 4, 3, &dev).unwrap();
    let out = gated.model().forward_t(&batch.inputs(), false).unwrap();
    let regions = gated.model().regions(&out).unwrap();
    let head = &gated.model().obj_predict_head;
    let obj = |p: msp_model::VisualPredictions| -> Vec<f32> {
        p.obj.unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let ungated = obj(head.forward(&regions, None).unwrap());
    let with_gate = obj(head.forward(&regions, Some(&out.pooled_output)).unwrap());
    assert_ne!(ungated, with_gate, "the gate changes the logits");
    assert_eq!(
        obj(gated.model().visual_predictions(&out).unwrap()),
        with_gate
    );
    assert_eq!(
        obj(plain.model().visual_predictions(&out).unwrap()),
        ungated
    );
    // LXMERT has no gate whatever the switch says.
    let lxmert = Lxmert::new(&on, Variant::Lxmert, 5, &dev).unwrap();
    let out = lxmert.model().forward_t(&batch.inputs(), false).unwrap();
    let regions = lxmert.model().regions(&out).unwrap();
    assert_eq!(
        obj(lxmert.model().visual_predictions(&out).unwrap()),
        obj(lxmert
            .model()
            .obj_predict_head
            .forward(&regions, None)
            .unwrap())
    );
}

/// Largest |x| of a tensor.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Largest |a − b| over two tensors of the same shape.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&a.sub(b).unwrap())
}

/// A batch of 3 examples (6 tokens, 5 regions) with padded tokens and regions.
struct Padded {
    batch: SyntheticBatch,
    lang_mask: Tensor,
    visn_mask: Tensor,
}

impl Padded {
    fn new(cfg: &Config, dev: &Device) -> Self {
        let lang_mask = Tensor::new(
            &[
                [1u32, 1, 1, 1, 1, 1],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 1, 1, 1, 0],
            ],
            dev,
        )
        .unwrap();
        let visn_mask =
            Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dev).unwrap();
        Self {
            batch: SyntheticBatch::new(cfg, 3, 6, 5, 9, dev).unwrap(),
            lang_mask,
            visn_mask,
        }
    }

    fn inputs(&self) -> msp_model::LxmertInputs<'_> {
        msp_model::LxmertInputs {
            attention_mask: Some(&self.lang_mask),
            visual_attention_mask: Some(&self.visn_mask),
            ..self.batch.inputs()
        }
    }
}

/// Two forwards `f` after reseeding the model's dropout (the second draws the masks that
/// follow the first's): run once with the full forward and once with a partial one, the
/// pairs must match.
fn two_forwards<T>(model: &Lxmert, f: impl Fn() -> T) -> Vec<T> {
    model.reseed_dropout(7);
    (0..2).map(|_| f()).collect()
}

/// Every variable has the same gradient in `full` and `part` (to 1e-5 relative), or none in
/// both; more than 50 have one.
fn assert_same_gradients(
    model: &Lxmert,
    full: &candle_core::backprop::GradStore,
    part: &candle_core::backprop::GradStore,
    what: &str,
) {
    let mut with_grad = 0;
    for (name, var) in model.named_vars() {
        match (full.get(&var), part.get(&var)) {
            (Some(a), Some(b)) => {
                let d = max_abs_diff(a, b);
                assert!(
                    d <= 1e-5 * max_abs(a).max(1.0),
                    "{what}: gradient of {name} differs by {d}"
                );
                with_grad += 1;
            }
            (None, None) => {}
            (a, _) => panic!(
                "{what}: {name} has a gradient in the {} forward only",
                if a.is_some() { "full" } else { "partial" }
            ),
        }
    }
    assert!(
        with_grad > 50,
        "{what}: {with_grad} variables with a gradient"
    );
}

/// `forward_pooled_t` (the last cross layer on the pooled rows only) against the full forward
/// (itself checked against PyTorch in `parity.rs`), with dropout on, padded tokens and
/// regions: the same pooled output and pooler factors, the same gradient for every variable
/// (none where the full forward gives none), and the dropout stream left where the full
/// forward leaves it (the second forward of each pair draws the same masks).
#[test]
fn pooled_forward_equals_the_full_forward() {
    let dev = Device::Cpu;
    for variant in [Variant::Lxmert, Variant::LxmertS] {
        let cfg = Config::tiny();
        let model = Lxmert::new(&cfg, variant, 5, &dev).unwrap();
        let padded = Padded::new(&cfg, &dev);
        let inputs = padded.inputs();
        let weights = Tensor::randn(0f32, 1.0, (3, cfg.hidden_size), &dev).unwrap();
        let m = model.model();
        for train in [false, true] {
            let full = two_forwards(&model, || m.forward_t(&inputs, train).unwrap());
            let pooled = two_forwards(&model, || m.forward_pooled_t(&inputs, train).unwrap());
            for (f, p) in full.iter().zip(&pooled) {
                let d = max_abs_diff(&f.pooled_output, &p.pooled_output);
                assert!(
                    d < 1e-5,
                    "{variant} train={train}: pooled output differs by {d}"
                );
                match (&f.pooler_factors, &p.pooler_factors) {
                    (Some((ft, fv)), Some((pt, pv))) => {
                        assert!(max_abs_diff(ft, pt) < 1e-5 && max_abs_diff(fv, pv) < 1e-5);
                    }
                    (None, None) => assert_eq!(variant, Variant::Lxmert),
                    _ => panic!("{variant}: pooler factors on one side only"),
                }
            }
            if train {
                // Dropout is on: the two forwards of a pair drew different masks.
                let d = max_abs_diff(&full[0].pooled_output, &full[1].pooled_output);
                assert!(d > 1e-3, "{variant}: dropout changed nothing ({d})");
            }
            let loss = |t: &Tensor| t.mul(&weights).unwrap().sum_all().unwrap();
            let gf = loss(&full[0].pooled_output).backward().unwrap();
            let gp = loss(&pooled[0].pooled_output).backward().unwrap();
            assert_same_gradients(&model, &gf, &gp, &format!("{variant} train={train}"));
        }
    }
}

/// `forward_rows_t` (the last cross layer on chosen language rows only) against the full
/// forward, with dropout on, padded tokens and regions: the chosen rows of the language
/// output, the whole vision and pooled outputs, the MLM logits at masked positions, the
/// gradient of every variable, and the dropout stream left where the full forward leaves it.
#[test]
fn row_forward_equals_the_full_forward() {
    let dev = Device::Cpu;
    for variant in [Variant::Lxmert, Variant::LxmertS] {
        let cfg = Config::tiny();
        let model = Lxmert::new(&cfg, variant, 5, &dev).unwrap();
        let padded = Padded::new(&cfg, &dev);
        let inputs = padded.inputs();
        // MLM labels at rows 2 and 5 of example 0, none in example 1, 1 and 3 in example 2:
        // rows 0, 2, 5 / 0 and the padding 1, 2 / 0, 1, 3.
        let labels = Tensor::new(
            &[
                [-1i64, -1, 4, -1, -1, 9],
                [-1, -1, -1, -1, -1, -1],
                [-1, 7, -1, 8, -1, -1],
            ],
            &dev,
        )
        .unwrap();
        let rows = msp_model::LanguageRows::from_labels(&labels).unwrap();
        assert_eq!(rows.kept(), 3);
        let (masked, _) = msp_model::kept_rows(&labels).unwrap().unwrap();
        let m = model.model();
        let h = cfg.hidden_size;
        let w_lang = Tensor::randn(0f32, 1.0, (3 * 3, h), &dev).unwrap();
        // 5 regions, and LXMERT-S's visual [CLS].
        let regions = 5 + usize::from(variant == Variant::LxmertS);
        let w_visn = Tensor::randn(0f32, 1.0, (3, regions, h), &dev).unwrap();
        for train in [false, true] {
            let full = two_forwards(&model, || m.forward_t(&inputs, train).unwrap());
            let part = two_forwards(&model, || m.forward_rows_t(&inputs, &rows, train).unwrap());
            // The full forward's language rows that `rows` names, in its order.
            let chosen = |f: &msp_model::LxmertOutput| -> Tensor {
                let idx: Vec<u32> = (0..3)
                    .flat_map(|b| (0..rows.kept()).map(move |k| (b, k)))
                    .map(|(b, k)| (b * 6 + rows.row(b, k)) as u32)
                    .collect();
                let idx = Tensor::new(idx.as_slice(), &dev).unwrap();
                f.language_output
                    .reshape((18, h))
                    .unwrap()
                    .index_select(&idx, 0)
                    .unwrap()
            };
            for (f, p) in full.iter().zip(&part) {
                assert_eq!(p.language_output.dims(), [3, 3, h]);
                let pl = p.language_output.reshape((9, h)).unwrap();
                for (what, d) in [
                    ("language rows", max_abs_diff(&chosen(f), &pl)),
                    (
                        "vision output",
                        max_abs_diff(&f.vision_output, &p.vision_output),
                    ),
                    (
                        "pooled output",
                        max_abs_diff(&f.pooled_output, &p.pooled_output),
                    ),
                    (
                        "MLM logits",
                        max_abs_diff(
                            &m.mlm_logits_at(f, &masked).unwrap(),
                            &m.mlm_logits_at(p, &masked).unwrap(),
                        ),
                    ),
                ] {
                    assert!(d < 1e-5, "{variant} train={train}: {what} differs by {d}");
                }
            }
            if train {
                let d = max_abs_diff(&full[0].pooled_output, &full[1].pooled_output);
                assert!(d > 1e-3, "{variant}: dropout changed nothing ({d})");
            }
            let loss = |o: &msp_model::LxmertOutput, lang: &Tensor| {
                let l = lang.mul(&w_lang).unwrap().sum_all().unwrap();
                let v = o.vision_output.mul(&w_visn).unwrap().sum_all().unwrap();
                let p = o.pooled_output.sum_all().unwrap();
                let mlm = m.mlm_logits_at(o, &masked).unwrap().sum_all().unwrap();
                (((l + v).unwrap() + p).unwrap() + mlm).unwrap()
            };
            let gf = loss(&full[0], &chosen(&full[0])).backward().unwrap();
            let pl = part[0].language_output.reshape((9, h)).unwrap();
            let gp = loss(&part[0], &pl).backward().unwrap();
            assert_same_gradients(&model, &gf, &gp, &format!("{variant} train={train}"));
        }
        // A masked position outside the computed rows, and rows of another shape.
        let out = m.forward_rows_t(&inputs, &rows, false).unwrap();
        let outside = Tensor::new(&[6u32 + 4], &dev).unwrap();
        assert!(m.mlm_logits_at(&out, &outside).is_err());
        let wrong = msp_model::LanguageRows::pooled(2, 6).unwrap();
        assert!(m.forward_rows_t(&inputs, &wrong, false).is_err());
    }
}
