//! BERT uncased WordPiece tokenisation with LXMERT-S word-level position ids.

use std::path::{Path, PathBuf};

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::Tokenizer;

use crate::error::{io_err, read_utf8, write_atomic, Result, TextError};

/// How position ids are assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionMode {
    /// LXMERT-S (reference §2.2): `[CLS]` and `[SEP]` = 1, padding = 0, every word piece of
    /// the k-th whitespace-separated word (k from 0), punctuation included, = k + 2.
    #[default]
    Word,
    /// BERT / HF LXMERT: 0, 1, …, max_len − 1 over the whole padded sequence.
    Sequential,
}

impl std::str::FromStr for PositionMode {
    type Err = TextError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "word" => Ok(Self::Word),
            "sequential" => Ok(Self::Sequential),
            other => Err(TextError::InvalidArgument(format!(
                "position mode `{other}` (expected `word` or `sequential`)"
            ))),
        }
    }
}

/// One encoded text, always exactly `max_len` long.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Encoding {
    /// Token strings (`[PAD]` for padding).
    pub tokens: Vec<String>,
    /// Vocabulary ids.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens (including `[CLS]`/`[SEP]`), 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Segment ids: all 0 (single sentence).
    pub token_type_ids: Vec<u32>,
    /// Position ids as chosen by [`PositionMode`].
    pub position_ids: Vec<u32>,
}

/// BERT uncased WordPiece tokenizer (the `tokenizers` crate) with fixed-length encoding.
///
/// Special ids are looked up in the vocabulary, never assumed: real BERT has
/// `[PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103`, the synthetic world's
/// [`write_vocab_file`] puts them at 0..5.
pub struct BertTokenizer {
    inner: Tokenizer,
    source: String,
    /// Id of `[PAD]`.
    pub pad_id: u32,
    /// Id of `[UNK]`.
    pub unk_id: u32,
    /// Id of `[CLS]`.
    pub cls_id: u32,
    /// Id of `[SEP]`.
    pub sep_id: u32,
    /// Id of `[MASK]`.
    pub mask_id: u32,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tok_err(context: &str) -> impl FnOnce(tokenizers::Error) -> TextError + '_ {
    move |e| TextError::Tokenizer {
        context: context.to_string(),
        message: e.to_string(),
    }
}

