//! Budget forcing as a pure state machine (s1, arXiv 2501.19393).
//!
//! The controller knows nothing of llama.cpp: it is driven by token ids and
//! the time elapsed, and answers each sampled token with a [`Step`] that says
//! what the engine must do with its sequence (roll back, feed tokens) and what
//! text became final. Observing (`accept`) and the decision it returns are the
//! whole interface; the engine only executes steps.
//!
//! ```text
//! states:  Thinking ──(natural end ≥ floor)──────────────▶ Answering ──(end-of-turn | answer cap)──▶ Done
//!             │  ▲ (natural end < floor: drop it, feed "Wait")      │
//!             │  └───────────────────────────────────────────────────┘ (model opens a 2nd think block: re-arm)
//!             └──(token cap | time budget: feed close delimiter + "Final Answer:")──▶ Answering
//! ```
//!
//! * **Thinking**: every sampled token counts against `max_thinking_tokens`,
//!   and so do injected extension tokens, so context use is bounded.
//! * **Pending tokens**: a token that could be the start of a multi-token
//!   delimiter is held back (decoded into the KV cache but not yet shown). If
//!   the delimiter completes, the held tokens are either the end of thinking or
//!   are rolled back (suppressed); if it does not, they are released as text.
//! * **UTF-8**: text is released only in whole characters. When the cap falls
//!   inside a multi-byte character, the incomplete bytes are dropped from the
//!   shown text, so the cap is never exceeded and the text is always valid.
//! * **Answering**: tokens are answer text until an end-of-turn token or
//!   `max_answer_tokens`. If the model opens a new think block, the
//!   controller re-arms: the opening stays in the sequence (not shown, and
//!   counted as answer tokens) and thinking continues on the same budget;
//!   with none left (tokens or time), the end is forced again at once
//!   (delimiter and `Final Answer:` fed). A model that keeps re-opening
//!   therefore still ends at `max_answer_tokens`; an opening that would
//!   pass that bound is answer text.

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A token id, as llama.cpp numbers them.
pub type TokenId = i32;

/// Limits on thinking and answering. Validate with [`BudgetConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetConfig {
    /// Floor: a natural end of thinking before this many thinking tokens is
    /// suppressed and the extension text ("Wait") is fed instead. 0 = no floor.
    pub min_thinking_tokens: u32,
    /// Cap: when thinking reaches this many tokens (generated + injected), the
    /// end-of-thinking delimiter and the answer prefix are forced. 0 = answer
    /// immediately.
    pub max_thinking_tokens: u32,
    /// The most extensions ("Wait") that may be appended. `None`: as many as
    /// the floor needs (and none without a floor). `Some(n)` without a floor
    /// suppresses the first `n` natural ends (s1's "ignore N times").
    pub max_extensions: Option<u32>,
    /// Bound on the answer segment, in tokens.
    pub max_answer_tokens: u32,
    /// Wall-clock thinking budget in milliseconds; when it elapses, the end of
    /// thinking is forced exactly as for the token cap.
    pub max_thinking_ms: Option<u64>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            min_thinking_tokens: 0,
            max_thinking_tokens: 1024,
            max_extensions: None,
            max_answer_tokens: 256,
            max_thinking_ms: None,
        }
    }
}

/// A budget that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The floor is above the cap.
    #[error("min thinking tokens ({min}) is above max thinking tokens ({max}); lower --min-think or raise --max-think")]
    FloorAboveCap {
        /// The floor.
        min: u32,
        /// The cap.
        max: u32,
    },
    /// A budget so large no context could hold it.
    #[error("{what} of {value} tokens is too large (at most {limit})")]
    TooLarge {
        /// Which budget.
        what: &'static str,
        /// The value given.
        value: u32,
        /// The most allowed.
        limit: u32,
    },
}

/// The largest budget accepted for any single segment (1M tokens).
pub const MAX_BUDGET_TOKENS: u32 = 1 << 20;

impl BudgetConfig {
    /// Check the invariants once, early, with messages that say what to do.
    pub fn validate(&self) -> Result<(), BudgetError> {
        if self.min_thinking_tokens > self.max_thinking_tokens {
            return Err(BudgetError::FloorAboveCap {
                min: self.min_thinking_tokens,
                max: self.max_thinking_tokens,
            });
        }
        for (what, value) in [
            ("max thinking tokens", self.max_thinking_tokens),
            ("max answer tokens", self.max_answer_tokens),
        ] {
            if value > MAX_BUDGET_TOKENS {
                return Err(BudgetError::TooLarge { what, value, limit: MAX_BUDGET_TOKENS });
            }
        }
        Ok(())
    }

