//! The JSON and text readers (SPEC §2.3-2.4): the first byte picks a reader, the rest is the
//! file. No panic; records that are accepted satisfy the reader's documented checks.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("msp-fuzz-json-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let p = dir().join("input");
    std::fs::write(&p, body).unwrap();
    match which % 11 {
        0 => {
            if let Ok(v) = msp_text::read_vqa(&p) {
                for q in v {
                    assert!(!q.sent.trim().is_empty() && !q.img_id.trim().is_empty());
                    assert!(q.label.values().all(|s| (0.0..=1.0).contains(s)));
                }
            }
        }
        1 => {
            if let Ok(v) = msp_text::read_gqa(&p) {
                assert!(v.iter().all(|q| q.label.len() <= 1));
            }
        }
        2 => {
            if let Ok(v) = msp_text::read_nlvr2(&p) {
                assert!(v.iter().all(|e| e.label <= 1));
            }
        }
        3 => {
            if let Ok(v) = msp_text::read_flickr30k(&p) {
                assert!(v.iter().all(|e| !e.sentences.is_empty()));
            }
        }
        4 => {
            if let Ok(c) = msp_text::read_coco_captions(&p) {
                let ids: Vec<u64> = c.images.iter().map(|i| i.id).collect();
                assert!(c.annotations.iter().all(|a| ids.contains(&a.image_id)));
            }
        }
        5 => {
            let _ = msp_text::read_lxmert_pretrain(&p);
        }
        6 => {
            let _ = msp_text::for_each_vg_image(&p, |img| {
                assert!(img.regions.iter().all(|r| !r.phrase.trim().is_empty()));
                Ok(())
            });
        }
        7 => {
            // An answer vocabulary: the body is split at its first NUL into the two files.
            let cut = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            let (a, l) = body.split_at(cut);
            let (pa, pl) = (dir().join("ans2label.json"), dir().join("label2ans.json"));
            std::fs::write(&pa, a).unwrap();
            std::fs::write(&pl, l.get(1..).unwrap_or_default()).unwrap();
            if let Ok(v) = msp_text::AnswerVocab::read(&pa, &pl) {
                for (i, a) in v.answers().iter().enumerate() {
                    assert_eq!(v.id(a), Some(i));
                }
            }
        }
        8 => {
            if let Ok(v) = msp_text::LabelVocab::read(&p) {
                assert!(!v.is_empty());
                let _ = v.token_text(&[0i64, v.len() as i64 - 1]);
            }
        }
        9 => {
            if let Ok(t) = msp_text::BertTokenizer::from_vocab_file(&p) {
                let e = t
                    .encode("a man's hat, riding.", 12, msp_text::PositionMode::Word)
                    .expect("encode with a valid vocabulary");
                assert_eq!(e.input_ids.len(), 12);
            }
        }
        _ => {
            let _ = msp_features::HardNegativePool::read_json(&p);
        }
    }
});
