//! `msp-text`: the text side of msp (multi-stage pre-training of LXMERT-S).
//!
//! - [`BertTokenizer`]: BERT uncased WordPiece through the `tokenizers` crate, from a local
//!   `vocab.txt`, a `tokenizer.json` or the local Hugging Face cache (never downloads).
//!   [`BertTokenizer::encode`] returns fixed-length ids, masks and **word-level position
//!   ids** as LXMERT-S uses them (`[CLS]`/`[SEP]` = 1, padding 0, the k-th whitespace word
//!   = k + 2 for all its pieces and punctuation) or sequential ones.
//! - [`write_vocab_file`]: a deterministic `vocab.txt` for the synthetic world.
//! - Readers/writers: COCO captions, LXMERT pre-training JSON, Visual Genome region
//!   descriptions (streamed, one image in memory at a time), and in [`downstream`] the VQA,
//!   GQA, NLVR2 and Flickr30k files and answer vocabularies.
//! - [`VerbLexicon`] and [`PhraseBuilder`]: phrase-stage text from VG region descriptions,
//!   dropping phrases that contain a verb, with a lexicon derived from WordNet.
//! - [`LabelVocab`] (token-stage text), [`topic_words`] (TITP/TITS topics) and
//!   [`normalize_answer`] / [`convert_ans`].
//!
//! Key design choices. Word positions are derived from the tokenizer's byte offsets mapped
//! back to whitespace words of the original text, because BERT's pre-tokenizer already splits
//! punctuation into separate "words" and its word ids cannot tell `man's` from `man 's`.
//! Special-token ids are always looked up, never assumed (real BERT has `[CLS]`=101, the
//! synthetic vocabulary 2). The verb filter is a small, documented rule system over WordNet
//! counts and morphology rather than a statistical tagger, so it is deterministic, needs no
//! model files and is exactly reproducible from the committed lexicon (see [`VerbLexicon`]).
//!
//! ```
//! use msp_text::{write_vocab_file, BertTokenizer, PositionMode};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let vocab = dir.path().join("vocab.txt");
//! let words: Vec<String> = ["a", "man", "hat", "red"].iter().map(|s| s.to_string()).collect();
//! write_vocab_file(&vocab, &words).unwrap();
//!
//! let tok = BertTokenizer::from_vocab_file(&vocab).unwrap();
//! let enc = tok.encode("a man's red hat.", 12, PositionMode::Word).unwrap();
//! assert_eq!(
//!     enc.tokens[..9],
//!     ["[CLS]", "a", "man", "'", "s", "red", "hat", ".", "[SEP]"]
//! );
//! // [CLS]/[SEP] = 1, word k → k + 2 for all its pieces and punctuation, padding 0.
//! assert_eq!(enc.position_ids, [1, 2, 3, 3, 3, 4, 5, 5, 1, 0, 0, 0]);
//! assert_eq!(enc.attention_mask, [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
//! assert_eq!(enc.input_ids[0], tok.cls_id);
//! ```
#![deny(missing_docs)]

mod answer;
pub mod downstream;
mod error;
mod labels;
mod readers;
mod tokenizer;
mod verbs;

pub use answer::{convert_ans, normalize_answer};
pub use downstream::{
    read_flickr30k, read_gqa, read_nlvr2, read_vqa, AnswerVocab, GqaQuestion, Nlvr2Example,
    RetrievalEntry, VqaQuestion,
};
pub use error::{Result, TextError};
pub use labels::{singular, topic_words, LabelVocab, TopicMatcher};
pub use readers::{
    for_each_vg_image, read_coco_captions, read_lxmert_pretrain, write_coco_captions,
    write_lxmert_pretrain, write_vg_regions, CocoAnnotation, CocoCaptions, CocoImage,
    PretrainEntry, VgImage, VgRegion,
};
pub use tokenizer::{write_vocab_file, BertTokenizer, Encoding, PositionMode, SPECIAL_TOKENS};
pub use verbs::{wordnet_license, PhraseBuilder, VerbLexicon, WordAnalysis};
