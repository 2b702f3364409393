//! The batched engine with the real default model: many budget-forced
//! sequences in one llama.cpp context.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use common::{engine, options, JANET, SHORT};
use reckon::budget::{InjectReason, ThinkEnd};
use reckon::engine::{BatchConfig, Engine, EngineOptions, Finished, Job, Sample, SamplingConfig, SolveOptions};
use reckon::format::ThinkFormat;
use reckon::eval::data::{self, Problem};
use reckon::eval::OnBadLine;
use reckon::events::{CancelHandle, Event, FinishReason};
use reckon::{ReckonError, SolveResult};

fn problems(n: usize) -> Vec<Problem> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/test-1000.jsonl");
    data::load(&p, 0, Some(n), OnBadLine::Stop).expect("shared GSM8K test data").0
}

fn ok(f: &Finished) -> &SolveResult {
    f.result.as_ref().unwrap_or_else(|e| panic!("completion {} failed: {e}", f.tag))
}

fn run_queue(jobs: Vec<Job<'_>>, slots: u32) -> Vec<Finished> {
    let e = engine();
    let mut out = Vec::new();
    e.solve_queue(jobs, slots, Some(2), &mut |f| out.push(f)).unwrap();
    out.sort_by_key(|f| f.tag);
    out
}

/// Token-level agreement of two completions: the length of the common prefix.
fn common_prefix(a: &Finished, b: &Finished) -> usize {
    a.tokens.iter().zip(&b.tokens).take_while(|(x, y)| x.id == y.id).count()
}

/// How far apart, in logits, llama.cpp's kernels may put two tokens and
/// still rank them either way. Two greedy paths over the same prompt that
/// differ only in rounding (another batch shape, another attention kernel)
/// part only where the model's top two choices are that close. Largest
/// gap seen where a greedy path parted (results/ci-cpus.md): 0.168 on a
/// 2-core AVX2 EPYC, over the 3 tests that use this. A path that parts at a
/// confident choice (a cache shared across slots, a stale cell) has gaps of
/// several logits.
const ROUNDING_LOGITS: f32 = 0.5;

/// Where two greedy completions of the same prompt first part, the gap
/// between the logits of the two tokens chosen there, computed in a fresh
/// context over the shared prefix: `None` if they never part, or part at a
/// token one of them did not sample (an injected "Wait" or delimiter, after
/// a rollback in one path only: there is no rival choice to weigh).
fn parting_gap(e: &Engine, a: &Finished, b: &Finished) -> Option<f32> {
    assert_eq!(a.prompt, b.prompt, "the same prompt");
    let k = common_prefix(a, b);
    let (x, y) = (a.tokens.get(k)?, b.tokens.get(k)?);
    if !(x.sampled && y.sampled) {
        return None;
    }
    let mut seq = a.prompt.clone();
    seq.extend(a.tokens[..k].iter().map(|t| t.id));
    let logits = e.logits(&seq, Some(2)).unwrap();
    let row = logits.last().unwrap();
    Some((row[x.id as usize] - row[y.id as usize]).abs())
}

/// Asserts that every pair of greedy completions parts only at a near-tie
/// (within [`ROUNDING_LOGITS`]); returns the gaps seen.
fn assert_parts_only_at_near_ties(e: &Engine, what: &str, pairs: &[(&Finished, &Finished)]) -> Vec<f32> {
    let gaps: Vec<f32> = pairs.iter().filter_map(|(a, b)| parting_gap(e, a, b)).collect();
    eprintln!("{what}: {} of {} pairs part; logit gaps where they part: {gaps:.3?}", gaps.len(), pairs.len());
    for (i, g) in gaps.iter().enumerate() {
        assert!(*g <= ROUNDING_LOGITS, "{what}: parting {i} is at a confident choice ({g:.3} logits apart), not a rounding tie");
    }
    gaps
}

