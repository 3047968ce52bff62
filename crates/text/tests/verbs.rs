use std::path::Path;

use msp_text::{PhraseBuilder, TextError, VerbLexicon};

const WORDNET: &str = "/usr/share/wordnet";

fn labelled(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (p, v) = l.split_once('\t').expect("phrase<TAB>label");
            (p.to_string(), v.trim() == "1")
        })
        .collect()
}

fn accuracy(lex: &VerbLexicon, name: &str, data: &[(String, bool)]) -> f64 {
    assert!(data.iter().any(|(_, v)| *v) && data.iter().any(|(_, v)| !*v));
    let wrong: Vec<String> = data
        .iter()
        .filter(|(p, v)| lex.phrase_has_verb(p) != *v)
        .map(|(p, v)| format!("{p:?} expected {v}"))
        .collect();
    let acc = 1.0 - wrong.len() as f64 / data.len() as f64;
    println!(
        "verb filter accuracy on {name} ({} hand-labelled phrases): {:.1}% ({} wrong: {wrong:?})",
        data.len(),
        100.0 * acc,
        wrong.len()
    );
    acc
}

#[test]
fn labelled_phrase_accuracy() {
    let lex = VerbLexicon::load_default().unwrap();
    let dev = labelled(include_str!("data/phrases_labelled.tsv"));
    let held = labelled(include_str!("data/phrases_heldout.tsv"));
    assert!(dev.len() >= 40 && held.len() >= 40);
    // Threshold: the sets are built from deliberately ambiguous words; a cheap rule system
    // that reads each word with one word of context should still get 9 phrases in 10
    // right. (Measured: 100% on the development set, whose errors shaped rules 9 and 10;
    // 97.5% on the held-out set, never used for tuning.)
    let a = accuracy(&lex, "phrases_labelled.tsv", &dev);
    let b = accuracy(&lex, "phrases_heldout.tsv", &held);
    assert!(a >= 0.90 && b >= 0.90, "accuracy {a} / {b}");
}

#[test]
fn single_words() {
    let lex = VerbLexicon::load_default().unwrap();
    for w in [
        "riding", "holds", "is", "are", "has", "parked", "dressed", "sitting", "rode",
    ] {
        assert!(lex.is_verb(w), "{w} should be a verb");
    }
    for w in [
        "man", "building", "painting", "lights", "table", "white", "the", "xyzzy",
    ] {
        assert!(!lex.is_verb(w), "{w} should not be a verb");
    }
}

#[test]
fn committed_lexicon_matches_wordnet() {
    if !Path::new(WORDNET).join("index.verb").exists() {
        println!("{WORDNET} not installed: skipping the regeneration check");
        return;
    }
    let generated = VerbLexicon::from_wordnet_dir(WORDNET).unwrap();
    let committed = include_str!("../../../data/lexicon/verbs.tsv");
    assert!(
        generated.to_tsv() == committed,
        "data/lexicon/verbs.tsv is stale: run `cargo xtask text gen-lexicon`"
    );
    assert_eq!(generated, VerbLexicon::load_default().unwrap());
    // Deterministic: a second generation is byte-identical.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.tsv");
    generated.write(&out).unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), committed);
    assert_eq!(VerbLexicon::read(&out).unwrap(), generated);
}

#[test]
fn committed_licence_matches_debian() {
    let copyright = Path::new("/usr/share/doc/wordnet-base/copyright");
    if !copyright.exists() {
        println!("{} not installed: skipping", copyright.display());
        return;
    }
    let text = msp_text::wordnet_license(copyright).unwrap();
    assert_eq!(text, include_str!("../../../data/lexicon/WORDNET-LICENSE"));
    assert!(text.contains("WordNet 3.0 Copyright 2006 by Princeton University"));
}

#[test]
fn wordnet_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = VerbLexicon::from_wordnet_dir(dir.path()).unwrap_err();
    match err {
        TextError::Io { path, .. } => assert!(path.ends_with("index.noun")),
        other => panic!("unexpected {other}"),
    }
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "# header\nL\tride\t6\tx\t-\t-\n").unwrap();
    match VerbLexicon::read(&bad).unwrap_err() {
        TextError::BadLexicon { line, .. } => assert_eq!(line, 2),
        other => panic!("unexpected {other}"),
    }
    std::fs::write(&bad, "# only a header\n").unwrap();
    assert!(matches!(
        VerbLexicon::read(&bad),
        Err(TextError::Empty { .. })
    ));
}

#[test]
fn phrase_builder_drops_verbs_dedups_and_cuts() {
    let lex = VerbLexicon::load_default().unwrap();
    let b = PhraseBuilder {
        lexicon: &lex,
        max_words: 8,
    };
    let phrases = [
        "a white plate.",
        "man riding a horse",
        "A white plate",
        "green leaves on tree",
        "the sky is blue",
        "a red stop sign",
    ];
    assert_eq!(
        b.keep(&phrases),
        vec!["a white plate", "green leaves on tree", "a red stop sign"]
    );
    // 3 + 4 = 7 words fit; "a red stop sign" (4) would make 11 > 8.
    assert_eq!(b.build(&phrases), "a white plate, green leaves on tree");
    let short = PhraseBuilder {
        lexicon: &lex,
        max_words: 2,
    };
    assert_eq!(short.build(&phrases), "a white");
    assert_eq!(b.build(&["the dog is running"]), "");
}
