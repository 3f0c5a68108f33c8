//! Graph list requests and pages: the query of a window, the page envelope, the fields
//! of a record, and Graph's error body.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::cloud::is_under;
use crate::connector::Query;
use crate::time::Timestamp;

mod scan;

/// Characters escaped in a query value: everything but unreserved ones, so spaces,
/// quotes, `+` and `&` in a `$filter` reach Graph intact.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a URL query value, form field or path segment.
pub fn enc(s: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE)
}

/// The first page of a window part: records whose window field lies in `[from, to]`
/// (whole seconds, widened outwards; dedup absorbs the extra records). `top` 0 sends no
/// `$top`; `expand` asks for the query's `$expand`. Lists that document `$count` are
/// asked for it; lists that document `$orderby` are read oldest first.
pub fn window_url(
    graph_base: &str,
    q: &Query,
    from: Timestamp,
    to: Timestamp,
    top: u32,
    expand: bool,
) -> String {
    let t = q.data_type;
    let f = t.window_field;
    let mut filter = format!(
        "{f} ge {} and {f} le {}",
        from.floor_secs().to_filter(),
        to.ceil_secs().to_filter()
    );
    if let Some(extra) = &q.filter {
        filter = format!("{filter} and ({extra})");
    }
    let mut url = format!("{graph_base}{}?$filter={}", t.path, enc(&filter));
    if top > 0 {
        url.push_str(&format!("&$top={top}"));
    }
    if t.countable {
        url.push_str("&$count=true");
    }
    if t.order_by_window {
        url.push_str(&format!("&$orderby={}", enc(&format!("{f} asc"))));
    }
    if let Some(expand) = q.expand.filter(|_| expand) {
        url.push_str(&format!("&$expand={}", enc(expand)));
    }
    url
}

/// The page size Graph allows, from its 400 for a larger `$top`: "The limit of '50' for
/// Top query has been exceeded" (the error's `code` is empty).
pub fn top_limit(body: &[u8]) -> Option<u32> {
    let text = error_text(body)?;
    if !text.contains("for Top query") {
        return None;
    }
    let after = text.split("limit of '").nth(1)?;
    let digits = after.split('\'').next()?;
    digits.parse().ok().filter(|&n| n > 0)
}

/// One page of a Graph collection. Records stay raw JSON: they reach the event unchanged.
#[derive(Deserialize)]
pub struct Page<'a> {
    #[serde(borrow)]
    pub value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    /// How many records match the query, when `$count=true` asked.
    #[serde(rename = "@odata.count")]
    pub count: Option<u64>,
}

/// Splits a page with serde_json. [`read_page`] is the same with the fields read, faster.
pub fn parse_page(body: &[u8]) -> Result<Page<'_>, String> {
    serde_json::from_slice(body).map_err(|e| format!("the page is not a Graph collection: {e}"))
}

/// One page's records, each with the named fields read, and the next link.
#[derive(Debug, PartialEq)]
pub struct Records<'a, const N: usize> {
    pub records: Vec<Record<'a, N>>,
    pub next_link: Option<String>,
    pub count: Option<u64>,
}

#[derive(Debug, PartialEq)]
pub struct Record<'a, const N: usize> {
    /// The record as Graph sent it.
    pub raw: &'a str,
    /// What [`string_fields`] reads, or `None` where it fails (the record is not an object).
    pub fields: Option<[Option<Cow<'a, str>>; N]>,
}

/// [`parse_page`] followed by [`string_fields`] on every record, in one pass over the page
/// (see `scan.rs` for why). A page the scanner does not take is read by those two, so
/// what is accepted, what is read and the error text stay serde_json's.
pub fn read_page<'a, const N: usize>(
    body: &'a [u8],
    names: [&str; N],
) -> Result<Records<'a, N>, String> {
    if let Some(records) = scan::utf8(body).and_then(|text| scan::page(text, names)) {
        return Ok(records);
    }
    read_page_serde(body, names)
}

/// [`read_page`] by serde_json alone: its fallback, and the reference it is tested against.
pub fn read_page_serde<'a, const N: usize>(
    body: &'a [u8],
    names: [&str; N],
) -> Result<Records<'a, N>, String> {
    let page = parse_page(body)?;
    let records = page
        .value
        .into_iter()
        .map(|raw| Record {
            raw: raw.get(),
            fields: string_fields(raw.get(), names)
                .ok()
                .map(|fields| fields.map(|f| f.map(Cow::Owned))),
        })
        .collect();
    Ok(Records {
        records,
        next_link: page.next_link,
        count: page.count,
    })
}