#[test]
fn greedy_batched_answers_agree_with_the_single_path_on_20_gsm8k_questions() {
    let e = engine();
    let ps = problems(20);
    let opts = options(0, 96, 32);
    let jobs = ps.iter().enumerate().map(|(i, p)| Job::single(i as u64, p.question.clone(), opts.clone())).collect();
    let batched = run_queue(jobs, 4);
    let (mut same_answer, mut same_tokens, mut prefix, mut total) = (0, 0, 0, 0);
    let mut singles = Vec::new();
    for (p, b) in ps.iter().zip(&batched) {
        // The single path is a batch of one.
        let single = e.solve_samples(&p.question, &opts, vec![Sample::silent(0, None)], Some(2)).unwrap().remove(0);
        let (s, r) = (ok(&single), ok(b));
        same_answer += usize::from(s.extracted_answer == r.extracted_answer);
        same_tokens += usize::from(single.tokens == b.tokens);
        prefix += common_prefix(&single, b);
        total += single.tokens.len();
        assert!(r.total_thinking_tokens() <= 96, "cap held");
        singles.push(single);
    }
    eprintln!(
        "batched (4 slots) vs single, 20 GSM8K questions at cap 96: {same_answer}/20 extracted answers equal, \
         {same_tokens}/20 token streams identical, {prefix}/{total} tokens in common prefixes"
    );
    // Issue 13 asked for 18 of 20 equal answers; how many agree depends on
    // the CPU (18/20 on a 2-core AVX2 EPYC, 17/20 on an AVX-512 one:
    // llama.cpp's kernels round differently at other batch shapes, and a
    // cap-96 forced answer is chaotic once a path parts), so that count is
    // reported. What holds on every CPU: the paths part only at rounding
    // ties, never where the model was sure.
    let pairs: Vec<(&Finished, &Finished)> = singles.iter().zip(&batched).collect();
    let gaps = assert_parts_only_at_near_ties(&e, "batched vs single", &pairs);
    assert_eq!(gaps.len() + same_tokens, 20, "every pair that parts does so at a sampled token");
}

/// The default model forced into the R1 format: asked to stop before a
/// floor, it writes a multi-token `</think>`, which is held, then rolled back.
fn r1_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(common::model_path(), EngineOptions { format: Some(ThinkFormat::R1), ..EngineOptions::default() }).unwrap())
}

