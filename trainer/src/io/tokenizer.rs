//! Tokenizers: from a `tokenizer.json`, from a GGUF vocabulary (so the
//! runtime's model trains without hub access), or a tiny byte-level BPE
//! trained here for test models.
//!
//! Two views of one vocabulary: `full` parses special tokens (template
//! scaffolding), `plain` never does (questions, thinking and answers a
//! person or a model wrote), as the runtime keeps typed special tokens text.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use reckon::gguf::{GgufFile, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// Qwen2's pre-tokenizer split (llama.cpp's `qwen2` pre-tokenizer uses the
/// same expression).
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Special tokens of the ChatML/s1 format every Reckon model has.
pub const CHATML_SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// What a token is, for GGUF token types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Produced by BPE.
    Normal,
    /// An added special token (GGUF CONTROL).
    Special,
    /// An added non-special token (GGUF USER_DEFINED).
    UserDefined,
}

/// A vocabulary with its two views.
#[derive(Clone)]
pub struct Tok {
    full: Tokenizer,
    plain: Tokenizer,
}

impl Tok {
    /// Wrap a `tokenizers` tokenizer.
    pub fn new(full: Tokenizer) -> Result<Self> {
        let mut json: serde_json::Value = serde_json::from_str(&full.to_string(false).map_err(|e| anyhow!("{e}"))?)?;
        json["added_tokens"] = serde_json::Value::Array(vec![]);
        let plain = Tokenizer::from_bytes(serde_json::to_vec(&json)?).map_err(|e| anyhow!("tokenizer: {e}"))?;
        let tok = Self { full, plain };
        for s in CHATML_SPECIALS {
            tok.id(s).with_context(|| format!("the vocabulary has no '{s}' token (Reckon trains ChatML/s1-format models)"))?;
        }
        Ok(tok)
    }

    /// Load a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let t = Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        Self::new(t)
    }

    /// Build a byte-level BPE from a GGUF vocabulary (`tokenizer.ggml.model
    /// = gpt2`): tokens, merges, and CONTROL tokens as special, USER_DEFINED
    /// tokens as added. Reproduces llama.cpp's tokenization of plain text.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            bail!("GGUF tokenizer model is '{model}'; only byte-level BPE ('gpt2', as Qwen2 uses) is supported");
        }
        let tokens = gguf.tokens();
        let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().map(|x| x as i64).or_else(|| v.as_f64().map(|x| x as i64)).unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let merges: Vec<(String, String)> = match gguf.get("tokenizer.ggml.merges") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(|m| {
                    let (l, r) = m.split_once(' ').with_context(|| format!("malformed merge '{m}'"))?;
                    Ok((l.to_string(), r.to_string()))
                })
                .collect::<Result<_>>()?,
            _ => bail!("GGUF has no tokenizer.ggml.merges"),
        };
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(false)
            .build()
            .map_err(|e| anyhow!("BPE from GGUF: {e}"))?;
        let mut t = Tokenizer::new(bpe);
        set_byte_level(&mut t)?;
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, tok) in tokens.iter().enumerate() {
            match types.get(i).copied().unwrap_or(1) {
                3 => special.push(AddedToken::from(tok.to_string(), true)),
                4 => user.push(AddedToken::from(tok.to_string(), false).normalized(false)),
                _ => {}
            }
        }
        t.add_special_tokens(&special);
        t.add_tokens(&user);
        Self::new(t)
    }

    /// Train a small byte-level BPE (every byte encodable) on `texts`, with
    /// the ChatML specials, for tiny test models.
    pub fn train_tiny<S: AsRef<str> + Send>(texts: impl Iterator<Item = S> + Send, vocab_size: usize) -> Result<Self> {
        let mut t = Tokenizer::new(BPE::default());
        set_byte_level(&mut t)?;
        let specials: Vec<AddedToken> = CHATML_SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        t.train(&mut trainer, texts).map_err(|e| anyhow!("training the tiny tokenizer: {e}"))?;
        Self::new(t)
    }

    /// Write `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.full.save(path, false).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
    }

    /// The tokenizer as JSON text.
    pub fn to_json(&self) -> Result<String> {
        self.full.to_string(false).map_err(|e| anyhow!("{e}"))
    }

    /// Tokens of text a person or model wrote: special-token strings stay text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.plain.encode(text, false).map_err(|e| anyhow!("tokenize: {e}"))?.get_ids().to_vec())
    }

    /// Tokens of template scaffolding: special tokens parsed.
    pub fn encode_scaffold(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.full.encode(text, false).map_err(|e| anyhow!("tokenize: {e}"))?.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.full.decode(ids, false).map_err(|e| anyhow!("detokenize: {e}"))
    }

    /// The id of a token string.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.full.token_to_id(token)
    }

    /// The string of a token id.
    pub fn token(&self, id: u32) -> Option<String> {
        self.full.id_to_token(id)
    }

    /// Every token by id (`None` for ids the vocabulary skips), with whether
    /// it is an added token and whether that one is special.
    pub fn id_table(&self) -> Vec<Option<(String, TokenKind)>> {
        let vocab = self.full.get_vocab(true);
        let added = self.full.get_added_tokens_decoder();
        let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut out = vec![None; n];
        for (tok, id) in vocab {
            let kind = match added.get(&id) {
                Some(a) if a.special => TokenKind::Special,
                Some(_) => TokenKind::UserDefined,
                None => TokenKind::Normal,
            };
            out[id as usize] = Some((tok, kind));
        }
        out
    }

    /// BPE merges in priority order, as `"left right"`.
    pub fn merges(&self) -> Result<Vec<String>> {
        let json: serde_json::Value = serde_json::from_str(&self.to_json()?)?;
        let merges = json["model"]["merges"].as_array().context("tokenizer has no BPE merges")?;
        merges
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(p) if p.len() == 2 => Ok(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or(""))),
                other => bail!("unexpected merge entry {other}"),
            })
            .collect()
    }

    /// Tokens in the vocabulary, added ones included.
    pub fn vocab_size(&self) -> usize {
        self.full.get_vocab_size(true)
    }
}

fn set_byte_level(t: &mut Tokenizer) -> Result<()> {
    let split = Split::new(tokenizers::pre_tokenizers::split::SplitPattern::Regex(QWEN2_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| anyhow!("pre-tokenizer: {e}"))?;
    let pre = Sequence::new(vec![PreTokenizerWrapper::Split(split), PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false))]);
    t.with_pre_tokenizer(Some(pre));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(())
}
