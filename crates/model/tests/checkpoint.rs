//! Checkpoint save/load, the structured load report, BERT embedding init, parameter counts and
//! the optional visual mask.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use msp_model::{
    init_embeddings_from_bert, map_key, param_count, write_safetensors, BertSource, Config,
    LoadOptions, Lxmert, LxmertInputs, ModelError, Variant,
};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn paper_parameter_counts() {
    // Reference §6: cross layers + visual encoder (+ language and relationship layers).
    let s = param_count(&Config::default(), Variant::LxmertS).unwrap();
    assert_eq!(s.paper_count, 84_278_784);
    let l = param_count(&Config::lxmert(), Variant::Lxmert).unwrap();
    assert_eq!(l.paper_count, 183_508_992);
    // Module sizes from reference §6.
    assert_eq!(s.by_module["lxmert.embeddings"], 23_837_184);
    assert_eq!(s.by_module["lxmert.encoder.x_layers"], 5 * 16_539_648);
    assert_eq!(s.by_module["lxmert.encoder.visn_fc"], 1_580_544);
    assert_eq!(
        s.by_module["lxmert.pooler"] + s.by_module["lxmert.pooler_f"],
        1_181_184
    );
    assert_eq!(s.by_module["cls.topic"], 23_532_462);
    assert_eq!(s.by_module["obj_predict_head"], 3_705_040);
    assert_eq!(s.by_module["answer_head"], 15_785_756);
    assert_eq!(s.by_module["cls.predictions"], 622_650);
    assert_eq!(l.by_module["lxmert.encoder.layer"], 9 * 7_087_872);
    // HF LxmertModel (9,5,5) with embeddings and pooler: 207,936,768.
    let hf_backbone: usize = l
        .by_module
        .iter()
        .filter(|(k, _)| k.starts_with("lxmert."))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(hf_backbone, 207_936_768);
    assert_eq!(s.total, s.by_module.values().sum::<usize>());
}

#[test]
fn save_then_strict_load_round_trips() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let a = Lxmert::new(&cfg, Variant::LxmertS, 1, &dev).unwrap();
    let b = Lxmert::new(&cfg, Variant::LxmertS, 2, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    a.save(&path).unwrap();
    let report = b.load_checkpoint(&path, LoadOptions::strict()).unwrap();
    assert!(report.is_complete());
    assert_eq!(report.loaded.len(), a.named_vars().len());
    for ((na, va), (nb, vb)) in a.named_vars().iter().zip(b.named_vars().iter()) {
        assert_eq!(na, nb);
        assert_eq!(values(va.as_tensor()), values(vb.as_tensor()), "{na}");
    }
}

#[test]
fn reset_poolers_restores_the_fresh_poolers_only() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    for (variant, expected) in [
        (
            Variant::LxmertS,
            vec![
                "lxmert.pooler.dense.bias",
                "lxmert.pooler.dense.weight",
                "lxmert.pooler_f.dense.bias",
                "lxmert.pooler_f.dense.weight",
            ],
        ),
        (
            Variant::Lxmert,
            vec!["lxmert.pooler.dense.bias", "lxmert.pooler.dense.weight"],
        ),
    ] {
        let fresh = Lxmert::new(&cfg, variant, 3, &dev).unwrap();
        // A "pre-trained" model of the same seed: every variable moved by +0.5.
        let trained = Lxmert::new(&cfg, variant, 3, &dev).unwrap();
        for (_, v) in trained.named_vars() {
            v.set(&(v.as_tensor() + 0.5).unwrap()).unwrap();
        }
        assert_eq!(trained.reset_poolers().unwrap(), expected);
        for ((name, f), (_, t)) in fresh.named_vars().iter().zip(trained.named_vars().iter()) {
            let (f, t) = (values(f.as_tensor()), values(t.as_tensor()));
            if expected.contains(&name.as_str()) {
                assert_eq!(f, t, "{name} is back at its init");
            } else {
                let moved: Vec<f32> = f.iter().map(|x| x + 0.5).collect();
                assert_eq!(moved, t, "{name} is untouched");
            }
        }
    }
}