/// KV rollback against llama.cpp: with R1 forced, a natural end before the
/// floor is held (several tokens of `</think>`), rolled back out of the
/// cache, and "Wait" fed in its place. Every token sampled after that was
/// drawn from the rolled-back cache's logits: its log-prob must equal a
/// fresh context's over the final sequence (what the cache should hold).
#[test]
fn logits_after_a_rollback_equal_a_fresh_contexts() {
    let e = r1_engine();
    let t = 0.7f32;
    // A sampled end may also be the end-of-turn token (nothing to roll
    // back): the first seed whose end was a held `</think>` is checked.
    let f = (0..8)
        .map(|seed| {
            let opts = SolveOptions {
                sampling: SamplingConfig { temperature: t, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..SamplingConfig::default() },
                ..options(48, 96, 4)
            };
            e.solve_samples(SHORT, &opts, vec![Sample::silent(0, None)], Some(2)).unwrap().remove(0)
        })
        .find(|f| ok(f).rolled_back_tokens > 0)
        .expect("in 8 seeds, some sampled end is a held </think> that is rolled back");
    assert!(ok(&f).extensions >= 1);
    let mut seq = f.prompt.clone();
    seq.extend(f.tokens.iter().map(|t| t.id));
    let logits = e.logits(&seq, Some(2)).unwrap();
    let after_wait = f.tokens.iter().position(|t| !t.sampled).expect("an injected Wait");
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for (k, tok) in f.tokens.iter().enumerate() {
        let Some(got) = tok.logprob else { continue };
        let row = &logits[f.prompt.len() + k - 1];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = row.iter().map(|&l| (f64::from((l - max) / t)).exp()).sum();
        let want = f64::from((row[tok.id as usize] - max) / t) - z.ln();
        let gap = (f64::from(got) - want).abs();
        // The solve caches keys in F16 and decodes one token a step,
        // Engine::logits caches F32 in one batch: they differ by rounding
        // (up to ~0.1 nats on uncertain tokens). Stale cache entries left by
        // a bad rollback would put every later token far off.
        assert!(gap < 0.25, "token {k} ({}): log-prob {got} vs {want} in a fresh context", tok.id);
        if k < after_wait { before.push(gap) } else { after.push(gap) }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    eprintln!("|log-prob gap| before the rollback {:.4} ({} tokens), after {:.4} ({} tokens)", mean(&before), before.len(), mean(&after), after.len());
    assert!(after.len() >= 20, "{} tokens sampled after the rollback", after.len());
    assert!(mean(&after) <= (2.0 * mean(&before)).max(0.03), "the rollback left the cache off: mean gap {:.4} after vs {:.4} before", mean(&after), mean(&before));
}

#[test]
fn sequences_side_by_side_keep_their_own_budgets_cancels_and_caches() {
    let e = r1_engine();
    let cancel = CancelHandle::new();
    let c2 = cancel.clone();
    let mut n_events = 0;
    // Cancels itself after its 10th thinking event, while the others go on.
    let canceller = move |ev: &Event| {
        n_events += usize::from(matches!(ev, Event::Thinking { .. }));
        if n_events == 10 {
            c2.cancel();
        }
        true
    };
    let floor = options(60, 120, 16);
    let jobs = vec![
        // 0: a floor far above the natural end: "</think>" held and rolled
        // back, "Wait" injected, extensions counted.
        (SHORT, floor.clone()),
        // 1: hits a small cap while the others continue.
        (JANET, options(0, 16, 8)),
        // 2: cancelled mid-way.
        (JANET, options(0, 400, 16)),
        // 3: an ordinary solve next to all of that.
        (JANET, options(0, 64, 16)),
    ];
    let mut batch = e.batch(BatchConfig { slots: 4, slot_context: 1024, threads: Some(2) }).unwrap();
    let mut canceller = Some(canceller);
    for (i, (q, o)) in jobs.iter().enumerate() {
        let sample = match (i, canceller.take()) {
            (2, Some(c)) => Sample { tag: 2, seed: None, listener: Box::new(c), cancel: Some(cancel.clone()) },
            (_, c) => {
                canceller = c;
                Sample::silent(i as u64, None)
            }
        };
        batch.submit(Job { question: q.to_string(), options: o.clone(), samples: vec![sample] }).unwrap();
    }
    let mut out = Vec::new();
    let mut steps = 0;
    while !batch.is_idle() {
        out.extend(batch.step());
        batch.check_cells().unwrap_or_else(|err| panic!("after step {steps}: {err}"));
        steps += 1;
    }
    out.sort_by_key(|f| f.tag);
    assert_eq!(out.len(), 4);

    let floored = ok(&out[0]);
    assert!(floored.rolled_back_tokens > 0, "the held </think> was rolled back: {floored:?}");
    assert!(floored.extensions >= 1 && floored.thinking.contains("Wait"), "{floored:?}");
    let injected = out[0].tokens.iter().filter(|t| !t.sampled).count() as u32;
    assert_eq!(injected, floored.injected_tokens + floored.delimiter_tokens, "injected tokens are recorded as such");
    assert!(floored.total_thinking_tokens() >= 60 || floored.forced_end, "the floor held");

    let capped = ok(&out[1]);
    assert_eq!(capped.total_thinking_tokens(), 16, "the cap is exact");
    assert_eq!(capped.think_end, Some(ThinkEnd::TokenCap));

    let cancelled = ok(&out[2]);
    assert_eq!(cancelled.finish, FinishReason::Cancelled);
    assert!(cancelled.thinking_tokens >= 10 && cancelled.thinking_tokens <= 11, "stopped within a step: {}", cancelled.thinking_tokens);

    // Each job alone in a batch of its own starts the same way (its first
    // tokens come from the same prompt state); later tokens may differ where
    // llama.cpp's kernels round differently at another batch shape, and then
    // what a capped or floored run answers is chaotic (so answers are
    // reported, not asserted; the 20-question test measures agreement).
    let mut alone = Vec::new();
    for (i, (q, o)) in jobs.iter().enumerate().filter(|(i, _)| *i != 2) {
        let a = e.solve_samples(q, o, vec![Sample::silent(0, None)], Some(2)).unwrap().remove(0);
        let prefix = common_prefix(&a, &out[i]);
        eprintln!("job {i} batched vs alone: {prefix} of {} tokens in common prefix; answers {:?} vs {:?}", a.tokens.len(), ok(&out[i]).extracted_answer, ok(&a).extracted_answer);
        alone.push((i, a));
    }
    // Where a job alone and the same job in the batch part, it is at a
    // rounding tie (job 0 may also part where only one path was held at its
    // floor and rolled back: no rival token to weigh there).
    let pairs: Vec<(&Finished, &Finished)> = alone.iter().map(|(i, a)| (a, &out[*i])).collect();
    assert_parts_only_at_near_ties(e, "side by side vs alone", &pairs);
}

#[test]
fn a_prompt_shared_by_g_samples_is_decoded_once_and_seeds_reproduce() {
    let e = engine();
    let opts = SolveOptions {
        sampling: SamplingConfig { temperature: 0.8, seed: 7, ..SamplingConfig::default() },
        ..options(0, 48, 16)
    };
    let group = |g| e.solve_samples(JANET, &opts, (0..g).map(|i| Sample::silent(i, Some(7 + i as u32))).collect(), Some(2)).unwrap();
    let a = group(4);
    let prompt = a[0].prompt.len() as u32;
    assert!(prompt > 50);
    let decoded: Vec<u32> = a.iter().map(|f| ok(f).decoded_tokens).collect();
    // Tokens each completion fed after the prompt (the last sampled one is
    // not decoded when it ends the reply).
    let fed: Vec<u32> = a.iter().map(|f| f.tokens.len() as u32).collect();
    let leaders = decoded.iter().zip(&fed).filter(|(d, f)| **d + 1 >= prompt + **f).count();
    assert_eq!(leaders, 1, "exactly one slot decoded the prompt: decoded {decoded:?}, fed {fed:?}, prompt {prompt}");
    let total: u32 = decoded.iter().sum();
    assert!(total <= prompt + fed.iter().sum::<u32>(), "prompt decoded once: {total} > {prompt} + {fed:?}");

    let texts: HashSet<&str> = a.iter().map(|f| ok(f).thinking.as_str()).collect();
    assert!(texts.len() >= 2, "different seeds give different samples");
    for f in &a {
        let r = ok(f);
        assert!(r.total_thinking_tokens() <= 48);
        for t in &f.tokens {
            match (t.sampled, t.logprob) {
                (true, Some(lp)) => assert!(lp.is_finite() && lp <= 0.0, "logprob {lp}"),
                (false, None) => {}
                other => panic!("sampled/logprob mismatch: {other:?}"),
            }
        }
    }
    let b = group(4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.tokens, y.tokens, "same seeds and slot order reproduce the samples");
    }
}

