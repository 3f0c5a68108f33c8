//! The cursor: a small versioned JSON document the host stores with each poll's events.
//! One entry per data type, so types advance independently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub v: u32,
    /// The connector that wrote it: a cursor is never read by another connector.
    pub connector: String,
    pub streams: BTreeMap<String, Stream>,
}

/// Where one data type stands. A window is `[from, end]` on the window field; it is read
/// in parts `[from, to]`, oldest first, each shallow enough to page through, and `from`
/// moves to `to` only once a part has been read whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// Lower bound (inclusive) of the part being read, or of the next window.
    pub from: String,
    /// Upper bound (inclusive) of the part being read; `None` between windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Upper bound of the whole window, fixed when it opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Span of a part in seconds, learned from how many records a span holds; `None`
    /// reads the rest of the window as one part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    /// The next page of the part being read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// How many records Graph said the part holds (`@odata.count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Records read in the part so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read: u64,
    /// Short hashes of the distinct records (id and version) read in a counted part,
    /// sorted: pages of a list
    /// that changes while it is paged repeat records, so the raw count of records read
    /// could reach Graph's count while one was skipped. (A collision only undercounts, and
    /// so only reads the part again.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<u32>,
    /// When the last window opened (its `end`): between windows, so that polls made for
    /// other data types do not open one at every page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A version 1 stream: an open-ended window paged newest first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamV1 {
    from: String,
    #[serde(default)]
    #[allow(dead_code)]
    seen_max: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    next: Option<String>,
}

impl Stream {
    pub fn starting_at(from: Timestamp) -> Self {
        Stream {
            from: from.to_rfc3339(),
            ..Stream::default()
        }
    }

    pub fn from_time(&self) -> Result<Timestamp, String> {
        parse(&self.from)
    }

    pub fn to_time(&self) -> Result<Option<Timestamp>, String> {
        self.to.as_deref().map(parse).transpose()
    }

    pub fn end_time(&self) -> Result<Option<Timestamp>, String> {
        self.end.as_deref().map(parse).transpose()
    }

    pub fn opened_time(&self) -> Result<Option<Timestamp>, String> {
        self.opened.as_deref().map(parse).transpose()
    }

    /// Between windows: the next poll opens one.
    pub fn is_idle(&self) -> bool {
        self.to.is_none()
    }

    fn check(&self) -> Result<(), String> {
        self.from_time()?;
        self.opened_time()?;
        let (to, end) = (self.to_time()?, self.end_time()?);
        match (to, end) {
            (None, None) => Ok(()),
            (Some(to), Some(end)) if to <= end => Ok(()),
            _ => Err("corrupt cursor: a window part outside its window".into()),
        }
    }
}

fn parse(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse(text).map_err(|e| format!("corrupt cursor: {e}"))
}

impl Cursor {
    pub fn new(connector: &str) -> Self {
        Cursor {
            v: VERSION,
            connector: connector.into(),
            streams: BTreeMap::new(),
        }
    }

    /// Reads a cursor the host handed back, refusing one that is corrupt, from a newer
    /// version, or written by another connector. A version 1 cursor (open-ended windows)
    /// is read as windows starting where it stood: the window it was paging is read again
    /// whole, and dedup drops what was delivered.
    pub fn decode(text: &str, connector: &str) -> Result<Self, String> {
        let not_a_cursor = |e: serde_json::Error| {
            format!(
                "the stored cursor is not a cursor of this connector ({e}); \
                 the state was damaged or belongs to something else: restore it, or delete the \
                 instance's state to start over from the backfill window"
            )
        };
        #[derive(Deserialize)]
        struct Head {
            v: u32,
            connector: String,
        }
        let head: Head = serde_json::from_str(text).map_err(not_a_cursor)?;
        if head.connector != connector {
            return Err(format!(
                "the stored cursor belongs to connector `{}`, not `{connector}`: use a separate \
                 state database (or instance name) per connector",
                head.connector
            ));
        }
        let c = match head.v {
            VERSION => serde_json::from_str::<Cursor>(text).map_err(not_a_cursor)?,
            1 => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct V1 {
                    #[allow(dead_code)]
                    v: u32,
                    connector: String,
                    streams: BTreeMap<String, StreamV1>,
                }
                let old: V1 = serde_json::from_str(text).map_err(not_a_cursor)?;
                Cursor {
                    v: VERSION,
                    connector: old.connector,
                    streams: old
                        .streams
                        .into_iter()
                        .map(|(name, s)| {
                            let stream = Stream {
                                from: s.from,
                                ..Stream::default()
                            };
                            (name, stream)
                        })
                        .collect(),
                }
            }
            v => {
                return Err(format!(
                    "the stored cursor has format version {v}, this connector reads versions 1 \
                     and {VERSION}: run the connector version that wrote it, or delete the \
                     instance's state"
                ));
            }
        };
        for (name, s) in &c.streams {
            s.check().map_err(|e| format!("{e} (data type {name})"))?;
        }
        Ok(c)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a cursor always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_compactly() {
        let mut c = Cursor::new("defender-alerts");
        c.streams.insert(
            "alerts".into(),
            Stream::starting_at(Timestamp::from_unix_secs(1_700_000_000)),
        );
        let text = c.encode();
        assert_eq!(
            text,
            r#"{"v":2,"connector":"defender-alerts","streams":{"alerts":{"from":"2023-11-14T22:13:20.000000000Z"}}}"#
        );
        assert_eq!(Cursor::decode(&text, "defender-alerts").unwrap(), c);
    }

    #[test]
    fn refuses_corrupt_foreign_and_future_cursors() {
        let ok = r#"{"v":2,"connector":"defender-alerts","streams":{}}"#;
        assert!(Cursor::decode(ok, "defender-alerts").is_ok());
        // Version 1 (open-ended windows) is read as windows starting where it stood.
        let v1 = r#"{"v":1,"connector":"defender-alerts","streams":{"alerts":{"from":"2026-11-20T10:00:00Z","seen_max":"2026-11-20T11:00:00Z","next":"https://g/n"}}}"#;
        let c = Cursor::decode(v1, "defender-alerts").unwrap();
        assert_eq!(c.v, 2);
        assert_eq!(
            c.streams["alerts"],
            Stream {
                from: "2026-11-20T10:00:00Z".into(),
                ..Stream::default()
            }
        );
        let cases = [
            ("", "not a cursor"),
            ("{\"v\":1", "not a cursor"),
            ("[1,2]", "not a cursor"),
            (
                r#"{"v":2,"connector":"defender-alerts","streams":{},"extra":1}"#,
                "not a cursor",
            ),
            (
                r#"{"v":2,"connector":"entra","streams":{}}"#,
                "belongs to connector `entra`",
            ),
            (
                r#"{"v":3,"connector":"defender-alerts","streams":{}}"#,
                "format version 3",
            ),
            (
                r#"{"v":2,"connector":"defender-alerts","streams":{"alerts":{"from":"2026-11-20T10:00:00Z","to":"2026-11-20T12:00:00Z"}}}"#,
                "outside its window",
            ),
            (
                r#"{"v":2,"connector":"defender-alerts","streams":{"alerts":{"from":"soon"}}}"#,
                "corrupt cursor",
            ),
        ];
        for (text, want) in cases {
            let e = Cursor::decode(text, "defender-alerts").unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
