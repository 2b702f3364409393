//! The controller driven by scripted token streams: no model, fake ids in,
//! the resulting sequence, text and counters checked.

use super::*;
use std::collections::HashMap;

// A small vocabulary. Multi-token delimiter (R1 without special tokens):
// "</" "think" ">"; opening "<" "think" ">".
const A: TokenId = 1; // "a"
const B: TokenId = 2; // " b"
const C: TokenId = 3; // " c"
const E1: TokenId = 20; // first byte of "é"
const E2: TokenId = 21; // second byte of "é"
const K1: TokenId = 22; // first byte of "€" (3 bytes)
const K2: TokenId = 23; // second byte of "€"
const K3: TokenId = 24; // third byte of "€"
const LT_SLASH: TokenId = 50; // "</"
const THINK: TokenId = 51; // "think"
const GT: TokenId = 52; // ">"
const LT: TokenId = 60; // "<"
const X: TokenId = 61; // "x"
const NL: TokenId = 70; // "\n"
const WAIT: TokenId = 71; // "Wait"
const FINAL: TokenId = 80; // "Final"
const ANSWER: TokenId = 81; // " Answer:"
const IM_START: TokenId = 90; // s1: "<|im_start|>" (control, renders empty)
const ANS_WORD: TokenId = 91; // "answer"
const EOT: TokenId = 99; // end of turn (control)

struct Vocab(HashMap<TokenId, Vec<u8>>);

impl Vocab {
    fn new() -> Self {
        let mut m: HashMap<TokenId, Vec<u8>> = HashMap::new();
        for (t, s) in [
            (A, "a"),
            (B, " b"),
            (C, " c"),
            (LT_SLASH, "</"),
            (THINK, "think"),
            (GT, ">"),
            (LT, "<"),
            (X, "x"),
            (NL, "\n"),
            (WAIT, "Wait"),
            (FINAL, "Final"),
            (ANSWER, " Answer:"),
            (ANS_WORD, "answer"),
            (IM_START, ""),
            (EOT, ""),
        ] {
            m.insert(t, s.as_bytes().to_vec());
        }
        let e = "é".as_bytes();
        m.insert(E1, vec![e[0]]);
        m.insert(E2, vec![e[1]]);
        let k = "€".as_bytes();
        for (t, b) in [(K1, k[0]), (K2, k[1]), (K3, k[2])] {
            m.insert(t, vec![b]);
        }
        Self(m)
    }
}

impl TokenText for Vocab {
    fn piece(&self, token: TokenId) -> &[u8] {
        &self.0[&token]
    }
}

fn r1() -> Delimiters {
    Delimiters {
        opens: vec![vec![LT, THINK, GT]],
        close_triggers: vec![vec![LT_SLASH, THINK, GT]],
        close: vec![LT_SLASH, THINK, GT],
        close_text: "</think>".into(),
        answer_prefix: vec![FINAL, ANSWER],
        answer_prefix_text: "Final Answer:".into(),
        extension: vec![NL, WAIT],
        extension_text: "\nWait".into(),
        end_of_turn: vec![EOT],
        reply_is_thinking: false,
    }
}

fn s1() -> Delimiters {
    Delimiters {
        opens: vec![],
        close_triggers: vec![vec![IM_START]],
        close: vec![IM_START, ANS_WORD, NL],
        close_text: "<|im_start|>answer\n".into(),
        ..r1()
    }
}

fn plain() -> Delimiters {
    Delimiters {
        opens: vec![],
        close_triggers: vec![],
        close: vec![NL, NL],
        close_text: "\n\n".into(),
        reply_is_thinking: true,
        ..r1()
    }
}

fn budget(min: u32, max: u32) -> BudgetConfig {
    BudgetConfig {
        min_thinking_tokens: min,
        max_thinking_tokens: max,
        max_extensions: None,
        max_answer_tokens: 16,
        max_thinking_ms: None,
    }
}

