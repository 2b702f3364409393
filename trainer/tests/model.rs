//! The training model: gradients reach every parameter and agree with
//! finite differences; logits equal candle-transformers' inference Qwen2;
//! the KV-cached path equals the full forward; LoRA trains only adapters
//! and merges exactly; HF directories load single and sharded.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reckon_trainer::sft::data::{make_batch, Example};
use reckon_trainer::model::{LoraConfig, Qwen2, Qwen2Config};
use reckon_trainer::run::session::accumulate;
use reckon_trainer::sft::train::sft_loss;
use reckon_trainer::io::weights;

fn tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 31 + seed * 17 + 5) % vocab) as u32).collect()
}

/// Random weights with non-zero biases and norms away from 1, so every
/// parameter matters.
fn perturbed(model: &Qwen2, _seed: u64) -> BTreeMap<String, Tensor> {
    model
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let noise = Tensor::randn(0f32, 0.05, t.shape(), &Device::Cpu).unwrap();
            let t = if n.ends_with(".bias") || n.ends_with("norm.weight") { (t + noise).unwrap() } else { t };
            (n, t)
        })
        .collect()
}

fn batch_of(seqs: &[Vec<u32>]) -> reckon_trainer::sft::data::Batch {
    let ex: Vec<Example> = seqs.iter().map(|s| Example { ids: s.clone(), trained: vec![1; s.len()] }).collect();
    let refs: Vec<&Example> = ex.iter().collect();
    make_batch(&refs, 0, &Device::Cpu).unwrap()
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let (model, _) = common::tiny(3);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let model = Qwen2::from_tensors(model.config.clone(), perturbed(&model, 1), None, &mut rng, &Device::Cpu).unwrap();
    let v = model.config.vocab_size;
    // Two sequences of different lengths: padding and masks are exercised.
    let b = batch_of(&[tokens(12, v, 1), tokens(7, v, 2)]);
    let loss = sft_loss(&model, &b, b.n_loss_tokens, None).unwrap();
    let g = loss.backward().unwrap();
    let params = model.trainable();
    assert_eq!(params.len(), model.config.weight_shapes().len());
    for (name, var) in &params {
        let grad = g.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient reached {name}"));
        let norm = grad.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm.is_finite(), "{name}: gradient is not finite");
        assert!(norm > 0.0, "{name}: gradient is zero");
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let (model, _) = common::tiny(4);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut model = Qwen2::from_tensors(model.config.clone(), perturbed(&model, 2), None, &mut rng, &Device::Cpu).unwrap();
    model.cast(DType::F64).unwrap();
    let v = model.config.vocab_size;
    let b = batch_of(&[tokens(9, v, 3), tokens(6, v, 4)]);
    let loss = sft_loss(&model, &b, b.n_loss_tokens, None).unwrap();
    let g = loss.backward().unwrap();
    let params = model.trainable();
    let h = 1e-5;
    let mut checked = 0;
    for (name, var) in &params {
        // One or two entries of every tensor kind.
        if !(name.contains("layers.1") || !name.contains("layers.")) {
            continue;
        }
        let grad = g.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let idx = grad.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
        let shape = var.as_tensor().shape().clone();
        let eval = |delta: f64| {
            let mut w = base.clone();
            w[idx] += delta;
            var.set(&Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap()).unwrap();
            sft_loss(&model, &b, b.n_loss_tokens, None).unwrap().to_scalar::<f64>().unwrap()
        };
        let numeric = (eval(h) - eval(-h)) / (2.0 * h);
        var.set(&Tensor::from_vec(base.clone(), shape.clone(), &Device::Cpu).unwrap()).unwrap();
        let analytic = grad[idx];
        let rel = (numeric - analytic).abs() / analytic.abs().max(1e-8);
        assert!(rel < 1e-4, "{name}[{idx}]: backward {analytic:e} vs finite difference {numeric:e} (rel {rel:e})");
        checked += 1;
    }
    assert!(checked >= 14, "checked {checked} tensors");
}

#[test]
fn logits_equal_candle_transformers_reference_forward() {
    let (model, _) = common::tiny(5);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let tensors = perturbed(&model, 3);
    let ours = Qwen2::from_tensors(model.config.clone(), tensors.clone(), None, &mut rng, &Device::Cpu).unwrap();
    let c = &ours.config;
    let mut cfg_json = serde_json::to_value(c).unwrap();
    cfg_json["sliding_window"] = serde_json::json!(c.max_position_embeddings);
    cfg_json["max_window_layers"] = serde_json::json!(c.num_hidden_layers);
    cfg_json["use_sliding_window"] = serde_json::json!(false);
    cfg_json["hidden_act"] = serde_json::json!("silu");
    let ref_cfg: candle_transformers::models::qwen2::Config = serde_json::from_value(cfg_json).unwrap();
    let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &Device::Cpu);
    let mut reference = candle_transformers::models::qwen2::ModelForCausalLM::new(&ref_cfg, vb).unwrap();

    let seq = tokens(10, c.vocab_size, 9);
    let ids = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let att = Tensor::ones((1, seq.len()), DType::U8, &Device::Cpu).unwrap();
    let all = ours.forward(&ids, &att, None).unwrap().i(0).unwrap();
    let mut worst = 0f32;
    for (pos, tok) in seq.iter().enumerate() {
        let step = Tensor::new(&[*tok], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let r = reference.forward(&step, pos).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let o = all.i(pos).unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in r.iter().zip(&o) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst < 1e-4, "max |logit difference| = {worst:e}");
}