#[test]
fn logprobs_are_those_of_the_distribution_sampled_from() {
    let e = engine();
    // Temperature 0.7 alone (no truncation): log p = log_softmax(logits / 0.7).
    let t = 0.7f32;
    let opts = SolveOptions {
        sampling: SamplingConfig { temperature: t, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 3, ..SamplingConfig::default() },
        ..options(0, 12, 4)
    };
    let f = e.solve_samples(JANET, &opts, vec![Sample::silent(0, None)], Some(2)).unwrap().remove(0);
    ok(&f);
    let mut seq = f.prompt.clone();
    let n_check = 8.min(f.tokens.len());
    seq.extend(f.tokens[..n_check].iter().map(|t| t.id));
    let logits = e.logits(&seq, Some(2)).unwrap();
    for (k, tok) in f.tokens[..n_check].iter().enumerate() {
        let row = &logits[f.prompt.len() + k - 1];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = row.iter().map(|&l| (f64::from((l - max) / t)).exp()).sum();
        let want = f64::from((row[tok.id as usize] - max) / t) - z.ln();
        let got = f64::from(tok.logprob.expect("sampled"));
        // Engine::logits caches keys in F32; a solve caches them in F16.
        assert!((got - want).abs() < 0.05, "token {k}: logprob {got} vs reference {want}");
    }
    // Greedy picks have probability 1.
    let g = e.solve_samples(JANET, &options(0, 8, 4), vec![Sample::silent(0, None)], Some(2)).unwrap().remove(0);
    assert!(g.tokens.iter().filter(|t| t.sampled).all(|t| t.logprob == Some(0.0)));
}

