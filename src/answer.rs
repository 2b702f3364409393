//! Final-answer extraction and normalization for math word problems.
//!
//! Extraction looks, in order, for the last `\boxed{...}`, the text after the
//! last `Final Answer:`, and finally the last number; first in the answer
//! segment, then in the thinking. Normalization turns `$1,234.00`, `18.0`,
//! `45%`, `3/4`, `-7 apples` or `\frac{3}{4}` into a canonical number string,
//! so that answers compare as numbers.

use std::sync::LazyLock;

use regex::Regex;

/// A number as people write it: optional sign and currency, digit groups,
/// decimals, an optional fraction denominator, an optional percent sign.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?x)
        (?P<sign>-|−)?
        (?:[$€£¥]\s*)?
        (?P<int>\d{1,3}(?:,\d{3})+|\d+)?
        (?P<frac>\.\d+)?
        (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?
        \s*(?P<pct>%)?")
    .expect("valid regex")
});

static FRAC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}").expect("valid regex"));
static TEXT_CMD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}").expect("valid regex"));

/// How an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerSource {
    /// Inside `\boxed{}`.
    Boxed,
    /// After `Final Answer:`.
    FinalAnswer,
    /// The last number in the text.
    LastNumber,
}

/// An extracted, normalized answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extracted {
    /// Canonical number string (`"1234"`, `"0.75"`, `"-7"`).
    pub value: String,
    /// Where it was found.
    pub source: AnswerSource,
}

/// Extract the final answer from a reply: the answer segment first, then the
/// thinking (a plain chat model's whole reply is thinking).
pub fn extract_answer(answer: &str, thinking: &str) -> Option<Extracted> {
    extract_from(answer).or_else(|| extract_from(thinking))
}

/// Extract the final answer from one text.
pub fn extract_from(text: &str) -> Option<Extracted> {
    if let Some(inner) = last_boxed(text) {
        if let Some(value) = first_number(&delatex(inner)) {
            return Some(Extracted { value, source: AnswerSource::Boxed });
        }
    }
    if let Some(pos) = text.rfind("Final Answer:") {
        let after = &text[pos + "Final Answer:".len()..];
        let after = delatex(after);
        // The first line that says something.
        let line = after.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        if let Some(value) = first_number(line) {
            return Some(Extracted { value, source: AnswerSource::FinalAnswer });
        }
    }
    last_number(&delatex(text)).map(|value| Extracted { value, source: AnswerSource::LastNumber })
}

/// The content of the last `\boxed{...}`, with nested braces.
fn last_boxed(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Turn the LaTeX a model writes around numbers into plain text.
fn delatex(s: &str) -> String {
    let s = FRAC.replace_all(s, "$1/$2");
    let s = TEXT_CMD.replace_all(&s, " $1 ");
    s.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
}

fn numbers(text: &str) -> impl Iterator<Item = String> + '_ {
    NUMBER.captures_iter(text).filter_map(|c| {
        if c.name("int").is_none() && c.name("frac").is_none() {
            return None;
        }
        canonical(&c)
    })
}

fn first_number(text: &str) -> Option<String> {
    numbers(text).next()
}

fn last_number(text: &str) -> Option<String> {
    numbers(text).last()
}

fn canonical(c: &regex::Captures<'_>) -> Option<String> {
    let int = c.name("int").map_or("0", |m| m.as_str()).replace(',', "");
    let frac = c.name("frac").map_or("", |m| m.as_str());
    let mut value: f64 = format!("{int}{frac}").parse().ok()?;
    if let Some(den) = c.name("den") {
        let den: f64 = den.as_str().parse().ok()?;
        if den == 0.0 {
            return None;
        }
        value /= den;
    }
    if c.name("sign").is_some() {
        value = -value;
    }
    Some(format_number(value))
}

/// Canonical text of a number: integers without `.0`, others with at most
/// six decimals and no trailing zeros.
pub fn format_number(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{}", value as i64);
    }
    let s = format!("{value:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Normalize one answer string (`"$1,234.00"` → `"1234"`). `None` if it holds
/// no number.
pub fn normalize(s: &str) -> Option<String> {
    first_number(&delatex(s))
}

/// GSM8K's gold answer: the text after `####`, commas removed.
pub fn gsm8k_gold(answer_field: &str) -> Option<String> {
    let (_, gold) = answer_field.rsplit_once("####")?;
    normalize(gold.trim())
}

/// Whether two answers are the same number (both normalized first).
pub fn answers_match(predicted: &str, gold: &str) -> bool {
    match (normalize(predicted), normalize(gold)) {
        (Some(p), Some(g)) => match (p.parse::<f64>(), g.parse::<f64>()) {
            (Ok(p), Ok(g)) => (p - g).abs() <= 1e-6 * g.abs().max(1.0),
            _ => p == g,
        },
        _ => false,
    }
}

/// One answer's share of a vote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VoteCount {
    /// The normalized answer.
    pub answer: String,
    /// Samples that gave it.
    pub votes: u32,
}

/// The outcome of a majority vote over samples (self-consistency).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vote {
    /// The winning answer; `None` if no sample had one.
    pub answer: Option<String>,
    /// Every answer with its votes, most first (ties: first seen first).
    pub tally: Vec<VoteCount>,
    /// Samples that voted (had an answer).
    pub voted: u32,
    /// Samples in all.
    pub samples: u32,
}

