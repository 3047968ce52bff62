use msp_text::{
    for_each_vg_image, read_coco_captions, read_lxmert_pretrain, write_vg_regions, LabelVocab,
    TextError, VgImage, VgRegion,
};

fn write(dir: &tempfile::TempDir, name: &str, text: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn coco_captions() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "captions.json",
        br#"{"info":{},"images":[{"id":9,"file_name":"COCO_val2014_000000000009.jpg","height":480,"width":640}],
            "annotations":[{"image_id":9,"id":1,"caption":"A plate of food."},{"image_id":9,"id":2,"caption":"Food on a plate"}]}"#,
    );
    let c = read_coco_captions(&p).unwrap();
    assert_eq!(c.images[0].width, Some(640));
    assert_eq!(
        c.by_image()[&9],
        vec!["A plate of food.", "Food on a plate"]
    );

    let p = write(&d, "bad.json", br#"{"images":[{"id":9,"file_name":"x"}],"annotations":[{"image_id":9,"id":1,"caption":"ok"},{"image_id":9,"id":2,"caption":"  "}]}"#);
    match read_coco_captions(&p).unwrap_err() {
        TextError::BadRecord { record, field, .. } => {
            assert_eq!(record, 1);
            assert_eq!(field, "annotations.caption");
        }
        e => panic!("unexpected {e}"),
    }
    let p = write(
        &d,
        "unk.json",
        br#"{"images":[],"annotations":[{"image_id":3,"id":1,"caption":"x"}]}"#,
    );
    assert!(read_coco_captions(&p)
        .unwrap_err()
        .to_string()
        .contains("image 3"));
    let p = write(
        &d,
        "latin1.json",
        b"{\"images\":[],\"annotations\":[{\"caption\":\"caf\xe9\"}]}",
    );
    assert!(matches!(
        read_coco_captions(&p),
        Err(TextError::NotUtf8 { line: 1, .. })
    ));
    let p = write(&d, "trunc.json", br#"{"images":[{"id":9,"#);
    assert!(matches!(
        read_coco_captions(&p),
        Err(TextError::Json { .. })
    ));
}

#[test]
fn lxmert_pretrain_json() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "mscoco_minival.json",
        br#"[{"img_id":"COCO_train2014_000000318556","sentf":{"mscoco":["a cat","a dog"],"vqa":["what color?"]},
              "labelf":{"vqa":[{"blue":1,"blue and white":0.3}]}},
             {"img_id":"2375429","sentf":{"vg":["a tree"]},"labelf":{}}]"#,
    );
    let v = read_lxmert_pretrain(&p).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].sentf["mscoco"], vec!["a cat", "a dog"]);
    assert_eq!(v[0].labelf["vqa"][0]["blue and white"], 0.3);
    assert!(v[1].labelf.is_empty());

    let p = write(
        &d,
        "bad.json",
        br#"[{"img_id":"x","sentf":{"vqa":["q1","q2"]},"labelf":{"vqa":[{"a":1}]}}]"#,
    );
    match read_lxmert_pretrain(&p).unwrap_err() {
        TextError::BadRecord { record, field, .. } => {
            assert_eq!((record, field.as_str()), (0, "labelf.vqa"))
        }
        e => panic!("unexpected {e}"),
    }
    let p = write(
        &d,
        "empty.json",
        br#"[{"img_id":"x","sentf":{"vg":["ok"]}},{"img_id":"y","sentf":{"vg":["ok",""]}}]"#,
    );
    match read_lxmert_pretrain(&p).unwrap_err() {
        TextError::BadRecord { record, field, .. } => {
            assert_eq!((record, field.as_str()), (1, "sentf.vg[1]"))
        }
        e => panic!("unexpected {e}"),
    }
}

fn region(image_id: u64, region_id: u64, phrase: &str) -> VgRegion {
    VgRegion {
        region_id,
        image_id,
        phrase: phrase.into(),
        x: 1,
        y: 2,
        width: 3,
        height: 4,
    }
}

