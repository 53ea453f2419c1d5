//! Single byte ranges served from a whole stored object (RFC 9110 §14).
//!
//! Contract: [`parse`] reads a `Range` field against a body length: one satisfiable
//! `bytes=` range is served as `206`; none satisfiable is `416`; anything else (several
//! ranges, another unit, a syntax error) is answered with the whole body, as §14.2 allows.

/// What a `Range` asks of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// Bytes `start..=end`.
    One(usize, usize),
    /// No range can be satisfied.
    Unsatisfiable,
    /// Serve the whole body (ignored range).
    Whole,
}

/// Reads `value` for a body of `len` bytes.
pub fn parse(value: &str, len: usize) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    if first.is_empty() {
        // Suffix: the last N bytes.
        let Some(n) = num(last) else {
            return Ranged::Whole;
        };
        if n == 0 || len == 0 {
            return Ranged::Unsatisfiable;
        }
        let n = (n as usize).min(len);
        return Ranged::One(len - n, len - 1);
    }
    let Some(start) = num(first) else {
        return Ranged::Whole;
    };
    let end = if last.is_empty() {
        None
    } else {
        match num(last) {
            Some(e) if e >= start => Some(e),
            _ => return Ranged::Whole,
        }
    };
    if start as usize >= len {
        return Ranged::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| (e as usize).min(len - 1));
    Ranged::One(start as usize, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse("bytes=0-4", 10), Ranged::One(0, 4));
        assert_eq!(parse("bytes=5-", 10), Ranged::One(5, 9));
        assert_eq!(parse("bytes=-3", 10), Ranged::One(7, 9));
        assert_eq!(parse("bytes=8-100", 10), Ranged::One(8, 9));
        assert_eq!(parse("bytes=10-", 10), Ranged::Unsatisfiable);
        assert_eq!(parse("bytes=0-1,4-5", 10), Ranged::Whole);
        assert_eq!(parse("items=0-1", 10), Ranged::Whole);
        assert_eq!(parse("bytes=5-2", 10), Ranged::Whole);
        assert_eq!(parse("bytes=x-", 10), Ranged::Whole);
    }
}
