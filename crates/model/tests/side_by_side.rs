//! Micro-batches run side by side (`run_side_by_side`, each with its own dropout stream)
//! give the gradients of running them one after the other with the model's dropout stream
//! reseeded before each: gradient accumulation, only concurrent.

use candle_core::{Device, Tensor};
use msp_model::ops::GradSink;
use msp_model::{
    pretraining_loss, run_side_by_side, sum_gradients, take_gradients, with_dropout_stream, Config,
    Lxmert, SyntheticBatch, Variant,
};

/// The largest |a − b| over all variables, and the largest |a|.
fn max_difference(vars: &[Tensor], a: &[Option<Tensor>], b: &[Option<Tensor>]) -> (f32, f32) {
    let (mut diff, mut scale) = (0f32, 0f32);
    for ((v, a), b) in vars.iter().zip(a).zip(b) {
        let (Some(x), Some(y)) = (a, b) else {
            panic!("a variable {:?} has a gradient in one store only", v.dims())
        };
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in x.iter().zip(&y) {
            diff = diff.max((x - y).abs());
            scale = scale.max(x.abs());
        }
    }
    (diff, scale)
}

#[test]
fn side_by_side_micro_batches_match_accumulation() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    for variant in [Variant::LxmertS, Variant::Lxmert] {
        let model = Lxmert::new(&cfg, variant, 5, &dev).unwrap();
        let vars: Vec<Tensor> = model
            .named_vars()
            .into_iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect();
        let batches: Vec<SyntheticBatch> = (0..3)
            .map(|i| SyntheticBatch::new(&cfg, 2 + i, 6, 4, 40 + i as u64, &dev).unwrap())
            .collect();
        let seeds = [11u64, 12, 13];
        let grads_of = |i: usize| {
            let sink = GradSink::new();
            let loss = sink.collect(|| pretraining_loss(&model, &batches[i], true).unwrap());
            take_gradients(sink.backward(&loss).unwrap(), &vars)
        };
        let one_after_the_other: Vec<_> = (0..3)
            .map(|i| {
                model.reseed_dropout(seeds[i]);
                grads_of(i)
            })
            .collect();
        let sequential = sum_gradients(one_after_the_other, &vars).unwrap();
        let side_by_side =
            run_side_by_side(3, |i| with_dropout_stream(seeds[i], || grads_of(i))).unwrap();
        let concurrent = sum_gradients(side_by_side, &vars).unwrap();
        let (diff, scale) = max_difference(&vars, &sequential, &concurrent);
        assert!(
            diff <= 1e-5 * scale,
            "{variant}: differs by {diff} (scale {scale})"
        );

        // Other dropout streams give other gradients: the comparison above can fail.
        let other =
            run_side_by_side(3, |i| with_dropout_stream(seeds[i] + 100, || grads_of(i))).unwrap();
        let other = sum_gradients(other, &vars).unwrap();
        let (diff, scale) = max_difference(&vars, &sequential, &other);
        assert!(
            diff > 1e-3 * scale,
            "{variant}: dropout streams ignored ({diff}, {scale})"
        );
    }
}
