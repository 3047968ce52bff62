//! The simulated Faster R-CNN: turns a scene into `regions_per_image` detected regions (the
//! objects plus filler: duplicates, parts, background stuff), with noisy object/attribute
//! labels and features from a fixed random map of (category, attributes, box) plus noise.

use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};

use crate::config::WorldConfig;
use crate::lexicon::{self, Lexicon, Super};
use crate::rng::Rng;
use crate::scene::{pick, pick_attributes, Scene};

/// Where a region comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The box of scene object `i`.
    Object(usize),
    /// A jittered duplicate box of object `i`.
    Duplicate(usize),
    /// A part of object `i` (or of a stuff region when `stuff` is true).
    Part { parent: usize, stuff: bool },
    /// Background stuff region `i` of the scene.
    Stuff(usize),
}

/// One detected region.
#[derive(Clone, Debug)]
pub(crate) struct Region {
    pub(crate) source: Source,
    pub(crate) cat: usize,
    pub(crate) attrs: Vec<usize>,
    pub(crate) bbox: [f32; 4],
    /// Category whose direction leaks weakly into a part's features (its parent).
    pub(crate) parent_cat: Option<usize>,
    pub(crate) obj_label: usize,
    pub(crate) obj_conf: f32,
    pub(crate) attr_label: usize,
    pub(crate) attr_conf: f32,
}

/// The fixed random "detector" map: unit directions per category and attribute, and a box
/// projection, all drawn once per world.
#[derive(Debug)]
pub(crate) struct DetectorMap {
    dim: usize,
    cat_dirs: Vec<Vec<f32>>,
    attr_dirs: Vec<Vec<f32>>,
    box_dirs: Vec<Vec<f32>>,
}

fn unit(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| StandardNormal.sample(rng)).collect();
    normalise(&mut v);
    v
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

impl DetectorMap {
    pub(crate) fn new(rng: &mut Rng, cfg: &WorldConfig, lex: &Lexicon) -> DetectorMap {
        let dim = cfg.feature_dim;
        let groups = Super::ALL;
        let group_dirs: Vec<Vec<f32>> = groups.iter().map(|_| unit(rng, dim)).collect();
        let rho = cfg.group_similarity;
        let cat_dirs = (0..lex.num_categories())
            .map(|c| {
                let g = groups
                    .iter()
                    .position(|g| *g == lex.cat(c).sup)
                    .unwrap_or(0);
                let own = unit(rng, dim);
                let mut v: Vec<f32> = own
                    .iter()
                    .zip(&group_dirs[g])
                    .map(|(a, b)| (1.0 - rho).sqrt() * a + rho.sqrt() * b)
                    .collect();
                normalise(&mut v);
                v
            })
            .collect();
        let attr_dirs = (0..lex.num_attributes()).map(|_| unit(rng, dim)).collect();
        let box_dirs = (0..5).map(|_| unit(rng, dim)).collect();
        DetectorMap {
            dim,
            cat_dirs,
            attr_dirs,
            box_dirs,
        }
    }

    /// Writes the features of one region into `out` (length `dim`).
    pub(crate) fn features(
        &self,
        rng: &mut Rng,
        cfg: &WorldConfig,
        region: &Region,
        img_w: f32,
        img_h: f32,
        out: &mut [f32],
    ) {
        let s = cfg.feature_noise;
        for o in out.iter_mut() {
            let n: f32 = StandardNormal.sample(rng);
            *o = s * n;
        }
        let add = |out: &mut [f32], dir: &[f32], scale: f32| {
            for (o, d) in out.iter_mut().zip(dir) {
                *o += scale * d;
            }
        };
        add(out, &self.cat_dirs[region.cat], cfg.category_signal * s);
        if let Some(p) = region.parent_cat {
            add(out, &self.cat_dirs[p], 0.3 * cfg.category_signal * s);
        }
        for &a in &region.attrs {
            add(out, &self.attr_dirs[a], cfg.attribute_signal * s);
        }
        let b = region.bbox;
        let coords = [
            (b[0] + b[2]) / (2.0 * img_w) - 0.5,
            (b[1] + b[3]) / (2.0 * img_h) - 0.5,
            (b[2] - b[0]) / img_w - 0.5,
            (b[3] - b[1]) / img_h - 0.5,
            ((b[2] - b[0]) * (b[3] - b[1]) / (img_w * img_h)).sqrt() - 0.5,
        ];
        for (c, dir) in coords.iter().zip(&self.box_dirs) {
            add(out, dir, 2.0 * c * cfg.box_signal * s);
        }
        debug_assert_eq!(out.len(), self.dim);
    }
}

fn jitter(rng: &mut Rng, b: [f32; 4], amount: f32, w: f32, h: f32) -> [f32; 4] {
    let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
    let mut r = [
        b[0] + rng.random_range(-amount..=amount) * bw,
        b[1] + rng.random_range(-amount..=amount) * bh,
        b[2] + rng.random_range(-amount..=amount) * bw,
        b[3] + rng.random_range(-amount..=amount) * bh,
    ];
    r[0] = r[0].clamp(0.0, w - 4.0);
    r[1] = r[1].clamp(0.0, h - 4.0);
    r[2] = r[2].clamp(r[0] + 4.0, w);
    r[3] = r[3].clamp(r[1] + 4.0, h);
    r
}