/// Refuses a nextLink that leaves the configured Graph host: the token goes with it.
pub fn check_next_link(link: &str, graph_base: &str) -> Result<(), String> {
    if is_under(link, graph_base) {
        Ok(())
    } else {
        let shown: String = link.chars().take(120).collect();
        Err(format!(
            "Graph sent a next page link outside the configured Graph host {graph_base} ({shown}); \
             it was not followed, so the access token was not sent there"
        ))
    }
}

/// Reads the named top-level string fields of a record, skipping everything else
/// without building it. A field that is absent, null or not a string reads as `None`.
///
/// Reading stops as soon as every named field has been seen: Graph puts ids and times
/// before the bulky parts of a record (evidence, alerts), and skipping those is most of
/// the cost of a page inside a component (see BENCHMARKS.md). The record has already been
/// checked as well-formed JSON by [`parse_page`] or [`read_page`], so the unread rest
/// cannot be malformed.
pub fn string_fields<const N: usize>(
    record: &str,
    names: [&str; N],
) -> Result<[Option<String>; N], String> {
    /// serde cannot stop reading a map half way except with an error: the visitor leaves
    /// its result here and ends with this marker.
    const ALL_FOUND: &str = "all fields found";

    struct Fields<'n, const N: usize> {
        names: &'n [&'n str; N],
        done: &'n std::cell::RefCell<Option<[Option<String>; N]>>,
    }

    impl<'de, const N: usize> DeserializeSeed<'de> for Fields<'_, N> {
        type Value = [Option<String>; N];
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, const N: usize> Visitor<'de> for Fields<'_, N> {
        type Value = [Option<String>; N];
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
            let mut seen = [false; N];
            // A name may be asked for twice (window field = time field): it fills the first.
            let wanted = (0..N)
                .filter(|&i| !self.names[..i].contains(&self.names[i]))
                .count();
            let mut found = 0;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match self.names.iter().position(|n| *n == key) {
                    Some(i) => {
                        out[i] = map
                            .next_value::<serde_json::Value>()?
                            .as_str()
                            .map(str::to_string);
                        if !seen[i] {
                            seen[i] = true;
                            found += 1;
                        }
                        if found == wanted {
                            *self.done.borrow_mut() = Some(out);
                            return Err(serde::de::Error::custom(ALL_FOUND));
                        }
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }

    let done = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(record);
    match (Fields {
        names: &names,
        done: &done,
    })
    .deserialize(&mut de)
    {
        Ok(fields) => Ok(fields),
        Err(_) if done.borrow().is_some() => Ok(done.into_inner().expect("checked")),
        Err(e) => Err(format!("a record is not a JSON object: {e}")),
    }
}

/// Graph's error body `{"error": {"code", "message"}}`, as `code: message`.
pub fn error_text(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let e: Envelope = serde_json::from_slice(body).ok()?;
    Some(format!(
        "{}: {}",
        e.error.code,
        e.error.message.chars().take(300).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{DataType, Query};

    const ALERTS: DataType = DataType::new(
        "alerts",
        "defender.alert",
        "/v1.0/security/alerts_v2",
        &["SecurityAlert.Read.All"],
        "createdDateTime",
        2000,
    )
    .versioned_by("lastUpdateDateTime");

    #[test]
    fn window_url_bounds_the_window_and_encodes_it() {
        let q = Query {
            data_type: &ALERTS,
            filter: Some("serviceSource eq 'microsoftDefenderForEndpoint'".into()),
            expand: None,
        };
        let from = Timestamp::parse("2026-11-19T12:00:00.5Z").unwrap();
        let to = Timestamp::parse("2026-11-20T12:00:00.25Z").unwrap();
        assert_eq!(
            window_url("https://graph.microsoft.com", &q, from, to, 2000, true),
            "https://graph.microsoft.com/v1.0/security/alerts_v2?$filter=lastUpdateDateTime%20ge%202026-11-19T12%3A00%3A00Z%20and%20lastUpdateDateTime%20le%202026-11-20T12%3A00%3A01Z%20and%20%28serviceSource%20eq%20%27microsoftDefenderForEndpoint%27%29&$top=2000",
            "the bounds are widened to whole seconds"
        );
        const AUDITS: DataType = ALERTS.ordered().counted(500);
        let q = Query {
            data_type: &AUDITS,
            filter: None,
            expand: Some("alerts"),
        };
        assert!(
            window_url("https://g", &q, from, to, 50, true)
                .ends_with("&$top=50&$count=true&$orderby=lastUpdateDateTime%20asc&$expand=alerts")
        );
        let bare = window_url("https://g", &q, from, to, 0, false);
        assert!(
            !bare.contains("$top") && !bare.contains("$expand"),
            "{bare}"
        );
    }

    #[test]
    fn the_page_size_graph_allows_is_read_from_its_400() {
        let body = br#"{"error":{"code":"","message":"The query specified in the URI is not valid. The limit of '50' for Top query has been exceeded. The value from the incoming request is '100'.","details":[],"innerError":{"date":"2026-11-20T12:00:00"}}}"#;
        assert_eq!(top_limit(body), Some(50));
        assert_eq!(
            top_limit(br#"{"error":{"code":"BadRequest","message":""}}"#),
            None
        );
        assert_eq!(
            top_limit(br#"{"error":{"code":"","message":"The limit of 'x' for Top query"}}"#),
            None
        );
        assert_eq!(top_limit(b"oops"), None);
    }

    #[test]
    fn the_count_is_read_by_both_readers() {
        for body in [
            &br#"{"@odata.count":1234,"value":[{"id":"a"}]}"#[..],
            br#"{"value":[{"id":"a"}],"@odata.count":1234,"@odata.nextLink":"https://g/n"}"#,
        ] {
            assert_eq!(read_page(body, ["id"]).unwrap().count, Some(1234));
            assert_eq!(read_page_serde(body, ["id"]).unwrap().count, Some(1234));
        }
        for body in [
            &br#"{"value":[]}"#[..],
            br#"{"value":[],"@odata.count":null}"#,
        ] {
            assert_eq!(read_page(body, ["id"]).unwrap().count, None);
        }
        // What the scanner does not take plainly, serde_json decides.
        assert!(read_page(br#"{"value":[],"@odata.count":-1}"#, ["id"]).is_err());
        assert!(read_page(br#"{"value":[],"@odata.count":1,"@odata.count":2}"#, ["id"]).is_err());
        assert_eq!(
            read_page(br#"{"value":[],"@odata.count":0}"#, ["id"])
                .unwrap()
                .count,
            Some(0)
        );
    }

    #[test]
    fn pages_keep_records_raw() {
        let body = br#"{"@odata.context":"x","value":[{"id":"a","n":{"deep":[1,2]}},{"id":"b"}],"@odata.nextLink":"https://g/next"}"#;
        let page = parse_page(body).unwrap();
        assert_eq!(page.value[0].get(), r#"{"id":"a","n":{"deep":[1,2]}}"#);
        assert_eq!(page.next_link.as_deref(), Some("https://g/next"));
        assert!(parse_page(b"{\"value\": [").is_err());
        assert!(parse_page(b"<html>").is_err());
        assert!(parse_page(br#"{"value": {}}"#).is_err());
    }

    #[test]
    fn reads_only_the_named_fields() {
        let page = parse_page(br#"{"value":[{"x":{"id":"nested"},"id":"a1","createdDateTime":"2026-01-01T00:00:00Z","n":null,"num":5}, 7]}"#).unwrap();
        let [id, created, n, num, missing] = string_fields(
            page.value[0].get(),
            ["id", "createdDateTime", "n", "num", "nope"],
        )
        .unwrap();
        assert_eq!(id.as_deref(), Some("a1"));
        assert_eq!(created.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!((n, num, missing), (None, None, None));
        assert!(string_fields(page.value[1].get(), ["id"]).is_err());

        // Reading stops once every name is seen; a name asked twice fills the first slot.
        let record =
            r#"{"id":"a1","t":"2026-11-20T11:00:00Z","evidence":[{"x":"y"}],"id2":"late"}"#;
        assert_eq!(
            string_fields(record, ["id", "t", "t"]).unwrap(),
            [Some("a1".into()), Some("2026-11-20T11:00:00Z".into()), None]
        );
        assert_eq!(
            string_fields(record, ["id", "id2"]).unwrap(),
            [Some("a1".into()), Some("late".into())]
        );
    }

    #[test]
    fn graph_errors_and_next_links() {
        assert_eq!(
            error_text(
                br#"{"error":{"code":"Forbidden","message":"Missing role","innerError":{}}}"#
            )
            .as_deref(),
            Some("Forbidden: Missing role")
        );
        assert_eq!(error_text(b"oops"), None);
        assert!(
            check_next_link(
                "https://graph.microsoft.com/v1.0/x?$skip=1",
                "https://graph.microsoft.com"
            )
            .is_ok()
        );
        let e = check_next_link(
            "https://attacker.example/v1.0/x",
            "https://graph.microsoft.com",
        )
        .unwrap_err();
        assert!(e.contains("attacker.example") && e.contains("not sent"));
    }
}
