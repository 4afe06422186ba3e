//! RFC 3339 timestamps: validation, conversion to UTC, formatting.
//!
//! The hot path borrows: a timestamp that is already UTC (`Z`) with at most nine fraction digits is
//! returned as is. Anything else valid (an offset such as `+02:00`, lowercase `t`/`z`, more than nine
//! fraction digits) is converted to `YYYY-MM-DDTHH:MM:SS[.fffffffff]Z`.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// A parsed instant: seconds since the Unix epoch (UTC) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

/// The value of the ASCII digits `b`, `None` if any byte is not a digit (fixed-width fields, so
/// the loop unrolls and the whole field is checked at once).
#[inline(always)]
fn number(b: &[u8]) -> Option<u32> {
    let (mut v, mut ok) = (0u32, true);
    for &c in b {
        let d = c.wrapping_sub(b'0');
        ok &= d < 10;
        v = v * 10 + u32::from(d);
    }
    ok.then_some(v)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the instants RFC 3339 UTC can write.
const MIN_SECS: i64 = -62_167_219_200;
const MAX_SECS: i64 = 253_402_300_799;

/// Result of [`parse`]: the instant and whether the text is already canonical UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The instant.
    pub instant: Instant,
    /// The text is `…Z` with an uppercase `T` and at most nine fraction digits, so it can be used as is.
    pub canonical: bool,
}

/// The fields of a valid timestamp, before any arithmetic.
#[derive(Debug, Clone, Copy)]
struct Fields {
    year: u32,
    month: u32,
    day: u32,
    /// Seconds since midnight, local time.
    time: u32,
    nanos: u32,
    /// Number of fraction digits as written (any length; only the first nine count).
    frac_digits: usize,
    /// Offset east of UTC in seconds (`Z`: 0).
    offset_secs: i32,
    /// Uppercase `T` and `Z` with at most nine fraction digits: usable as is.
    canonical: bool,
}

/// Validates `b` and splits it into its fields. The date and time are fixed-width (one unrolled
/// check of the first 19 bytes); only the fraction and the zone vary.
#[inline]
fn fields(b: &[u8]) -> Option<Fields> {
    let head: &[u8; 19] = b.get(..19)?.try_into().ok()?;
    let year = number(&head[0..4])?;
    let month = number(&head[5..7])?;
    let day = number(&head[8..10])?;
    let hour = number(&head[11..13])?;
    let min = number(&head[14..16])?;
    let sec = number(&head[17..19])?;
    if head[4] != b'-' || head[7] != b'-' || head[13] != b':' || head[16] != b':' {
        return None;
    }
    let sep = head[10];
    if !(sep == b'T' || sep == b't' || sep == b' ') {
        return None;
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(i64::from(year), month)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    let mut frac_digits = 0usize;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if frac_digits < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
            frac_digits += 1;
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in frac_digits.min(9)..9 {
            nanos *= 10;
        }
    }
    let (offset_secs, zulu) = match b.get(i)? {
        b'Z' if i + 1 == b.len() => (0i32, true),
        b'z' if i + 1 == b.len() => (0, false),
        c @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let oh = number(&b[i + 1..i + 3])?;
            let om = number(&b[i + 4..i + 6])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = (oh * 3600 + om * 60) as i32;
            (if *c == b'+' { off } else { -off }, false)
        }
        _ => return None,
    };
    let f = Fields {
        year,
        month,
        day,
        time: hour * 3600 + min * 60 + sec,
        nanos,
        frac_digits,
        offset_secs,
        canonical: zulu && sep == b'T' && frac_digits <= 9,
    };
    // In UTC the year must still have four digits (`0000-01-01T00:00:00+01:00` is in year -1):
    // otherwise the normalised text is not RFC 3339 and the document's date is rejected downstream.
    // Only years 0000 and 9999 can leave the range, so the others skip the date arithmetic.
    if (year == 0 || year == 9999) && !(MIN_SECS..=MAX_SECS).contains(&f.instant().secs) {
        return None;
    }
    Some(f)
}

impl Fields {
    fn instant(&self) -> Instant {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        let secs = days * 86_400 + i64::from(self.time) - i64::from(self.offset_secs);
        Instant { secs, nanos: self.nanos }
    }
}

