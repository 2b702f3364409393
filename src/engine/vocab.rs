//! Token tables and safe tokenization.
//!
//! Text from a person is tokenized with special-token parsing off. That is
//! not enough on its own: llama.cpp still matches *user-defined* added tokens
//! (Qwen's `<tool_call>`, for one) in plain mode. So the text is split where a
//! special token's text occurs, and the first character of each occurrence is
//! tokenized on its own; the result is checked to hold only ordinary tokens.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;

use crate::budget::{Delimiters, TokenId, TokenText};
use crate::format::{PromptPiece, ThinkFormat};
use crate::error::{ReckonError, Result};

/// Per-token tables built once at load.
#[derive(Debug)]
pub struct Vocab {
    /// Bytes each token renders to (control tokens render empty).
    pieces: Vec<Vec<u8>>,
    /// Whether each token is an ordinary text token (normal or byte).
    ordinary: Vec<bool>,
    /// End-of-generation tokens.
    eog: Vec<TokenId>,
    /// Texts of tokens that must never come out of a person's text:
    /// control and user-defined tokens.
    special_texts: Vec<String>,
    add_bos: bool,
    bos: TokenId,
}

impl TokenText for Vocab {
    fn piece(&self, token: TokenId) -> &[u8] {
        usize::try_from(token).ok().and_then(|i| self.pieces.get(i)).map_or(&[], Vec::as_slice)
    }
}

impl Vocab {
    pub(crate) fn new(model: &LlamaModel) -> Self {
        let v = model.vocab();
        let n = v.n_tokens().max(0) as usize;
        let mut pieces = Vec::with_capacity(n);
        let mut ordinary = Vec::with_capacity(n);
        let mut eog = Vec::new();
        let mut special_texts = Vec::new();
        for i in 0..n {
            let t = LlamaToken(i as i32);
            pieces.push(v.token_to_piece(t, false, None));
            // The pinned llama-cpp-2 maps every attribute bit of its llama.h.
            let attr = v.attr(t);
            let normal = attr.contains(LlamaTokenAttr::Normal) || attr.contains(LlamaTokenAttr::Byte);
            let special = attr.contains(LlamaTokenAttr::Control) || attr.contains(LlamaTokenAttr::UserDefined);
            ordinary.push(normal && !special);
            if special {
                let text = v.token_to_piece(t, true, None);
                if let Ok(s) = String::from_utf8(text) {
                    if !s.is_empty() {
                        special_texts.push(s);
                    }
                }
            }
            if v.is_eog(t) {
                eog.push(t.0);
            }
        }
        // Longest first, so that overlapping texts split at the longer one.
        special_texts.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { pieces, ordinary, eog, special_texts, add_bos: v.should_add_bos(), bos: v.bos().0 }
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Whether a token is ordinary text (not control, not user-defined).
    pub fn is_ordinary(&self, token: TokenId) -> bool {
        usize::try_from(token).ok().and_then(|i| self.ordinary.get(i)).copied().unwrap_or(false)
    }

    /// End-of-generation tokens.
    pub fn end_of_generation(&self) -> &[TokenId] {
        &self.eog
    }

    /// Tokenize template scaffolding: special tokens are parsed.
    pub(crate) fn tokenize_special(&self, model: &LlamaModel, text: &str) -> Vec<TokenId> {
        model.vocab().tokenize(text.as_bytes(), false, true).into_iter().map(|t| t.0).collect()
    }

    /// Tokenize a person's text: never a special token, whatever it contains
    /// (checked in every build: a special token here is an error, never
    /// decoded).
    pub(crate) fn tokenize_plain(&self, model: &LlamaModel, text: &str) -> Result<Vec<TokenId>> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let hit = self
                .special_texts
                .iter()
                .filter_map(|s| rest.find(s.as_str()))
                .min();
            let Some(at) = hit else {
                out.extend(self.raw_plain(model, rest));
                break;
            };
            out.extend(self.raw_plain(model, &rest[..at]));
            // The first character of the special text on its own.
            let c = rest[at..].chars().next().expect("non-empty match");
            out.extend(self.raw_plain(model, &rest[at..at + c.len_utf8()]));
            rest = &rest[at + c.len_utf8()..];
        }
        if let Some(&t) = out.iter().find(|&&t| !self.is_ordinary(t)) {
            return Err(ReckonError::Internal(format!("plain text {text:?} tokenized to the special token {t}; it is refused rather than decoded")));
        }
        Ok(out)
    }

    fn raw_plain(&self, model: &LlamaModel, text: &str) -> Vec<TokenId> {
        if text.is_empty() {
            return Vec::new();
        }
        model.vocab().tokenize(text.as_bytes(), false, false).into_iter().map(|t| t.0).collect()
    }

    /// Tokenize a rendered prompt: scaffolding with special tokens, people's
    /// text without; BOS first if the model wants one.
    pub(crate) fn tokenize_prompt(&self, model: &LlamaModel, pieces: &[PromptPiece]) -> Result<Vec<TokenId>> {
        let mut out = Vec::new();
        if self.add_bos {
            out.push(self.bos);
        }
        for p in pieces {
            match p {
                PromptPiece::Scaffold(s) => out.extend(self.tokenize_special(model, s)),
                PromptPiece::Text(s) => out.extend(self.tokenize_plain(model, s)?),
            }
        }
        Ok(out)
    }

    /// The delimiters of a think format, tokenized for this vocabulary:
    /// single special tokens where the vocabulary has them, their
    /// tokenization otherwise.
    pub(crate) fn delimiters(&self, model: &LlamaModel, format: ThinkFormat) -> Delimiters {
        let s = format.strings();
        let tok = |t: &str| self.tokenize_special(model, t);
        // A delimiter made of special tokens is matched as they are; one
        // that is plain text (R1's tags on a vocabulary without them) also
        // in its other tokenizations, as a model writes it mid-line.
        let matched = |t: &str| -> Vec<Vec<TokenId>> {
            let canonical = tok(t);
            if canonical.is_empty() {
                return Vec::new();
            }
            let mut all = vec![canonical.clone()];
            if canonical == self.raw_plain(model, t) {
                for v in crate::format::spellings(t) {
                    let ids = self.raw_plain(model, &v);
                    if !ids.is_empty() && !all.contains(&ids) {
                        all.push(ids);
                    }
                }
            }
            all
        };
        Delimiters {
            opens: matched(s.open),
            close_triggers: s.close_triggers.iter().flat_map(|t| matched(t)).collect(),
            close: tok(s.close),
            close_text: s.close.to_string(),
            answer_prefix: tok(s.answer_prefix),
            answer_prefix_text: s.answer_prefix.to_string(),
            extension: tok(s.extension),
            extension_text: s.extension.to_string(),
            end_of_turn: self.eog.clone(),
            reply_is_thinking: format == ThinkFormat::Plain,
        }
    }
}
