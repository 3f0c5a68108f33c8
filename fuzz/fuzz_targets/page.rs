//! A Graph list page as the network delivers it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(page) = secops_connector::graph::parse_page(data) {
        if let Some(next) = &page.next_link {
            let _ = secops_connector::graph::check_next_link(next, "https://graph.microsoft.com");
        }
    }
});
