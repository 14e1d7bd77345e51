//! Arbitrary text as a `postgres_changes` filter (the subscriber chooses it), compiled against
//! the common column types and evaluated on a value taken from the same input.
//!
//! Besides "no panic": every `like`/`ilike` filter on a text column agrees with an obviously
//! correct dynamic programme over (pattern, value) on inputs small enough for it, so the
//! bit-parallel matcher is checked against the definition.

#![no_main]

use libfuzzer_sys::fuzz_target;
use realtide_replication::filter::{Op, parse_filters, validate};
use realtide_replication::value::builtin;

/// Column types filters are compiled against: text, int4, int8, bool, numeric, uuid,
/// timestamptz, jsonb, bytea, bpchar.
const TYPES: [u32; 10] = [25, 23, 20, 16, 1700, 2950, 1184, 3802, 17, 1042];

/// LIKE by definition: `%` any run, `_` one character, `\` escapes the next one.
fn like_reference(pattern: &[char], text: &[char]) -> Option<bool> {
    let mut tokens = Vec::new();
    let mut it = pattern.iter();
    while let Some(&c) = it.next() {
        tokens.push(match c {
            '\\' => Some(*it.next()?),
            '%' => None,
            // `_`: a placeholder; `wild` below marks it as a wildcard.
            '_' => Some('\u{0}'),
            c => Some(c),
        });
    }
    let wild: Vec<u8> = pattern
        .iter()
        .scan(false, |escaped, &c| {
            let kind = if *escaped {
                *escaped = false;
                Some(0u8)
            } else if c == '\\' {
                *escaped = true;
                None
            } else if c == '%' {
                Some(1)
            } else if c == '_' {
                Some(2)
            } else {
                Some(0)
            };
            Some(kind)
        })
        .flatten()
        .collect();
    let n = tokens.len();
    let mut reach = vec![vec![false; text.len() + 1]; n + 1];
    reach[0][0] = true;
    for p in 0..=n {
        for t in 0..=text.len() {
            if !reach[p][t] {
                continue;
            }
            if p == n {
                continue;
            }
            match (wild[p], tokens[p]) {
                (1, _) => {
                    reach[p + 1][t] = true;
                    if t < text.len() {
                        reach[p][t + 1] = true;
                    }
                }
                (2, _) if t < text.len() => reach[p + 1][t + 1] = true,
                (0, Some(c)) if text.get(t) == Some(&c) => reach[p + 1][t + 1] = true,
                _ => {}
            }
        }
    }
    Some(reach[n][text.len()])
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `filter` then a NUL then the column value.
    let (filter_text, value) = text.split_once('\u{0}').unwrap_or((text, ""));
    let Ok(filters) = parse_filters(filter_text) else {
        return;
    };
    for filter in &filters {
        for oid in TYPES {
            let Some(ty) = builtin(oid) else {
                continue;
            };
            let Ok(compiled) = validate(filter, &ty) else {
                continue;
            };
            let matched = compiled.matches(Some(value));
            let _ = compiled.matches(None);
            if oid == 25 && filter.op == Op::Like && !filter.negate {
                let pattern: Vec<char> = filter.raw_value.chars().collect();
                let value: Vec<char> = value.chars().collect();
                if pattern.len() <= 64 && value.len() <= 64 {
                    if let Some(expected) = like_reference(&pattern, &value) {
                        assert_eq!(matched, expected, "like {:?} on {:?}", filter.raw_value, value);
                    }
                }
            }
        }
    }
});
