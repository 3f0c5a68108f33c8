//! Reading one data type's window, a page at a time, without ever trusting Graph to page
//! deep or to say when it stopped early.
//!
//! A window `[from, end]` is bounded on both sides when it opens (`end` = now). It is read
//! in parts `[from, to]`, oldest part first. On lists that document `$count`, the first
//! page of a part says how many records the part holds: a part deeper than the list's
//! `max_depth` is narrowed before it is paged (Graph quietly stops serving `$skip` pages
//! past some depth), and a part paged through is checked against its count (clamped pages,
//! records moving while paged). A part that came up short, or whose next link Graph
//! refuses (riskyUsers' dangling link, an expired skip token), is read again, narrower.
//! `from` moves only past a part read whole, so the watermark never passes a record that
//! was not read; the next window reaches back by the list's lateness, and dedup drops
//! what was delivered before.

use crate::client::Failure;
use crate::connector::Query;
use crate::cursor::Stream;
use crate::dedup::{Dedup, short_hash};
use crate::graph::{check_next_link, read_page, window_url};
use crate::health::{EXPAND_TRIES, TypeHealth};
use crate::platform::Platform;
use crate::runtime::Instance;
use crate::time::Timestamp;
use crate::types::{Event, Level};

impl Instance {
    /// Reads the next page of `q`'s window and moves `stream` on; leaves `stream` as it
    /// was when the page cannot be had. `origin` is the instance's backfill boundary.
    pub(crate) fn read_window(
        &mut self,
        p: &dyn Platform,
        q: &Query,
        stream: &mut Stream,
        health: &mut TypeHealth,
        origin: Timestamp,
    ) -> Result<Vec<Event>, Failure> {
        let t = q.data_type;
        let now = p.now();
        let mut s = stream.clone();
        if s.is_idle() {
            let from = s.from_time().map_err(Failure::Fatal)?.floor_secs();
            let end = now.ceil_secs().max(from);
            s.from = from.to_rfc3339();
            s.end = Some(end.to_rfc3339());
            s.to = Some(end.to_rfc3339());
            s.opened = Some(end.to_rfc3339());
        }
        let from = s.from_time().map_err(Failure::Fatal)?;
        let to = s.to_time().map_err(Failure::Fatal)?.expect("set above");
        let end = s
            .end_time()
            .map_err(Failure::Fatal)?
            .expect("set with `to`");
        let span = to.unix_secs() - from.unix_secs();

        // The page, learning the page size Graph allows on the way.
        let (response, expanded) = loop {
            let url = match &s.next {
                Some(link) => {
                    check_next_link(link, &self.config.graph_base).map_err(Failure::Fatal)?;
                    link.clone()
                }
                None => window_url(
                    &self.config.graph_base,
                    q,
                    from,
                    to,
                    health.page_size(t.page_size),
                    health.expand(now),
                ),
            };
            let expanded = q.expand.is_some() && url.contains("expand=");
            match self.get(p, &url, t.family) {
                Ok(response) => {
                    if expanded && health.fallback.take().is_some() {
                        p.log(
                            Level::Info,
                            &format!("{}: Graph serves the full query again", t.name),
                        );
                    }
                    break (response, expanded);
                }
                Err(Failure::Rejected { status, body }) => {
                    if let Some(limit) = health.learn_top(&body, t.page_size) {
                        p.log(
                            Level::Warn,
                            &format!(
                                "{}: Graph allows at most {limit} records a page; asking for \
                                 {limit} from now on",
                                t.name
                            ),
                        );
                        s.next = None;
                        continue;
                    }
                    if s.next.is_some() && span > 1 {
                        // A link Graph handed out and now refuses: its skip token expired,
                        // or it pointed past the last page. Read the part again, narrower,
                        // so its pages end elsewhere.
                        p.log(
                            Level::Warn,
                            &format!(
                                "{}: {}; reading {} to {} again in smaller parts",
                                t.name,
                                Failure::Rejected { status, body }.describe(),
                                from.to_filter(),
                                to.to_filter()
                            ),
                        );
                        narrow(&mut s, from, end, span / 2);
                        *stream = s;
                        return Ok(Vec::new());
                    }
                    return Err(Failure::Rejected { status, body });
                }
                Err(Failure::Transient(m))
                    if expanded
                        && (health.fallback.is_some() || health.failures + 1 >= EXPAND_TRIES) =>
                {
                    // The full query keeps failing (a large tenant's `$expand=alerts` answers
                    // 500 every time): read without it rather than stall, and say so.
                    let why = format!(
                        "Graph keeps failing the query with $expand={} ({m}); {} is read without \
                         it, each event marked `incomplete`, and the full query is tried again \
                         every {} minutes",
                        q.expand.unwrap_or_default(),
                        t.name,
                        crate::health::FALLBACK_RETRY_SECS / 60
                    );
                    p.log(Level::Warn, &format!("{}: {why}", t.name));
                    health.fallback = Some((now.unix_millis(), why));
                    restart_part(&mut s);
                    *stream = s;
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e),
            }
        };
        let page = read_page(&response.body, ["id", t.window_field, t.time_field])
            .map_err(Failure::Transient)?;
        if let Some(next) = &page.next_link {
            check_next_link(next, &self.config.graph_base).map_err(Failure::Fatal)?;
        }
        // Splitting and counting rest on Graph honouring the window's upper bound.
        let beyond = page
            .records
            .iter()
            .filter_map(|r| r.fields.as_ref()?[1].as_deref().map(Timestamp::parse))
            .filter(|t| t.as_ref().is_ok_and(|t| *t > to))
            .count();
        if beyond > 0 && !health.unbounded {
            p.log(
                Level::Warn,
                &format!(
                    "{}: Graph sent {beyond} record(s) past the window's upper bound: it ignores \
                     `le` on this list, so its windows are read whole from now on",
                    t.name
                ),
            );
            health.unbounded = true;
            // The rest of the window is one part.
            s.step = None;
        }
        let first_page = s.next.is_none();
        let max_depth = if health.unbounded { 0 } else { t.max_depth };
        if first_page && t.countable && !health.unbounded {
            s.count = page.count;
            if let Some(count) = page.count
                && max_depth > 0
                && count > u64::from(max_depth)
                && span > 1
            {
                // Too deep to page reliably: narrow the part so it holds about three
                // quarters of the depth, if records are spread evenly; a part that still
                // holds too many is narrowed again.
                let fit = (span as u128 * u128::from(max_depth) * 3 / 4 / u128::from(count)) as i64;
                p.log(
                    Level::Debug,
                    &format!(
                        "{}: {count} records from {} to {}; reading {}-second parts",
                        t.name,
                        from.to_filter(),
                        to.to_filter(),
                        fit.clamp(1, span / 2)
                    ),
                );
                narrow(&mut s, from, end, fit.clamp(1, span / 2));
                *stream = s;
                return Ok(Vec::new());
            }
        }

        let incomplete = (q.expand.is_some() && !expanded).then(|| {
            health.fallback.as_ref().map_or_else(
                || format!("read without $expand={}", q.expand.unwrap_or_default()),
                |(_, why)| why.clone(),
            )
        });
        let dedup_key = Dedup::key(t.name);
        let mut dedup = load_dedup(p, t.name, &dedup_key)?;
        s.read += page.records.len() as u64;
        let (mut events, mut skipped, mut repeated, mut outside) =
            (Vec::with_capacity(page.records.len()), 0, 0, 0);
        let mapping = t.ocsf.filter(|_| self.config.normalize);
        let mut normalizer = crate::ocsf::PageNormalizer::default();
        for record in page.records {
            let Some([id, window, time]) = record.fields else {
                skipped += 1;
                continue;
            };
            let window_time = window.as_deref().map(Timestamp::parse);
            let (Some(id), Some(window), Some(Ok(window_time))) = (id, window, window_time) else {
                skipped += 1;
                continue;
            };
            if s.count.is_some() {
                // A record and its version: the same record read twice counts once.
                let h = short_hash(&id, &window);
                if let Err(at) = s.seen.binary_search(&h) {
                    s.seen.insert(at, h);
                }
            }
            if window_time < from.floor_secs() {
                // Older than the watermark: delivered before (and maybe forgotten by
                // dedup), or before the backfill. Graph should not send it; a server
                // that ignores the filter must not cause a repeat.
                outside += 1;
                continue;
            }
            let version = if t.versioned {
                window.to_string()
            } else {
                String::new()
            };
            if !dedup.insert(t.kind, &id, &version, window_time.unix_secs()) {
                repeated += 1;
                continue;
            }
            // When the time field is the window field, the reader fills only one of them.
            let timestamp = time.unwrap_or(window).into_owned();
            let ocsf = mapping.as_ref().and_then(|m| {
                let source = crate::ocsf::Source {
                    kind: t.kind,
                    path: t.path,
                    timestamp: &timestamp,
                    time_field: t.time_field,
                };
                normalizer.event(m, source, record.raw)
            });
            events.push(Event {
                id: id.into_owned(),
                version,
                kind: t.kind.into(),
                timestamp,
                payload: record.raw.to_string(),
                incomplete: incomplete.clone(),
                ocsf,
            });
        }
        if let Some(warning) = normalizer.warning(t.name) {
            p.log(Level::Warn, &warning);
        }
        if skipped > 0 {
            p.log(
                Level::Warn,
                &format!(
                    "{}: skipped {skipped} record(s) without an `id` or a valid `{}`",
                    t.name, t.window_field
                ),
            );
        }
        if outside > 0 {
            p.log(
                Level::Debug,
                &format!(
                    "{}: {outside} record(s) older than the window, already delivered",
                    t.name
                ),
            );
        }
        if repeated > 0 {
            p.log(
                Level::Debug,
                &format!(
                    "{}: {repeated} record(s) already delivered (window overlap)",
                    t.name
                ),
            );
        }

        match page.next_link {
            Some(next) => {
                let uncounted_and_deep =
                    s.count.is_none() && max_depth > 0 && s.read >= u64::from(max_depth);
                if uncounted_and_deep && span > 1 {
                    // No count to check the depth against: narrow by the density seen.
                    let fit =
                        (span as u128 * u128::from(max_depth) / 2 / u128::from(s.read)) as i64;
                    narrow(&mut s, from, end, fit.clamp(1, span / 2));
                } else {
                    s.next = Some(next);
                }
            }
            None => match s.count {
                Some(count) if (s.seen.len() as u64) < count && span > 1 => {
                    // Graph said the part holds more than it served: pages were clamped,
                    // a deep page came back empty, or records moved while it was paged.
                    p.log(
                        Level::Warn,
                        &format!(
                            "{}: read {} of the {count} records Graph counted from {} to {}; \
                             reading them again in smaller parts",
                            t.name,
                            s.seen.len(),
                            from.to_filter(),
                            to.to_filter()
                        ),
                    );
                    narrow(&mut s, from, end, span / 2);
                }
                count => {
                    if let Some(count) = count.filter(|&c| (s.seen.len() as u64) < c) {
                        p.log(
                            Level::Warn,
                            &format!(
                                "{}: read {} of the {count} records Graph counted in the single \
                                 second {}; it cannot be split further",
                                t.name,
                                s.seen.len(),
                                from.to_filter()
                            ),
                        );
                    }
                    let overlap = self.overlap_secs(q);
                    s = advance(s, to, end, origin, overlap, max_depth);
                    let keep_from = if s.is_idle() {
                        s.from_time().map_err(Failure::Fatal)?
                    } else {
                        to.min(end.minus_secs(overlap))
                    };
                    dedup.prune(keep_from.unix_secs());
                }
            },
        }
        p.kv_set(&dedup_key, &dedup.encode())
            .map_err(|e| Failure::Transient(format!("saving dedup memory: {e:?}")))?;
        *stream = s;
        Ok(events)
    }

