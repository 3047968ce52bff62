use std::collections::BTreeMap;

use msp_text::downstream::{
    read_gqa_checked, read_vqa_checked, write_flickr30k, write_gqa, write_nlvr2, write_vqa,
};
use msp_text::{read_flickr30k, read_gqa, read_nlvr2, read_vqa, AnswerVocab, TextError};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn record_field(e: TextError) -> (usize, String) {
    match e {
        TextError::BadRecord { record, field, .. } => (record, field),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn vqa_format_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "minival.json",
        r#"[{"answer_type":"other","img_id":"COCO_val2014_000000393267","label":{"blue":1,"blue and white":0.3},
             "question_id":393267000,"question_type":"what color is the","sent":"What color is the bus?"},
            {"answer_type":"yes/no","img_id":"COCO_val2014_000000393267","question_id":393267001,"question_type":"is the","sent":"Is it?"}]"#,
    );
    let v = read_vqa(&p).unwrap();
    assert_eq!(v[0].question_id, 393267000);
    assert_eq!(v[0].label["blue and white"], 0.3);
    assert!(v[1].label.is_empty(), "test split: no label");
    let out = d.path().join("out.json");
    write_vqa(&out, &v).unwrap();
    assert_eq!(read_vqa(&out).unwrap(), v);

    let vocab = AnswerVocab::new(vec!["blue".into(), "red".into()]).unwrap();
    let (r, f) = record_field(read_vqa_checked(&p, Some(&vocab)).unwrap_err());
    assert_eq!((r, f.as_str()), (0, "label"));
    let p = write(
        &d,
        "e.json",
        r#"[{"img_id":"x","question_id":1,"sent":"ok"},{"img_id":"x","question_id":2,"sent":""}]"#,
    );
    assert_eq!(record_field(read_vqa(&p).unwrap_err()), (1, "sent".into()));
    let p = write(
        &d,
        "s.json",
        r#"[{"img_id":"x","question_id":1,"sent":"ok","label":{"a":1.5}}]"#,
    );
    assert_eq!(record_field(read_vqa(&p).unwrap_err()), (0, "label".into()));
    let p = write(
        &d,
        "q.json",
        r#"[{"img_id":"x","question_id":"1","sent":"ok"}]"#,
    );
    assert!(
        matches!(read_vqa(&p), Err(TextError::Json { .. })),
        "VQA ids are integers"
    );
}

#[test]
fn gqa_format() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "testdev.json",
        r#"[{"img_id":"2375429","label":{"pipe":1.0},"question_id":"07333408","sent":"What is on the white wall?"}]"#,
    );
    let v = read_gqa(&p).unwrap();
    assert_eq!(v[0].question_id, "07333408");
    assert_eq!(v[0].label, BTreeMap::from([("pipe".to_string(), 1.0)]));
    let out = d.path().join("o.json");
    write_gqa(&out, &v).unwrap();
    assert_eq!(read_gqa(&out).unwrap(), v);
    let vocab = AnswerVocab::new(vec!["yes".into()]).unwrap();
    assert!(read_gqa_checked(&p, Some(&vocab)).is_err());
    let p = write(
        &d,
        "two.json",
        r#"[{"img_id":"1","label":{"a":1.0,"b":1.0},"question_id":"1","sent":"q"}]"#,
    );
    assert_eq!(record_field(read_gqa(&p).unwrap_err()), (0, "label".into()));
    let p = write(
        &d,
        "int.json",
        r#"[{"img_id":"1","question_id":7,"sent":"q"}]"#,
    );
    assert!(
        matches!(read_gqa(&p), Err(TextError::Json { .. })),
        "GQA ids are strings"
    );
}

#[test]
fn nlvr2_and_flickr() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "valid.json",
        r#"[{"identifier":"train-10171-0-0","img0":"train-10171-0-img0","img1":"train-10171-0-img1","label":1,"sent":"There are two dogs.","uid":"nlvr2_train_0"}]"#,
    );
    let v = read_nlvr2(&p).unwrap();
    assert_eq!((v[0].label, v[0].img1.as_str()), (1, "train-10171-0-img1"));
    let out = d.path().join("o.json");
    write_nlvr2(&out, &v).unwrap();
    assert_eq!(read_nlvr2(&out).unwrap(), v);
    let p = write(
        &d,
        "bad.json",
        r#"[{"identifier":"i","img0":"a","img1":"b","label":2,"sent":"s","uid":"u"}]"#,
    );
    assert_eq!(
        record_field(read_nlvr2(&p).unwrap_err()),
        (0, "label".into())
    );

    let p = write(
        &d,
        "flickr30k_test2014.json",
        r#"[{"img_path":"1000092795.jpg","sentences":["a","b","c","d","e"]}]"#,
    );
    let f = read_flickr30k(&p).unwrap();
    assert_eq!(f[0].image_number(), Some(1000092795));
    assert_eq!(f[0].sentences.len(), 5);
    let out = d.path().join("f.json");
    write_flickr30k(&out, &f).unwrap();
    assert_eq!(read_flickr30k(&out).unwrap(), f);
    let p = write(
        &d,
        "f2.json",
        r#"[{"img_path":"1.jpg","sentences":["a",""]}]"#,
    );
    assert_eq!(
        record_field(read_flickr30k(&p).unwrap_err()),
        (0, "sentences[1]".into())
    );
}

#[test]
fn answer_vocab_files() {
    let d = tempfile::tempdir().unwrap();
    let a2l = write(
        &d,
        "trainval_ans2label.json",
        r#"{"yes": 0, "no": 1, "2": 2}"#,
    );
    let l2a = write(&d, "trainval_label2ans.json", r#"["yes", "no", "2"]"#);
    let v = AnswerVocab::read(&a2l, &l2a).unwrap();
    assert_eq!((v.len(), v.id("no"), v.answer(2)), (3, Some(1), Some("2")));
    let (o1, o2) = (d.path().join("a.json"), d.path().join("l.json"));
    v.write(&o1, &o2).unwrap();
    assert_eq!(AnswerVocab::read(&o1, &o2).unwrap(), v);
    assert_eq!(std::fs::read_to_string(&o2).unwrap(), r#"["yes","no","2"]"#);

    let bad = write(&d, "bad_a2l.json", r#"{"yes": 1, "no": 0, "2": 2}"#);
    assert!(AnswerVocab::read(&bad, &l2a).is_err());
    let short = write(&d, "short.json", r#"["yes", "no"]"#);
    assert!(AnswerVocab::read(&a2l, &short).is_err());
    let empty = write(&d, "empty.json", "[]");
    let empty_map = write(&d, "empty_map.json", "{}");
    assert!(matches!(
        AnswerVocab::read(&empty_map, &empty),
        Err(TextError::Empty { .. })
    ));
}
