//! One pass over a Graph page: checks that it is JSON, splits `value` into raw records and
//! picks each record's named top-level string fields on the way.
//!
//! serde_json read a page twice (split, then fields) and skips string contents a machine
//! word at a time, 4 bytes on wasm32: that was most of a poll's cost in a component
//! (BENCHMARKS.md). Here strings are skipped 16 bytes at a time, with simd128 on wasm32
//! and SSE2 on x86-64, so the component and a native build do the same work per byte.
//!
//! The scanner only has to be right when it accepts. Whenever a page is not in the plain
//! shape it knows (any syntax error, an escaped key at the page level, a top-level array,
//! nesting deeper than [`MAX_DEPTH`]) it gives up, and the caller asks serde_json, which
//! accepts or rejects with its own message. So it must never accept what serde_json
//! rejects, nor split or read differently: the tests below and the `page` fuzz target
//! compare the two.

use std::borrow::Cow;

use super::{Record, Records, string_fields};

/// Containers nested deeper than this inside a record are left to serde_json, so that
/// the scanner's stack is one machine word and never allocates.
const MAX_DEPTH: u32 = 64;

/// The page's records and next link, or `None` when serde_json must decide.
pub(super) fn page<'a, const N: usize>(text: &'a str, names: [&str; N]) -> Option<Records<'a, N>> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    s.eat(b'{')?;
    let mut records = None;
    let mut next_link: Option<Option<String>> = None;
    let mut count: Option<Option<u64>> = None;
    s.ws();
    if s.peek() == Some(b'}') {
        return None; // no `value`: serde_json words the error
    }
    loop {
        s.ws();
        let (key, escaped) = s.key()?;
        if escaped {
            return None;
        }
        s.ws();
        match key {
            b"value" if records.is_none() => records = Some(s.records(&names)?),
            b"@odata.nextLink" if next_link.is_none() => next_link = Some(s.link()?),
            b"@odata.count" if count.is_none() => count = Some(s.count()?),
            b"value" | b"@odata.nextLink" | b"@odata.count" => return None, // a duplicate is an error
            _ => s.skip_value()?,
        }
        s.ws();
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != s.b.len() {
        return None;
    }
    Some(Records {
        records: records?,
        next_link: next_link.flatten(),
        count: count.flatten(),
    })
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// The text between `start` and here; `get` rather than indexing, so that a mistake
    /// here would fall back instead of panic.
    fn since(&self, start: usize) -> Option<&'a str> {
        self.text.get(start..self.i)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// `"name":`, returning the name as written and whether it has escapes.
    fn key(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let escaped = self.string()?;
        let key = self.b.get(start..self.i - 1)?;
        self.ws();
        self.eat(b':')?;
        Some((key, escaped))
    }

    /// The rest of a string after its opening quote; whether it has escapes.
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            self.i = string_stop(self.b, self.i);
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Skips one value, checking it; containers on a stack of bits (1: object).
    fn skip_value(&mut self) -> Option<()> {
        let (mut stack, mut depth) = (0u64, 0u32);
        loop {
            self.ws();
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    self.string()?;
                }
                open @ (b'{' | b'[') => {
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return None;
                        }
                        stack = stack << 1 | u64::from(open == b'{');
                        depth += 1;
                        if open == b'{' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a value: close containers until one takes a comma.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let object = stack & 1 == 1;
                match self.next()? {
                    b',' => {
                        if object {
                            self.ws();
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// The `value` array.
    fn records<const N: usize>(&mut self, names: &[&str; N]) -> Option<Vec<Record<'a, N>>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Some(out);
        }
        loop {
            self.ws();
            let start = self.i;
            let picked = self.record(names)?;
            let raw = self.since(start)?;
            let fields = match picked {
                Picked::Fields(fields) => Some(fields.map(|f| f.map(Cow::Borrowed))),
                Picked::NotObject => None,
                Picked::Unsure => string_fields(raw, *names)
                    .ok()
                    .map(|fields| fields.map(|f| f.map(Cow::Owned))),
            };
            out.push(Record { raw, fields });
            self.ws();
            match self.next()? {
                b',' => {}
                b']' => return Some(out),
                _ => return None,
            }
        }
    }

    /// One record, reading the named fields as [`string_fields`] does: the first name
    /// that matches a key takes its value, a later duplicate key overwrites it, and
    /// reading stops once every distinct name was seen.
    fn record<const N: usize>(&mut self, names: &[&str; N]) -> Option<Picked<'a, N>> {
        if self.peek() != Some(b'{') {
            self.skip_value()?;
            return Some(Picked::NotObject);
        }
        self.i += 1;
        let wanted = (0..N).filter(|&i| !names[..i].contains(&names[i])).count();
        let mut out = [None; N];
        let mut seen = [false; N];
        let (mut found, mut unsure) = (0, false);
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Some(Picked::Fields(out));
        }
        loop {
            self.ws();
            let (key, escaped) = self.key()?;
            self.ws();
            let slot = if found == wanted || unsure {
                None
            } else if escaped {
                unsure = true; // serde_json decodes the key (and may refuse it)
                None
            } else {
                names.iter().position(|n| n.as_bytes() == key)
            };
            match slot {
                Some(k) => {
                    match self.peek() {
                        Some(b'"') => {
                            self.i += 1;
                            let start = self.i;
                            if self.string()? {
                                unsure = true;
                            } else {
                                out[k] = Some(self.text.get(start..self.i - 1)?);
                            }
                        }
                        Some(b'n') => {
                            self.literal(b"null")?;
                            out[k] = None;
                        }
                        // Another type: serde_json builds it to find out, and may refuse it.
                        _ => {
                            unsure = true;
                            self.skip_value()?;
                        }
                    }
                    if !seen[k] {
                        seen[k] = true;
                        found += 1;
                    }
                }
                None => self.skip_value()?,
            }
            self.ws();
            match self.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        Some(if unsure {
            Picked::Unsure
        } else {
            Picked::Fields(out)
        })
    }

    /// `@odata.count`: plain digits or null; anything else (a sign, a fraction, an
    /// exponent, a number past u64) is left to serde_json.
    fn count(&mut self) -> Option<Option<u64>> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Some(None);
        }
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let digits = self.since(start)?;
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        digits.parse().ok().map(Some)
    }

    /// `@odata.nextLink`: a string or null.
    fn link(&mut self) -> Option<Option<String>> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Some(None);
        }
        let start = self.i;
        self.eat(b'"')?;
        let escaped = self.string()?;
        let token = self.since(start)?;
        if escaped {
            return serde_json::from_str(token).ok().map(Some);
        }
        Some(Some(token[1..token.len() - 1].to_string()))
    }
}