/// Whether `b` is canonical UTC, `YYYY-MM-DDTHH:MM:SS[.f]Z` with one to nine fraction digits: the
/// form container runtimes write, so the one every line is checked against first (three times per
/// line: parse, reassembly, record). Exactly the strings [`fields`] accepts with `canonical` set and
/// `frac_digits` ≥ 1 or none, checked with a few word operations instead of a branch per byte
/// (hand-rolled: no maintained crate validates a fixed layout; the proptests compare it with `fields`).
#[inline]
fn canonical(b: &[u8]) -> bool {
    /// `c` in every byte.
    const fn splat(c: u8) -> u128 {
        u128::from_ne_bytes([c; 16])
    }
    /// 0xff in the bytes of the first 16 that are digits of the date and time.
    const DIGITS: u128 =
        u128::from_le_bytes([0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0, 0xff, 0xff, 0, 0xff, 0xff, 0, 0xff, 0xff]);
    /// The separators of the first 16 bytes and where they are.
    const SEPS: u128 = u128::from_le_bytes([0, 0, 0, 0, b'-', 0, 0, b'-', 0, 0, b'T', 0, 0, b':', 0, 0]);
    const SEP_MASK: u128 = u128::from_le_bytes([0, 0, 0, 0, 0xff, 0, 0, 0xff, 0, 0, 0xff, 0, 0, 0xff, 0, 0]);
    let n = b.len();
    // 20 bytes without a fraction, 22 to 30 with one to nine digits.
    if !(n == 20 || (22..=30).contains(&n)) || b[n - 1] != b'Z' || b[16] != b':' {
        return false;
    }
    let Ok(head) = <[u8; 16]>::try_from(&b[..16]) else { return false };
    let w = u128::from_le_bytes(head);
    if w & SEP_MASK != SEPS {
        return false;
    }
    // A digit XOR '0' is 0..=9: high nibble clear, and still clear after adding 6. The sum cannot
    // carry into the next byte once the high nibbles are known clear.
    let x = (w ^ splat(b'0')) & DIGITS;
    if x & splat(0xf0) != 0 || x.wrapping_add(splat(6) & DIGITS) & splat(0xf0) != 0 {
        return false;
    }
    let (s0, s1) = (b[17].wrapping_sub(b'0'), b[18].wrapping_sub(b'0'));
    if s0 > 5 || s1 > 9 {
        return false;
    }
    if n > 20 {
        // The fraction is the last `n - 21` bytes before the `Z`; the 8 bytes before the `Z` hold
        // all of it but the first digit of nine (bytes of the head above it are masked off).
        let d = n - 21;
        let Ok(tail) = <[u8; 8]>::try_from(&b[n - 9..n - 1]) else { return false };
        let frac = (u64::from_le_bytes(tail) ^ u64::from_ne_bytes([b'0'; 8])) & (u64::MAX << (8 * (8 - d.min(8))));
        let (f0, f6) = (u64::from_ne_bytes([0xf0; 8]), u64::from_ne_bytes([6; 8]));
        if b[19] != b'.' || frac & f0 != 0 || frac.wrapping_add(f6) & f0 != 0 || (d == 9 && !b[20].is_ascii_digit()) {
            return false;
        }
    }
    let digit = |i: u32| ((x >> (8 * i)) & 0xf) as u32;
    let year = digit(0) * 1000 + digit(1) * 100 + digit(2) * 10 + digit(3);
    let month = digit(5) * 10 + digit(6);
    let day = digit(8) * 10 + digit(9);
    let hour = digit(11) * 10 + digit(12);
    let min = digit(14) * 10 + digit(15);
    (1..=12).contains(&month) && day != 0 && day <= days_in_month(i64::from(year), month) && hour <= 23 && min <= 59
}

/// Parses an RFC 3339 timestamp (`2026-11-27T00:17:09.669794202Z`, `…+02:00`, any fraction length).
pub fn parse(b: &[u8]) -> Option<Parsed> {
    let f = fields(b)?;
    Some(Parsed { instant: f.instant(), canonical: f.canonical })
}

/// Whether `b` is a valid RFC 3339 timestamp ([`parse`] without computing the instant).
pub fn is_valid(b: &[u8]) -> bool {
    canonical(b) || fields(b).is_some()
}