    fn allowed_extensions(&self) -> u32 {
        self.max_extensions
            .unwrap_or(if self.min_thinking_tokens > 0 { u32::MAX } else { 0 })
    }
}

/// The token sequences a think format is made of, already tokenized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delimiters {
    /// Sequences that open a think block: the opening, and for an opening
    /// written as plain text, its other tokenizations (after a space, with
    /// the line break merged into its last token: see
    /// [`crate::format::spellings`]). Any of them seen in the answer re-arms
    /// thinking. Empty for plain chat models (they have no think block).
    pub opens: Vec<Vec<TokenId>>,
    /// Sequences that end thinking when the model emits them (for s1, the
    /// `<|im_start|>` token alone; for R1, `</think>`). Empty for plain models.
    pub close_triggers: Vec<Vec<TokenId>>,
    /// The canonical end-of-thinking delimiter that is fed when the end is
    /// forced, and whose remainder is fed after a natural trigger that is a
    /// prefix of it.
    pub close: Vec<TokenId>,
    /// Text of `close`. Events and the answer show it only for plain models
    /// (where it is a paragraph break): a delimiter is never answer text.
    pub close_text: String,
    /// Fed after a forced end (`Final Answer:`).
    pub answer_prefix: Vec<TokenId>,
    /// Text of `answer_prefix`.
    pub answer_prefix_text: String,
    /// Fed when a natural end is suppressed (`Wait`).
    pub extension: Vec<TokenId>,
    /// Text of `extension`.
    pub extension_text: String,
    /// End-of-turn / end-of-generation tokens.
    pub end_of_turn: Vec<TokenId>,
    /// Plain chat models: the whole reply is thinking, and a natural end of
    /// thinking (end of turn) ends the reply.
    pub reply_is_thinking: bool,
}

/// The text of a token, for streaming.
pub trait TokenText {
    /// The bytes the token renders to (empty for control tokens).
    fn piece(&self, token: TokenId) -> &[u8];
}

/// Which part of the reply a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// Reasoning before the end-of-thinking delimiter.
    Thinking,
    /// The answer after it.
    Answer,
}

/// Why the controller fed tokens the model did not choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectReason {
    /// A natural end came before the floor (or within "ignore N times"): "Wait".
    Extension,
    /// The thinking token cap was reached.
    TokenCap,
    /// The wall-clock thinking budget elapsed.
    TimeBudget,
    /// The model began the end-of-thinking delimiter; its canonical rest is fed.
    DelimiterCompletion,
}

/// Why the reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model ended its turn.
    EndOfTurn,
    /// The answer reached `max_answer_tokens`.
    AnswerCap,
}

/// Text that became final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// Text the model generated.
    Text {
        /// Where it belongs.
        segment: Segment,
        /// The text, whole UTF-8 characters only.
        text: String,
    },
    /// Text the controller fed.
    Injected {
        /// Where it belongs.
        segment: Segment,
        /// The text.
        text: String,
        /// Why.
        reason: InjectReason,
    },
}

/// What the engine must do after a token was accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Remove this many tokens from the end of the sequence (KV cache) before
    /// feeding. They were held back and never shown.
    pub rollback: usize,
    /// Tokens to append to the sequence, in order. Empty only when done.
    pub feed: Vec<TokenId>,
    /// How many of the first `feed` tokens were sampled (0 or 1); the rest
    /// are injected.
    pub sampled_fed: usize,
    /// Text that became final, in order.
    pub emits: Vec<Emit>,
    /// The reply is complete: sample nothing more (`feed` need not be
    /// decoded either).
    pub done: Option<Finish>,
}

/// Counters the controller keeps; the result reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Thinking tokens the model generated (held-back tokens that were rolled
    /// back, and delimiters, are not counted).
    pub thinking_generated: u32,
    /// Thinking tokens the controller injected (extensions).
    pub thinking_injected: u32,
    /// Answer tokens the model generated.
    pub answer_generated: u32,
    /// Tokens injected outside thinking (delimiters, answer prefix).
    pub other_injected: u32,
    /// Extensions ("Wait") appended.
    pub extensions: u32,
    /// Natural ends that were suppressed.
    pub suppressed_ends: u32,
}