enum Picked<'a, const N: usize> {
    Fields([Option<&'a str>; N]),
    NotObject,
    /// An escaped key or a named field that is not a plain string or null: the record is
    /// read again by [`string_fields`].
    Unsure,
}

/// The index of the first `"`, `\` or control character at or after `i` (or the end).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn string_stop(b: &[u8], mut i: usize) -> usize {
    use core::arch::wasm32::*;
    while let Some(chunk) = b.get(i..i + 16) {
        // SAFETY: `chunk` is 16 readable bytes, and v128.load takes any alignment.
        let v = unsafe { v128_load(chunk.as_ptr().cast()) };
        let hits = v128_or(
            v128_or(
                u8x16_eq(v, u8x16_splat(b'"')),
                u8x16_eq(v, u8x16_splat(b'\\')),
            ),
            u8x16_lt(v, u8x16_splat(0x20)),
        );
        let mask = u8x16_bitmask(hits);
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    string_stop_bytewise(b, i)
}

#[cfg(target_arch = "x86_64")]
fn string_stop(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::*;
    while let Some(chunk) = b.get(i..i + 16) {
        // SAFETY: SSE2 is part of x86-64; `chunk` is 16 readable bytes, and loadu takes
        // any alignment.
        let mask = unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            // min(v, 0x1f) == v: an unsigned v <= 0x1f, which SSE2 has no compare for.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let hits = _mm_or_si128(
                _mm_or_si128(
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8)),
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8)),
                ),
                control,
            );
            _mm_movemask_epi8(hits)
        };
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    string_stop_bytewise(b, i)
}

#[cfg(not(any(
    all(target_arch = "wasm32", target_feature = "simd128"),
    target_arch = "x86_64"
)))]
fn string_stop(b: &[u8], i: usize) -> usize {
    string_stop_bytewise(b, i)
}