#[test]
fn vg_streaming() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("region_descriptions.json");
    let imgs = vec![
        VgImage {
            id: 1,
            regions: vec![
                region(1, 10, "a white plate"),
                region(1, 11, "man riding a horse"),
            ],
        },
        VgImage {
            id: 2,
            regions: vec![],
        },
        VgImage {
            id: 3,
            regions: vec![region(3, 30, "green leaves")],
        },
    ];
    write_vg_regions(&p, &imgs).unwrap();
    let mut seen = Vec::new();
    let n = for_each_vg_image(&p, |img| {
        seen.push(img);
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 3);
    assert_eq!(seen, imgs);

    // The real file's key order and extra whitespace.
    let raw = write(&d, "raw.json", br#" [ {"regions": [{"region_id": 1382, "width": 82, "height": 139, "image_id": 1, "phrase": "the clock is green in colour", "y": 57, "x": 421}], "id": 1} ] "#);
    let mut phrases = Vec::new();
    for_each_vg_image(&raw, |img| {
        phrases.extend(
            img.regions
                .into_iter()
                .map(|r| (r.image_id, r.phrase, r.x, r.height)),
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(
        phrases,
        vec![(1, "the clock is green in colour".to_string(), 421, 139)]
    );

    // Stop early from the callback; bad records; truncation.
    let mut count = 0;
    let err = for_each_vg_image(&p, |_| {
        count += 1;
        if count == 2 {
            Err("enough".into())
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    match err {
        TextError::BadRecord {
            record, message, ..
        } => assert_eq!((record, message.as_str()), (1, "enough")),
        e => panic!("unexpected {e}"),
    }
    let empty = write(&d, "e.json", br#"[{"id":1,"regions":[{"region_id":1,"image_id":1,"phrase":"x","x":0,"y":0,"width":1,"height":1},{"region_id":2,"image_id":1,"phrase":" ","x":0,"y":0,"width":1,"height":1}]}]"#);
    match for_each_vg_image(&empty, |_| Ok(())).unwrap_err() {
        TextError::BadRecord { record, field, .. } => {
            assert_eq!((record, field.as_str()), (0, "regions[1].phrase"))
        }
        e => panic!("unexpected {e}"),
    }
    let trunc = write(&d, "t.json", br#"[{"id":1,"regions":[]},{"id":2,"reg"#);
    assert!(matches!(
        for_each_vg_image(&trunc, |_| Ok(())),
        Err(TextError::Json { .. })
    ));
    let missing_field = write(
        &d,
        "m.json",
        br#"[{"id":1,"regions":[{"region_id":1,"image_id":1,"x":0,"y":0,"width":1,"height":1}]}]"#,
    );
    let err = for_each_vg_image(&missing_field, |_| Ok(())).unwrap_err();
    assert!(
        err.to_string().contains("phrase") && err.to_string().contains("record 0"),
        "{err}"
    );
}

#[test]
fn label_vocab() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "objects_vocab.txt",
        b"dog\ntraffic light\r\nt-shirt,tee shirt\n\n",
    );
    let v = LabelVocab::read(&p).unwrap();
    assert_eq!(v.len(), 3);
    assert_eq!(v.name(2), Some("t-shirt"));
    assert_eq!(v.line(2), Some("t-shirt,tee shirt"));
    assert_eq!(
        v.token_text(&[1i64, 0, 0, 2]).unwrap(),
        "traffic light dog dog t-shirt"
    );
    assert_eq!(v.token_text(&[0u32]).unwrap(), "dog");
    assert!(v.token_text(&[3u32]).is_err());
    assert!(v.token_text(&[-1i64]).is_err());
    let p = write(&d, "empty.txt", b"\n\n");
    assert!(matches!(LabelVocab::read(&p), Err(TextError::Empty { .. })));
    let p = write(&d, "hole.txt", b"dog\n\ncat\n");
    match LabelVocab::read(&p).unwrap_err() {
        TextError::BadRecord { record, .. } => assert_eq!(record, 1),
        e => panic!("unexpected {e}"),
    }
    let p = write(&d, "bin.txt", b"dog\ncat\n\xff\n");
    assert!(matches!(
        LabelVocab::read(&p),
        Err(TextError::NotUtf8 { line: 3, .. })
    ));
}
