//! Chat templates come from the model file: rendering an arbitrary one must
//! end (fuel and output limits), and the question reaches the model only as
//! plain text (a template may repeat it; none can splice into it), with no
//! sentinel left in any piece.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reckon::format::{render_prompt, PromptPiece, ThinkFormat};

fuzz_target!(|data: &[u8]| {
    let template = String::from_utf8_lossy(data);
    // Rendering does not depend on the format (only the appended opening
    // does): one format per input keeps the executions fast.
    let format = [ThinkFormat::S1, ThinkFormat::R1, ThinkFormat::Plain][data.len() % 3];
    {
        let pieces = render_prompt(Some(&template), format, Some("Be brief."), "What is 2 + 3?", Some("<s>"), Some("</s>"));
        let questions = pieces.iter().filter(|p| matches!(p, PromptPiece::Text(t) if t == "What is 2 + 3?")).count();
        assert!(questions >= 1, "the question is a plain-text piece: {pieces:?}");
        for p in &pieces {
            let (PromptPiece::Text(t) | PromptPiece::Scaffold(t)) = p;
            for sentinel in ["\u{F8F0}RECKON-QUESTION\u{F8F1}", "\u{F8F0}RECKON-SYSTEM\u{F8F1}"] {
                assert!(!t.contains(sentinel), "a sentinel survived rendering: {pieces:?}");
            }
        }
    }
});