/// What an engine would end up with after executing every step.
#[derive(Debug, Default)]
struct Run {
    /// The sequence after the prompt, as the KV cache holds it.
    seq: Vec<TokenId>,
    thinking: String,
    answer: String,
    injected: Vec<(Segment, String, InjectReason)>,
    done: Option<Finish>,
    /// Script tokens not consumed (the reply ended first).
    unused: usize,
}

impl Run {
    fn apply(&mut self, step: Step) {
        assert!(step.rollback <= self.seq.len(), "rollback past the prompt: {step:?}");
        let keep = self.seq.len() - step.rollback;
        self.seq.truncate(keep);
        assert!(
            step.done.is_some() || !step.feed.is_empty() || step == Step::default(),
            "a step that rolls back must feed something: {step:?}"
        );
        for e in step.emits {
            match e {
                Emit::Text { segment: Segment::Thinking, text } => self.thinking += &text,
                Emit::Text { segment: Segment::Answer, text } => self.answer += &text,
                Emit::Injected { segment, text, reason } => {
                    if segment == Segment::Thinking {
                        self.thinking += &text;
                    } else {
                        self.answer += &text;
                    }
                    self.injected.push((segment, text, reason));
                }
            }
        }
        self.seq.extend(step.feed);
        if step.done.is_some() {
            self.done = step.done;
        }
    }
}

/// Drive a controller with a script of (token, elapsed ms).
fn drive_timed(ctl: &mut Controller, script: &[(TokenId, u64)]) -> Run {
    let vocab = Vocab::new();
    let mut run = Run::default();
    run.apply(ctl.start(Duration::ZERO));
    let mut i = 0;
    while run.done.is_none() && i < script.len() {
        let (t, ms) = script[i];
        run.apply(ctl.accept(t, Duration::from_millis(ms), &vocab));
        i += 1;
    }
    run.unused = script.len() - i;
    run
}

fn drive(ctl: &mut Controller, script: &[TokenId]) -> Run {
    let timed: Vec<(TokenId, u64)> = script.iter().map(|&t| (t, 0)).collect();
    drive_timed(ctl, &timed)
}

#[test]
fn natural_end_after_floor_is_accepted() {
    let mut ctl = Controller::new(budget(2, 10), r1());
    let run = drive(&mut ctl, &[A, B, C, LT_SLASH, THINK, GT, X, EOT]);
    assert_eq!(run.thinking, "a b c");
    assert_eq!(run.answer, "x");
    assert_eq!(run.seq, vec![A, B, C, LT_SLASH, THINK, GT, X]);
    assert!(run.injected.is_empty());
    assert_eq!(run.done, Some(Finish::EndOfTurn));
    let c = ctl.counts();
    assert_eq!((c.thinking_generated, c.thinking_injected, c.answer_generated), (3, 0, 1));
    assert_eq!(ctl.think_end(), Some(ThinkEnd::Natural));
}

#[test]
fn early_end_is_suppressed_and_wait_fed_until_the_floor() {
    let mut ctl = Controller::new(budget(6, 20), r1());
    // Ends after 1 token, then after 4 (1 + 2 wait + 1), then after 6.
    let run = drive(
        &mut ctl,
        &[A, LT_SLASH, THINK, GT, B, LT_SLASH, THINK, GT, C, LT_SLASH, THINK, GT, X, EOT],
    );
    assert_eq!(run.thinking, "a\nWait b\nWait c");
    // The suppressed delimiters were rolled back out of the sequence.
    assert_eq!(run.seq, vec![A, NL, WAIT, B, NL, WAIT, C, LT_SLASH, THINK, GT, X]);
    let c = ctl.counts();
    assert_eq!(c.extensions, 2);
    assert_eq!(c.suppressed_ends, 2);
    assert_eq!(c.thinking_generated, 3);
    assert_eq!(c.thinking_injected, 4);
    assert!(run.injected.iter().all(|(_, _, r)| *r == InjectReason::Extension));
}

