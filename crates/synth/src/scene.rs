//! Scene graphs: objects with a category, attributes and a box, relations computed from the
//! boxes (left of, on, under, near) and actions between compatible pairs.

use rand::Rng as _;

use crate::config::WorldConfig;
use crate::lexicon::{self, Action, Lexicon, Super, SCENE_TYPES};
use crate::rng::Rng;

/// One object of a scene.
#[derive(Clone, Debug)]
pub(crate) struct Object {
    pub(crate) cat: usize,
    pub(crate) attrs: Vec<usize>,
    /// (x1, y1, x2, y2) in pixels.
    pub(crate) bbox: [f32; 4],
    pub(crate) salience: f32,
}

/// One image's scene graph.
#[derive(Clone, Debug)]
pub(crate) struct Scene {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) scene_type: usize,
    pub(crate) objects: Vec<Object>,
    /// (subject, action, object) indices into `objects`.
    pub(crate) actions: Vec<(usize, Action, usize)>,
    /// Background stuff categories visible (with their one attribute and box).
    pub(crate) stuff: Vec<Object>,
}

/// A spatial relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Spatial {
    LeftOf,
    RightOf,
    On,
    Under,
    Near,
}

impl Spatial {
    pub(crate) const ALL: [Spatial; 5] = [
        Spatial::LeftOf,
        Spatial::RightOf,
        Spatial::On,
        Spatial::Under,
        Spatial::Near,
    ];
}

