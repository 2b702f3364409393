//! JSON Lines: datasets in, records and metrics out.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Read JSONL lines of `T`; a malformed line is an error with its number.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open data file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read line", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(&line).with_context(|| format!("{}:{}: malformed record", path.display(), i + 1))?;
        out.push(rec);
    }
    ensure!(!out.is_empty(), "{} holds no records: the dataset is empty", path.display());
    Ok(out)
}

/// Write `rows` as JSON Lines (the file is replaced).
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}