impl Counts {
    /// All thinking tokens, the number the cap bounds.
    pub fn thinking(&self) -> u32 {
        self.thinking_generated + self.thinking_injected
    }
}

/// Why thinking ended, once it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkEnd {
    /// The model closed its thinking itself.
    Natural,
    /// The token cap forced it.
    TokenCap,
    /// The time budget forced it.
    TimeBudget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Thinking,
    Answering,
    Done,
}

/// The budget-forcing state machine. One per reply.
#[derive(Debug)]
pub struct Controller {
    config: BudgetConfig,
    delims: Delimiters,
    state: State,
    counts: Counts,
    /// Tokens decoded (except possibly the newest) but held back: a prefix of
    /// some delimiter.
    pending: Vec<TokenId>,
    /// Bytes released by the matcher but not yet a whole UTF-8 character.
    utf8_tail: Vec<u8>,
    /// The newest released tokens whose bytes are all in `utf8_tail` (an
    /// unfinished character), and whether they are *all* of its bytes: then
    /// a forced end can take them out of the sequence whole.
    tail_tokens: usize,
    tail_pure: bool,
    think_end: Option<ThinkEnd>,
}

impl Controller {
    /// A controller for one reply. The config must be valid.
    pub fn new(config: BudgetConfig, delims: Delimiters) -> Self {
        debug_assert!(config.validate().is_ok());
        Self {
            config,
            delims,
            state: State::Thinking,
            counts: Counts::default(),
            pending: Vec::new(),
            utf8_tail: Vec::new(),
            tail_tokens: 0,
            tail_pure: true,
            think_end: None,
        }
    }

    /// The counters so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// How thinking ended, if it has.
    pub fn think_end(&self) -> Option<ThinkEnd> {
        self.think_end
    }

    /// Whether the controller is still in the thinking segment.
    pub fn is_thinking(&self) -> bool {
        self.state == State::Thinking
    }

    /// Whether the reply is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Call once after the prompt (which ends with the think opening) was
    /// decoded and before sampling. A zero cap or an already spent time budget
    /// forces the end here; otherwise the step is empty.
    pub fn start(&mut self, elapsed: Duration) -> Step {
        let mut step = Step::default();
        if let Some(reason) = self.budget_spent(elapsed) {
            self.force_end(reason, &mut step);
        }
        step
    }

    /// The time budget alone, checked before a (possibly slow) decode: a
    /// non-empty step forces the end now.
    pub fn check_time(&mut self, elapsed: Duration) -> Step {
        let mut step = Step::default();
        if self.state == State::Thinking && self.time_spent(elapsed) {
            // Every held token was decoded by the previous step.
            step.rollback = self.pending.len();
            self.pending.clear();
            self.cut_partial_character(None, &mut step);
            self.force_end(InjectReason::TimeBudget, &mut step);
        }
        step
    }

    /// Accept the token the model sampled, `elapsed` after thinking began.
    pub fn accept(&mut self, token: TokenId, elapsed: Duration, text: &dyn TokenText) -> Step {
        let mut step = Step::default();
        match self.state {
            State::Thinking => self.accept_thinking(token, elapsed, text, &mut step),
            State::Answering => self.accept_answer(token, elapsed, text, &mut step),
            State::Done => step.done = Some(Finish::EndOfTurn),
        }
        step
    }