#[test]
fn continuous_batching_runs_20_questions_through_4_slots_without_leaks() {
    let e = engine();
    let ps = problems(20);
    let opts = options(0, 24, 8);
    let mut batch = e.batch(BatchConfig { slots: 4, slot_context: 512, threads: Some(2) }).unwrap();
    let mut next = 0;
    let mut done: Vec<Finished> = Vec::new();
    let mut most_live = 0;
    while next < ps.len() || !batch.is_idle() {
        while next < ps.len() && batch.free_slots() > 0 {
            batch.submit(Job::single(next as u64, ps[next].question.clone(), opts.clone())).unwrap();
            next += 1;
        }
        most_live = most_live.max(batch.live());
        done.extend(batch.step());
    }
    assert_eq!(most_live, 4);
    assert_eq!(batch.free_slots(), 4, "every slot freed");
    let tags: HashSet<u64> = done.iter().map(|f| f.tag).collect();
    assert_eq!(tags, (0..20).collect(), "every question finished once");
    for f in &done {
        let r = ok(f);
        assert_eq!(r.total_thinking_tokens(), 24);
        assert!(r.answer_tokens <= 8);
    }
    // A full batch refuses more work, and takes it again once freed.
    for i in 0..4 {
        batch.submit(Job::single(100 + i, SHORT, opts.clone())).unwrap();
    }
    let err = batch.submit(Job::single(200, SHORT, opts.clone())).unwrap_err();
    assert!(err.to_string().contains("free"), "{err}");
    assert_eq!(batch.run_to_end().len(), 4);
    assert!(batch.is_idle());
}

#[test]
fn batches_that_cannot_fit_are_refused_before_decoding_and_bad_jobs_alone_fail() {
    let e = engine();
    match e.batch(BatchConfig { slots: 64, slot_context: 2048, threads: Some(2) }) {
        Err(ReckonError::BatchTooLarge { fits, .. }) => assert_eq!(fits, 32768 / 2048),
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    let msg = e.batch(BatchConfig { slots: 64, slot_context: 2048, threads: None }).unwrap_err().to_string();
    assert!(msg.contains("16 fit"), "{msg}");
    assert!(e.batch(BatchConfig { slots: 0, slot_context: 256, threads: None }).is_err());

    let long = "How many? ".repeat(20_000);
    let jobs = vec![
        Job::single(0, SHORT, options(0, 16, 4)),
        Job::single(1, long, options(0, 16, 4)),
        Job::single(2, "  ", options(0, 16, 4)),
        Job::single(3, SHORT, options(9, 4, 4)),
    ];
    let out = run_queue(jobs, 4);
    assert!(ok(&out[0]).total_thinking_tokens() <= 16);
    assert!(matches!(out[1].result, Err(ReckonError::PromptTooLong { .. })), "{:?}", out[1].result);
    assert!(matches!(out[2].result, Err(ReckonError::EmptyQuestion)), "{:?}", out[2].result);
    assert!(matches!(out[3].result, Err(ReckonError::InvalidBudget(_))), "{:?}", out[3].result);
}

#[test]
fn a_forced_end_in_one_slot_injects_only_there() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let jobs = vec![
        Job::single(0, JANET, options(0, 8, 8)),
        Job {
            question: JANET.into(),
            options: options(0, 200, 8),
            samples: vec![Sample {
                tag: 1,
                seed: None,
                listener: Box::new(move |ev: &Event| {
                    if let Event::Injected { reason, .. } = ev {
                        s2.lock().unwrap().push(*reason);
                    }
                    true
                }),
                cancel: None,
            }],
        },
    ];
    let out = run_queue(jobs, 2);
    assert_eq!(ok(&out[0]).think_end, Some(ThinkEnd::TokenCap));
    let long = ok(&out[1]);
    assert!(long.total_thinking_tokens() > 8, "the other sequence kept thinking past the first one's cap");
    let reasons = seen.lock().unwrap().clone();
    assert!(reasons.iter().all(|r| *r == InjectReason::TokenCap) && reasons.len() <= 1, "{reasons:?}");
    assert_eq!(long.forced_end, !reasons.is_empty());
}