/// The page as text. Graph pages are almost always ASCII, which 16 bytes at a time settles
/// for far less than `from_utf8` (a machine word at a time: 7% of a poll in a component).
pub(super) fn utf8(body: &[u8]) -> Option<&str> {
    if is_ascii(body) {
        // SAFETY: ASCII is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(body) })
    } else {
        std::str::from_utf8(body).ok()
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn is_ascii(b: &[u8]) -> bool {
    use core::arch::wasm32::*;
    // 64 bytes a round: the loop's own bookkeeping then costs little beside the loads.
    let mut chunks = b.chunks_exact(64);
    let mut high = u8x16_splat(0);
    for chunk in &mut chunks {
        let p = chunk.as_ptr();
        // SAFETY: `chunk` is 64 readable bytes, and v128.load takes any alignment.
        let v = unsafe {
            let (a, b) = (v128_load(p.cast()), v128_load(p.add(16).cast()));
            let (c, d) = (v128_load(p.add(32).cast()), v128_load(p.add(48).cast()));
            v128_or(v128_or(a, b), v128_or(c, d))
        };
        high = v128_or(high, v);
    }
    u8x16_bitmask(high) == 0 && chunks.remainder().is_ascii()
}

#[cfg(target_arch = "x86_64")]
fn is_ascii(b: &[u8]) -> bool {
    use std::arch::x86_64::*;
    let mut chunks = b.chunks_exact(16);
    // SAFETY: SSE2 is part of x86-64; each chunk is 16 readable bytes, and loadu takes
    // any alignment.
    let high = unsafe {
        let mut high = _mm_setzero_si128();
        for chunk in &mut chunks {
            high = _mm_or_si128(high, _mm_loadu_si128(chunk.as_ptr().cast()));
        }
        _mm_movemask_epi8(high)
    };
    high == 0 && chunks.remainder().is_ascii()
}

#[cfg(not(any(
    all(target_arch = "wasm32", target_feature = "simd128"),
    target_arch = "x86_64"
)))]
fn is_ascii(b: &[u8]) -> bool {
    b.is_ascii()
}