    /// How far each window reaches back: the list's lateness, or the user's if wider.
    pub(crate) fn overlap_secs(&self, q: &Query) -> i64 {
        q.data_type
            .overlap_secs
            .max(self.config.late_arrival_secs.unwrap_or(0))
    }
}

/// Restarts the part at `from`, `span` seconds wide (at least 1).
fn narrow(s: &mut Stream, from: Timestamp, end: Timestamp, span: i64) {
    let span = span.max(1);
    s.step = Some(span);
    s.to = Some(from.plus_secs(span).min(end).to_rfc3339());
    restart_part(s);
}

/// Forgets what was read of the current part: it is read again from its first page.
fn restart_part(s: &mut Stream) {
    s.next = None;
    s.read = 0;
    s.count = None;
    s.seen.clear();
}

/// After a part `[from, to]` was read whole: the next part, or the next window.
fn advance(
    s: Stream,
    to: Timestamp,
    end: Timestamp,
    origin: Timestamp,
    overlap: i64,
    max_depth: u32,
) -> Stream {
    if to < end {
        // A part that held few records lets the next one be wider.
        let step = s.step.map(|step| {
            if max_depth > 0 && s.read < u64::from(max_depth) / 4 {
                step.saturating_mul(2)
            } else {
                step
            }
        });
        let next_to = match step {
            Some(step) => to.plus_secs(step).min(end),
            None => end,
        };
        return Stream {
            from: to.to_rfc3339(),
            to: Some(next_to.to_rfc3339()),
            end: s.end,
            step,
            opened: s.opened,
            ..Stream::default()
        };
    }
    // The whole window is read. The next one reaches back by the lateness Graph shows.
    Stream {
        opened: Some(end.to_rfc3339()),
        ..Stream::starting_at(end.minus_secs(overlap).max(origin))
    }
}

fn load_dedup(p: &dyn Platform, name: &str, key: &str) -> Result<Dedup, Failure> {
    match p.kv_get(key) {
        Ok(None) => Ok(Dedup::default()),
        Ok(Some(text)) => Ok(Dedup::decode(&text).unwrap_or_else(|e| {
            p.log(
                Level::Warn,
                &format!("{name}: {e}; starting an empty one (duplicates possible)"),
            );
            Dedup::default()
        })),
        Err(e) => Err(Failure::Transient(format!("reading dedup memory: {e:?}"))),
    }
}