    fn accept_thinking(&mut self, token: TokenId, elapsed: Duration, text: &dyn TokenText, step: &mut Step) {
        if self.delims.end_of_turn.contains(&token) {
            // End of turn inside thinking: a natural end without a delimiter.
            // Held tokens were not a delimiter after all: they are thinking.
            self.release_pending(Segment::Thinking, text, step);
            if self.should_suppress() {
                self.suppress(0, step);
                return;
            }
            self.flush_utf8(Segment::Thinking, step);
            self.think_end = Some(ThinkEnd::Natural);
            self.finish(Finish::EndOfTurn, step);
            return;
        }
        self.pending.push(token);
        match match_pending(&self.pending, &self.delims.close_triggers) {
            Match::Full(len) => {
                self.release_head(len, Segment::Thinking, text, step);
                if self.should_suppress() {
                    // The trigger's tokens but the newest are in the sequence.
                    let decoded = self.pending.len() - 1;
                    self.pending.clear();
                    self.suppress(decoded, step);
                    return;
                }
                // Accept the natural end: the trigger stays in the sequence.
                let trigger = std::mem::take(&mut self.pending);
                self.flush_utf8(Segment::Thinking, step);
                self.think_end = Some(ThinkEnd::Natural);
                step.feed.push(token);
                step.sampled_fed = 1;
                // Complete the canonical delimiter if the trigger is its prefix.
                let close = &self.delims.close;
                if close.len() > trigger.len() && close.starts_with(&trigger) {
                    let rest = close[trigger.len()..].to_vec();
                    self.counts.other_injected += rest.len() as u32;
                    step.emits.push(Emit::Injected {
                        segment: Segment::Answer,
                        text: self.shown_close().to_string(),
                        reason: InjectReason::DelimiterCompletion,
                    });
                    step.feed.extend(rest);
                }
                self.enter_answer(step);
            }
            Match::Partial(len) | Match::None(len) => {
                self.release_head(len, Segment::Thinking, text, step);
                step.feed.push(token);
                step.sampled_fed = 1;
                // Held tokens count: they occupy the context.
                let used = self.counts.thinking() + self.pending.len() as u32;
                let reason = if used >= self.config.max_thinking_tokens {
                    Some(InjectReason::TokenCap)
                } else if self.time_spent(elapsed) {
                    Some(InjectReason::TimeBudget)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    if !self.pending.is_empty() {
                        // A held delimiter prefix gives way to the canonical
                        // delimiter; its newest token is not decoded yet.
                        step.feed.pop();
                        step.sampled_fed = 0;
                        step.rollback += self.pending.len() - 1;
                        self.pending.clear();
                        self.cut_partial_character(None, step);
                    } else {
                        // This token was released (and fed) this step: when
                        // it has bytes, it is the newest of the tail's.
                        let newest = (!text.piece(token).is_empty()).then_some(token);
                        self.cut_partial_character(newest, step);
                    }
                    self.force_end(reason, step);
                }
            }
        }
    }

    fn accept_answer(&mut self, token: TokenId, elapsed: Duration, text: &dyn TokenText, step: &mut Step) {
        if self.delims.end_of_turn.contains(&token) {
            self.release_pending(Segment::Answer, text, step);
            self.flush_utf8(Segment::Answer, step);
            self.finish(Finish::EndOfTurn, step);
            return;
        }
        self.pending.push(token);
        match match_pending(&self.pending, &self.delims.opens) {
            Match::Full(len) => {
                self.release_head(len, Segment::Answer, text, step);
                if self.counts.answer_generated + self.pending.len() as u32 >= self.config.max_answer_tokens {
                    // No answer tokens left: the opening is answer text, and
                    // the answer ends (as for a partial opening at the cap).
                    step.feed.push(token);
                    step.sampled_fed = 1;
                    self.release_pending(Segment::Answer, text, step);
                    self.flush_utf8(Segment::Answer, step);
                    self.finish(Finish::AnswerCap, step);
                    return;
                }
                self.flush_utf8(Segment::Answer, step);
                // Re-arm: the opening joins the sequence (not shown, but
                // counted against the answer's bound: the model wrote it
                // there, and a model that keeps re-opening must still end),
                // thinking resumes on the same budget (and ends at once if
                // none is left).
                self.counts.answer_generated += self.pending.len() as u32;
                self.pending.clear();
                step.feed.push(token);
                step.sampled_fed = 1;
                self.think_end = None;
                self.state = State::Thinking;
                if let Some(reason) = self.budget_spent(elapsed) {
                    self.force_end(reason, step);
                }
            }
            Match::Partial(len) | Match::None(len) => {
                self.release_head(len, Segment::Answer, text, step);
                step.feed.push(token);
                step.sampled_fed = 1;
                let used = self.counts.answer_generated + self.pending.len() as u32;
                if used >= self.config.max_answer_tokens {
                    self.release_pending(Segment::Answer, text, step);
                    self.flush_utf8(Segment::Answer, step);
                    self.finish(Finish::AnswerCap, step);
                }
            }
        }
    }

    fn enter_answer(&mut self, step: &mut Step) {
        self.state = State::Answering;
        if self.config.max_answer_tokens == 0 {
            self.finish(Finish::AnswerCap, step);
        }
    }

    fn finish(&mut self, finish: Finish, step: &mut Step) {
        self.state = State::Done;
        step.done = Some(finish);
    }

