//! llama.cpp's log through the `log` facade, target `llama.cpp`.
//!
//! llama.cpp writes lines in fragments (level CONT continues the previous
//! one), so fragments are buffered per thread until a newline.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};

use llama_cpp_sys_2 as sys;

thread_local! {
    static LINE: RefCell<(log::Level, String)> = const { RefCell::new((log::Level::Debug, String::new())) };
}

/// Route llama.cpp's (and ggml's) log to `log`.
pub(crate) fn install() {
    unsafe { sys::llama_log_set(Some(callback), std::ptr::null_mut()) };
}

unsafe extern "C" fn callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(|| {
        let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            if level != sys::GGML_LOG_LEVEL_CONT {
                line.0 = match level {
                    sys::GGML_LOG_LEVEL_ERROR => log::Level::Error,
                    sys::GGML_LOG_LEVEL_WARN => log::Level::Warn,
                    sys::GGML_LOG_LEVEL_INFO => log::Level::Info,
                    _ => log::Level::Debug,
                };
            }
            line.1.push_str(&text);
            while let Some(nl) = line.1.find('\n') {
                let msg: String = line.1.drain(..=nl).collect();
                log::log!(target: "llama.cpp", line.0, "{}", msg.trim_end());
            }
        });
    });
}
