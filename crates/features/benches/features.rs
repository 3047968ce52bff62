//! SPEC §9 targets: TSV decode ≥ 150 MB/s on one core; a random 128-image batch gathered at
//! ≥ 20k images/s from page cache. Setup writes a realistic TSV (n = 36, D = 2048, 200 images,
//! ≈ 60 MB) and converts it to f32 and f16 stores in a temporary directory.

use std::hint::black_box;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use msp_features::{
    convert, ConvertOptions, FeatureStore, RegionBuffers, StoreDtype, TsvReader, TsvRecord,
    TsvWriter,
};

const IMAGES: usize = 200;
const BOXES: usize = 36;
const DIM: usize = 2048;

/// xorshift64*: deterministic, dependency-free values for the synthetic features.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn write_tsv(path: &std::path::Path) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut w = TsvWriter::create(path).unwrap();
    for i in 0..IMAGES {
        let (h, wd) = (480u32, 640u32);
        let boxes = (0..BOXES)
            .map(|_| {
                let (x1, y1) = (rng.unit() * 320.0, rng.unit() * 240.0);
                [x1, y1, x1 + rng.unit() * 320.0, y1 + rng.unit() * 240.0]
            })
            .collect();
        // ReLU-like pool5 features: about half exact zeros, the rest positive.
        let features = (0..BOXES * DIM)
            .map(|_| (rng.unit() * 4.0 - 2.0).max(0.0))
            .collect();
        w.write(&TsvRecord {
            img_id: format!("COCO_train2014_{i:012}"),
            img_h: h,
            img_w: wd,
            objects_id: (0..BOXES).map(|_| (rng.next() % 1600) as i64).collect(),
            objects_conf: (0..BOXES).map(|_| rng.unit()).collect(),
            attrs_id: (0..BOXES).map(|_| (rng.next() % 400) as i64).collect(),
            attrs_conf: (0..BOXES).map(|_| rng.unit()).collect(),
            boxes,
            features,
        })
        .unwrap();
    }
    w.finish().unwrap();
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("bench_obj36.tsv");
    write_tsv(&tsv);
    let tsv_len = std::fs::metadata(&tsv).unwrap().len();

    let mut g = c.benchmark_group("tsv");
    g.throughput(Throughput::Bytes(tsv_len));
    g.sample_size(10);
    g.bench_function("decode_n36_d2048", |b| {
        let mut rec = TsvRecord::default();
        b.iter(|| {
            let mut r = TsvReader::open(&tsv).unwrap();
            let mut n = 0;
            while r.read_record(&mut rec).unwrap() {
                n += black_box(&rec).num_boxes();
            }
            assert_eq!(n, IMAGES * BOXES);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("gather");
    g.throughput(Throughput::Elements(128));
    for dtype in [StoreDtype::F32, StoreDtype::F16] {
        let out = dir.path().join(format!("store_{dtype:?}"));
        convert(
            &ConvertOptions {
                tsv: vec![tsv.clone()],
                out: out.clone(),
                dtype,
                skip_bad: false,
            },
            |_| {},
        )
        .unwrap();
        let store = FeatureStore::open(&out).unwrap();
        let mut rng = Rng(42);
        g.bench_function(format!("random_128_{dtype:?}"), |b| {
            b.iter(|| {
                let rows: Vec<usize> = (0..128)
                    .map(|_| (rng.next() % IMAGES as u64) as usize)
                    .collect();
                black_box(store.gather(&rows, None, &Device::Cpu).unwrap())
            })
        });
        // Reused host buffers: the library's copy rate without the allocator's page faults.
        let mut buf = RegionBuffers::default();
        g.bench_function(format!("random_128_{dtype:?}_into_reused_buffers"), |b| {
            b.iter(|| {
                let rows: Vec<usize> = (0..128)
                    .map(|_| (rng.next() % IMAGES as u64) as usize)
                    .collect();
                store.gather_into(&rows, None, &mut buf).unwrap();
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group!(features, benches);
criterion_main!(features);
