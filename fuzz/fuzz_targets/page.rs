//! A Graph list page as the network delivers it. The one-pass reader must read it exactly
//! as serde_json does (same records, fields, next link, or the same error).
#![no_main]
use secops_connector::graph::{check_next_link, read_page, read_page_serde};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let names = ["id", "createdDateTime", "createdDateTime"];
    let page = read_page(data, names);
    assert_eq!(page, read_page_serde(data, names));
    if let Ok(page) = page {
        if let Some(next) = &page.next_link {
            let _ = check_next_link(next, "https://graph.microsoft.com");
        }
    }
});
