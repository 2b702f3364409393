//! Answer extraction and matching on arbitrary model text: no panic, and a
//! found answer is a normalized number that matches itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reckon::answer::{answers_match, extract_answer, extract_from, normalize};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(i, _)| i));
    if let Some(e) = extract_answer(a, b) {
        assert!(answers_match(&e.value, &e.value), "{e:?} does not match itself");
        assert_eq!(normalize(&e.value).as_deref(), Some(e.value.as_str()), "not normalized: {e:?}");
    }
    let _ = extract_from(&text);
    let _ = normalize(&text);
});