/// Formats an instant as RFC 3339 UTC with nine fraction digits (`…T00:17:09.669794202Z`).
pub fn format(instant: Instant, out: &mut String) {
    use std::fmt::Write;
    let days = instant.secs.div_euclid(86_400);
    let rem = instant.secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        instant.nanos
    );
}

/// Normalises a timestamp to RFC 3339 UTC, borrowing when it already is; `None` when invalid.
pub fn normalize(b: &[u8]) -> Option<Cow<'_, str>> {
    if canonical(b) {
        // Validated ASCII.
        return std::str::from_utf8(b).ok().map(Cow::Borrowed);
    }
    let f = fields(b)?;
    if f.canonical {
        // Validated ASCII above.
        return std::str::from_utf8(b).ok().map(Cow::Borrowed);
    }
    let mut s = String::with_capacity(30);
    if f.offset_secs == 0 && f.frac_digits <= 9 {
        // UTC already (`+00:00`, `-00:00`, `z`), the common non-canonical forms: the same digits,
        // the fraction padded to nine (what `format(instant)` writes, tested against it).
        s.push_str(std::str::from_utf8(&b[..10]).ok()?);
        s.push('T');
        s.push_str(std::str::from_utf8(&b[11..19]).ok()?);
        s.push('.');
        let frac = if f.frac_digits > 0 { &b[20..20 + f.frac_digits] } else { &b[..0] };
        s.push_str(std::str::from_utf8(frac).ok()?);
        s.push_str(&"000000000"[f.frac_digits..]);
        s.push('Z');
        return Some(Cow::Owned(s));
    }
    format(f.instant(), &mut s);
    Some(Cow::Owned(s))
}