    fn should_suppress(&self) -> bool {
        let floor_unmet = self.config.min_thinking_tokens == 0
            || self.counts.thinking() < self.config.min_thinking_tokens;
        floor_unmet && self.counts.extensions < self.config.allowed_extensions()
    }

    /// Drop a natural end (`decoded` of its tokens roll back; the sampled one
    /// is never fed) and feed the extension, if it fits under the cap;
    /// otherwise the cap has effectively been reached and the end is forced.
    fn suppress(&mut self, decoded: usize, step: &mut Step) {
        step.rollback += decoded;
        self.counts.suppressed_ends += 1;
        let fits = self.counts.thinking() as u64 + self.delims.extension.len() as u64
            <= self.config.max_thinking_tokens as u64;
        if !fits || self.delims.extension.is_empty() {
            self.force_end(InjectReason::TokenCap, step);
            return;
        }
        self.counts.extensions += 1;
        self.counts.thinking_injected += self.delims.extension.len() as u32;
        self.flush_utf8(Segment::Thinking, step);
        step.emits.push(Emit::Injected {
            segment: Segment::Thinking,
            text: self.delims.extension_text.clone(),
            reason: InjectReason::Extension,
        });
        step.feed.extend(self.delims.extension.iter().copied());
        // The extension may have filled the budget exactly.
        if self.counts.thinking() >= self.config.max_thinking_tokens {
            self.force_end(InjectReason::TokenCap, step);
        }
    }

    fn time_spent(&self, elapsed: Duration) -> bool {
        self.config
            .max_thinking_ms
            .is_some_and(|ms| elapsed >= Duration::from_millis(ms))
    }

    fn budget_spent(&self, elapsed: Duration) -> Option<InjectReason> {
        if self.counts.thinking() >= self.config.max_thinking_tokens {
            Some(InjectReason::TokenCap)
        } else if self.time_spent(elapsed) {
            Some(InjectReason::TimeBudget)
        } else {
            None
        }
    }

    /// At a forced end, take the tokens of a character the cut left
    /// unfinished out of the sequence (they are uncounted and never shown),
    /// so the model never reads a broken byte before the delimiter. `newest`
    /// is this step's sampled token when it is still in `feed` (not decoded
    /// yet): it is dropped from the feed instead of rolled back. A character
    /// whose first bytes came with other text in one token stays (it cannot
    /// be taken out without that text; byte-level vocabularies split
    /// characters into pure byte tokens, so this does not arise there).
    fn cut_partial_character(&mut self, newest: Option<TokenId>, step: &mut Step) {
        if self.utf8_tail.is_empty() || !self.tail_pure || self.tail_tokens == 0 {
            return;
        }
        let mut n = self.tail_tokens;
        if newest.is_some() && step.sampled_fed == 1 && step.feed.last() == newest.as_ref() {
            step.feed.pop();
            step.sampled_fed = 0;
            n -= 1;
        }
        step.rollback += n;
        self.counts.thinking_generated -= self.tail_tokens as u32;
        self.utf8_tail.clear();
        self.tail_tokens = 0;
    }

    /// The text a fed close delimiter shows: none where it is a delimiter
    /// (`<|im_start|>answer`, `</think>`: markup, never part of the answer),
    /// the close itself for a plain model (a paragraph break).
    fn shown_close(&self) -> &str {
        if self.delims.reply_is_thinking {
            &self.delims.close_text
        } else {
            ""
        }
    }

    /// Feed the close delimiter and the answer prefix; thinking is over.
    /// Held tokens must have been dealt with by the caller.
    fn force_end(&mut self, reason: InjectReason, step: &mut Step) {
        debug_assert!(self.pending.is_empty());
        // A character cut by the cap is dropped, never shown half.
        self.utf8_tail.clear();
        self.tail_tokens = 0;
        self.tail_pure = true;
        self.think_end = Some(match reason {
            InjectReason::TimeBudget => ThinkEnd::TimeBudget,
            _ => ThinkEnd::TokenCap,
        });
        let mut injected = self.delims.close.clone();
        injected.extend(self.delims.answer_prefix.iter().copied());
        self.counts.other_injected += injected.len() as u32;
        let text = format!("{}{}", self.shown_close(), self.delims.answer_prefix_text);
        step.emits.push(Emit::Injected { segment: Segment::Answer, text, reason });
        step.feed.extend(injected);
        self.enter_answer(step);
    }

