use msp_text::{write_vocab_file, BertTokenizer, PositionMode, TextError};

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// vocab: specials 0..5, a=5 man=6 hat=7 horse=8 riding=9, then b..z = 10..34, 0..9 = 35..44,
/// ASCII punctuation in code order from 45 (' = 51, . = 58), then ##a = 77 … (##n = 90, ##s = 95).
fn vocab() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt");
    write_vocab_file(&p, &words(&["a", "man", "hat", "horse", "riding"])).unwrap();
    (dir, p)
}

#[test]
fn word_positions_hand_computed() {
    let (_d, p) = vocab();
    let t = BertTokenizer::from_vocab_file(&p).unwrap();
    assert_eq!(
        (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id),
        (0, 1, 2, 3, 4)
    );
    let e = t.encode("a man's hat.", 12, PositionMode::Word).unwrap();
    assert_eq!(
        e.tokens,
        ["[CLS]", "a", "man", "'", "s", "hat", ".", "[SEP]", "[PAD]", "[PAD]", "[PAD]", "[PAD]"]
    );
    assert_eq!(e.input_ids, [2, 5, 6, 51, 27, 7, 58, 3, 0, 0, 0, 0]);
    assert_eq!(e.position_ids, [1, 2, 3, 3, 3, 4, 4, 1, 0, 0, 0, 0]);
    assert_eq!(e.attention_mask, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    assert_eq!(e.token_type_ids, [0; 12]);
}

#[test]
fn word_pieces_share_positions() {
    let (_d, p) = vocab();
    let t = BertTokenizer::from_vocab_file(&p).unwrap();
    let e = t.encode("  HATS   ón ", 8, PositionMode::Word).unwrap();
    assert_eq!(e.tokens[..6], ["[CLS]", "hat", "##s", "o", "##n", "[SEP]"]);
    assert_eq!(e.input_ids, [2, 7, 95, 23, 90, 3, 0, 0]);
    assert_eq!(e.position_ids, [1, 2, 2, 3, 3, 1, 0, 0]);
}

#[test]
fn truncation_keeps_sep() {
    let (_d, p) = vocab();
    let t = BertTokenizer::from_vocab_file(&p).unwrap();
    let e = t
        .encode("a man riding a horse", 5, PositionMode::Word)
        .unwrap();
    assert_eq!(e.tokens, ["[CLS]", "a", "man", "riding", "[SEP]"]);
    assert_eq!(e.input_ids, [2, 5, 6, 9, 3]);
    assert_eq!(e.position_ids, [1, 2, 3, 4, 1]);
    assert_eq!(e.attention_mask, [1; 5]);
    let e = t
        .encode("a man riding a horse", 2, PositionMode::Word)
        .unwrap();
    assert_eq!(e.input_ids, [2, 3]);
    let s = t
        .encode("a man riding a horse", 5, PositionMode::Sequential)
        .unwrap();
    assert_eq!(s.position_ids, [0, 1, 2, 3, 4]);
    let s = t.encode("a man", 6, PositionMode::Sequential).unwrap();
    assert_eq!(s.position_ids, [0, 1, 2, 3, 4, 5]);
    assert_eq!(s.attention_mask, [1, 1, 1, 1, 0, 0]);
    assert!(matches!(
        t.encode("a", 1, PositionMode::Word),
        Err(TextError::InvalidArgument(_))
    ));
}

#[test]
fn unknown_and_empty() {
    let (_d, p) = vocab();
    let t = BertTokenizer::from_vocab_file(&p).unwrap();
    let e = t.encode("a 日 man", 6, PositionMode::Word).unwrap();
    assert_eq!(e.input_ids, [2, 5, 1, 6, 3, 0]);
    assert_eq!(e.position_ids, [1, 2, 3, 4, 1, 0]);
    let e = t.encode("", 4, PositionMode::Word).unwrap();
    assert_eq!(e.input_ids, [2, 3, 0, 0]);
    assert_eq!(t.wordpiece_ids("hats"), [7, 95]);
    assert_eq!(t.topic_token_ids(&words(&["hat", "man", "hat"])), [6, 7]);
    assert_eq!(t.token_id("horse"), Some(8));
}

#[test]
fn vocab_file_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    let w = words(&["zebra", "Giraffe", "zebra", "traffic light", "café"]);
    write_vocab_file(&a, &w).unwrap();
    write_vocab_file(&b, &w).unwrap();
    let (ta, tb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ta, tb);
    let text = String::from_utf8(ta).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..10],
        [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "zebra", "giraffe", "traffic", "light",
            "café"
        ]
    );
    assert_eq!(lines[10], "a");
    assert!(lines.contains(&"é") && lines.contains(&"##é") && lines.contains(&"##9"));
    let set: std::collections::HashSet<&&str> = lines.iter().collect();
    assert_eq!(set.len(), lines.len(), "no duplicates");
}

