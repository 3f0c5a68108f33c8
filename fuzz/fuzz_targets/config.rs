//! The instance config document, as a user writes it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((_, mut options)) = secops_connector::config::parse(text) {
            let _ = options.choices("event_types", &["directory_audits", "risky_users"], "a type");
            let _ = options.bool("include_alerts");
            let _ = options.finish("fuzz");
        }
    }
});