    /// Release every held token but the last `keep` as generated text.
    fn release_head(&mut self, keep: usize, segment: Segment, text: &dyn TokenText, step: &mut Step) {
        let head: Vec<TokenId> = self.pending.drain(..self.pending.len() - keep).collect();
        self.count_generated(segment, head.len());
        self.emit_tokens(&head, segment, text, step);
    }

    fn release_pending(&mut self, segment: Segment, text: &dyn TokenText, step: &mut Step) {
        self.release_head(0, segment, text, step);
    }

    fn count_generated(&mut self, segment: Segment, n: usize) {
        match segment {
            Segment::Thinking => self.counts.thinking_generated += n as u32,
            Segment::Answer => self.counts.answer_generated += n as u32,
        }
    }

    fn emit_tokens(&mut self, tokens: &[TokenId], segment: Segment, text: &dyn TokenText, step: &mut Step) {
        for &t in tokens {
            let piece = text.piece(t);
            if piece.is_empty() {
                continue;
            }
            let was_empty = self.utf8_tail.is_empty();
            self.utf8_tail.extend_from_slice(piece);
            let valid = complete_utf8_prefix(&self.utf8_tail);
            if valid > 0 {
                let s = String::from_utf8_lossy(&self.utf8_tail[..valid]).into_owned();
                self.utf8_tail.drain(..valid);
                push_text(step, segment, s);
            }
            if self.utf8_tail.is_empty() {
                self.tail_tokens = 0;
                self.tail_pure = true;
            } else if valid == 0 {
                // All of this token's bytes wait for the rest of a character.
                self.tail_tokens += 1;
                if was_empty {
                    self.tail_pure = true;
                }
            } else {
                // It finished some text and began a character: it cannot be
                // taken out alone.
                self.tail_tokens = 1;
                self.tail_pure = false;
            }
        }
    }

    /// Show what is left at a segment boundary; an incomplete character at
    /// the very end becomes U+FFFD rather than vanishing silently.
    fn flush_utf8(&mut self, segment: Segment, step: &mut Step) {
        self.tail_tokens = 0;
        self.tail_pure = true;
        if !self.utf8_tail.is_empty() {
            let s = String::from_utf8_lossy(&self.utf8_tail).into_owned();
            self.utf8_tail.clear();
            push_text(step, segment, s);
        }
    }
}

fn push_text(step: &mut Step, segment: Segment, s: String) {
    if s.is_empty() {
        return;
    }
    if let Some(Emit::Text { segment: seg, text }) = step.emits.last_mut() {
        if *seg == segment {
            text.push_str(&s);
            return;
        }
    }
    step.emits.push(Emit::Text { segment, text: s });
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8
/// sequence. Invalid bytes count as complete (they are shown as U+FFFD).
pub fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let n = bytes.len();
    // Look back at most 3 bytes for the lead byte of the last sequence.
    for back in 1..=n.min(4) {
        let b = bytes[n - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte
        }
        let need = if b & 0b1000_0000 == 0 {
            1
        } else if b & 0b1110_0000 == 0b1100_0000 {
            2
        } else if b & 0b1111_0000 == 0b1110_0000 {
            3
        } else if b & 0b1111_1000 == 0b1111_0000 {
            4
        } else {
            1 // invalid lead byte: complete as garbage
        };
        return if back >= need { n } else { n - back };
    }
    n
}

enum Match {
    /// A suffix of this length is a whole target.
    Full(usize),
    /// The longest suffix that is a proper prefix of some target.
    Partial(usize),
    /// Nothing can be held (always 0, so both arms read alike).
    None(usize),
}

/// Match the held tokens against target sequences: a suffix that is a whole
/// target wins (the longest); otherwise the longest suffix that could still
/// become one is held.
fn match_pending(pending: &[TokenId], targets: &[Vec<TokenId>]) -> Match {
    let targets = || targets.iter().filter(|t| !t.is_empty());
    let suffixes = || (0..pending.len()).map(|start| &pending[start..]);
    if let Some(full) = suffixes().find(|s| targets().any(|t| t.as_slice() == *s)) {
        return Match::Full(full.len());
    }
    match suffixes().find(|s| targets().any(|t| t.len() > s.len() && t.starts_with(s))) {
        Some(partial) => Match::Partial(partial.len()),
        None => Match::None(0),
    }
}
