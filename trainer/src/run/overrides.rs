//! `--set KEY=VALUE` on the command line: a config file's settings changed
//! for one run without editing the file (`reckon-train grpo --config
//! grpo.toml --set train.steps=120 --set reward.length.alpha=0.2`).
//!
//! KEY is a dotted path into the TOML (`section.key`, or deeper into an
//! inline table); VALUE is a TOML value (`120`, `3e-4`, `true`, `[512,
//! 768]`, `{ kind = "kimi" }`), or else taken as a string (`model.source=
//! runs/sft/checkpoints/step-00000400`). A key the config does not have is
//! refused: after the config is read, every override must be found in it
//! with the value given, so a misspelt key, or one that a tagged section
//! would quietly drop, is an error rather than a run with the file's value.

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use toml::{Table, Value};

/// One parsed `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted path, split.
    pub path: Vec<String>,
    /// The value.
    pub value: Value,
}

impl Override {
    /// Parse `KEY=VALUE`.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((key, raw)) = text.split_once('=') else {
            bail!("--set {text:?}: expected KEY=VALUE, e.g. train.steps=120");
        };
        let path: Vec<String> = key.trim().split('.').map(|s| s.trim().to_string()).collect();
        ensure!(path.iter().all(|p| !p.is_empty()), "--set {text:?}: the key {key:?} has an empty part");
        let raw = raw.trim();
        let value = match toml::from_str::<Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").expect("parsed as v"),
            Err(_) => Value::String(raw.to_string()),
        };
        Ok(Self { path, value })
    }

    /// The key as written.
    pub fn key(&self) -> String {
        self.path.join(".")
    }
}

/// Apply `sets` to a parsed config, creating the tables on the way (a
/// section the file leaves to its defaults can still be set).
pub fn apply(table: &mut Table, sets: &[Override]) -> Result<()> {
    for o in sets {
        let (last, parents) = o.path.split_last().expect("non-empty path");
        let mut cur = &mut *table;
        for (i, p) in parents.iter().enumerate() {
            let entry = cur.entry(p.clone()).or_insert_with(|| Value::Table(Table::new()));
            cur = match entry {
                Value::Table(t) => t,
                other => bail!("--set {}: {} is a {}, not a table", o.key(), o.path[..=i].join("."), other.type_str()),
            };
        }
        cur.insert(last.clone(), o.value.clone());
    }
    Ok(())
}

/// Every override must be in the config as read, with its value: else the
/// key is one the config does not have.
pub fn check_applied<T: Serialize>(cfg: &T, sets: &[Override]) -> Result<()> {
    let read = Value::try_from(cfg).context("serializing the config")?;
    for o in sets {
        let mut cur = Some(&read);
        for p in &o.path {
            cur = cur.and_then(|v| v.as_table()).and_then(|t| t.get(p));
        }
        match cur {
            Some(v) if same(v, &o.value) => {}
            Some(v) => bail!("--set {}: the config reads it as {v}, not {} (a key of another kind of section?)", o.key(), o.value),
            None => bail!("--set {}: the config has no such setting", o.key()),
        }
    }
    Ok(())
}

/// Equal as settings: numbers by value (`1` sets a float to 1.0), tables
/// by the keys given (a serialized section also holds its defaults).
fn same(read: &Value, given: &Value) -> bool {
    match (read, given) {
        (Value::Float(a), Value::Integer(b)) | (Value::Integer(b), Value::Float(a)) => *a == *b as f64,
        (Value::Table(a), Value::Table(b)) => b.iter().all(|(k, v)| a.get(k).is_some_and(|x| same(x, v))),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
        _ => read == given,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_toml_or_else_as_strings() {
        let o = Override::parse("train.steps=120").unwrap();
        assert_eq!((o.path.clone(), o.value.clone()), (vec!["train".to_string(), "steps".to_string()], Value::Integer(120)));
        assert_eq!(Override::parse("optim.lr = 3e-4").unwrap().value, Value::Float(3e-4));
        assert_eq!(Override::parse("rollout.max_thinking_tokens=[512, 768]").unwrap().value, Value::Array(vec![Value::Integer(512), Value::Integer(768)]));
        assert_eq!(Override::parse("model.source=runs/sft/step-1").unwrap().value, Value::String("runs/sft/step-1".into()));
        assert!(Override::parse("train.steps").is_err());
        assert!(Override::parse("train..steps=1").is_err());
    }

    #[test]
    fn apply_creates_sections_and_refuses_to_descend_into_values() {
        let mut t: Table = toml::from_str("[train]\nsteps = 10\n").unwrap();
        apply(&mut t, &[Override::parse("train.steps=20").unwrap(), Override::parse("optim.lr=0.5").unwrap()]).unwrap();
        assert_eq!(t["train"]["steps"], Value::Integer(20));
        assert_eq!(t["optim"]["lr"], Value::Float(0.5));
        let e = apply(&mut t, &[Override::parse("train.steps.x=1").unwrap()]).unwrap_err();
        assert!(e.to_string().contains("train.steps is a integer"), "{e}");
    }

    #[derive(Serialize)]
    struct Cfg {
        train: Train,
    }
    #[derive(Serialize)]
    struct Train {
        steps: u64,
        lr: f64,
    }

    #[test]
    fn overrides_the_config_does_not_hold_are_refused() {
        let cfg = Cfg { train: Train { steps: 20, lr: 1.0 } };
        check_applied(&cfg, &[Override::parse("train.steps=20").unwrap(), Override::parse("train.lr=1").unwrap()]).unwrap();
        let e = check_applied(&cfg, &[Override::parse("train.setps=20").unwrap()]).unwrap_err();
        assert!(e.to_string().contains("no such setting"), "{e}");
        let e = check_applied(&cfg, &[Override::parse("train.steps=30").unwrap()]).unwrap_err();
        assert!(e.to_string().contains("reads it as 20"), "{e}");
    }
}
