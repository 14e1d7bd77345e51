//! `to_json_text` against PostgreSQL 15's `to_jsonb`.
//!
//! The table below was generated with PostgreSQL 15.18: for each value `v`, the type OID,
//! `format('%s', v)` (the type's output function, i.e. what pgoutput sends) and `to_jsonb(v)::text`
//! with the whitespace outside strings removed (the session ran with `TimeZone=UTC`).

use realtide_replication::value::{TypeInfo, TypeKind, builtin, to_json_text};

// Generated from PostgreSQL 15.18: (type oid, `v::text`, compacted `to_jsonb(v)::text`), session TimeZone=UTC.
const CASES: &[(u32, &str, &str)] = &[
    (21, "-32768", "-32768"),
    (23, "2147483647", "2147483647"),
    (20, "-9223372036854775808", "-9223372036854775808"),
    (20, "0", "0"),
    (1700, "1.50", "1.50"),
    (1700, "0.0", "0.0"),
    (1700, "0.000", "0.000"),
    (
        1700,
        "12345678901234567890.123456789",
        "12345678901234567890.123456789",
    ),
    (1700, "NaN", "\"NaN\""),
    (1700, "Infinity", "\"Infinity\""),
    (1700, "-Infinity", "\"-Infinity\""),
    (1700, "0.00001", "0.00001"),
    (1700, "-12500", "-12500"),
    (701, "1e+20", "100000000000000000000"),
    (701, "1.5e-07", "0.00000015"),
    (701, "-1.2344999999999999e+21", "-1234499999999999900000"),
    (701, "NaN", "\"NaN\""),
    (701, "Infinity", "\"Infinity\""),
    (701, "-Infinity", "\"-Infinity\""),
    (701, "-0", "0"),
    (701, "0.1", "0.1"),
    (701, "123456789012", "123456789012"),
    (701, "1e+16", "10000000000000000"),
    (
        701,
        "2.2250738585072014e-308",
        "0.000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000022250738585072014",
    ),
    (
        701,
        "1.7976931348623157e+308",
        "179769313486231570000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    ),
    (700, "2.5e-05", "0.000025"),
    (
        700,
        "3.4028235e+38",
        "340282350000000000000000000000000000000",
    ),
    (700, "1e-20", "0.00000000000000000001"),
    (700, "-1.5", "-1.5"),
    (16, "t", "true"),
    (16, "f", "false"),
    (25, "hello", "\"hello\""),
    (25, "a\"b\\c/d", "\"a\\\"b\\\\c/d\""),
    (
        25,
        "line1\nline2\ttab\rcr\u{8}bs\u{c}feed",
        "\"line1\\nline2\\ttab\\rcr\\bbs\\ffeed\"",
    ),
    (25, "ctl\u{1}\u{1f}\u{7f}", "\"ctl\\u0001\\u001f\u{7f}\""),
    (25, "é日本🎉", "\"é日本🎉\""),
    (1043, "x, y", "\"x, y\""),
    (1042, "ab  ", "\"ab  \""),
    (19, "pg_class", "\"pg_class\""),
    (18, "a", "\"a\""),
    (
        2950,
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"",
    ),
    (26, "123", "\"123\""),
    (1082, "2024-01-02", "\"2024-01-02\""),
    (1082, "0044-03-15 BC", "\"0044-03-15 BC\""),
    (1082, "infinity", "\"infinity\""),
    (1082, "-infinity", "\"-infinity\""),
    (1082, "10000-01-01", "\"10000-01-01\""),
    (
        1114,
        "2024-01-02 03:04:05.678",
        "\"2024-01-02T03:04:05.678\"",
    ),
    (1114, "2024-01-02 03:04:05", "\"2024-01-02T03:04:05\""),
    (1114, "0044-03-15 12:00:00 BC", "\"0044-03-15T12:00:00 BC\""),
    (1114, "infinity", "\"infinity\""),
    (1114, "-infinity", "\"-infinity\""),
    (
        1114,
        "294276-12-31 23:59:59.999999",
        "\"294276-12-31T23:59:59.999999\"",
    ),
    (
        1184,
        "2024-01-02 03:04:05+00",
        "\"2024-01-02T03:04:05+00:00\"",
    ),
    (
        1184,
        "2024-01-02 03:04:05.123456+00",
        "\"2024-01-02T03:04:05.123456+00:00\"",
    ),
    (1184, "infinity", "\"infinity\""),
    (1184, "-infinity", "\"-infinity\""),
    (
        1184,
        "0044-03-15 12:00:00+00 BC",
        "\"0044-03-15T12:00:00+00:00 BC\"",
    ),
    (1083, "10:00:00.5", "\"10:00:00.5\""),
    (1083, "24:00:00", "\"24:00:00\""),
    (1266, "10:00:00+02", "\"10:00:00+02\""),
    (1266, "10:00:00-03:30:15", "\"10:00:00-03:30:15\""),
    (
        1186,
        "1 year 2 mons 3 days 04:05:06",
        "\"1 year 2 mons 3 days 04:05:06\"",
    ),
    (1186, "-00:00:01.5", "\"-00:00:01.5\""),
    (790, "$1,234.50", "\"$1,234.50\""),
    (869, "192.168.0.1/24", "\"192.168.0.1/24\""),
    (650, "10.0.0.0/8", "\"10.0.0.0/8\""),
    (829, "08:00:2b:01:02:03", "\"08:00:2b:01:02:03\""),
    (600, "(1,2)", "\"(1,2)\""),
    (603, "(3,4),(1,2)", "\"(3,4),(1,2)\""),
    (142, "<a>x</a>", "\"<a>x</a>\""),
    (3614, "'a' 'b'", "\"'a' 'b'\""),
    (1560, "1", "\"1\""),
    (1562, "10", "\"10\""),
    (3904, "[1,3)", "\"[1,3)\""),
    (
        3910,
        "[\"2024-01-01 00:00:00+00\",\"2024-01-02 00:00:00+00\")",
        "\"[\\\"2024-01-01 00:00:00+00\\\",\\\"2024-01-02 00:00:00+00\\\")\"",
    ),
    (
        114,
        "{\"a\": 1,  \"b\":[1,2], \"c\": \"x\"}",
        "{\"a\":1,\"b\":[1,2],\"c\":\"x\"}",
    ),
    (114, "[1, 2.50, null]", "[1,2.50,null]"),
    (114, "\"str\"", "\"str\""),
    (
        3802,
        "{\"a\": 1, \"b\": [1, 2], \"c\": {\"d\": null}}",
        "{\"a\":1,\"b\":[1,2],\"c\":{\"d\":null}}",
    ),
    (3802, "12.50", "12.50"),
    (3802, "null", "null"),
    (1007, "{1,2,NULL}", "[1,2,null]"),
    (1007, "[0:1]={1,2}", "[1,2]"),
    (1007, "{{1,2},{3,4}}", "[[1,2],[3,4]]"),
    (1007, "{}", "[]"),
    (1016, "[1:1][2:3]={{1,2}}", "[[1,2]]"),
    (
        1009,
        "{\"a\\\"b\",NULL,\"NULL\"}",
        "[\"a\\\"b\",null,\"NULL\"]",
    ),
    (1009, "{a,\"b c\",d}", "[\"a\",\"b c\",\"d\"]"),
    (1009, "{\"\",\"\\\"x\"}", "[\"\",\"\\\"x\"]"),
    (
        1009,
        "{\"a,b\",\"{x}\",\"\\\\\"}",
        "[\"a,b\",\"{x}\",\"\\\\\"]",
    ),
    (1231, "{1.50,NaN,0.0}", "[1.50,\"NaN\",0.0]"),
    (
        1022,
        "{1.5,NaN,Infinity,1e+20}",
        "[1.5,\"NaN\",\"Infinity\",100000000000000000000]",
    ),
    (1000, "{t,f,NULL}", "[true,false,null]"),
    (
        1182,
        "{2024-01-02,infinity}",
        "[\"2024-01-02\",\"infinity\"]",
    ),
    (
        1115,
        "{\"2024-01-02 03:04:05\"}",
        "[\"2024-01-02T03:04:05\"]",
    ),
    (
        1185,
        "{\"2024-01-02 03:04:05+00\"}",
        "[\"2024-01-02T03:04:05+00:00\"]",
    ),
    (3807, "{\"{\\\"a\\\": 1}\",NULL}", "[{\"a\":1},null]"),
    (199, "{\"[1, 2]\",\"\\\"s\\\"\"}", "[[1,2],\"s\"]"),
    (
        2951,
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "[\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"]",
    ),
    (1001, "{\"\\\\x7830313032\"}", "[\"\\\\x7830313032\"]"),
    (
        1020,
        "{(3,4),(1,2);(5,6),(1,2)}",
        "[\"(3,4),(1,2)\",\"(5,6),(1,2)\"]",
    ),
    (1017, "{\"(1,2)\"}", "[\"(1,2)\"]"),
    (3905, "{\"[1,3)\"}", "[\"[1,3)\"]"),
    (1015, "{a,b}", "[\"a\",\"b\"]"),
    (1014, "{\"ab  \",c}", "[\"ab  \",\"c\"]"),
    (1187, "{\"1 day\"}", "[\"1 day\"]"),
];