#[test]
fn end_of_turn_before_the_floor_is_suppressed_too() {
    let mut ctl = Controller::new(budget(3, 20), plain());
    let run = drive(&mut ctl, &[A, EOT, B, EOT]);
    assert_eq!(run.thinking, "a\nWait b");
    assert_eq!(run.seq, vec![A, NL, WAIT, B]);
    assert_eq!(run.done, Some(Finish::EndOfTurn));
    assert_eq!(ctl.think_end(), Some(ThinkEnd::Natural));
}

#[test]
fn extensions_without_floor_ignore_the_first_n_ends() {
    let mut cfg = budget(0, 50);
    cfg.max_extensions = Some(2);
    let mut ctl = Controller::new(cfg, s1());
    let run = drive(&mut ctl, &[A, IM_START, B, IM_START, C, IM_START, X, EOT]);
    assert_eq!(ctl.counts().extensions, 2);
    assert_eq!(run.thinking, "a\nWait b\nWait c");
    // The third end is accepted and the s1 delimiter completed.
    assert_eq!(run.seq, vec![A, NL, WAIT, B, NL, WAIT, C, IM_START, ANS_WORD, NL, X]);
    assert_eq!(run.injected.last().unwrap().2, InjectReason::DelimiterCompletion);
    // Fed to the model, never shown: the answer holds no delimiter text.
    assert_eq!(run.injected.last().unwrap().1, "");
    assert_eq!(run.answer, "x");
}

#[test]
fn max_extensions_bounds_the_floor() {
    let mut cfg = budget(100, 200);
    cfg.max_extensions = Some(1);
    let mut ctl = Controller::new(cfg, r1());
    let run = drive(&mut ctl, &[A, EOT, B, EOT]);
    assert_eq!(ctl.counts().extensions, 1);
    assert_eq!(run.done, Some(Finish::EndOfTurn));
    assert_eq!(run.seq, vec![A, NL, WAIT, B]);
}

#[test]
fn no_floor_and_no_extensions_never_suppresses() {
    let mut ctl = Controller::new(budget(0, 10), r1());
    let run = drive(&mut ctl, &[A, LT_SLASH, THINK, GT, EOT]);
    assert_eq!(ctl.counts().extensions, 0);
    assert_eq!(run.thinking, "a");
}

#[test]
fn cap_reached_mid_word_forces_delimiter_and_answer_prefix() {
    let mut ctl = Controller::new(budget(0, 3), r1());
    let run = drive(&mut ctl, &[A, B, C, B, X, EOT]);
    assert_eq!(run.thinking, "a b c");
    assert_eq!(run.seq, vec![A, B, C, LT_SLASH, THINK, GT, FINAL, ANSWER, B, X]);
    assert_eq!(run.answer, "Final Answer: bx");
    // The delimiter is fed but never shown: the answer holds no markup.
    assert_eq!(run.injected, vec![(Segment::Answer, "Final Answer:".into(), InjectReason::TokenCap)]);
    assert_eq!(ctl.counts().thinking(), 3);
    assert_eq!(ctl.think_end(), Some(ThinkEnd::TokenCap));
}

#[test]
fn cap_reached_mid_utf8_never_shows_half_a_character() {
    let mut ctl = Controller::new(budget(0, 2), r1());
    let run = drive(&mut ctl, &[A, E1, E2, X, EOT]);
    assert_eq!(run.thinking, "a", "the cut character is dropped, not shown half");
    assert!(!run.thinking.contains('\u{FFFD}'));
    // Its first byte's token never reaches the sequence and is not counted:
    // the model reads no broken byte before the forced delimiter.
    assert_eq!(ctl.counts().thinking(), 1);
    assert_eq!(run.seq, vec![A, LT_SLASH, THINK, GT, FINAL, ANSWER, E2, X]);
}