#[test]
fn partial_load_reports_missing_unexpected_and_mismatched() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Lxmert::new(&cfg, Variant::Lxmert, 1, &dev).unwrap();
    let mut t = HashMap::new();
    t.insert(
        "lxmert.pooler.dense.bias".to_string(),
        Tensor::ones(cfg.hidden_size, DType::F32, &dev).unwrap(),
    );
    t.insert(
        "lxmert.pooler.dense.weight".to_string(),
        Tensor::ones((3, 3), DType::F32, &dev).unwrap(),
    );
    t.insert(
        "something.else".to_string(),
        Tensor::ones(2, DType::F32, &dev).unwrap(),
    );
    t.insert(
        "bert.embeddings.LayerNorm.weight".to_string(),
        Tensor::ones(cfg.hidden_size, DType::F64, &dev).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    write_safetensors(&t, &path).unwrap();

    let err = model
        .load_checkpoint(&path, LoadOptions::strict())
        .unwrap_err();
    let ModelError::Checkpoint { report, path: p } = err else {
        panic!("wrong error")
    };
    assert_eq!(p, path);
    assert_eq!(report.unexpected, vec!["something.else".to_string()]);
    assert_eq!(report.shape_mismatches.len(), 1);
    assert_eq!(
        report.shape_mismatches[0].name,
        "lxmert.pooler.dense.weight"
    );
    assert_eq!(report.shape_mismatches[0].found, vec![3, 3]);
    assert_eq!(report.dtype_mismatches.len(), 1);
    assert!(report
        .missing
        .contains(&"lxmert.encoder.visn_fc.visn_fc.weight".to_string()));
    assert!(!report
        .missing
        .contains(&"lxmert.pooler.dense.bias".to_string()));
    assert!(report.renamed.contains(&(
        "bert.embeddings.LayerNorm.weight".to_string(),
        "lxmert.embeddings.LayerNorm.weight".to_string()
    )));

    let report = model
        .load_checkpoint(&path, LoadOptions::lenient())
        .unwrap();
    assert_eq!(report.loaded.len(), 2);
    let bias = model
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "lxmert.pooler.dense.bias")
        .unwrap()
        .1;
    assert!(values(bias.as_tensor()).iter().all(|&v| v == 1.0));
    assert!(model
        .load_checkpoint(
            &dir.path().join("absent.safetensors"),
            LoadOptions::lenient()
        )
        .is_err());
}

#[test]
fn key_mapping_of_original_checkpoints() {
    assert_eq!(
        map_key("bert.encoder.x_layers.0.visual_attention.att.query.weight"),
        "lxmert.encoder.x_layers.0.visual_attention.att.query.weight"
    );
    assert_eq!(
        map_key("module.bert.pooler_f.dense.bias"),
        "lxmert.pooler_f.dense.bias"
    );
    assert_eq!(
        map_key("bert.word_embeddings.weight"),
        "lxmert.visual_cls.weight"
    );
    assert_eq!(
        map_key("bert.embeddings.LayerNorm.gamma"),
        "lxmert.embeddings.LayerNorm.weight"
    );
    assert_eq!(
        map_key("cls.seq_relationship_new.weight"),
        "cls.seq_relationship_new.weight"
    );
    assert_eq!(
        map_key("lxmert.embeddings.word_embeddings.weight"),
        "lxmert.embeddings.word_embeddings.weight"
    );
}

#[test]
fn embeddings_from_bert_file() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let h = cfg.hidden_size;
    let mut t = HashMap::new();
    let word = Tensor::arange(0f32, (cfg.vocab_size * h) as f32, &dev)
        .unwrap()
        .reshape((cfg.vocab_size, h))
        .unwrap();
    t.insert(
        "bert.embeddings.word_embeddings.weight".to_string(),
        word.clone(),
    );
    t.insert(
        "bert.embeddings.position_embeddings.weight".to_string(),
        Tensor::ones((cfg.max_position_embeddings, h), DType::F32, &dev).unwrap(),
    );
    t.insert(
        "bert.embeddings.token_type_embeddings.weight".to_string(),
        Tensor::ones((2, h), DType::F32, &dev).unwrap(),
    );
    t.insert(
        "bert.embeddings.LayerNorm.gamma".to_string(),
        Tensor::ones(h, DType::F32, &dev).unwrap(),
    );
    t.insert(
        "bert.embeddings.LayerNorm.beta".to_string(),
        Tensor::zeros(h, DType::F32, &dev).unwrap(),
    );
    t.insert(
        "bert.encoder.layer.0.output.dense.bias".to_string(),
        Tensor::zeros(h, DType::F32, &dev).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bert.safetensors");
    write_safetensors(&t, &path).unwrap();
    let model = Lxmert::new(&cfg, Variant::LxmertS, 1, &dev).unwrap();
    let report =
        init_embeddings_from_bert(model.varmap(), &BertSource::Path(path.clone())).unwrap();
    assert_eq!(report.loaded.len(), 5);
    let w = model.model().lxmert.word_embeddings();
    assert_eq!(values(w), values(&word));

    // A file lacking an embedding tensor is an error naming the missing variable.
    t.remove("bert.embeddings.LayerNorm.beta");
    write_safetensors(&t, &path).unwrap();
    let err = init_embeddings_from_bert(model.varmap(), &BertSource::Path(path)).unwrap_err();
    assert!(
        err.to_string().contains("lxmert.embeddings.LayerNorm.bias"),
        "{err}"
    );
    // Not in the local cache: a clear error, no download.
    std::env::set_var("HF_HOME", dir.path());
    let err = BertSource::HubCache {
        model_id: "bert-base-uncased".into(),
    }
    .resolve()
    .unwrap_err();
    assert!(matches!(err, ModelError::BertNotFound(_)));
}