#[test]
fn matches_postgres_15_to_jsonb() -> Result<(), String> {
    let mut failures = Vec::new();
    for &(oid, text, expected) in CASES {
        let ty = builtin(oid).ok_or_else(|| format!("no builtin type for oid {oid}"))?;
        let got = to_json_text(&ty, text);
        if got != expected {
            failures.push(format!(
                "{}({oid}) {text:?}: got {got}, expected {expected}",
                ty.name
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

#[test]
fn every_output_is_valid_json() -> Result<(), String> {
    for &(oid, text, _) in CASES {
        let ty = builtin(oid).ok_or_else(|| format!("no builtin type for oid {oid}"))?;
        let got = to_json_text(&ty, text);
        serde_json::from_str::<&serde_json::value::RawValue>(&got)
            .map_err(|e| format!("{got}: {e}"))?;
    }
    Ok(())
}

fn ty(oid: u32) -> Result<TypeInfo, String> {
    builtin(oid).ok_or_else(|| format!("no builtin type for oid {oid}"))
}

#[test]
fn bytea_is_hex_without_prefix() -> Result<(), String> {
    assert_eq!(to_json_text(&ty(17)?, "\\x0102030405"), "\"0102030405\"");
    assert_eq!(to_json_text(&ty(17)?, "\\x"), "\"\"");
    Ok(())
}

#[test]
fn bytea_domain_and_array_elements_keep_their_text() -> Result<(), String> {
    // realtime.cast special-cases only the `bytea` type itself.
    let domain = TypeInfo {
        oid: 50000,
        name: "blob".into(),
        kind: TypeKind::Domain(Box::new(ty(17)?)),
    };
    assert_eq!(to_json_text(&domain, "\\x01"), "\"\\\\x01\"");
    assert_eq!(
        to_json_text(&ty(1001)?, "{\"\\\\x01\",NULL}"),
        "[\"\\\\x01\",null]"
    );
    Ok(())
}

#[test]
fn timestamptz_offsets() -> Result<(), String> {
    let t = ty(1184)?;
    // Checked with `set timezone=...; select to_jsonb(...)`.
    assert_eq!(
        to_json_text(&t, "2024-01-02 08:34:05+05:30"),
        "\"2024-01-02T08:34:05+05:30\""
    );
    assert_eq!(
        to_json_text(&t, "2024-01-01 23:34:05-03:30"),
        "\"2024-01-01T23:34:05-03:30\""
    );
    assert_eq!(
        to_json_text(&t, "2024-01-01 19:04:05-08"),
        "\"2024-01-01T19:04:05-08:00\""
    );
    assert_eq!(
        to_json_text(&t, "1880-01-02 03:23:37+00:19:32"),
        "\"1880-01-02T03:23:37+00:19:32\""
    );
    assert_eq!(
        to_json_text(&t, "0044-03-15 12:19:32+00:19:32 BC"),
        "\"0044-03-15T12:19:32+00:19:32 BC\""
    );
    Ok(())
}

#[test]
fn enums_domains_and_composites() -> Result<(), String> {
    let mood = TypeInfo {
        oid: 40000,
        name: "mood".into(),
        kind: TypeKind::Enum,
    };
    assert_eq!(to_json_text(&mood, "happy"), "\"happy\"");
    let moods = TypeInfo {
        oid: 40001,
        name: "_mood".into(),
        kind: TypeKind::Array(Box::new(mood)),
    };
    assert_eq!(to_json_text(&moods, "{happy,sad}"), "[\"happy\",\"sad\"]");
    let posint = TypeInfo {
        oid: 40002,
        name: "posint".into(),
        kind: TypeKind::Domain(Box::new(ty(23)?)),
    };
    assert_eq!(to_json_text(&posint, "5"), "5");
    let posints = TypeInfo {
        oid: 40003,
        name: "_posint".into(),
        kind: TypeKind::Array(Box::new(posint.clone())),
    };
    assert_eq!(to_json_text(&posints, "{1,2}"), "[1,2]");
    // A domain over an array type.
    let arr_dom = TypeInfo {
        oid: 40004,
        name: "ints".into(),
        kind: TypeKind::Domain(Box::new(ty(1007)?)),
    };
    assert_eq!(to_json_text(&arr_dom, "{1,2}"), "[1,2]");
    // Deviation: to_jsonb gives {"a": 1, "b": "x"}.
    let comp = TypeInfo {
        oid: 40005,
        name: "comp".into(),
        kind: TypeKind::Composite,
    };
    assert_eq!(to_json_text(&comp, "(1,x)"), "\"(1,x)\"");
    let unknown = TypeInfo {
        oid: 40006,
        name: "whatever".into(),
        kind: TypeKind::Base,
    };
    assert_eq!(to_json_text(&unknown, "a\u{1}b"), "\"a\\u0001b\"");
    Ok(())
}

#[test]
fn malformed_input_degrades_to_json_strings() -> Result<(), String> {
    let cases: &[(u32, &str)] = &[
        (20, "abc"),
        (20, ""),
        (1700, "1e"),
        (1700, "1e99999999999999999999"),
        (701, "--1"),
        (16, "maybe"),
        (3802, "{not json"),
        (114, ""),
        (1007, "{1,2"),
        (1007, "{1,,2}"),
        (1007, "{1,2}x"),
        (1007, "[1:2={1,2}"),
        (1007, "{{{{{{{1}}}}}}}"),
        (1009, "{\"a}"),
        (1009, "{a\\"),
        (1184, "2024-01-02 03:04:05"),
        (1114, "x y"),
    ];
    for &(oid, text) in cases {
        let got = to_json_text(&ty(oid)?, text);
        serde_json::from_str::<&serde_json::value::RawValue>(&got)
            .map_err(|e| format!("{oid} {text:?} -> {got}: {e}"))?;
    }
    assert_eq!(to_json_text(&ty(20)?, "abc"), "\"abc\"");
    Ok(())
}

#[test]
fn builtin_covers_common_types() {
    for (oid, name) in [
        (16, "bool"),
        (20, "int8"),
        (1007, "_int4"),
        (1009, "_text"),
        (3807, "_jsonb"),
        (1185, "_timestamptz"),
        (3904, "int4range"),
        (3905, "_int4range"),
        (2950, "uuid"),
    ] {
        assert_eq!(
            builtin(oid).map(|t| t.name),
            Some(name.to_owned()),
            "oid {oid}"
        );
    }
    assert_eq!(builtin(123_456), None);
}