/// Detects the regions of one scene.
pub(crate) fn detect(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    scene: &Scene,
) -> Vec<Region> {
    let (w, h) = (scene.width as f32, scene.height as f32);
    let mut regions: Vec<Region> = Vec::with_capacity(cfg.regions_per_image);
    let mk = |source, cat, attrs, bbox, parent_cat| Region {
        source,
        cat,
        attrs,
        bbox,
        parent_cat,
        obj_label: 0,
        obj_conf: 0.0,
        attr_label: 0,
        attr_conf: 0.0,
    };
    for (i, o) in scene.objects.iter().enumerate() {
        let bbox = jitter(rng, o.bbox, 0.03, w, h);
        regions.push(mk(Source::Object(i), o.cat, o.attrs.clone(), bbox, None));
    }
    // Filler candidates.
    let n_stuff = scene.stuff.len();
    let mut guard = 0;
    while regions.len() < cfg.regions_per_image {
        guard += 1;
        let u: f32 = rng.random();
        let filler = if guard > 200 {
            2
        } else if u < cfg.duplicate_fraction {
            0
        } else if u < cfg.duplicate_fraction + cfg.part_fraction {
            1
        } else {
            2
        };
        match filler {
            0 if !scene.objects.is_empty() => {
                let i = rng.random_range(0..scene.objects.len());
                let o = &scene.objects[i];
                let bbox = jitter(rng, o.bbox, 0.15, w, h);
                regions.push(mk(Source::Duplicate(i), o.cat, o.attrs.clone(), bbox, None));
            }
            1 => {
                // A part of an object or of stuff that has parts.
                let with_parts: Vec<(usize, bool)> = scene
                    .objects
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| {
                        !lexicon::parts_of(lex.cat(o.cat).sup, lex.label(o.cat)).is_empty()
                    })
                    .map(|(i, _)| (i, false))
                    .chain(
                        scene
                            .stuff
                            .iter()
                            .enumerate()
                            .filter(|(_, o)| {
                                !lexicon::parts_of(lex.cat(o.cat).sup, lex.label(o.cat)).is_empty()
                            })
                            .map(|(i, _)| (i, true)),
                    )
                    .collect();
                if with_parts.is_empty() {
                    continue;
                }
                let (p, is_stuff) = *pick(rng, &with_parts);
                let parent = if is_stuff {
                    &scene.stuff[p]
                } else {
                    &scene.objects[p]
                };
                let names = lexicon::parts_of(lex.cat(parent.cat).sup, lex.label(parent.cat));
                let Some(part) = lex.cat_id(pick::<&str>(rng, names)) else {
                    continue;
                };
                let pb = parent.bbox;
                let (pw, ph) = (pb[2] - pb[0], pb[3] - pb[1]);
                let (fw, fh) = lex.cat(part).size;
                let bw = (fw * pw).max(6.0);
                let bh = (fh * ph).max(6.0);
                let x1 = pb[0] + rng.random_range(0.0..(pw - bw).max(1.0));
                let y1 = pb[1] + rng.random_range(0.0..(ph - bh).max(1.0));
                let bbox = jitter(rng, [x1, y1, x1 + bw, y1 + bh], 0.02, w, h);
                let attrs = pick_attributes(rng, lex, part, 1);
                regions.push(mk(
                    Source::Part {
                        parent: p,
                        stuff: is_stuff,
                    },
                    part,
                    attrs,
                    bbox,
                    Some(parent.cat),
                ));
            }
            _ => {
                if n_stuff == 0 {
                    // No background at all: fall back to a duplicate.
                    if scene.objects.is_empty() {
                        break;
                    }
                    let i = rng.random_range(0..scene.objects.len());
                    let o = &scene.objects[i];
                    let bbox = jitter(rng, o.bbox, 0.2, w, h);
                    regions.push(mk(Source::Duplicate(i), o.cat, o.attrs.clone(), bbox, None));
                    continue;
                }
                let i = rng.random_range(0..n_stuff);
                let s = &scene.stuff[i];
                let bbox = jitter(rng, s.bbox, 0.25, w, h);
                regions.push(mk(Source::Stuff(i), s.cat, s.attrs.clone(), bbox, None));
            }
        }
    }
    regions.truncate(cfg.regions_per_image);
    // Noisy labels with confidences that correlate with correctness.
    let n_attr = lex.num_attributes();
    for r in regions.iter_mut() {
        let confusable = lex.confusable(r.cat);
        let correct = confusable.is_empty() || rng.random::<f32>() < cfg.object_label_accuracy;
        if correct {
            r.obj_label = r.cat;
            r.obj_conf = 0.5 + 0.49 * rng.random::<f32>().sqrt();
        } else {
            r.obj_label = *pick(rng, &confusable);
            r.obj_conf = 0.2 + 0.45 * rng.random::<f32>();
        }
        if matches!(r.source, Source::Duplicate(_)) {
            r.obj_conf *= 0.85;
        }
        let attr_correct =
            !r.attrs.is_empty() && rng.random::<f32>() < cfg.attribute_label_accuracy;
        if attr_correct {
            r.attr_label = *pick(rng, &r.attrs);
            r.attr_conf = 0.25 + 0.5 * rng.random::<f32>().sqrt();
        } else {
            let mut a = rng.random_range(0..n_attr);
            if r.attrs.contains(&a) {
                a = (a + 1 + rng.random_range(0..n_attr - 1)) % n_attr;
            }
            r.attr_label = a;
            r.attr_conf = 0.1 + 0.4 * rng.random::<f32>();
        }
    }
    // A detector lists boxes by decreasing confidence.
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_by(|&a, &b| {
        regions[b]
            .obj_conf
            .total_cmp(&regions[a].obj_conf)
            .then(a.cmp(&b))
    });
    order.into_iter().map(|i| regions[i].clone()).collect()
}