#[test]
fn real_bert_ids_are_looked_up() {
    // A vocabulary with BERT's layout: specials elsewhere than 0..5.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt");
    let mut lines = vec!["[PAD]".to_string()];
    lines.extend((1..100).map(|i| format!("[unused{i}]")));
    lines.extend(["[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man"].map(String::from));
    std::fs::write(&p, lines.join("\n")).unwrap();
    let t = BertTokenizer::from_vocab_file(&p).unwrap();
    assert_eq!(
        (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id),
        (0, 100, 101, 102, 103)
    );
    let e = t.encode("a man!", 6, PositionMode::Word).unwrap();
    assert_eq!(e.input_ids, [101, 104, 105, 100, 102, 0]);
    assert_eq!(e.position_ids, [1, 2, 3, 3, 1, 0]);
}

#[test]
fn missing_special_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt");
    std::fs::write(&p, "[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n").unwrap();
    match BertTokenizer::from_vocab_file(&p).unwrap_err() {
        TextError::MissingSpecial { token, .. } => assert_eq!(token, "[MASK]"),
        e => panic!("unexpected {e}"),
    }
    let missing = dir.path().join("nope.txt");
    let err = BertTokenizer::from_vocab_file(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.txt"), "{err}");
}

#[test]
fn tokenizer_json_roundtrip() {
    let (d, p) = vocab();
    let t = BertTokenizer::from_vocab_file(&p).unwrap();
    let json = d.path().join("tokenizer.json");
    t.save_json(&json).unwrap();
    let j = BertTokenizer::from_tokenizer_json(&json).unwrap();
    let e = j.encode("a man's hat.", 12, PositionMode::Word).unwrap();
    assert_eq!(e.input_ids, [2, 5, 6, 51, 27, 7, 58, 3, 0, 0, 0, 0]);
    assert_eq!(e.position_ids, [1, 2, 3, 3, 3, 4, 4, 1, 0, 0, 0, 0]);
}

#[test]
fn hf_cache_local_only() {
    let cache = tempfile::tempdir().unwrap();
    let err = BertTokenizer::from_hf_cache_dir(cache.path().to_path_buf(), "bert-base-uncased")
        .unwrap_err();
    match &err {
        TextError::NotInCache { looked, .. } => {
            assert!(
                looked.ends_with("models--bert-base-uncased"),
                "{}",
                looked.display()
            )
        }
        e => panic!("unexpected {e}"),
    }
    // hub cache layout: refs/main holds the commit, snapshots/<commit>/<file>.
    let repo = cache.path().join("models--bert-base-uncased");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    let snap = repo.join("snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    write_vocab_file(snap.join("vocab.txt"), &words(&["a", "man"])).unwrap();
    let t =
        BertTokenizer::from_hf_cache_dir(cache.path().to_path_buf(), "bert-base-uncased").unwrap();
    assert_eq!(
        t.encode("a man", 4, PositionMode::Word).unwrap().input_ids,
        [2, 5, 6, 3]
    );
}
