//! llama.cpp's own quantizer (`llama_model_quantize`): every rule of its
//! recipes holds (Q4_K_M's Q6_K output and `attn_v`/`ffn_down` layers, the
//! fallbacks for rows that are not a multiple of 256). Nothing is
//! reimplemented here.

use std::ffi::CString;
use std::path::Path;

use super::backend;
use crate::error::{ReckonError, Result};

/// Target types by name (lower case) and their llama.cpp `llama_ftype`.
/// Types that need an importance matrix (IQ1/IQ2/IQ3) are left out.
pub const FILE_TYPES: &[(&str, u32)] = &[
    ("f32", llama_cpp_sys_2::LLAMA_FTYPE_ALL_F32),
    ("f16", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_F16),
    ("bf16", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_BF16),
    ("q8_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("q6_k", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("q5_k_m", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("q5_k_s", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    ("q5_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("q5_1", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("q4_k_m", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("q4_k_s", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("q4_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("q4_1", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("iq4_nl", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_IQ4_NL),
    ("iq4_xs", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_IQ4_XS),
    ("q3_k_l", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q3_K_L),
    ("q3_k_m", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("q3_k_s", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q3_K_S),
    ("q2_k", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q2_K),
];

/// The `llama_ftype` of a type name (`q4_k_m`, `Q8_0`, ...).
pub fn file_type(name: &str) -> Result<u32> {
    let lower = name.to_ascii_lowercase();
    FILE_TYPES.iter().find(|(n, _)| *n == lower).map(|(_, t)| *t).ok_or_else(|| {
        let names: Vec<&str> = FILE_TYPES.iter().map(|(n, _)| *n).collect();
        ReckonError::InvalidOption(format!("unknown quantization '{name}' (choose one of {})", names.join(", ")))
    })
}

/// Quantize the float GGUF `input` into `output` as `ftype` with llama.cpp.
pub fn quantize(input: &Path, output: &Path, ftype: u32, threads: u32) -> Result<()> {
    backend()?;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| ReckonError::InvalidOption(format!("path {} contains a NUL byte", p.display())))
    };
    let (inp, out) = (c(input)?, c(output)?);
    // SAFETY: default params come from llama.cpp; the strings outlive the call.
    let rc = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = threads as i32;
        params.ftype = ftype;
        llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params)
    };
    if rc != 0 {
        return Err(ReckonError::Internal(format!("llama.cpp could not quantize {} (code {rc}; RUST_LOG=debug shows its log)", input.display())));
    }
    Ok(())
}