#[test]
fn a_character_cut_after_two_of_its_three_tokens_is_rolled_back_whole() {
    // "€" is three byte tokens; the cap falls on the second. The first was
    // decoded a step earlier (rolled back), the second not yet (dropped).
    let mut ctl = Controller::new(budget(0, 3), r1());
    let run = drive(&mut ctl, &[A, K1, K2, K3, X, EOT]);
    assert_eq!(run.thinking, "a");
    assert_eq!(ctl.counts().thinking(), 1);
    assert_eq!(run.seq, vec![A, LT_SLASH, THINK, GT, FINAL, ANSWER, K3, X]);
    assert_eq!(ctl.think_end(), Some(ThinkEnd::TokenCap));
    // Whole characters at the cap are kept and counted.
    let mut ctl = Controller::new(budget(0, 4), r1());
    let run = drive(&mut ctl, &[A, K1, K2, K3, X, EOT]);
    assert_eq!(run.thinking, "a€");
    assert_eq!(ctl.counts().thinking(), 4);
    assert_eq!(run.seq, vec![A, K1, K2, K3, LT_SLASH, THINK, GT, FINAL, ANSWER, X]);
}

#[test]
fn a_time_budget_cut_mid_character_rolls_its_tokens_back() {
    let mut cfg = budget(0, 100);
    cfg.max_thinking_ms = Some(10);
    let mut ctl = Controller::new(cfg, r1());
    let vocab = Vocab::new();
    let mut run = Run::default();
    run.apply(ctl.start(Duration::ZERO));
    run.apply(ctl.accept(A, Duration::from_millis(1), &vocab));
    run.apply(ctl.accept(K1, Duration::from_millis(2), &vocab));
    // Before the next (slow) decode the time is up: K1 was decoded, goes.
    let step = ctl.check_time(Duration::from_millis(11));
    assert_eq!(step.rollback, 1);
    run.apply(step);
    assert_eq!(run.seq, vec![A, LT_SLASH, THINK, GT, FINAL, ANSWER]);
    assert_eq!(ctl.counts().thinking(), 1);
    assert_eq!(run.thinking, "a");
}

#[test]
fn whole_characters_stream_across_token_boundaries() {
    let mut ctl = Controller::new(budget(0, 10), r1());
    let vocab = Vocab::new();
    ctl.start(Duration::ZERO);
    let s1 = ctl.accept(E1, Duration::ZERO, &vocab);
    assert!(s1.emits.is_empty(), "half a character is held back");
    let s2 = ctl.accept(E2, Duration::ZERO, &vocab);
    assert_eq!(s2.emits, vec![Emit::Text { segment: Segment::Thinking, text: "é".into() }]);
}

#[test]
fn zero_cap_answers_immediately() {
    let mut ctl = Controller::new(budget(0, 0), r1());
    let run = drive(&mut ctl, &[X, EOT]);
    assert_eq!(run.thinking, "");
    assert_eq!(run.seq, vec![LT_SLASH, THINK, GT, FINAL, ANSWER, X]);
    assert_eq!(ctl.counts().thinking(), 0);
}

#[test]
fn zero_answer_budget_ends_at_the_delimiter() {
    let mut cfg = budget(0, 0);
    cfg.max_answer_tokens = 0;
    let mut ctl = Controller::new(cfg, r1());
    let run = drive(&mut ctl, &[X]);
    assert_eq!(run.done, Some(Finish::AnswerCap));
    assert_eq!(run.unused, 1);
}

#[test]
fn delimiter_spread_over_tokens_is_held_then_released_if_it_breaks() {
    let mut ctl = Controller::new(budget(0, 20), r1());
    let vocab = Vocab::new();
    ctl.start(Duration::ZERO);
    let s = ctl.accept(LT_SLASH, Duration::ZERO, &vocab);
    assert!(s.emits.is_empty(), "a possible delimiter start is held");
    assert_eq!(s.feed, vec![LT_SLASH], "but it is decoded");
    let s = ctl.accept(THINK, Duration::ZERO, &vocab);
    assert!(s.emits.is_empty());
    let s = ctl.accept(X, Duration::ZERO, &vocab);
    assert_eq!(s.emits, vec![Emit::Text { segment: Segment::Thinking, text: "</thinkx".into() }]);
    assert_eq!(ctl.counts().thinking_generated, 3);
    assert!(ctl.is_thinking());
}