pub(crate) fn pick_weighted(rng: &mut Rng, weights: &[f32]) -> usize {
    let total: f32 = weights.iter().sum();
    let mut u = rng.random::<f32>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

pub(crate) fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn clamp_box(b: [f32; 4], w: f32, h: f32) -> [f32; 4] {
    let mut x1 = b[0].clamp(0.0, w - 8.0);
    let mut y1 = b[1].clamp(0.0, h - 8.0);
    let mut x2 = b[2].clamp(0.0, w);
    let mut y2 = b[3].clamp(0.0, h);
    if x2 < x1 + 8.0 {
        x2 = (x1 + 8.0).min(w);
        x1 = x2 - 8.0;
    }
    if y2 < y1 + 8.0 {
        y2 = (y1 + 8.0).min(h);
        y1 = y2 - 8.0;
    }
    [x1, y1, x2, y2]
}

/// Picks one or two attributes of different kinds for a category.
pub(crate) fn pick_attributes(rng: &mut Rng, lex: &Lexicon, cat: usize, max: usize) -> Vec<usize> {
    let allowed = &lex.allowed[cat];
    if allowed.is_empty() {
        return Vec::new();
    }
    let n = if max >= 2 && rng.random::<f32>() < 0.45 {
        2
    } else {
        1
    };
    let mut out: Vec<usize> = Vec::new();
    for _ in 0..8 {
        if out.len() == n {
            break;
        }
        let a = *pick(rng, allowed);
        if out.iter().all(|&b| lex.attr(b).kind != lex.attr(a).kind) {
            out.push(a);
        }
    }
    out
}

impl Scene {
    /// Draws one scene.
    pub(crate) fn generate(rng: &mut Rng, cfg: &WorldConfig, lex: &Lexicon) -> Scene {
        let width = rng.random_range(480..=640u32);
        let height = rng.random_range(360..=480u32);
        let (w, h) = (width as f32, height as f32);
        let scene_type = rng.random_range(0..SCENE_TYPES.len());
        let def = &SCENE_TYPES[scene_type];
        let pool: Vec<(usize, f32)> = def
            .things
            .iter()
            .filter_map(|(l, wt)| lex.cat_id(l).map(|c| (c, *wt)))
            .collect();
        let pool: Vec<(usize, f32)> = if pool.iter().filter(|p| p.1 > 0.0).count() >= 3 {
            pool
        } else {
            (0..lex.num_categories())
                .filter(|&c| {
                    !matches!(lex.cat(c).sup, Super::Stuff | Super::Part | Super::Clothing)
                })
                .map(|c| (c, 1.0))
                .collect()
        };
        let target = rng.random_range(cfg.min_objects..=cfg.max_objects);
        let mut objects: Vec<Object> = Vec::new();
        let mut actions: Vec<(usize, Action, usize)> = Vec::new();
        let mut used_primary: Vec<usize> = Vec::new();

        let new_obj = |rng: &mut Rng, cat: usize| Object {
            cat,
            attrs: pick_attributes(rng, lex, cat, 2),
            bbox: [0.0; 4],
            salience: 0.0,
        };

        let mut guard = 0;
        while objects.len() < target && guard < 50 {
            guard += 1;
            let weights: Vec<f32> = pool
                .iter()
                .map(|(c, wt)| if used_primary.contains(c) { 0.0 } else { *wt })
                .collect();
            if weights.iter().all(|x| *x <= 0.0) {
                break;
            }
            let cat = pool[pick_weighted(rng, &weights)].0;
            used_primary.push(cat);
            let remaining = target - objects.len();
            let mult = 1 + pick_weighted(rng, &[0.42, 0.26, 0.18, 0.14]);
            let mult = mult.min(remaining);
            // Place the group: a depth line, then side by side.
            let sup = lex.cat(cat).sup;
            let (sw, sh) = lex.cat(cat).size;
            let ground = rng.random_range(0.55..0.98f32) * h;
            let depth = 0.55 + 0.6 * (ground / h);
            let bw = sw * w * depth * rng.random_range(0.8..1.2f32);
            let bh = sh * h * depth * rng.random_range(0.8..1.2f32);
            let span = bw * mult as f32 * 1.15;
            let start = rng.random_range(0.0..(w - span).max(1.0));
            let is_person = sup == Super::Person;
            let mut members = Vec::new();
            for k in 0..mult {
                let x1 = start + k as f32 * bw * 1.15 + rng.random_range(-0.05..0.05f32) * bw;
                let y2 = ground + rng.random_range(-0.04..0.04f32) * h;
                let mut o = new_obj(rng, cat);
                o.bbox = clamp_box([x1, y2 - bh, x1 + bw, y2], w, h);
                objects.push(o);
                members.push(objects.len() - 1);
            }
            // Actions of the group's members, each adding an object while there is room.
            for &s in &members {
                let subj_label = lex.label(cat);
                for action in Action::ALL {
                    if objects.len() >= target {
                        break;
                    }
                    let p = match (action, is_person) {
                        (Action::Wearing, true) => 0.55,
                        (Action::Holding, true) => 0.3,
                        (Action::Riding, true) => 0.22,
                        (Action::Eating, true) => 0.12,
                        (Action::Holding, false) => 0.3,
                        (Action::Eating, false) => 0.25,
                        _ => 0.0,
                    };
                    if p == 0.0 || rng.random::<f32>() >= p {
                        continue;
                    }
                    let options: Vec<usize> = action
                        .objects_for(subj_label, sup)
                        .iter()
                        .filter_map(|l| lex.cat_id(l))
                        .collect();
                    if options.is_empty() {
                        continue;
                    }
                    // A person rides one thing at most.
                    if action == Action::Riding && actions.iter().any(|a| a.0 == s && a.1 == action)
                    {
                        continue;
                    }
                    let oc = *pick(rng, &options);
                    let sb = objects[s].bbox;
                    let (pw, ph) = (sb[2] - sb[0], sb[3] - sb[1]);
                    let (ow, oh) = lex.cat(oc).size;
                    let mut o = new_obj(rng, oc);
                    let bbox = match action {
                        Action::Wearing => {
                            let (t, b, fw) = match lex.label(oc) {
                                "hat" | "helmet" => (0.0, 0.13, 0.45),
                                "glasses" => (0.06, 0.11, 0.35),
                                "scarf" => (0.16, 0.26, 0.6),
                                "tie" => (0.22, 0.48, 0.15),
                                "pants" => (0.5, 0.9, 0.7),
                                "shoe" => (0.9, 1.0, 0.3),
                                "dress" | "coat" => (0.2, 0.8, 0.85),
                                _ => (0.2, 0.55, 0.85),
                            };
                            let cx = (sb[0] + sb[2]) / 2.0;
                            [
                                cx - fw * pw / 2.0,
                                sb[1] + t * ph,
                                cx + fw * pw / 2.0,
                                sb[1] + b * ph,
                            ]
                        }
                        Action::Holding => {
                            let bw = ow * w * 0.8;
                            let bh = oh * h * 0.8;
                            let right = rng.random::<bool>();
                            let x = if right {
                                sb[2] - bw * 0.3
                            } else {
                                sb[0] - bw * 0.7
                            };
                            let y = sb[1] + rng.random_range(0.35..0.55f32) * ph;
                            [x, y - bh / 2.0, x + bw, y + bh / 2.0]
                        }
                        Action::Riding => {
                            let bw = (ow * w).max(pw * 1.2);
                            let bh = (oh * h).max(ph * 0.35);
                            let cx = (sb[0] + sb[2]) / 2.0;
                            let top = sb[1] + 0.55 * ph;
                            [cx - bw / 2.0, top, cx + bw / 2.0, top + bh]
                        }
                        Action::Eating => {
                            let bw = ow * w * 0.8;
                            let bh = oh * h * 0.8;
                            let cx = (sb[0] + sb[2]) / 2.0 + rng.random_range(-0.3..0.3f32) * pw;
                            let y = sb[1] + 0.15 * ph;
                            [cx - bw / 2.0, y, cx + bw / 2.0, y + bh]
                        }
                    };
                    o.bbox = clamp_box(bbox, w, h);
                    objects.push(o);
                    actions.push((s, action, objects.len() - 1));
                }
            }
        }

        // Support and cover placement: move some small free objects onto or under furniture.
        let involved: Vec<usize> = actions.iter().flat_map(|a| [a.0, a.2]).collect();
        let supports: Vec<usize> = (0..objects.len())
            .filter(|&i| lexicon::SUPPORTS.contains(&lex.label(objects[i].cat)))
            .collect();
        let covers: Vec<usize> = (0..objects.len())
            .filter(|&i| lexicon::COVERS.contains(&lex.label(objects[i].cat)))
            .collect();
        for i in 0..objects.len() {
            if involved.contains(&i) || supports.contains(&i) {
                continue;
            }
            let c = lex.cat(objects[i].cat);
            let label = c.words[0];
            let b = objects[i].bbox;
            let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
            if lexicon::can_be_on(c.sup, label) && !supports.is_empty() && rng.random::<f32>() < 0.6
            {
                let s = *pick(rng, &supports);
                let sb = objects[s].bbox;
                let sw = sb[2] - sb[0];
                if bw < sw * 0.9 {
                    let x1 = sb[0] + rng.random_range(0.0..(sw - bw).max(1.0));
                    let y2 = sb[1] + (sb[3] - sb[1]) * rng.random_range(0.02..0.15f32);
                    objects[i].bbox = clamp_box([x1, y2 - bh, x1 + bw, y2], w, h);
                    continue;
                }
            }
            if lexicon::can_be_under(c.sup, label)
                && !covers.is_empty()
                && rng.random::<f32>() < 0.3
            {
                let s = *pick(rng, &covers);
                let sb = objects[s].bbox;
                let (sw, sh) = (sb[2] - sb[0], sb[3] - sb[1]);
                let nh = bh.min(sh * 0.55);
                let nw = (bw * nh / bh.max(1.0)).min(sw * 0.7);
                let x1 = sb[0] + rng.random_range(0.0..(sw - nw).max(1.0));
                objects[i].bbox = clamp_box([x1, sb[3] - nh, x1 + nw, sb[3]], w, h);
            }
        }

        for o in objects.iter_mut() {
            let area = (o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1]) / (w * h);
            o.salience = lex.cat(o.cat).sup.salience()
                * (0.05 + area).sqrt()
                * rng.random_range(0.7..1.3f32);
        }
        for a in &actions {
            objects[a.0].salience *= 1.3;
        }

        // Background stuff.
        let mut stuff = Vec::new();
        for label in def.stuff {
            let Some(cat) = lex.cat_id(label) else {
                continue;
            };
            if rng.random::<f32>() < 0.25 {
                continue;
            }
            let (sw, sh) = lex.cat(cat).size;
            let bw = sw * w * rng.random_range(0.7..1.0f32);
            let bh = sh * h * rng.random_range(0.7..1.2f32);
            let x1 = rng.random_range(0.0..(w - bw).max(1.0));
            let y1 = match *label {
                "sky" | "cloud" | "building" | "wall" | "tree" => {
                    rng.random_range(0.0..0.15f32) * h
                }
                "pole" | "sign" | "fence" | "window" => rng.random_range(0.1..0.5f32) * h,
                _ => h - bh - rng.random_range(0.0..0.05f32) * h,
            };
            let mut o = new_obj(rng, cat);
            o.attrs.truncate(1);
            o.bbox = clamp_box([x1, y1, x1 + bw, y1 + bh], w, h);
            stuff.push(o);
        }
        Scene {
            width,
            height,
            scene_type,
            objects,
            actions,
            stuff,
        }
    }

    /// How many objects of a category.
    pub(crate) fn count(&self, cat: usize) -> usize {
        self.objects.iter().filter(|o| o.cat == cat).count()
    }

    /// Categories present, sorted.
    pub(crate) fn categories(&self) -> Vec<usize> {
        let mut c: Vec<usize> = self.objects.iter().map(|o| o.cat).collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// The action between two objects, if any.
    pub(crate) fn action(&self, a: usize, b: usize) -> Option<Action> {
        self.actions
            .iter()
            .find(|x| x.0 == a && x.2 == b)
            .map(|x| x.1)
    }

    /// Whether a spatial relation holds between objects `a` and `b`, judged from the boxes.
    pub(crate) fn spatial(&self, lex: &Lexicon, rel: Spatial, a: usize, b: usize) -> bool {
        if a == b {
            return false;
        }
        let (x, y) = (&self.objects[a].bbox, &self.objects[b].bbox);
        let w = self.width as f32;
        let margin = 0.02 * w;
        let (xc, hb) = ((x[0] + x[2]) / 2.0, y[3] - y[1]);
        let bl = lex.label(self.objects[b].cat);
        match rel {
            Spatial::LeftOf => x[2] + margin < y[0],
            Spatial::RightOf => y[2] + margin < x[0],
            Spatial::On => {
                lexicon::SUPPORTS.contains(&bl)
                    && xc > y[0]
                    && xc < y[2]
                    && x[3] >= y[1] - 0.02 * hb
                    && x[3] <= y[1] + 0.35 * hb
                    && (x[3] - x[1]) < 1.5 * hb
                    && self.action(a, b).is_none()
                    && self.action(b, a).is_none()
            }
            Spatial::Under => {
                lexicon::COVERS.contains(&bl)
                    && xc > y[0]
                    && xc < y[2]
                    && x[1] > y[1] + 0.3 * hb
                    && x[3] <= y[3] + 0.05 * hb
                    && (x[3] - x[1]) < 0.7 * hb
            }
            Spatial::Near => {
                let dx = (y[0] - x[2]).max(x[0] - y[2]).max(0.0);
                let dy = (y[1] - x[3]).max(x[1] - y[3]).max(0.0);
                let gap = (dx * dx + dy * dy).sqrt();
                gap > 0.0
                    && gap < 0.06 * w
                    && self.action(a, b).is_none()
                    && self.action(b, a).is_none()
            }
        }
    }

    /// Objects that are the only one of their category (questions can say "the X").
    pub(crate) fn unique_objects(&self) -> Vec<usize> {
        (0..self.objects.len())
            .filter(|&i| self.count(self.objects[i].cat) == 1)
            .collect()
    }

    /// Object indices by decreasing salience.
    pub(crate) fn by_salience(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.objects.len()).collect();
        idx.sort_by(|&a, &b| {
            self.objects[b]
                .salience
                .total_cmp(&self.objects[a].salience)
                .then(a.cmp(&b))
        });
        idx
    }

    /// Whether an object has an attribute.
    pub(crate) fn has_attr(&self, o: usize, attr: usize) -> bool {
        self.objects[o].attrs.contains(&attr)
    }
}
