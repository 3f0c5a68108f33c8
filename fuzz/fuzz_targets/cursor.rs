//! The cursor the host hands back: possibly corrupt, truncated or another connector's.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cursor) = secops_connector::cursor::Cursor::decode(text, "defender-alerts") {
            let _ = cursor.encode();
        }
    }
});