#[test]
fn a_unified_kv_cache_keeps_every_sequence_to_its_own_cells() {
    let e = Engine::load(common::model_path(), EngineOptions { unified_kv: true, ..EngineOptions::default() }).unwrap();
    let ps = problems(6);
    let mut batch = e.batch(BatchConfig { slots: 4, slot_context: 512, threads: Some(2) }).unwrap();
    let sampled = SolveOptions { sampling: SamplingConfig { temperature: 0.8, ..SamplingConfig::default() }, ..options(0, 24, 8) };
    // A group of 3 sharing one prompt, next to single questions.
    batch.submit(Job::group(100, JANET, sampled, 3)).unwrap();
    let mut next = 0;
    let mut done = Vec::new();
    while next < ps.len() || !batch.is_idle() {
        while next < ps.len() && batch.free_slots() > 0 {
            batch.submit(Job::single(next as u64, ps[next].question.clone(), options(0, 24, 8))).unwrap();
            next += 1;
        }
        done.extend(batch.step());
        batch.check_cells().unwrap();
    }
    assert_eq!(done.len(), 9);
    assert!(batch.is_idle());
    for f in &done {
        assert_eq!(ok(f).total_thinking_tokens(), 24);
    }
    let group: Vec<&Finished> = done.iter().filter(|f| f.tag >= 100).collect();
    let prompt = group[0].prompt.len() as u32;
    let decoded: u32 = group.iter().map(|f| ok(f).decoded_tokens).sum();
    let fed: u32 = group.iter().map(|f| f.tokens.len() as u32).sum();
    assert!(decoded <= prompt + fed, "the shared prompt was decoded once");
}

#[test]
fn a_decode_whose_sequences_are_all_cancelled_stops_inside_llama_decode() {
    let e = engine();
    // A prompt of about 1,350 tokens: its prefill is a few long decodes.
    let long = format!("{} {}", "Count the apples, pears and plums in every basket. ".repeat(100), SHORT);
    let cancel = CancelHandle::new();
    let mut batch = e.batch(BatchConfig { slots: 2, slot_context: 2048, threads: Some(2) }).unwrap();

    // Cancelled before its prompt is decoded: nothing is decoded.
    cancel.cancel();
    batch.submit(Job { question: long.clone(), options: options(0, 16, 4), samples: vec![Sample { tag: 0, seed: None, listener: Box::new(reckon::events::Silent), cancel: Some(cancel.clone()) }] }).unwrap();
    let out = batch.run_to_end();
    assert_eq!(ok(&out[0]).finish, FinishReason::Cancelled);
    assert_eq!((ok(&out[0]).sampled_tokens, ok(&out[0]).decoded_tokens), (0, 0));
    assert_eq!((batch.aborted_decodes(), batch.decode_calls()), (0, 0));
    batch.check_cells().unwrap();

    // A cancelled sequence beside one that is still wanted: no decode is
    // cut short, the cancelled one's prompt is not decoded at all, the
    // other runs on (in the same context, after the abort above).
    let wanted = CancelHandle::new();
    let sample = |tag, c: &CancelHandle| Sample { tag, seed: None, listener: Box::new(reckon::events::Silent), cancel: Some(c.clone()) };
    batch.submit(Job { question: long.clone(), options: options(0, 16, 4), samples: vec![sample(1, &cancel)] }).unwrap();
    batch.submit(Job { question: JANET.into(), options: options(0, 16, 4), samples: vec![sample(2, &wanted)] }).unwrap();
    let mut out = batch.run_to_end();
    out.sort_by_key(|f| f.tag);
    assert_eq!(batch.aborted_decodes(), 0, "nothing aborted while sequence 2 was wanted");
    assert_eq!(ok(&out[0]).finish, FinishReason::Cancelled);
    assert_eq!(ok(&out[0]).decoded_tokens, 0, "its prefill was dropped");
    assert_eq!(ok(&out[1]).total_thinking_tokens(), 16);
    assert_ne!(ok(&out[1]).finish, FinishReason::Cancelled);

    // Cancelled from another thread while its prompt decodes (1,350
    // tokens: a second or more on a phone or laptop CPU): llama.cpp's abort
    // callback stops that decode between two graph nodes.
    let fresh = CancelHandle::new();
    batch.submit(Job { question: long, options: options(0, 16, 4), samples: vec![sample(3, &fresh)] }).unwrap();
    let c = fresh.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        c.cancel();
    });
    let out = batch.run_to_end();
    t.join().unwrap();
    assert_eq!(ok(&out[0]).finish, FinishReason::Cancelled);
    assert_eq!(ok(&out[0]).sampled_tokens, 0, "stopped in its prefill");
    assert_eq!(batch.aborted_decodes(), 1, "the prefill's decode was stopped part-way");
    batch.check_cells().unwrap();
}

