//! MLM masking (LXMERT's `random_word`, with an optional preference for some words).

use std::collections::HashSet;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};

/// Label of a position that is not predicted (LXMERT's `-1`; `msp_model::kept_rows` ignores
/// every negative label, so HF's `-100` would work as well).
pub const IGNORE_LABEL: i64 = -1;

/// MLM masking probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlmConfig {
    /// Probability that a word piece is selected (LXMERT `--wordMaskRate` 0.15).
    pub prob: f64,
    /// Probability that a piece of a *preferred* word is selected (used only when the
    /// builder is given [`PreferredWords`], i.e. the phrase stage). Default 0.3: twice the
    /// base rate, so attribute/category words are masked twice as often as other words while
    /// every word stays a candidate.
    pub preferred_prob: f64,
    /// Of the selected pieces, the fraction replaced by `[MASK]` (0.8).
    pub mask_frac: f64,
    /// Of the selected pieces, the fraction replaced by a uniformly random id of the whole
    /// vocabulary (0.1); the rest (0.1) is kept unchanged.
    pub random_frac: f64,
}

impl Default for MlmConfig {
    fn default() -> Self {
        Self {
            prob: 0.15,
            preferred_prob: 0.3,
            mask_frac: 0.8,
            random_frac: 0.1,
        }
    }
}

impl MlmConfig {
    /// Checks that every probability is in [0, 1] and `mask_frac + random_frac ≤ 1`.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("mlm.prob", self.prob),
            ("mlm.preferred_prob", self.preferred_prob),
            ("mlm.mask_frac", self.mask_frac),
            ("mlm.random_frac", self.random_frac),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(TaskError::Config {
                    field,
                    reason: format!("{v} is not a probability"),
                });
            }
        }
        if self.mask_frac + self.random_frac > 1.0 + 1e-12 {
            return Err(TaskError::Config {
                field: "mlm.random_frac",
                reason: "mask_frac + random_frac exceeds 1".into(),
            });
        }
        Ok(())
    }
}

/// Words whose pieces are masked with [`MlmConfig::preferred_prob`] (phrase stage: the
/// attribute and category names). Stored lower-case and singular-folded
/// ([`msp_text::singular`]); a multi-word name ("traffic light") adds each of its words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferredWords {
    words: HashSet<String>,
}

impl PreferredWords {
    /// Builds the set from names (label names, attribute names, …).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let mut words = HashSet::new();
        for name in names {
            // A vocabulary line may list synonyms separated by commas.
            for w in name
                .as_ref()
                .to_lowercase()
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty())
            {
                words.insert(msp_text::singular(w));
            }
        }
        Self { words }
    }

    /// Whether `word` (any case, singular or plural) is preferred.
    pub fn contains(&self, word: &str) -> bool {
        self.words
            .contains(&msp_text::singular(&word.to_lowercase()))
    }

    /// Number of distinct folded words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// For each word piece of an encoding (`tokens`, as `msp_text::Encoding::tokens`),
    /// whether it belongs to a preferred word. A word is a piece followed by its `##`
    /// continuation pieces (BERT's basic token), so "zebras" → `zebra ##s` marks both pieces.
    pub fn mark(&self, tokens: &[String]) -> Vec<bool> {
        let mut out = vec![false; tokens.len()];
        let mut i = 0;
        while i < tokens.len() {
            let mut j = i + 1;
            let mut word = tokens[i].clone();
            while j < tokens.len() {
                match tokens[j].strip_prefix("##") {
                    Some(rest) => {
                        word.push_str(rest);
                        j += 1;
                    }
                    None => break,
                }
            }
            if self.contains(&word) {
                out[i..j].iter_mut().for_each(|m| *m = true);
            }
            i = j;
        }
        out
    }
}

/// What happened to a selected piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlmAction {
    /// Replaced by `[MASK]`.
    Mask,
    /// Replaced by a random vocabulary id.
    Random,
    /// Left unchanged (still predicted).
    Keep,
}

/// One masked sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlmMasked {
    /// The input ids after masking.
    pub input_ids: Vec<u32>,
    /// The original id at selected positions, [`IGNORE_LABEL`] elsewhere.
    pub labels: Vec<i64>,
    /// Per position: what was done (`None` = not selected).
    pub actions: Vec<Option<MlmAction>>,
}

impl MlmMasked {
    /// Number of selected (predicted) positions.
    pub fn num_selected(&self) -> usize {
        self.labels.iter().filter(|&&l| l >= 0).count()
    }
}

