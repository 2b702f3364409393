//! The GGUF reader and model checks on arbitrary bytes: an error or a
//! checked file, never a panic, a hang or an allocation the file could not
//! back (metadata arrays are capped before anything is allocated).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod scratch;
use scratch::scratch_file;
use reckon::gguf::{check, GgufFile};

fuzz_target!(|data: &[u8]| {
    let path = scratch_file();
    std::fs::write(&path, data).expect("write the input");
    if let Ok(file) = GgufFile::open(&path) {
        let _ = check::model(&file);
        let _ = file.n_params();
        let _ = file.tokens();
    }
});