fn string_stop_bytewise(b: &[u8], i: usize) -> usize {
    let rest = b.get(i..).unwrap_or_default();
    rest.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map_or(b.len(), |p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{read_page, read_page_serde};

    /// The scanner accepts only what serde_json accepts, and then reads the same.
    fn agrees(body: &str) -> bool {
        let names = ["id", "t", "t"];
        let scanned = page(body, names);
        if let Some(scanned) = &scanned {
            assert_eq!(
                Ok(scanned),
                read_page_serde(body.as_bytes(), names).as_ref(),
                "{body}"
            );
        }
        scanned.is_some()
    }

    #[test]
    fn reads_plain_pages_itself() {
        for body in [
            r#"{"value":[]}"#,
            r#" { "@odata.context" : "x" , "value" : [ { "id" : "a" , "t" : "1" } , { } ] } "#,
            "{\"value\":[{\"id\":\"a\",\"x\":{\"y\":[1,-2.5e+3,0,true,false,null,{}]},\"t\":null}],\n\"@odata.nextLink\":\"https://g/n?a=1\"}",
            r#"{"value":[7,"s",[],{"id":5,"t":"b"},{"id":"a","id":"b","t":"c","id":"d"}]}"#,
            r#"{"value":[{"k\"ey":"\"\\\/\b\f\n\r\t\u00e9","id":"é日本","t":"x"}],"@odata.nextLink":null}"#,
            r#"{"value":[{"id":"a","t":"b","id":"\ud800"}],"other":[[[[]]]],"@odata.count":17,"x":-0}"#,
            r#"{"@odata.nextLink":"https:\/\/g\/n","value":[{"id":"0123456789abcdef0123456789abcdef"}]}"#,
        ] {
            assert!(agrees(body), "{body}");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde_json() {
        for body in [
            // Errors of every kind.
            "",
            "{",
            r#"{"value":[{"id":"a"}]"#,
            r#"{"value":[{"id":"a"},]}"#,
            r#"{"value":[{"id":"a",}]}"#,
            r#"{"value":[{"id" "a"}]}"#,
            r#"{"value":[{id:"a"}]}"#,
            r#"{"value":[01]}"#,
            r#"{"value":[1.]}"#,
            r#"{"value":[1e]}"#,
            r#"{"value":[-]}"#,
            r#"{"value":[+1]}"#,
            r#"{"value":[nul]}"#,
            r#"{"value":[True]}"#,
            r#"{"value":["a\x"]}"#,
            r#"{"value":["\u12g4"]}"#,
            "{\"value\":[\"tab\there\"]}",
            "{\"value\":[\"a\u{1f}\"]}",
            r#"{"value":[{"id":"a"}]} x"#,
            r#"{"value":[],"value":[]}"#,
            r#"{"value":[],"@odata.nextLink":null,"@odata.nextLink":null}"#,
            r#"{"value":{}}"#,
            r#"{"value":[],"@odata.nextLink":5}"#,
            r#"{"@odata.context":"x"}"#,
            r#"{}"#,
            r#"[[],null]"#,
            // Readable by serde_json but not in the scanner's plain shape.
            r#"{"valu\u0065":[]}"#,
            r#"{"value":[],"@odata.nextLink":"\ud800"}"#,
        ] {
            assert!(!agrees(body), "{body}");
        }
        // The innermost, empty array takes no place on the stack.
        let nested = |n| format!(r#"{{"value":[{}]}}"#, "[".repeat(n) + &"]".repeat(n));
        assert!(!agrees(&nested(MAX_DEPTH as usize + 2)));
        assert!(agrees(&nested(MAX_DEPTH as usize + 1)));
        // Invalid UTF-8 outside the records: serde_json accepts it, the scanner does not try.
        let mut body = br#"{"@odata.context":"x","value":[]}"#.to_vec();
        body[19] = 0xff;
        assert!(read_page(&body, ["id"]).is_ok());
    }

    #[test]
    fn records_needing_serde_json_are_read_by_it() {
        // An escaped or non-string named field, or an escaped key before all are found.
        let body = r#"{"value":[{"id":"a\"b","t":"c"},{"i\u0064":"x"},{"id":1e999},{"id":[1]},{"id":"a","t":"b","\ud800":1},{"\ud800":1,"id":"a"}]}"#;
        assert!(agrees(body));
        let page = read_page(body.as_bytes(), ["id", "t"]).unwrap();
        let ids: Vec<_> = page
            .records
            .iter()
            .map(|r| r.fields.as_ref().map(|f| f[0].as_deref()))
            .collect();
        assert_eq!(
            ids,
            [
                Some(Some("a\"b")),
                Some(Some("x")),
                None,
                Some(None),
                Some(Some("a")),
                None
            ]
        );
    }

    #[test]
    fn checks_utf8_like_from_utf8() {
        let mut body = r#"{"value":[{"id":"abcdefghijklmnopqrstuvwxyz"}]}"#
            .as_bytes()
            .to_vec();
        for len in [0, 1, 15, 16, 17, 31, 32, body.len()] {
            assert_eq!(is_ascii(&body[..len]), body[..len].is_ascii());
        }
        for at in [0, 5, 15, 16, 17, 31, body.len() - 1] {
            for bad in [0x80, 0xc3, 0xff] {
                let saved = std::mem::replace(&mut body[at], bad);
                assert!(!is_ascii(&body));
                assert_eq!(utf8(&body), std::str::from_utf8(&body).ok());
                body[at] = saved;
            }
        }
        assert_eq!(utf8("é日本".as_bytes()), Some("é日本"));
    }

    #[test]
    fn finds_string_stops_like_a_byte_loop() {
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"ab\"\\\x00\x1f \x7f\x80\xff";
        for _ in 0..2000 {
            let len = (next() % 70) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if next() % 8 == 0 {
                        alphabet[(next() % alphabet.len() as u64) as usize]
                    } else {
                        b'x'
                    }
                })
                .collect();
            for i in 0..=len + 1 {
                assert_eq!(
                    string_stop(&bytes, i),
                    string_stop_bytewise(&bytes, i),
                    "{bytes:?} from {i}"
                );
            }
        }
    }

    #[test]
    fn agrees_with_serde_json_on_mutated_pages() {
        let base = r##"{"@odata.context":"https://g/$metadata#x","value":[{"@odata.type":"#a","id":"a1","t":"2026-11-20T11:00:00Z","n":[1,2.5,{"k":"v\"w"}],"e":null},{"id":"b2","t":"x","z":true}],"@odata.nextLink":"https://g/next"}"##;
        let mut seed = 99u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"{}[]\",:\\0123456789eE.+-tnfu \t\x01";
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..(next() % 3 + 1) {
                let at = (next() as usize) % bytes.len().max(1);
                match next() % 3 {
                    0 => {
                        if let Some(b) = bytes.get_mut(at) {
                            *b = alphabet[(next() % alphabet.len() as u64) as usize];
                        }
                    }
                    1 => {
                        bytes.remove(at.min(bytes.len() - 1));
                    }
                    _ => bytes.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                accepted += usize::from(agrees(text));
            }
        }
        assert!(accepted > 1000, "only {accepted} mutants were scanned");
    }
}
