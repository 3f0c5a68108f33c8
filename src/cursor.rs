//! The cursor: a small versioned JSON document the host stores with each poll's events.
//! One entry per data type, so types advance independently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub v: u32,
    /// The connector that wrote it: a cursor is never read by another connector.
    pub connector: String,
    pub streams: BTreeMap<String, Stream>,
}

/// Where one data type stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// Lower bound (window field, inclusive) of the current or next window.
    pub from: String,
    /// Newest window-field time seen in the window being paged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_max: Option<String>,
    /// The next page of the window being paged; `None` between windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl Stream {
    pub fn starting_at(from: Timestamp) -> Self {
        Stream {
            from: from.to_rfc3339(),
            seen_max: None,
            next: None,
        }
    }

    pub fn from_time(&self) -> Result<Timestamp, String> {
        Timestamp::parse(&self.from).map_err(|e| format!("corrupt cursor: {e}"))
    }

    pub fn seen_max_time(&self) -> Result<Option<Timestamp>, String> {
        self.seen_max
            .as_deref()
            .map(Timestamp::parse)
            .transpose()
            .map_err(|e| format!("corrupt cursor: {e}"))
    }
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
    /// version, or written by another connector.
    pub fn decode(text: &str, connector: &str) -> Result<Self, String> {
        let c: Cursor = serde_json::from_str(text).map_err(|e| {
            format!(
                "the stored cursor is not a cursor of this connector ({e}); \
                 the state was damaged or belongs to something else: restore it, or delete the \
                 instance's state to start over from the backfill window"
            )
        })?;
        if c.connector != connector {
            return Err(format!(
                "the stored cursor belongs to connector `{}`, not `{connector}`: use a separate \
                 state database (or instance name) per connector",
                c.connector
            ));
        }
        if c.v != VERSION {
            return Err(format!(
                "the stored cursor has format version {}, this connector reads version {VERSION}: \
                 run the connector version that wrote it, or delete the instance's state",
                c.v
            ));
        }
        for (name, s) in &c.streams {
            s.from_time()
                .map_err(|e| format!("{e} (data type {name})"))?;
            s.seen_max_time()
                .map_err(|e| format!("{e} (data type {name})"))?;
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
            r#"{"v":1,"connector":"defender-alerts","streams":{"alerts":{"from":"2023-11-14T22:13:20.000000000Z"}}}"#
        );
        assert_eq!(Cursor::decode(&text, "defender-alerts").unwrap(), c);
    }

    #[test]
    fn refuses_corrupt_foreign_and_future_cursors() {
        let ok = r#"{"v":1,"connector":"defender-alerts","streams":{}}"#;
        assert!(Cursor::decode(ok, "defender-alerts").is_ok());
        let cases = [
            ("", "not a cursor"),
            ("{\"v\":1", "not a cursor"),
            ("[1,2]", "not a cursor"),
            (
                r#"{"v":1,"connector":"defender-alerts","streams":{},"extra":1}"#,
                "not a cursor",
            ),
            (
                r#"{"v":1,"connector":"entra","streams":{}}"#,
                "belongs to connector `entra`",
            ),
            (
                r#"{"v":2,"connector":"defender-alerts","streams":{}}"#,
                "format version 2",
            ),
            (
                r#"{"v":1,"connector":"defender-alerts","streams":{"alerts":{"from":"soon"}}}"#,
                "corrupt cursor",
            ),
        ];
        for (text, want) in cases {
            let e = Cursor::decode(text, "defender-alerts").unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