#[test]
fn suppressed_multi_token_delimiter_is_rolled_back() {
    let mut ctl = Controller::new(budget(10, 20), r1());
    let vocab = Vocab::new();
    ctl.start(Duration::ZERO);
    ctl.accept(A, Duration::ZERO, &vocab);
    ctl.accept(LT_SLASH, Duration::ZERO, &vocab);
    ctl.accept(THINK, Duration::ZERO, &vocab);
    let s = ctl.accept(GT, Duration::ZERO, &vocab);
    assert_eq!(s.rollback, 2, "'</' and 'think' were decoded; '>' never is");
    assert_eq!(s.feed, vec![NL, WAIT]);
    assert_eq!(s.sampled_fed, 0);
}

#[test]
fn held_delimiter_prefix_at_the_cap_gives_way_to_the_canonical_one() {
    let mut ctl = Controller::new(budget(0, 3), r1());
    let run = drive(&mut ctl, &[A, LT_SLASH, THINK, X, EOT]);
    assert_eq!(run.seq, vec![A, LT_SLASH, THINK, GT, FINAL, ANSWER, X]);
    assert_eq!(run.thinking, "a");
    assert_eq!(ctl.counts().thinking(), 1);
}

#[test]
fn a_second_think_block_re_arms_on_the_same_budget() {
    let mut ctl = Controller::new(budget(0, 10), r1());
    let run = drive(
        &mut ctl,
        &[A, LT_SLASH, THINK, GT, X, LT, THINK, GT, B, LT_SLASH, THINK, GT, C, EOT],
    );
    assert_eq!(run.thinking, "a b");
    assert_eq!(run.answer, "x c");
    assert_eq!(ctl.counts().thinking_generated, 2);
    assert_eq!(
        run.seq,
        vec![A, LT_SLASH, THINK, GT, X, LT, THINK, GT, B, LT_SLASH, THINK, GT, C]
    );
}

#[test]
fn a_second_think_block_without_budget_is_closed_at_once() {
    let mut ctl = Controller::new(budget(0, 1), r1());
    let run = drive(&mut ctl, &[A, X, LT, THINK, GT, C, EOT]);
    assert_eq!(ctl.counts().thinking(), 1);
    let reasons: Vec<_> = run.injected.iter().map(|i| i.2).collect();
    assert_eq!(reasons, vec![InjectReason::TokenCap, InjectReason::TokenCap]);
    assert!(run.seq.ends_with(&[LT, THINK, GT, LT_SLASH, THINK, GT, FINAL, ANSWER, C]));
}

#[test]
fn a_model_that_keeps_re_opening_without_budget_ends_at_the_answer_cap() {
    // Each opening counts 3 answer tokens. Bound 7: two blocks re-arm (and
    // are closed again at once), the third opening is cut at its first
    // token. Bound 6: the second opening would reach the bound: it is text.
    for (bound, forced, tail, seq_tail) in [
        (7, 3, "Final Answer:<", vec![FINAL, ANSWER, LT]),
        (6, 2, "Final Answer:<think>", vec![FINAL, ANSWER, LT, THINK, GT]),
    ] {
        let mut cfg = budget(0, 1);
        cfg.max_answer_tokens = bound;
        let mut ctl = Controller::new(cfg, r1());
        let mut stream = vec![A];
        for _ in 0..10 {
            stream.extend([LT, THINK, GT]);
        }
        let run = drive(&mut ctl, &stream);
        assert_eq!(ctl.counts().answer_generated, bound, "{:?}", ctl.counts());
        assert_eq!(run.done, Some(Finish::AnswerCap));
        let reasons: Vec<_> = run.injected.iter().map(|i| i.2).collect();
        assert_eq!(reasons, vec![InjectReason::TokenCap; forced], "bound {bound}");
        assert!(run.answer.ends_with(tail), "bound {bound}: {:?}", run.answer);
        assert!(run.seq.ends_with(&seq_tail), "bound {bound}: {:?}", run.seq);
    }
}