/// Majority vote over extracted answers; answers that are the same number
/// count together, a tie goes to the answer seen first, samples without an
/// answer abstain.
pub fn majority_vote<'a>(answers: impl IntoIterator<Item = Option<&'a str>>) -> Vote {
    let mut tally: Vec<VoteCount> = Vec::new();
    let mut samples = 0;
    for a in answers {
        samples += 1;
        let Some(a) = a else { continue };
        match tally.iter_mut().find(|c| answers_match(&c.answer, a)) {
            Some(c) => c.votes += 1,
            None => tally.push(VoteCount { answer: a.to_string(), votes: 1 }),
        }
    }
    // Stable: equal counts keep first-seen order.
    tally.sort_by(|a, b| b.votes.cmp(&a.votes));
    Vote { answer: tally.first().map(|c| c.answer.clone()), voted: tally.iter().map(|c| c.votes).sum(), tally, samples }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_vote_counts_equal_numbers_together_and_breaks_ties_by_first_seen() {
        let v = majority_vote([Some("18"), None, Some("7"), Some("18.0"), Some("7"), Some("9")]);
        assert_eq!(v.samples, 6);
        assert_eq!(v.voted, 5);
        assert_eq!(v.answer.as_deref(), Some("18"), "18 and 18.0 are one answer; tie with 7 goes to the first seen");
        assert_eq!(v.tally.iter().map(|c| (c.answer.as_str(), c.votes)).collect::<Vec<_>>(), [("18", 2), ("7", 2), ("9", 1)]);
        let v = majority_vote([Some("3"), Some("4"), Some("4")]);
        assert_eq!(v.answer.as_deref(), Some("4"));
        let v = majority_vote([None, None]);
        assert_eq!((v.answer, v.voted, v.samples), (None, 0, 2));
    }

    #[test]
    fn normalization_table() {
        let cases = [
            ("18", Some("18")),
            ("$18", Some("18")),
            ("$ 1,234.00", Some("1234")),
            ("1,234,567", Some("1234567")),
            ("18.0", Some("18")),
            ("18.50", Some("18.5")),
            ("45%", Some("45")),
            ("\\$45", Some("45")),
            ("3/4", Some("0.75")),
            ("\\frac{3}{4}", Some("0.75")),
            ("\\dfrac{10}{4}", Some("2.5")),
            ("-7", Some("-7")),
            ("−7 degrees", Some("-7")),
            ("12 apples", Some("12")),
            ("€5", Some("5")),
            (".5", Some("0.5")),
            ("0", Some("0")),
            ("-0", Some("0")),
            ("5 \\text{ dollars}", Some("5")),
            ("no number here", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), want, "normalize({input:?})");
        }
    }

    #[test]
    fn extraction_prefers_boxed_then_final_answer_then_last_number() {
        let e = extract_from("so 3 + 4 = 7, and \\boxed{\\$1,200} in total, 99").unwrap();
        assert_eq!((e.value.as_str(), e.source), ("1200", AnswerSource::Boxed));
        let e = extract_from("I think 5.\nFinal Answer: The answer is 42 dollars.\n").unwrap();
        assert_eq!((e.value.as_str(), e.source), ("42", AnswerSource::FinalAnswer));
        let e = extract_from("First 3 apples, then 4, total 7.").unwrap();
        assert_eq!((e.value.as_str(), e.source), ("7", AnswerSource::LastNumber));
        let e = extract_from("\\boxed{\\frac{1}{2}}").unwrap();
        assert_eq!(e.value, "0.5");
        assert_eq!(extract_from("nothing"), None);
    }

    #[test]
    fn nested_braces_in_boxed() {
        let e = extract_from("\\boxed{\\text{18}}").unwrap();
        assert_eq!((e.value.as_str(), e.source), ("18", AnswerSource::Boxed));
        assert_eq!(extract_from("\\boxed{{18}}").unwrap().value, "18");
    }

    #[test]
    fn answer_segment_first_then_thinking() {
        let e = extract_answer("Final Answer: 10", "I got 9 earlier").unwrap();
        assert_eq!(e.value, "10");
        let e = extract_answer("", "so the total is 9.").unwrap();
        assert_eq!(e.value, "9");
        assert_eq!(extract_answer("", ""), None);
    }

    #[test]
    fn gsm8k_gold_answers() {
        assert_eq!(gsm8k_gold("She has 3 + 4 = <<3+4=7>>7\n#### 7").as_deref(), Some("7"));
        assert_eq!(gsm8k_gold("...\n#### 1,080").as_deref(), Some("1080"));
        assert_eq!(gsm8k_gold("#### -3").as_deref(), Some("-3"));
        assert_eq!(gsm8k_gold("no marker 5"), None);
    }

    #[test]
    fn matching_is_numeric() {
        assert!(answers_match("$18.00", "18"));
        assert!(answers_match("0.75", "3/4"));
        assert!(answers_match("1,000", "1000"));
        assert!(!answers_match("17", "18"));
        assert!(!answers_match("none", "18"));
    }
}
