//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, or a BERT
//! WordPiece tokenizer built from `vocab.txt` when that is all a checkpoint has.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer, TruncationParams};

/// Ids of the tokens that structure a sequence. BERT names them `[CLS]`, `[SEP]`…,
/// RoBERTa `<s>`, `</s>`…; both are looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub start: u32,
    pub end: u32,
    pub mask: u32,
    pub pad: u32,
    pub unk: Option<u32>,
}

pub struct TextTokenizer {
    /// Without the padding and truncation a `tokenizer.json` may carry: distil sets them per use.
    inner: Tokenizer,
    /// A copy that truncates to the length it is keyed by, kept between calls: cloning a
    /// tokenizer (its whole vocabulary) for every call cost more than encoding a sentence.
    truncating: Mutex<Option<(usize, Tokenizer)>>,
    pub special: SpecialTokens,
    /// Where it was read from, for messages.
    pub source: PathBuf,
}

/// One padded batch of encoded texts.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    pub token_type_ids: Vec<Vec<u32>>,
}

const BERT_SPECIALS: [&str; 5] = ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"];
const ROBERTA_SPECIALS: [&str; 5] = ["<s>", "</s>", "<mask>", "<pad>", "<unk>"];

impl TextTokenizer {
    /// Reads a tokenizer from a model directory or a `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self> {
        let (inner, source) = if path.is_file() {
            (
                Tokenizer::from_file(path).map_err(|e| anyhow!("cannot read tokenizer {}: {e}", path.display()))?,
                path.to_path_buf(),
            )
        } else if path.join("tokenizer.json").is_file() {
            let file = path.join("tokenizer.json");
            (Tokenizer::from_file(&file).map_err(|e| anyhow!("cannot read tokenizer {}: {e}", file.display()))?, file)
        } else if path.join("vocab.txt").is_file() {
            let file = path.join("vocab.txt");
            (wordpiece_from_vocab(path)?, file)
        } else if path.is_dir() {
            bail!("no tokenizer in {}: expected tokenizer.json or vocab.txt", path.display());
        } else {
            bail!("tokenizer path {} does not exist", path.display());
        };
        let find = |names: [&str; 5], i: usize| inner.token_to_id(names[i]);
        let names = if find(BERT_SPECIALS, 2).is_some() { BERT_SPECIALS } else { ROBERTA_SPECIALS };
        let need = |i: usize| {
            find(names, i).with_context(|| {
                format!(
                    "tokenizer {} has no `{}` token (looked for {:?} and {:?})",
                    source.display(),
                    names[i],
                    BERT_SPECIALS,
                    ROBERTA_SPECIALS
                )
            })
        };
        let special =
            SpecialTokens { start: need(0)?, end: need(1)?, mask: need(2)?, pad: need(3)?, unk: find(names, 4) };
        let mut inner = inner;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| anyhow!("cannot turn truncation off: {e}"))?;
        Ok(TextTokenizer { inner, truncating: Mutex::new(None), special, source })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn mask_token(&self) -> String {
        self.id_to_token(self.special.mask)
    }

    pub fn id_to_token(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_else(|| format!("<id {id}>"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of the special tokens the tokenizer declares (never masked, never predicted).
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> =
            self.inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        let s = self.special;
        ids.extend([s.start, s.end, s.mask, s.pad].into_iter().chain(s.unk));
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Token ids of one text with the start and end tokens, truncated to `max_len`.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        Ok(self.encode_batch(&[text], max_len)?.input_ids.remove(0))
    }

    /// Encodes texts with the start and end tokens, truncated to `max_len` tokens and padded
    /// to the longest.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Result<EncodedBatch> {
        let mut cached = self.truncating.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.as_ref().is_none_or(|(len, _)| *len != max_len) {
            let mut tok = self.inner.clone();
            tok.with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
                .map_err(|e| anyhow!("cannot set truncation to {max_len} tokens: {e}"))?;
            *cached = Some((max_len, tok));
        }
        let (_, tok) = cached.as_ref().expect("set above");
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let encodings =
            tok.encode_batch(inputs, true).map_err(|e| anyhow!("tokenizer {} failed: {e}", self.source.display()))?;
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let pad = |v: &[u32], with: u32| {
            let mut v = v.to_vec();
            v.resize(len, with);
            v
        };
        Ok(EncodedBatch {
            input_ids: encodings.iter().map(|e| pad(e.get_ids(), self.special.pad)).collect(),
            attention_mask: encodings.iter().map(|e| pad(e.get_attention_mask(), 0)).collect(),
            token_type_ids: encodings.iter().map(|e| pad(e.get_type_ids(), 0)).collect(),
        })
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow!("cannot decode ids: {e}"))
    }

    /// Token ids of each text without the start and end tokens, neither truncated nor padded:
    /// corpus building cuts long texts into pieces of the model's length and wraps each itself.
    /// Texts are encoded in parallel on the current rayon pool.
    pub fn encode_unwrapped<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, false)
            .map_err(|e| anyhow!("tokenizer {} failed: {e}", self.source.display()))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// `sha256:<hex>` of everything that decides which ids a text becomes (vocabulary,
    /// normaliser, pre-tokeniser, model, added tokens, post-processor), so that a corpus can
    /// refuse a model whose tokenizer differs. Padding and truncation are left out: distil sets
    /// them per call.
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| anyhow!("cannot serialise tokenizer {}: {e}", self.source.display()))?;
        let digest = Sha256::digest(json.as_bytes());
        Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }
}

/// A BERT tokenizer from `vocab.txt`. Lower-casing follows `do_lower_case` in
/// `tokenizer_config.json`; without that file, a vocabulary with upper-case word tokens is
/// taken to be cased (lower-casing would make those tokens unreachable).
fn wordpiece_from_vocab(dir: &Path) -> Result<Tokenizer> {
    let vocab_path = dir.join("vocab.txt");
    let vocab = WordPiece::read_file(&vocab_path.to_string_lossy())
        .map_err(|e| anyhow!("cannot read {}: {e}", vocab_path.display()))?;
    let config_path = dir.join("tokenizer_config.json");
    let configured = if config_path.is_file() {
        let text =
            std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
        json.get("do_lower_case").and_then(|v| v.as_bool())
    } else {
        None
    };
    let lowercase =
        configured.unwrap_or_else(|| !vocab.keys().any(|t| !t.starts_with('[') && t.chars().any(|c| c.is_uppercase())));
    let id = |t: &str| vocab.get(t).copied().with_context(|| format!("{} has no `{t}` token", vocab_path.display()));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let present: Vec<AddedToken> =
        BERT_SPECIALS.iter().filter(|t| vocab.contains_key(**t)).map(|t| AddedToken::from(*t, true)).collect();
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("cannot build WordPiece from {}: {e}", vocab_path.display()))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase))).map_err(|e| anyhow!("{e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    tok.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    tok.add_special_tokens(present).map_err(|e| anyhow!("cannot add special tokens: {e}"))?;
    Ok(tok)
}
