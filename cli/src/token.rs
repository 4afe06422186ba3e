//! The sequence token every loadgen line carries, and how `verify` finds it again in a message.
//!
//! ```text
//! #sl/<run>/<stream>/<seq>              a one-line record
//! #sl/<run>/<stream>/<seq>/<k>of<n>     line k (1-based) of an n-line record (stack trace)
//! #sl-end/<run>/<stream>/<seq>          the last bytes of a line long enough to be split into
//!                                       runtime partials: present only when the parts were joined
//! ```
//!
//! `run` is the run id (lower-case alphanumerics), `stream` the manifest's numeric id of one
//! `(container, restart, stdout|stderr)` stream and `seq` the record's 0-based position in it, so
//! the tokens of one stream are exactly `0..count`.

use std::fmt::Write as _;

/// One token found in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token<'a> {
    /// The run id.
    pub run: &'a str,
    /// The manifest's stream id.
    pub stream: u32,
    /// The record's position in its stream.
    pub seq: u64,
    /// `(k, n)` for line k of an n-line record.
    pub part: Option<(u16, u16)>,
    /// Whether this is the end marker of a long line.
    pub end: bool,
}

/// Appends the token of a one-line record.
pub fn push(out: &mut String, run: &str, stream: u32, seq: u64) {
    let _ = write!(out, "#sl/{run}/{stream}/{seq}");
}

/// Appends the token of line `k` of an `n`-line record.
pub fn push_part(out: &mut String, run: &str, stream: u32, seq: u64, k: u16, n: u16) {
    let _ = write!(out, "#sl/{run}/{stream}/{seq}/{k}of{n}");
}

/// Appends the end marker of a long line.
pub fn push_end(out: &mut String, run: &str, stream: u32, seq: u64) {
    let _ = write!(out, "#sl-end/{run}/{stream}/{seq}");
}

/// Every token in `message`, in order.
pub fn scan(message: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("#sl") {
        let after = &rest[i + 3..];
        let (end, body) = if let Some(b) = after.strip_prefix("-end/") {
            (true, b)
        } else if let Some(b) = after.strip_prefix('/') {
            (false, b)
        } else {
            rest = after;
            continue;
        };
        match parse_body(body, end) {
            Some((tok, used)) => {
                out.push(tok);
                rest = &body[used..];
            }
            None => rest = body,
        }
    }
    out
}

fn parse_body(s: &str, end: bool) -> Option<(Token<'_>, usize)> {
    let run_len = s.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
    if run_len == 0 || s.as_bytes().get(run_len) != Some(&b'/') {
        return None;
    }
    let run = &s[..run_len];
    let mut pos = run_len + 1;
    let (stream, used) = digits(&s[pos..])?;
    pos += used;
    if s.as_bytes().get(pos) != Some(&b'/') {
        return None;
    }
    pos += 1;
    let (seq, used) = digits(&s[pos..])?;
    pos += used;
    let mut part = None;
    if !end && s.as_bytes().get(pos) == Some(&b'/') {
        let p = pos + 1;
        if let Some((k, u1)) = digits(&s[p..])
            && s[p + u1..].starts_with("of")
            && let Some((n, u2)) = digits(&s[p + u1 + 2..])
        {
            part = Some((u16::try_from(k).ok()?, u16::try_from(n).ok()?));
            pos = p + u1 + 2 + u2;
        }
    }
    let stream = u32::try_from(stream).ok()?;
    Some((Token { run, stream, seq, part, end }, pos))
}

fn digits(s: &str) -> Option<(u64, usize)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || n > 19 {
        return None;
    }
    Some((s[..n].parse().ok()?, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut s = String::from("INFO hello ");
        push(&mut s, "ab12", 3, 1234);
        s.push_str(" padding #sl/ bogus #slx ");
        push_part(&mut s, "ab12", 4, 7, 2, 6);
        s.push(' ');
        push_end(&mut s, "ab12", 3, 1234);
        let toks = scan(&s);
        assert_eq!(toks.len(), 3, "{toks:?}");
        assert_eq!(toks[0], Token { run: "ab12", stream: 3, seq: 1234, part: None, end: false });
        assert_eq!(toks[1].part, Some((2, 6)));
        assert_eq!(toks[1].seq, 7);
        assert!(toks[2].end && toks[2].seq == 1234 && toks[2].part.is_none());
    }

    #[test]
    fn truncated_tokens_are_ignored() {
        assert!(scan("#sl/ab/1").is_empty());
        assert!(scan("#sl/ab/x/1").is_empty());
        assert_eq!(scan("#sl/ab/1/2/3of").len(), 1);
    }
}