#[test]
fn time_budget_forces_the_end_like_the_cap() {
    let mut cfg = budget(0, 100);
    cfg.max_thinking_ms = Some(100);
    let mut ctl = Controller::new(cfg, r1());
    let run = drive_timed(&mut ctl, &[(A, 10), (B, 60), (C, 120), (X, 130), (EOT, 140)]);
    assert_eq!(run.thinking, "a b c");
    assert_eq!(run.injected[0].2, InjectReason::TimeBudget);
    assert_eq!(ctl.think_end(), Some(ThinkEnd::TimeBudget));
    assert_eq!(run.answer, "Final Answer:x");
}

#[test]
fn time_budget_checked_before_a_decode_rolls_back_held_tokens() {
    let mut cfg = budget(0, 100);
    cfg.max_thinking_ms = Some(100);
    let mut ctl = Controller::new(cfg, r1());
    let vocab = Vocab::new();
    ctl.start(Duration::ZERO);
    ctl.accept(A, Duration::from_millis(10), &vocab);
    ctl.accept(LT_SLASH, Duration::from_millis(20), &vocab);
    assert_eq!(ctl.check_time(Duration::from_millis(50)), Step::default());
    let s = ctl.check_time(Duration::from_millis(100));
    assert_eq!(s.rollback, 1);
    assert_eq!(s.feed, vec![LT_SLASH, THINK, GT, FINAL, ANSWER]);
    assert!(!ctl.is_thinking());
}

#[test]
fn zero_time_budget_answers_immediately() {
    let mut cfg = budget(0, 100);
    cfg.max_thinking_ms = Some(0);
    let mut ctl = Controller::new(cfg, r1());
    let s = ctl.start(Duration::ZERO);
    assert_eq!(s.feed, vec![LT_SLASH, THINK, GT, FINAL, ANSWER]);
}

#[test]
fn plain_models_end_the_reply_at_end_of_turn() {
    let mut ctl = Controller::new(budget(0, 10), plain());
    let run = drive(&mut ctl, &[A, B, EOT]);
    assert_eq!(run.thinking, "a b");
    assert_eq!(run.answer, "");
    assert_eq!(run.done, Some(Finish::EndOfTurn));
}

#[test]
fn plain_forced_end_appends_blank_line_and_prefix() {
    let mut ctl = Controller::new(budget(0, 2), plain());
    let run = drive(&mut ctl, &[A, B, X, EOT]);
    assert_eq!(run.answer, "\n\nFinal Answer:x");
    assert_eq!(run.seq, vec![A, B, NL, NL, FINAL, ANSWER, X]);
}

#[test]
fn answer_cap_ends_the_reply() {
    let mut cfg = budget(0, 10);
    cfg.max_answer_tokens = 2;
    let mut ctl = Controller::new(cfg, r1());
    let run = drive(&mut ctl, &[A, LT_SLASH, THINK, GT, X, B, C, EOT]);
    assert_eq!(run.answer, "x b");
    assert_eq!(run.done, Some(Finish::AnswerCap));
    assert_eq!(ctl.counts().answer_generated, 2);
}

#[test]
fn answer_cap_counts_and_shows_held_tokens() {
    let mut cfg = budget(0, 10);
    cfg.max_answer_tokens = 2;
    let mut ctl = Controller::new(cfg, r1());
    // In the answer, "<" could open a think block; at the cap it is text.
    let run = drive(&mut ctl, &[LT_SLASH, THINK, GT, X, LT, C]);
    assert_eq!(run.answer, "x<");
    assert_eq!(run.done, Some(Finish::AnswerCap));
}