/// Asked to write `<think>`, the default model with R1 forced writes it in
/// its answer (as ` <think>`, another tokenization than the prompt's
/// `<think>\n`): thinking re-opens, and with no budget left is closed again
/// at once, for as long as it keeps re-opening.
const REOPENS: &str = "Write the word <think> three times, each on its own line, and nothing else.";

#[test]
fn a_re_opened_think_block_on_the_default_model_is_closed_again_and_bounded() {
    let e = r1_engine();
    let r = e.solve(REOPENS, &options(0, 0, 48), &mut reckon::events::Silent, None).unwrap();
    let close_and_prefix = (e.delimiters().close.len() + e.delimiters().answer_prefix.len()) as u32;
    assert!(r.delimiter_tokens >= 2 * close_and_prefix, "the end was forced again after a re-opened block: {} delimiter tokens", r.delimiter_tokens);
    assert_eq!(r.think_end, Some(ThinkEnd::TokenCap));
    assert_eq!(r.thinking_tokens, 0, "no budget: every re-opened block is closed at once");
    // Each opening counts against the answer's bound, so the loop ends there.
    assert_eq!(r.finish, FinishReason::AnswerCap);
    assert_eq!(r.answer_tokens, 48);
    // Re-openings are not shown; the last one, which would pass the bound,
    // is answer text.
    assert!(r.answer.matches("think>").count() <= 1, "{:?}", r.answer);
}

/// The context-full path on the real model: re-opened blocks feed the
/// forced delimiter again, beyond what the slot reserved (prompt, budgets
/// and one delimiter, rounded up to 256 cells). Before the answer's bound
/// is reached, the sequence fills its cells and the answer is ended there,
/// not decoded past them.
#[test]
fn a_sequence_that_fills_its_context_ends_its_answer_at_the_last_cell() {
    let e = r1_engine();
    let opts = options(0, 0, 75);
    let prompt = e.prompt_tokens(REOPENS, &opts).unwrap().len();
    let cells = e.slot_context(prompt, &opts.budget).unwrap().div_ceil(256) * 256;
    let r = e.solve(REOPENS, &opts, &mut reckon::events::Silent, None).unwrap();
    assert_eq!(r.finish, FinishReason::AnswerCap);
    assert!(r.answer_tokens < 75, "ended by the context, not the answer's bound ({} answer tokens)", r.answer_tokens);
    assert!(r.decoded_tokens <= cells && r.decoded_tokens + 9 > cells, "{} tokens decoded in {cells} cells", r.decoded_tokens);
}

#[test]
fn batches_without_flash_attention_keep_caps_cells_and_greedy_choices() {
    // The trainer's rollouts turn llama.cpp's flash-attention kernel off
    // (EngineOptions::flash_attention): the same batch then computes
    // attention as plain matrix products. Budgets and cells are unchanged,
    // and greedy choices stay those of the default kernel (up to rounding).
    let ps = problems(4);
    let run = |flash_attention: bool| -> Vec<Finished> {
        let e = Engine::load(common::model_path(), EngineOptions { flash_attention, ..EngineOptions::default() }).unwrap();
        let mut batch = e.batch(BatchConfig { slots: 4, slot_context: 512, threads: Some(2) }).unwrap();
        for (i, p) in ps.iter().enumerate() {
            batch.submit(Job::single(i as u64, p.question.clone(), options(0, 16, 8))).unwrap();
        }
        let mut done = Vec::new();
        while !batch.is_idle() {
            done.extend(batch.step());
            batch.check_cells().unwrap();
        }
        done.sort_by_key(|f| f.tag);
        done
    };
    let (plain, flash) = (run(false), run(true));
    assert_eq!(plain.len(), 4);
    for f in &plain {
        assert_eq!(ok(f).total_thinking_tokens(), 16);
    }
    // The kernels round differently, so greedy paths may part, but only
    // where the model's top two choices are a rounding tie.
    let pairs: Vec<(&Finished, &Finished)> = plain.iter().zip(&flash).collect();
    assert_parts_only_at_near_ties(&engine(), "without vs with flash attention", &pairs);
}