#[test]
fn kv_cached_path_equals_the_full_forward() {
    let (model, _) = common::tiny(6);
    let v = model.config.vocab_size;
    let seq = tokens(11, v, 5);
    let ids = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let att = Tensor::ones((1, seq.len()), DType::U8, &Device::Cpu).unwrap();
    let full = model.forward(&ids, &att, None).unwrap().i(0).unwrap();
    let mut cache = reckon_trainer::KvCache::default();
    // A multi-token prefill, then one token at a time, then a rollback.
    let mut got = vec![model.forward_cached(&seq[..4], &mut cache).unwrap()];
    for t in &seq[4..] {
        got.push(model.forward_cached(&[*t], &mut cache).unwrap());
    }
    assert_eq!(cache.len(), seq.len());
    for (k, g) in got.iter().enumerate() {
        let pos = if k == 0 { 3 } else { 3 + k };
        let diff = (g - full.i(pos).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "position {pos}: cached vs full differ by {diff:e}");
    }
    cache.truncate(6).unwrap();
    let again = model.forward_cached(&seq[6..7], &mut cache).unwrap();
    let diff = (again - full.i(6).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "after truncation: {diff:e}");
}

#[test]
fn lora_trains_only_adapters_and_merging_keeps_the_logits() {
    let (base, _) = common::tiny(7);
    let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let before = base.tensors();
    let mut model = Qwen2::from_tensors(base.config.clone(), before.clone(), Some(cfg), &mut rng, &Device::Cpu).unwrap();
    let params = model.trainable();
    assert_eq!(params.len(), 2 * 3 * model.config.num_hidden_layers);
    assert!(params.iter().all(|(n, _)| n.contains(".lora_")));
    let v = model.config.vocab_size;
    let b = batch_of(&[tokens(10, v, 1), tokens(8, v, 2)]);
    let mut opt = reckon_trainer::run::optim::AdamW::new(reckon_trainer::run::config::OptimConfig { lr: 1e-2, ..Default::default() });
    for _ in 0..3 {
        let loss = sft_loss(&model, &b, b.n_loss_tokens, Some(&mut rng)).unwrap();
        let mut grads = BTreeMap::new();
        accumulate(&mut grads, &params, &loss.backward().unwrap()).unwrap();
        assert_eq!(grads.len(), params.len(), "every adapter gets a gradient");
        opt.step(&params, &grads, 1e-2).unwrap();
    }
    let after = model.tensors();
    for (name, t) in &before {
        let same = (t - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(same, 0.0, "base weight {name} changed under LoRA");
    }
    let b_changed = after.iter().filter(|(n, _)| n.ends_with("lora_B.weight")).all(|(_, t)| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    assert!(b_changed, "every lora_B moved off zero");

    let ids = Tensor::new(tokens(9, v, 4).as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let att = Tensor::ones((1, 9), DType::U8, &Device::Cpu).unwrap();
    let with_adapters = model.forward(&ids, &att, None).unwrap();
    let plain = model.without_lora().forward(&ids, &att, None).unwrap();
    let moved = (&with_adapters - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(moved > 1e-4, "adapters change the logits");
    model.merge_lora().unwrap();
    assert!(model.lora().is_none());
    let merged = model.forward(&ids, &att, None).unwrap();
    let diff = (&with_adapters - &merged).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "merged vs adapter-applied logits differ by {diff:e}");
}

#[test]
fn hf_directories_load_single_and_sharded() {
    let (model, tok) = common::tiny(8);
    let dir = tempfile::tempdir().unwrap();
    for shards in [1, 3] {
        let d = dir.path().join(format!("hf{shards}"));
        weights::save_hf_dir(&d, &model.config, &model.tensors(), &tok, shards).unwrap();
        assert_eq!(d.join("model.safetensors.index.json").exists(), shards > 1);
        let src = weights::load(&d).unwrap();
        assert_eq!(src.config, model.config);
        for (n, t) in model.tensors() {
            let d = (&t - &src.tensors[&n]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{n} differs after the round trip");
        }
        assert_eq!(src.tok.encode_plain("Ann has 3 apples.").unwrap(), tok.encode_plain("Ann has 3 apples.").unwrap());
    }
    // A missing shard is named.
    let d = dir.path().join("hf3");
    std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap();
    let err = weights::load(&d).err().expect("a missing shard is an error").to_string();
    assert!(err.contains("model-00002-of-00003.safetensors"), "{err}");
}

#[test]
fn misshaped_and_missing_weights_are_named() {
    let (model, _) = common::tiny(9);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut t = model.tensors();
    t.insert("model.norm.weight".into(), Tensor::ones(3, DType::F32, &Device::Cpu).unwrap());
    let err = Qwen2::from_tensors(model.config.clone(), t, None, &mut rng, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.norm.weight") && err.contains("shape"), "{err}");
    let mut t = model.tensors();
    t.remove("model.layers.1.mlp.up_proj.weight");
    let err = Qwen2::from_tensors(model.config.clone(), t, None, &mut rng, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
    let bad = Qwen2Config { num_key_value_heads: 3, ..model.config.clone() };
    assert!(bad.validate().is_err());
}

/// Weights with LoRA's B away from zero (so adapters matter), in f32 (the
/// CPU kernels: frozen-base matmul, fused head on loss rows, one-pass
/// softmax, GQA without K/V copies) and the same weights in f64 (the
/// primitive path the finite-difference test checks).
fn fast_and_reference(lora: Option<LoraConfig>) -> (Qwen2, Qwen2) {
    let (tiny, _) = common::tiny(5);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let start = Qwen2::from_tensors(tiny.config.clone(), perturbed(&tiny, 3), lora.clone(), &mut rng, &Device::Cpu).unwrap();
    let tensors: BTreeMap<String, Tensor> = start
        .tensors()
        .into_iter()
        .map(|(n, t)| if n.contains("lora_B") { (n, Tensor::randn(0f32, 0.2, t.shape(), &Device::Cpu).unwrap()) } else { (n, t) })
        .collect();
    let fast = Qwen2::from_tensors(tiny.config.clone(), tensors.clone(), lora.clone(), &mut rng, &Device::Cpu).unwrap();
    let mut slow = Qwen2::from_tensors(tiny.config.clone(), tensors, lora, &mut rng, &Device::Cpu).unwrap();
    slow.cast(DType::F64).unwrap();
    (fast, slow)
}

fn max_rel_gap(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn cpu_kernels_give_the_primitive_paths_loss_and_gradients() {
    let all = || reckon_trainer::model::LORA_TARGETS.iter().map(|s| s.to_string()).collect();
    for lora in [None, Some(LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: all() })] {
        let (fast, slow) = fast_and_reference(lora.clone());
        let v = fast.config.vocab_size;
        // Two lengths (padding), loss on the second half only (prompt rows
        // skip the head).
        let ex: Vec<Example> = [tokens(14, v, 5), tokens(9, v, 6)]
            .iter()
            .map(|s| Example { ids: s.clone(), trained: (0..s.len()).map(|i| u8::from(i >= s.len() / 2)).collect() })
            .collect();
        let b = make_batch(&ex.iter().collect::<Vec<_>>(), 0, &Device::Cpu).unwrap();
        let lf = sft_loss(&fast, &b, b.n_loss_tokens, None).unwrap();
        let ls = sft_loss(&slow, &b, b.n_loss_tokens, None).unwrap();
        let (x, y) = (lf.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), ls.to_scalar::<f64>().unwrap());
        assert!((x - y).abs() / y.abs() < 1e-5, "loss {x} vs {y} (lora: {})", lora.is_some());
        let (gf, gs) = (lf.backward().unwrap(), ls.backward().unwrap());
        let (pf, ps) = (fast.trainable(), slow.trainable());
        assert_eq!(pf.len(), ps.len());
        for ((name, a), (_, b)) in pf.iter().zip(&ps) {
            let ga = gf.get(a.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let gb = gs.get(b.as_tensor()).unwrap();
            let gap = max_rel_gap(ga, gb);
            assert!(gap < 1e-4, "{name}: gradient differs by {gap:e} of its largest entry (lora: {})", lora.is_some());
        }
    }
}

#[test]
fn objective_logprobs_are_the_samplers_own_probabilities() {
    use reckon_trainer::rl::rollout::{sample, sampling_distribution, Sampling};
    let (fast, slow) = fast_and_reference(None);
    let v = fast.config.vocab_size;
    let seq = tokens(12, v, 7);
    let ids = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let att = Tensor::ones((1, seq.len()), DType::U8, &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = fast.forward(&ids, &att, None).unwrap().i(0).unwrap().to_vec2().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for s in [Sampling { temperature: 1.0, top_p: 1.0 }, Sampling { temperature: 0.6, top_p: 1.0 }, Sampling { temperature: 0.8, top_p: 0.9 }, Sampling { temperature: 1.4, top_p: 0.5 }] {
        // Targets the sampler itself drew, so each is in its nucleus.
        let targets: Vec<u32> = logits.iter().map(|l| sample(l, &s, &mut rng)).collect();
        for (model, tol) in [(&fast, 1e-4), (&slow, 1e-4)] {
            let h = model.hidden(&ids, &att, None).unwrap().i(0).unwrap();
            let lp: Vec<f64> = model.row_logprobs(&h, &targets, s.temperature, s.top_p).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            for (r, l) in logits.iter().enumerate() {
                let dist = sampling_distribution(l, &s);
                let p = dist.iter().find(|(i, _)| *i == targets[r] as usize).map(|x| x.1).expect("sampled token is in the distribution");
                assert!((lp[r].exp() - p).abs() < tol, "row {r} at {s:?}: exp(logp) {} vs sampler {p}", lp[r].exp());
            }
        }
    }
}
