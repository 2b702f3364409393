//! Small verifiable arithmetic word problems the project generates itself:
//! one- and two-step, with a concise or a needlessly verbose trace (the
//! verbose one re-checks its work 0 to 3 times, as traces distilled from
//! long reasoners do). Tiny models learn them in minutes on a CPU.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sft::data::SftRecord;

const NAMES: &[&str] = &["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"];
const ITEMS: &[&str] = &["apples", "books", "coins", "pens", "shells", "stamps"];

/// `n` problems from `seed`; `verbose` pads the thinking with re-checks.
pub fn arithmetic(n: usize, seed: u64, verbose: bool) -> Vec<SftRecord> {
    generate(n, seed, verbose, 20, 0.5)
}

/// One-step sums of single digits only: a task a 2-layer model masters in
/// a few hundred SFT steps, so RL effects are not drowned by wrong answers.
pub fn single_digit_sums(n: usize, seed: u64, verbose: bool) -> Vec<SftRecord> {
    generate(n, seed, verbose, 10, 0.0)
}

fn generate(n: usize, seed: u64, verbose: bool, max_a: u32, two_step_share: f64) -> Vec<SftRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let name = NAMES[rng.random_range(0..NAMES.len())];
            let item = ITEMS[rng.random_range(0..ITEMS.len())];
            let a = rng.random_range(2..max_a);
            let b = rng.random_range(1..10u32);
            let two_step = rng.random_bool(two_step_share);
            let (question, mut thinking, answer) = if two_step {
                let c = rng.random_range(1..a + b);
                (
                    format!("{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} are left?"),
                    format!("{a} + {b} = {}. {} - {c} = {}.", a + b, a + b, a + b - c),
                    a + b - c,
                )
            } else if two_step_share == 0.0 || rng.random_bool(0.5) {
                (format!("{name} has {a} {item} and gets {b} more. How many {item} now?"), format!("{a} + {b} = {}.", a + b), a + b)
            } else {
                (format!("{name} has {a} bags of {b} {item}. How many {item} in all?"), format!("{a} * {b} = {}.", a * b), a * b)
            };
            if verbose {
                // 0 to 3 needless re-checks: verbose on average, with the
                // spread a policy can be moved along.
                let first = thinking.clone();
                let checks = rng.random_range(0..4);
                for k in 0..checks {
                    let lead = if k == 0 { "Wait, let me check that again." } else { "Let me verify once more." };
                    thinking.push_str(&format!(" {lead} {first}"));
                }
                if checks > 0 {
                    thinking.push_str(&format!(" Yes, the answer is {answer}."));
                }
            }
            SftRecord { question, thinking, answer: answer.to_string() }
        })
        .collect()
}