/// Masks word pieces for MLM. Special ids (`[CLS]`, `[SEP]`, `[PAD]`, …) and positions with
/// attention mask 0 are never selected; each other piece is selected independently (a
/// Bernoulli per piece, so the count varies and can be 0, as LXMERT).
#[derive(Debug, Clone)]
pub struct MlmMasker {
    cfg: MlmConfig,
    mask_id: u32,
    vocab_size: u32,
    never: Vec<u32>,
}

impl MlmMasker {
    /// A masker for a vocabulary of `vocab_size` ids with the given `[MASK]` id; `never`
    /// lists ids that are never selected (the tokenizer's `[CLS]`, `[SEP]`, `[PAD]`).
    pub fn new(cfg: MlmConfig, mask_id: u32, vocab_size: usize, never: Vec<u32>) -> Result<Self> {
        cfg.validate()?;
        if vocab_size == 0 || vocab_size > u32::MAX as usize || mask_id as usize >= vocab_size {
            return Err(TaskError::Config {
                field: "vocab_size",
                reason: format!("vocabulary of {vocab_size} ids with [MASK] = {mask_id}"),
            });
        }
        Ok(Self {
            cfg,
            mask_id,
            vocab_size: vocab_size as u32,
            never,
        })
    }

    /// A masker whose special ids come from the tokenizer (looked up, never assumed).
    pub fn from_tokenizer(cfg: MlmConfig, tok: &msp_text::BertTokenizer) -> Result<Self> {
        Self::new(
            cfg,
            tok.mask_id,
            tok.vocab_size(),
            vec![tok.cls_id, tok.sep_id, tok.pad_id],
        )
    }

    /// The configuration.
    pub fn config(&self) -> &MlmConfig {
        &self.cfg
    }

