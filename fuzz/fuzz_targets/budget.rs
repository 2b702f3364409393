//! The budget controller on random token streams over a small vocabulary
//! that spells every delimiter in pieces (and a 3-byte character in its
//! bytes): the cap is never exceeded, the sequence the engine would hold is
//! exactly the counted tokens, and shown text is whole characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reckon::budget::{BudgetConfig, Controller, Delimiters, Emit, Segment, TokenId, TokenText};
use std::time::Duration;

const PIECES: &[&[u8]] = &[
    b"a", b" b", b"\n", b"</", b"think", b">", b"<", b"Wait", b"Final", b" Answer:", b"", b"answer", b"\xe2", b"\x82", b"\xac", b"x",
];
/// Control tokens: they render to nothing.
const EOT: TokenId = 10;
const IM_START: TokenId = 16;

struct Vocab;
impl TokenText for Vocab {
    fn piece(&self, t: TokenId) -> &[u8] {
        PIECES.get(t as usize).copied().unwrap_or(b"")
    }
}

fn delimiters(kind: u8) -> Delimiters {
    let r1 = Delimiters {
        opens: vec![vec![6, 4, 5]],
        close_triggers: vec![vec![3, 4, 5]],
        close: vec![3, 4, 5],
        close_text: "</think>".into(),
        answer_prefix: vec![8, 9],
        answer_prefix_text: "Final Answer:".into(),
        extension: vec![2, 7],
        extension_text: "\nWait".into(),
        end_of_turn: vec![EOT],
        reply_is_thinking: false,
    };
    match kind % 3 {
        0 => r1,
        // s1: a control token (renders empty) opens the close.
        1 => Delimiters { opens: vec![vec![IM_START, 4]], close_triggers: vec![vec![IM_START]], close: vec![IM_START, 11, 2], close_text: "<|im_start|>answer\n".into(), ..r1 },
        _ => Delimiters { opens: vec![], close_triggers: vec![], close: vec![2, 2], close_text: "\n\n".into(), reply_is_thinking: true, ..r1 },
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (head, tokens) = data.split_at(5);
    let cap = u32::from(head[1] % 40);
    let config = BudgetConfig {
        min_thinking_tokens: u32::from(head[2] % 40).min(cap),
        max_thinking_tokens: cap,
        max_extensions: (head[3] & 0x80 != 0).then_some(u32::from(head[3] % 4)),
        max_answer_tokens: u32::from(head[4] % 24),
        max_thinking_ms: None,
    };
    if config.validate().is_err() {
        return;
    }
    let mut ctl = Controller::new(config, delimiters(head[0]));
    let mut seq: Vec<TokenId> = Vec::new();
    let mut shown = Vec::new();
    let mut apply = |step: reckon::budget::Step, seq: &mut Vec<TokenId>| {
        assert!(step.rollback <= seq.len(), "rollback past the prompt");
        seq.truncate(seq.len() - step.rollback);
        seq.extend(step.feed);
        for e in step.emits {
            let (Emit::Text { segment, text } | Emit::Injected { segment, text, .. }) = e;
            if segment == Segment::Thinking {
                shown.push(text);
            }
        }
        step.done.is_some()
    };
    let start = ctl.start(Duration::ZERO);
    let mut done = apply(start, &mut seq);
    // The model spells "€" only whole (its three byte tokens in order): a
    // stream of invalid UTF-8 from the model would be shown as such, and
    // what is checked is that the cap never cuts a character.
    let stream = tokens.iter().flat_map(|&b| match TokenId::from(b % (PIECES.len() as u8 + 1)) {
        12 => vec![12, 13, 14],
        13 | 14 => vec![15],
        t => vec![t],
    });
    for (i, token) in stream.enumerate() {
        if done {
            break;
        }
        let step = ctl.accept(token, Duration::from_millis(i as u64), &Vocab);
        done = apply(step, &mut seq);
        assert!(ctl.counts().thinking() <= cap, "cap {cap} exceeded: {:?}", ctl.counts());
    }
    for t in &shown {
        assert!(!t.contains('\u{FFFD}'), "half a character shown: {t:?}");
    }
});