/// The current time as RFC 3339 UTC (used for records whose own timestamp is unreadable).
pub fn now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = String::with_capacity(30);
    format(Instant { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn canonical_utc_is_borrowed() {
        let ts = b"2026-11-27T00:17:09.669794202Z";
        assert!(matches!(normalize(ts), Some(Cow::Borrowed("2026-11-27T00:17:09.669794202Z"))));
        assert!(matches!(normalize(b"2026-11-27T00:17:09Z"), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        assert_eq!(normalize(b"2026-11-27T00:17:09.5+00:00").unwrap(), "2026-11-27T00:17:09.500000000Z");
        assert_eq!(normalize(b"2026-11-27T00:17:09.123456789+02:00").unwrap(), "2026-11-26T22:17:09.123456789Z");
        assert_eq!(normalize(b"2026-12-31T23:30:00-01:00").unwrap(), "2027-01-01T00:30:00.000000000Z");
        assert_eq!(normalize(b"2024-02-29t12:00:00z").unwrap(), "2024-02-29T12:00:00.000000000Z");
    }

    #[test]
    fn the_first_and_last_instants_of_four_digit_years_are_kept() {
        assert_eq!(normalize(b"0000-01-01T00:30:00+00:30").unwrap(), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(normalize(b"9999-12-31T23:59:59.999999999Z").unwrap(), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(normalize(b"9999-12-31T22:59:59-01:00").unwrap(), "9999-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn long_fractions_are_cut_to_nanoseconds() {
        assert_eq!(normalize(b"2026-11-27T00:17:09.1234567891234Z").unwrap(), "2026-11-27T00:17:09.123456789Z");
    }

    #[test]
    fn invalid_timestamps_are_rejected() {
        for bad in [
            &b""[..],
            b"2026-11-27",
            b"2026-13-01T00:00:00Z",
            b"2023-02-29T00:00:00Z",
            b"2026-11-27T24:00:00Z",
            b"2026-11-27T00:00:00.Z",
            b"2026-11-27T00:00:00",
            b"2026-11-27T00:00:00+0100",
            b"2026-11-27T00:00:00Zjunk",
            b"\xff\xfe-11-27T00:00:00Z",
            // Hostile input (issue #14, found by the `cri` fuzz target): out of range once in UTC.
            b"0000-01-01T00:00:00+01:00",
            b"9999-12-31T23:59:59.5-00:01",
        ] {
            assert!(parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(secs in -62_135_596_800i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let mut s = String::new();
            format(Instant { secs, nanos }, &mut s);
            let p = parse(s.as_bytes()).unwrap();
            prop_assert!(p.canonical);
            prop_assert_eq!(p.instant, Instant { secs, nanos });
        }

        #[test]
        fn offsets_agree_with_utc(secs in 0i64..4_102_444_800, off_min in -1439i64..1439) {
            let mut utc = String::new();
            format(Instant { secs, nanos: 0 }, &mut utc);
            let mut local = String::new();
            format(Instant { secs: secs + off_min * 60, nanos: 0 }, &mut local);
            let sign = if off_min < 0 { '-' } else { '+' };
            let a = off_min.abs();
            let local = format!("{}{sign}{:02}:{:02}", &local[..local.len() - 1], a / 60, a % 60);
            prop_assert_eq!(normalize(local.as_bytes()).unwrap(), utc);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = normalize(&bytes);
            prop_assert_eq!(is_valid(&bytes), parse(&bytes).is_some());
        }

        /// The fixed-width check accepts exactly what the general parser calls canonical: valid
        /// timestamps of every shape (fraction lengths 0 to 12, any zone) with one byte replaced by a
        /// byte that is near the valid ones or anything.
        #[test]
        fn canonical_fast_path_agrees_with_fields(secs in -62_167_219_200i64..253_402_300_799, nanos in 0u32..1_000_000_000,
                                                  digits in 0usize..12, zone in 0usize..3, at in 0usize..40,
                                                  byte in prop_oneof![Just(b'/'), Just(b':'), Just(b'0'), Just(b'9'),
                                                                      Just(b'.'), Just(b'Z'), b'0'..=b'9', any::<u8>()],
                                                  mutate in any::<bool>()) {
            let mut full = String::new();
            format(Instant { secs, nanos }, &mut full);
            let mut frac = full[20..29].to_owned();
            while frac.len() < digits { frac.push('3'); }
            frac.truncate(digits);
            let dot = if digits > 0 { "." } else { "" };
            let zone = ["Z", "z", "+00:00"][zone];
            let mut ts = format!("{}{dot}{frac}{zone}", &full[..19]).into_bytes();
            if mutate && at < ts.len() {
                ts[at] = byte;
            }
            prop_assert_eq!(canonical(&ts), fields(&ts).is_some_and(|f| f.canonical), "{:?}", String::from_utf8_lossy(&ts));
        }

        /// Calendar edges the mutations rarely reach: every day number of every month, leap years.
        #[test]
        fn canonical_fast_path_knows_the_calendar(year in prop_oneof![Just(1900u32), Just(2000), Just(2024), Just(2026), 0u32..10_000],
                                                  month in 0u32..14, day in 0u32..33, hour in 0u32..25, min in 0u32..61, sec in 0u32..61) {
            let ts = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{min:02}:{sec:02}.5Z");
            prop_assert_eq!(canonical(ts.as_bytes()), fields(ts.as_bytes()).is_some_and(|f| f.canonical), "{}", ts);
        }

        /// The UTC fast path of `normalize` (`+00:00`, `-00:00`, `z`, `t`, ` `) writes what formatting
        /// the parsed instant writes.
        #[test]
        fn utc_fast_path_matches_formatting(secs in -62_135_596_800i64..253_402_300_799, nanos in 0u32..1_000_000_000,
                                            digits in 0usize..12, zone in 0usize..4, sep in 0usize..3) {
            let mut full = String::new();
            format(Instant { secs, nanos }, &mut full);
            // `YYYY-MM-DDTHH:MM:SS.fffffffffZ` → cut or extend the fraction, change separator and zone.
            let mut frac = full[20..29].to_owned();
            while frac.len() < digits { frac.push('7'); }
            frac.truncate(digits);
            let sep = ["T", "t", " "][sep];
            let zone = ["Z", "z", "+00:00", "-00:00"][zone];
            let dot = if digits > 0 { "." } else { "" };
            let ts = format!("{}{sep}{}{dot}{frac}{zone}", &full[..10], &full[11..19]);
            let p = parse(ts.as_bytes()).unwrap();
            let mut want = String::new();
            format(p.instant, &mut want);
            let got = normalize(ts.as_bytes()).unwrap();
            if p.canonical {
                prop_assert_eq!(&*got, ts.as_str());
            } else {
                prop_assert_eq!(got.into_owned(), want);
            }
        }
    }
}