#[test]
fn all_valid_visual_mask_equals_no_mask() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    for variant in [Variant::Lxmert, Variant::LxmertS] {
        let model = Lxmert::new(&cfg, variant, 4, &dev).unwrap();
        let ids = Tensor::new(&[[2u32, 7, 9, 3], [2, 5, 0, 0]], &dev).unwrap();
        let am = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 0, 0]], &dev).unwrap();
        let feats = Tensor::rand(0f32, 1., (2, 3, cfg.visual_feat_dim), &dev).unwrap();
        let boxes = Tensor::rand(0f32, 1., (2, 3, 4), &dev).unwrap();
        let ones = Tensor::ones((2, 3), DType::U32, &dev).unwrap();
        let base = LxmertInputs {
            attention_mask: Some(&am),
            ..LxmertInputs::new(&ids, &feats, &boxes)
        };
        let a = model.model().forward_t(&base, false).unwrap();
        let b = model
            .model()
            .forward_t(
                &LxmertInputs {
                    visual_attention_mask: Some(&ones),
                    ..base
                },
                false,
            )
            .unwrap();
        assert_eq!(values(&a.language_output), values(&b.language_output));
        assert_eq!(values(&a.vision_output), values(&b.vision_output));
        assert_eq!(values(&a.pooled_output), values(&b.pooled_output));
        // A real mask changes the result; padding a region out makes it irrelevant.
        let m = Tensor::new(&[[1u32, 1, 0], [1, 1, 1]], &dev).unwrap();
        let c = model
            .model()
            .forward_t(
                &LxmertInputs {
                    visual_attention_mask: Some(&m),
                    ..base
                },
                false,
            )
            .unwrap();
        assert_ne!(values(&a.language_output), values(&c.language_output));
        let wrong = Tensor::ones((2, 4), DType::U32, &dev).unwrap();
        let err = model.model().forward_t(
            &LxmertInputs {
                visual_attention_mask: Some(&wrong),
                ..base
            },
            false,
        );
        assert!(matches!(
            err,
            Err(ModelError::Input {
                name: "visual_attention_mask",
                ..
            })
        ));
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Lxmert::new(&cfg, Variant::Lxmert, 4, &dev).unwrap();
    let ids = Tensor::new(&[[2u32, 7]], &dev).unwrap();
    let feats = Tensor::zeros((1, 3, cfg.visual_feat_dim + 1), DType::F32, &dev).unwrap();
    let boxes = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
    let err = model
        .model()
        .forward_t(&LxmertInputs::new(&ids, &feats, &boxes), false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Input {
                name: "visual_feats",
                ..
            }
        ),
        "{err}"
    );
    let long = Tensor::zeros((1, cfg.max_position_embeddings + 1), DType::U32, &dev).unwrap();
    let feats = Tensor::zeros((1, 3, cfg.visual_feat_dim), DType::F32, &dev).unwrap();
    let err = model
        .model()
        .forward_t(&LxmertInputs::new(&long, &feats, &boxes), false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Input {
                name: "input_ids",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn hf_fixture_config_json_is_read() {
    let cfg = Config::from_json_file(&data("hf_config.json")).unwrap();
    assert_eq!(
        (cfg.hidden_size, cfg.l_layers, cfg.x_layers, cfg.r_layers),
        (16, 1, 2, 1)
    );
    assert_eq!(cfg.num_qa_labels, 5);
}

#[test]
fn forward_files_reproduces_the_hf_fixture() {
    let cfg = Config::from_json_file(&data("hf0_config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let report = msp_model::forward_files(
        &cfg,
        Variant::Lxmert,
        &data("hf0_weights.safetensors"),
        &data("hf0_io.safetensors"),
        &out,
        101,
        &Device::Cpu,
    )
    .unwrap();
    assert!(report.load.missing.is_empty());
    // The heads of the fixture are not part of the backbone.
    assert!(report.load.unexpected.iter().any(|n| n.starts_with("cls.")));
    let got = msp_model::read_safetensors(&out).unwrap();
    let want = msp_model::read_safetensors(&data("hf0_io.safetensors")).unwrap();
    for k in ["language_output", "vision_output", "pooled_output"] {
        let d = got[k]
            .sub(&want[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "{k}: {d}");
    }
    // Backbone weights missing: an error listing them.
    let err = msp_model::forward_files(
        &cfg,
        Variant::LxmertS,
        &data("hf0_weights.safetensors"),
        &data("hf0_io.safetensors"),
        &out,
        101,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("lxmert.pooler_f"), "{err}");
}

#[test]
fn retrieval_head_initialised_from_itm_head() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let model = Lxmert::new(&cfg, Variant::LxmertS, 1, &dev).unwrap();
    msp_model::MatchHead::load(model.var_builder().pp("retrieval"), &cfg).unwrap();
    let written =
        msp_model::copy_prefix(model.varmap(), "cls.seq_relationship", "retrieval").unwrap();
    assert_eq!(
        written,
        vec!["retrieval.bias".to_string(), "retrieval.weight".to_string()]
    );
    let vars: HashMap<String, _> = model.named_vars().into_iter().collect();
    assert_eq!(
        values(vars["retrieval.weight"].as_tensor()),
        values(vars["cls.seq_relationship.weight"].as_tensor())
    );
    // No such target: an error naming it.
    let err =
        msp_model::copy_prefix(model.varmap(), "cls.seq_relationship", "nowhere").unwrap_err();
    assert!(err.to_string().contains("nowhere.bias"), "{err}");
}