impl BertTokenizer {
    /// Builds the tokenizer from a BERT `vocab.txt` (one token per line, id = line index):
    /// BERT normaliser (clean text, Chinese characters, strip accents, lower case), BERT
    /// pre-tokenizer, WordPiece with `##` continuation and `[UNK]`.
    pub fn from_vocab_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let context = path.display().to_string();
        // Read here so a missing file is an I/O error naming the path and a non-UTF-8 one
        // names its first bad line.
        let text = read_utf8(path)?;
        let vocab = WordPiece::read_bytes(text.as_bytes()).map_err(tok_err(&context))?;
        if vocab.is_empty() {
            return Err(TextError::Empty {
                path: path.to_path_buf(),
                what: "vocabulary".into(),
            });
        }
        if !vocab.contains_key("[UNK]") {
            return Err(TextError::MissingSpecial {
                context,
                token: "[UNK]".into(),
            });
        }
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .build()
            .map_err(tok_err(&context))?;
        let mut tk = Tokenizer::new(model);
        tk.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(tok_err(&context))?;
        tk.with_pre_tokenizer(Some(BertPreTokenizer));
        Self::finish(tk, context)
    }

    /// Loads a `tokenizer.json`. Its post-processor, truncation and padding are removed:
    /// [`BertTokenizer::encode`] adds `[CLS]`/`[SEP]`, truncates and pads itself.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let context = path.display().to_string();
        std::fs::metadata(path).map_err(io_err(path))?;
        let mut tk = Tokenizer::from_file(path).map_err(tok_err(&context))?;
        tk.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        tk.with_truncation(None).map_err(tok_err(&context))?;
        tk.with_padding(None);
        Self::finish(tk, context)
    }

    /// Loads `model_id` (e.g. `bert-base-uncased`) from the local Hugging Face cache
    /// (`HF_HOME`, default `~/.cache/huggingface/hub`): `tokenizer.json` if cached, else
    /// `vocab.txt`. Never downloads; a miss is [`TextError::NotInCache`] naming the directory.
    pub fn from_hf_cache(model_id: &str) -> Result<Self> {
        let cache = hf_hub::Cache::from_env();
        Self::from_hf_cache_dir(cache.path().clone(), model_id)
    }

    /// As [`BertTokenizer::from_hf_cache`] with an explicit hub cache directory.
    pub fn from_hf_cache_dir(cache_dir: PathBuf, model_id: &str) -> Result<Self> {
        let cache = hf_hub::Cache::new(cache_dir.clone());
        let repo = cache.model(model_id.to_string());
        if let Some(p) = repo.get("tokenizer.json") {
            return Self::from_tokenizer_json(p);
        }
        if let Some(p) = repo.get("vocab.txt") {
            return Self::from_vocab_file(p);
        }
        Err(TextError::NotInCache {
            model: model_id.to_string(),
            file: "tokenizer.json or vocab.txt".into(),
            looked: cache_dir.join(hf_hub::Repo::model(model_id.to_string()).folder_name()),
        })
    }

    fn finish(inner: Tokenizer, source: String) -> Result<Self> {
        let look = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| TextError::MissingSpecial {
                    context: source.clone(),
                    token: t.to_string(),
                })
        };
        Ok(Self {
            pad_id: look("[PAD]")?,
            unk_id: look("[UNK]")?,
            cls_id: look("[CLS]")?,
            sep_id: look("[SEP]")?,
            mask_id: look("[MASK]")?,
            inner,
            source,
        })
    }

    /// Saves the tokenizer as a `tokenizer.json` (atomically), e.g. to keep it as an
    /// artifact of a data set.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self
            .inner
            .to_string(true)
            .map_err(tok_err(&path.display().to_string()))?;
        write_atomic(path, json.as_bytes())
    }

    /// Number of entries in the vocabulary (with added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string, if in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Word-piece tokens of `text` with byte offsets into `text`, no special tokens.
    fn pieces(&self, text: &str) -> Result<Vec<Piece>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(tok_err(&self.source))?;
        Ok(enc
            .get_tokens()
            .iter()
            .zip(enc.get_ids())
            .zip(enc.get_offsets())
            .map(|((t, &id), &off)| (t.clone(), id, off))
            .collect())
    }

    /// Word-piece ids of `word` (or any text), without `[CLS]`/`[SEP]`.
    pub fn wordpiece_ids(&self, word: &str) -> Vec<u32> {
        self.pieces(word)
            .map(|p| p.into_iter().map(|(_, id, _)| id).collect())
            .unwrap_or_default()
    }

    /// Deduplicated, sorted word-piece ids of the given topic words (the multi-hot target of
    /// TITP/TITS is built from them by the tasks crate).
    pub fn topic_token_ids(&self, words: &[String]) -> Vec<u32> {
        let mut ids: Vec<u32> = words.iter().flat_map(|w| self.wordpiece_ids(w)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Encodes `text` as `[CLS] pieces… [SEP] [PAD]…`, exactly `max_len` long: pieces beyond
    /// `max_len − 2` are dropped (`[SEP]` is kept), padding uses the `[PAD]` id.
    pub fn encode(&self, text: &str, max_len: usize, mode: PositionMode) -> Result<Encoding> {
        if max_len < 2 {
            return Err(TextError::InvalidArgument(format!(
                "max_len {max_len} < 2 leaves no room for [CLS] and [SEP]"
            )));
        }
        let mut pieces = self.pieces(text)?;
        pieces.truncate(max_len - 2);
        let n_real = pieces.len() + 2;
        let spans = whitespace_word_spans(text);
        let word_of = |start: usize| -> u32 {
            // Index of the whitespace word whose byte span contains `start`; pieces of a
            // word never start inside whitespace, but fall back to the nearest preceding word.
            match spans.binary_search_by(|&(s, _)| s.cmp(&start)) {
                Ok(i) => i as u32,
                Err(0) => 0,
                Err(i) => (i - 1) as u32,
            }
        };
        let cls = self.id_token(self.cls_id).unwrap_or_else(|| "[CLS]".into());
        let sep = self.id_token(self.sep_id).unwrap_or_else(|| "[SEP]".into());
        let pad = self.id_token(self.pad_id).unwrap_or_else(|| "[PAD]".into());
        let mut e = Encoding {
            tokens: Vec::with_capacity(max_len),
            input_ids: Vec::with_capacity(max_len),
            attention_mask: Vec::with_capacity(max_len),
            token_type_ids: vec![0; max_len],
            position_ids: Vec::with_capacity(max_len),
        };
        let mut push = |tok: String, id: u32, mask: u32, word_pos: u32| {
            e.tokens.push(tok);
            e.input_ids.push(id);
            e.attention_mask.push(mask);
            e.position_ids.push(word_pos);
        };
        push(cls, self.cls_id, 1, 1);
        for (tok, id, (start, _)) in pieces {
            push(tok, id, 1, word_of(start) + 2);
        }
        push(sep, self.sep_id, 1, 1);
        let n_pad = max_len.saturating_sub(n_real);
        for _ in 0..n_pad {
            push(pad.clone(), self.pad_id, 0, 0);
        }
        if mode == PositionMode::Sequential {
            e.position_ids = (0..max_len as u32).collect();
        }
        Ok(e)
    }
}

/// Byte spans of the whitespace-separated words of `text` (Python's `str.split()`, as
/// LXMERT-S's BasicTokenizer uses after cleaning the text).
fn whitespace_word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        // BERT's clean_text turns control characters into nothing and whitespace into ' ';
        // a control character therefore never separates words.
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                spans.push((s, i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

/// A word piece: token, id, byte offsets in the input.
type Piece = (String, u32, (usize, usize));

/// The special tokens written first by [`write_vocab_file`], in id order.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Writes a deterministic BERT-style `vocab.txt`: [`SPECIAL_TOKENS`] (ids 0..5), then
/// `words` (lower-cased, deduplicated, first occurrence kept, empty strings and specials
/// skipped), then every single character needed so that any lower-case ASCII word, digit
/// string or ASCII punctuation still tokenises: `a`–`z`, `0`–`9`, ASCII punctuation, and
/// `##a`…`##z`, `##0`…`##9`. Characters of the given words outside that set are added as
/// well (both forms). Same input → byte-identical file. Written atomically.
pub fn write_vocab_file(path: impl AsRef<Path>, words: &[String]) -> Result<()> {
    let path = path.as_ref();
    let entries = vocab_entries(words);
    let mut text = entries.join("\n");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

fn vocab_entries(words: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: String, out: &mut Vec<String>| {
        if !s.is_empty() && seen.insert(s.clone()) {
            out.push(s);
        }
    };
    for s in SPECIAL_TOKENS {
        add(s.to_string(), &mut out);
    }
    let mut extra_chars: Vec<char> = Vec::new();
    for w in words {
        let w = w.trim().to_lowercase();
        if SPECIAL_TOKENS.iter().any(|s| s.eq_ignore_ascii_case(&w)) {
            continue;
        }
        if w.chars().any(char::is_whitespace) {
            // A vocabulary entry is one piece; split multi-word entries.
            for part in w.split_whitespace() {
                add(part.to_string(), &mut out);
            }
        } else {
            add(w.clone(), &mut out);
        }
        for c in w.chars() {
            if !c.is_whitespace() && !extra_chars.contains(&c) {
                extra_chars.push(c);
            }
        }
    }
    let mut chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    chars.extend(
        (b'!'..=b'~')
            .map(char::from)
            .filter(|c| c.is_ascii_punctuation()),
    );
    for c in extra_chars {
        if !chars.contains(&c) {
            chars.push(c);
        }
    }
    for &c in &chars {
        add(c.to_string(), &mut out);
    }
    for &c in &chars {
        if c.is_alphanumeric() {
            add(format!("##{c}"), &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_split_on_any_whitespace() {
        assert_eq!(
            whitespace_word_spans("  a man's\that. "),
            vec![(2, 3), (4, 9), (10, 14)]
        );
        assert!(whitespace_word_spans("   ").is_empty());
    }

    #[test]
    fn vocab_entries_order() {
        let v = vocab_entries(&["Man".into(), "hat".into(), "man".into(), "[CLS]".into()]);
        assert_eq!(
            &v[..7],
            &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "man", "hat"]
        );
        assert_eq!(v[7], "a");
        assert!(v.contains(&"##z".to_string()));
        assert!(v.contains(&"'".to_string()));
    }

    #[test]
    fn position_mode_parses() {
        assert_eq!("word".parse::<PositionMode>().unwrap(), PositionMode::Word);
        assert!("bogus".parse::<PositionMode>().is_err());
    }
}
