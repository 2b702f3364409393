//! Small verifiable arithmetic word problems the project generates itself:
//! one- and two-step, with a concise or a needlessly verbose trace (the
//! verbose one re-checks its work, as traces distilled from long reasoners
//! do). Tiny models learn them in minutes on a CPU.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::SftRecord;

const NAMES: &[&str] = &["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"];
const ITEMS: &[&str] = &["apples", "books", "coins", "pens", "shells", "stamps"];

/// `n` problems from `seed`; `verbose` pads the thinking with re-checks.
pub fn arithmetic(n: usize, seed: u64, verbose: bool) -> Vec<SftRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let name = NAMES[rng.random_range(0..NAMES.len())];
            let item = ITEMS[rng.random_range(0..ITEMS.len())];
            let a = rng.random_range(2..20u32);
            let b = rng.random_range(1..10u32);
            let two_step = rng.random_bool(0.5);
            let (question, mut thinking, answer) = if two_step {
                let c = rng.random_range(1..a + b);
                (
                    format!("{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} are left?"),
                    format!("{a} + {b} = {}. {} - {c} = {}.", a + b, a + b, a + b - c),
                    a + b - c,
                )
            } else if rng.random_bool(0.5) {
                (format!("{name} has {a} {item} and gets {b} more. How many {item} now?"), format!("{a} + {b} = {}.", a + b), a + b)
            } else {
                (format!("{name} has {a} bags of {b} {item}. How many {item} in all?"), format!("{a} * {b} = {}.", a * b), a * b)
            };
            if verbose {
                let first = thinking.clone();
                thinking = format!("{first} Wait, let me check that again. {first} Let me verify once more. {first} Yes, the answer is {answer}.");
            }
            SftRecord { question, thinking, answer: answer.to_string() }
        })
        .collect()
}