#[test]
fn wait_that_does_not_fit_under_the_cap_forces_the_end() {
    // Floor 3 = cap 3; the model ends at 2 tokens; "\nWait" (2) would make 4.
    let mut ctl = Controller::new(budget(3, 3), r1());
    let run = drive(&mut ctl, &[A, B, EOT, X, EOT]);
    assert_eq!(ctl.counts().thinking(), 2);
    assert_eq!(ctl.counts().extensions, 0);
    assert_eq!(run.injected[0].2, InjectReason::TokenCap);
    assert_eq!(run.seq, vec![A, B, LT_SLASH, THINK, GT, FINAL, ANSWER, X]);
}

#[test]
fn wait_that_fills_the_cap_exactly_forces_the_end_after_it() {
    let mut ctl = Controller::new(budget(4, 4), r1());
    let run = drive(&mut ctl, &[A, B, EOT, X, EOT]);
    assert_eq!(ctl.counts().thinking(), 4);
    assert_eq!(run.seq, vec![A, B, NL, WAIT, LT_SLASH, THINK, GT, FINAL, ANSWER, X]);
}

#[test]
fn thinking_never_exceeds_the_cap_on_any_script() {
    // Every cap from 0 to 12 against a script mixing ends, partial delimiters
    // and split characters.
    let script = [A, LT_SLASH, B, E1, E2, EOT, LT_SLASH, THINK, GT, C, LT_SLASH, THINK, X, A, B, C, A, B, X, EOT];
    for cap in 0..=12 {
        for floor in [0, cap / 2, cap] {
            let mut ctl = Controller::new(budget(floor, cap), r1());
            let run = drive(&mut ctl, &script);
            assert!(ctl.counts().thinking() <= cap, "cap {cap} floor {floor}: {:?}", ctl.counts());
            // What the cap does to the stream: thinking in the sequence is
            // exactly what was counted, then (when forced) the delimiter.
            let close = run.seq.windows(3).position(|w| w == [LT_SLASH, THINK, GT]);
            if let Some(at) = close {
                let thinking_in_seq = run.seq[..at].len() as u32;
                assert_eq!(thinking_in_seq, ctl.counts().thinking(), "cap {cap} floor {floor}: {:?} vs {:?}", run.seq, ctl.counts());
            }
            if ctl.think_end() == Some(ThinkEnd::TokenCap) {
                assert!(run.injected.iter().any(|(_, t, r)| t == "Final Answer:" && *r == InjectReason::TokenCap), "cap {cap}: forced end injected");
            }
            assert!(!run.thinking.contains('\u{FFFD}'), "cap {cap} floor {floor}: half a character shown: {:?}", run.thinking);
        }
    }
}

#[test]
fn budgets_are_validated() {
    assert_eq!(
        budget(10, 5).validate(),
        Err(BudgetError::FloorAboveCap { min: 10, max: 5 })
    );
    assert!(budget(0, 0).validate().is_ok());
    let mut cfg = budget(0, 10);
    cfg.max_answer_tokens = MAX_BUDGET_TOKENS + 1;
    assert!(matches!(cfg.validate(), Err(BudgetError::TooLarge { .. })));
}

#[test]
fn utf8_prefix_table() {
    let e = "é".as_bytes();
    let euro = "€".as_bytes();
    let emoji = "😀".as_bytes();
    let cases: &[(&[u8], usize)] = &[
        (b"", 0),
        (b"abc", 3),
        (&[b'a', e[0]], 1),
        (e, 2),
        (&euro[..2], 0),
        (euro, 3),
        (&emoji[..3], 0),
        (emoji, 4),
        (&[0xFF], 1),
    ];
    for (bytes, want) in cases {
        assert_eq!(complete_utf8_prefix(bytes), *want, "{bytes:?}");
    }
}
