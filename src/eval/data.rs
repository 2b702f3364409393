//! GSM8K-shaped datasets: JSONL lines of `{"question": ..., "answer": "... #### N"}`.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::answer::gsm8k_gold;

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Its index in the file (0-based, counting data lines), stable across
    /// runs; used to resume.
    pub id: usize,
    /// 1-based line number, for messages.
    pub line: usize,
    /// The question.
    pub question: String,
    /// The normalized gold answer.
    pub gold: String,
}

/// A dataset that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a valid record.
    #[error("{path}:{line}: {reason}")]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No usable problem.
    #[error("{0}: no problems (the file is empty, or --offset/--limit select nothing)")]
    Empty(String),
}

/// What to do with a malformed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadLine {
    /// Stop with an error naming the line.
    Stop,
    /// Warn, skip it, and go on.
    Skip,
}

#[derive(Deserialize)]
struct Raw {
    question: String,
    answer: String,
}

/// Load problems `offset..offset+limit` of a GSM8K-shaped JSONL file.
/// Returns the problems and the skipped lines' errors (with `Skip`).
pub fn load(
    path: &Path,
    offset: usize,
    limit: Option<usize>,
    on_bad: OnBadLine,
) -> Result<(Vec<Problem>, Vec<DataError>), DataError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: p.clone(), source })?;
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    let mut id = 0usize;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| DataError::Io { path: p.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Raw>(&line)
            .map_err(|e| format!("not a {{question, answer}} JSON object: {e}"))
            .and_then(|r| match gsm8k_gold(&r.answer) {
                Some(gold) if !r.question.trim().is_empty() => Ok((r.question, gold)),
                Some(_) => Err("empty question".to_string()),
                None => Err("answer has no '#### <number>' line".to_string()),
            });
        let this_id = id;
        id += 1;
        match parsed {
            Ok((question, gold)) => {
                if this_id >= offset && limit.is_none_or(|l| problems.len() < l) {
                    problems.push(Problem { id: this_id, line: line_no, question, gold });
                }
            }
            Err(reason) => {
                let err = DataError::BadLine { path: p.clone(), line: line_no, reason };
                match on_bad {
                    OnBadLine::Stop => return Err(err),
                    OnBadLine::Skip => {
                        log::warn!("skipping {err}");
                        skipped.push(err);
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        return Err(DataError::Empty(p));
    }
    Ok((problems, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, content.as_bytes()).unwrap();
        f
    }

    const GOOD: &str = r#####"{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}
{"question": "Big?", "answer": "#### 1,000"}
{"question": "Neg?", "answer": "#### -3"}
"#####;

    #[test]
    fn loads_with_offset_and_limit() {
        let f = file(GOOD);
        let (p, _) = load(f.path(), 0, None, OnBadLine::Stop).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].gold, "1000");
        assert_eq!(p[2].gold, "-3");
        let (p, _) = load(f.path(), 1, Some(1), OnBadLine::Stop).unwrap();
        assert_eq!((p.len(), p[0].id, p[0].line), (1, 1, 2));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let f = file(&format!("{GOOD}not json\n{{\"question\": \"q\", \"answer\": \"no marker\"}}\n"));
        let e = load(f.path(), 0, None, OnBadLine::Stop).unwrap_err();
        assert!(e.to_string().ends_with(":4: not a {question, answer} JSON object: expected ident at line 1 column 2"), "{e}");
        let (p, skipped) = load(f.path(), 0, None, OnBadLine::Skip).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(skipped.len(), 2);
        assert!(skipped[1].to_string().contains(":5: answer has no '#### <number>' line"));
    }

    #[test]
    fn empty_and_missing() {
        let f = file("\n\n");
        assert!(matches!(load(f.path(), 0, None, OnBadLine::Stop), Err(DataError::Empty(_))));
        let f = file(GOOD);
        assert!(matches!(load(f.path(), 10, None, OnBadLine::Stop), Err(DataError::Empty(_))));
        assert!(matches!(load(Path::new("/nope.jsonl"), 0, None, OnBadLine::Stop), Err(DataError::Io { .. })));
    }

    #[test]
    fn the_shared_gsm8k_test_split_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/test-1000.jsonl");
        let (p, skipped) = load(&path, 0, None, OnBadLine::Stop).unwrap();
        assert_eq!(p.len(), 1000);
        assert!(skipped.is_empty());
        assert_eq!(p[0].gold, "18");
    }
}