    /// Masks one sequence. `preferred` (same length as `input_ids`) marks pieces of
    /// preferred words, selected with `preferred_prob` instead of `prob`.
    pub fn mask<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        input_ids: &[u32],
        attention_mask: &[u32],
        preferred: Option<&[bool]>,
    ) -> Result<MlmMasked> {
        if attention_mask.len() != input_ids.len() {
            return Err(TaskError::Shape {
                name: "attention_mask",
                got: vec![attention_mask.len()],
                expected: format!("[{}] like input_ids", input_ids.len()),
            });
        }
        if let Some(p) = preferred {
            if p.len() != input_ids.len() {
                return Err(TaskError::Shape {
                    name: "preferred",
                    got: vec![p.len()],
                    expected: format!("[{}] like input_ids", input_ids.len()),
                });
            }
        }
        let mut out = MlmMasked {
            input_ids: input_ids.to_vec(),
            labels: vec![IGNORE_LABEL; input_ids.len()],
            actions: vec![None; input_ids.len()],
        };
        for (i, &id) in input_ids.iter().enumerate() {
            if attention_mask[i] == 0 || self.never.contains(&id) {
                continue;
            }
            let p = match preferred {
                Some(pr) if pr[i] => self.cfg.preferred_prob,
                _ => self.cfg.prob,
            };
            if rng.random::<f64>() >= p {
                continue;
            }
            out.labels[i] = id as i64;
            let u = rng.random::<f64>();
            let action = if u < self.cfg.mask_frac {
                out.input_ids[i] = self.mask_id;
                MlmAction::Mask
            } else if u < self.cfg.mask_frac + self.cfg.random_frac {
                out.input_ids[i] = rng.random_range(0..self.vocab_size);
                MlmAction::Random
            } else {
                MlmAction::Keep
            };
            out.actions[i] = Some(action);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const CLS: u32 = 2;
    const SEP: u32 = 3;
    const PAD: u32 = 0;
    const MASK: u32 = 4;

    fn masker(cfg: MlmConfig) -> MlmMasker {
        MlmMasker::new(cfg, MASK, 1000, vec![CLS, SEP, PAD]).unwrap()
    }

    #[test]
    fn rates_and_split_match_lxmert() {
        let m = masker(MlmConfig::default());
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // [CLS] 10 pieces [SEP] 4 pads.
        let mut ids = vec![CLS];
        ids.extend(100..110u32);
        ids.push(SEP);
        ids.extend([PAD; 4]);
        let att: Vec<u32> = ids.iter().map(|&i| u32::from(i != PAD)).collect();
        let (mut cand, mut sel, mut masked, mut random, mut kept) = (0usize, 0usize, 0, 0, 0);
        for _ in 0..20_000 {
            let out = m.mask(&mut rng, &ids, &att, None).unwrap();
            for (i, a) in out.actions.iter().enumerate() {
                let special = matches!(ids[i], CLS | SEP | PAD);
                if special {
                    assert!(a.is_none(), "special id selected");
                    assert_eq!(out.labels[i], IGNORE_LABEL);
                    assert_eq!(out.input_ids[i], ids[i]);
                    continue;
                }
                cand += 1;
                match a {
                    None => {
                        assert_eq!(out.labels[i], IGNORE_LABEL);
                        assert_eq!(out.input_ids[i], ids[i]);
                    }
                    Some(act) => {
                        sel += 1;
                        assert_eq!(out.labels[i], ids[i] as i64);
                        match act {
                            MlmAction::Mask => {
                                masked += 1;
                                assert_eq!(out.input_ids[i], MASK);
                            }
                            MlmAction::Random => {
                                random += 1;
                                assert!(out.input_ids[i] < 1000);
                            }
                            MlmAction::Keep => {
                                kept += 1;
                                assert_eq!(out.input_ids[i], ids[i]);
                            }
                        }
                    }
                }
            }
        }
        // 200k candidates: binomial sd of the rate ≈ 0.0008; tolerance 0.005.
        let rate = sel as f64 / cand as f64;
        assert!((rate - 0.15).abs() < 0.005, "rate {rate}");
        let f = |k: usize| k as f64 / sel as f64;
        assert!((f(masked) - 0.8).abs() < 0.01, "mask {}", f(masked));
        assert!((f(random) - 0.1).abs() < 0.01, "random {}", f(random));
        assert!((f(kept) - 0.1).abs() < 0.01, "kept {}", f(kept));
    }

    #[test]
    fn random_replacement_covers_whole_vocabulary() {
        let cfg = MlmConfig {
            prob: 1.0,
            mask_frac: 0.0,
            random_frac: 1.0,
            ..MlmConfig::default()
        };
        let m = MlmMasker::new(cfg, MASK, 8, vec![CLS, SEP, PAD]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = [0usize; 8];
        for _ in 0..4000 {
            let out = m.mask(&mut rng, &[7], &[1], None).unwrap();
            seen[out.input_ids[0] as usize] += 1;
        }
        // Uniform over all 8 ids, specials included (LXMERT draws from the whole vocab).
        for (id, &c) in seen.iter().enumerate() {
            assert!((c as f64 / 4000.0 - 0.125).abs() < 0.03, "id {id}: {c}");
        }
    }

    #[test]
    fn nothing_selected_with_zero_prob_and_padding_never() {
        let cfg = MlmConfig {
            prob: 0.0,
            preferred_prob: 1.0,
            ..MlmConfig::default()
        };
        let m = masker(cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let ids = [CLS, 50, 51, 52, SEP, 53];
        let att = [1, 1, 1, 1, 1, 0];
        let out = m.mask(&mut rng, &ids, &att, None).unwrap();
        assert_eq!(out.num_selected(), 0);
        assert_eq!(out.labels, vec![-1; 6]);
        // Preferred pieces are always selected here, the rest never, padding never.
        let pref = [false, false, true, false, false, true];
        let out = m.mask(&mut rng, &ids, &att, Some(&pref)).unwrap();
        assert_eq!(out.labels, vec![-1, -1, 51, -1, -1, -1]);
    }

    #[test]
    fn preferred_words_mark_whole_words() {
        let p = PreferredWords::new(&["zebra", "traffic light", "red,crimson"]);
        let toks: Vec<String> = [
            "[CLS]", "two", "zebra", "##s", "near", "traffic", "red", "##dish", "[SEP]",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            p.mark(&toks),
            vec![false, false, true, true, false, true, false, false, false]
        );
        assert!(p.contains("Crimson"));
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn preferred_rate_is_applied() {
        let m = masker(MlmConfig::default());
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let ids = [60u32, 61];
        let pref = [true, false];
        let mut counts = [0usize; 2];
        for _ in 0..40_000 {
            let out = m.mask(&mut rng, &ids, &[1, 1], Some(&pref)).unwrap();
            for (c, l) in counts.iter_mut().zip(&out.labels) {
                *c += usize::from(*l >= 0);
            }
        }
        assert!((counts[0] as f64 / 40_000.0 - 0.3).abs() < 0.01);
        assert!((counts[1] as f64 / 40_000.0 - 0.15).abs() < 0.01);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let m = masker(MlmConfig::default());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(matches!(
            m.mask(&mut rng, &[1, 2], &[1], None),
            Err(TaskError::Shape {
                name: "attention_mask",
                ..
            })
        ));
        let bad = MlmConfig {
            mask_frac: 0.95,
            ..MlmConfig::default()
        };
        assert!(matches!(
            MlmMasker::new(bad, MASK, 10, vec![]),
            Err(TaskError::Config { .. })
        ));
        assert!(MlmMasker::new(MlmConfig::default(), 10, 10, vec![]).is_err());
    }
}
