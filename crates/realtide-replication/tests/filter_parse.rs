//! The filter grammar, its error texts, Elixir-inspect rendering and subscribe-time validation.

use realtide_replication::filter::{
    Filter, FilterValue, Op, Unsupported, ValidateError, inspect, inspect_string, parse_filters,
    validate,
};
use realtide_replication::value::{TypeInfo, TypeKind, builtin};

fn one(input: &str) -> Result<Filter, String> {
    let mut v = parse_filters(input).map_err(|e| e.to_string())?;
    if v.len() != 1 {
        return Err(format!("{input}: {} filters", v.len()));
    }
    v.pop().ok_or_else(|| "empty".to_owned())
}

fn err(input: &str) -> String {
    match parse_filters(input) {
        Ok(v) => format!("unexpectedly parsed: {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn ty(oid: u32) -> Result<TypeInfo, String> {
    builtin(oid).ok_or_else(|| format!("no builtin {oid}"))
}

#[test]
fn reference_doc_examples() -> Result<(), String> {
    let f = one("subject=eq.hey")?;
    assert_eq!(
        (f.column.as_str(), f.op, f.raw_value.as_str(), f.negate),
        ("subject", Op::Eq, "hey", false)
    );
    let f = one("subject=in.(hidee,ho)")?;
    assert_eq!(f.raw_value, "{hidee,ho}");
    assert_eq!(
        f.value,
        FilterValue::List(vec![Some("hidee".into()), Some("ho".into())])
    );
    let f = one("subject=not.like.hey%")?;
    assert_eq!(
        (f.op, f.raw_value.as_str(), f.negate),
        (Op::Like, "hey%", true)
    );
    let v = parse_filters("id=gt.0,id=lt.100").map_err(|e| e.to_string())?;
    assert_eq!(
        inspect(&v),
        r#"[{"id", "gt", "0", false}, {"id", "lt", "100", false}]"#
    );
    assert_eq!(parse_filters(""), Ok(vec![]));
    assert_eq!(parse_filters("   "), Ok(vec![]));
    Ok(())
}

#[test]
fn error_texts() {
    assert_eq!(
        err("subject=foo.hey"),
        r#"Error parsing `filter` params: ["foo", "hey"]"#
    );
    assert_eq!(
        err("undefined"),
        r#"Error parsing `filter` params: ["undefined"]"#
    );
    assert_eq!(err("wrong"), r#"Error parsing `filter` params: ["wrong"]"#);
    assert_eq!(err("id=eq"), r#"Error parsing `filter` params: ["eq"]"#);
    assert_eq!(err("id=not.eq"), r#"Error parsing `filter` params: ["eq"]"#);
    assert_eq!(
        err("id=not.foo.1"),
        r#"Error parsing `filter` params: ["foo", "1"]"#
    );
    assert_eq!(
        err("id=EQ.1"),
        r#"Error parsing `filter` params: ["EQ", "1"]"#
    );
    assert_eq!(
        err("a = eq.1"),
        r#"Error parsing `filter` params: [" eq", "1"]"#
    );
    assert_eq!(
        err(r#"id=x"y.1"#),
        r#"Error parsing `filter` params: ["x\"y", "1"]"#
    );
    assert_eq!(
        err("id=in.1,2"),
        "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
    );
    assert_eq!(
        err("id=in.(1,2"),
        "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
    );
    assert_eq!(
        err("id=eq.1,,id=eq.2"),
        "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
    );
    assert_eq!(
        err("id=eq.1,"),
        "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
    );
    // The first error wins.
    assert_eq!(
        err("wrong,id=in.1"),
        r#"Error parsing `filter` params: ["wrong"]"#
    );
}

#[test]
fn commas_quotes_and_parentheses() -> Result<(), String> {
    let v = parse_filters(r#"nombre=eq."a,b",id=in.(1,2)"#).map_err(|e| e.to_string())?;
    assert_eq!(
        inspect(&v),
        r#"[{"nombre", "eq", "a,b", false}, {"id", "in", "{1,2}", false}]"#
    );
    // Escapes inside quotes.
    let f = one(r#"c=eq."a\"b\\c""#)?;
    assert_eq!(f.raw_value, r#"a"b\c"#);
    // A quote that does not close at the end keeps the value as written.
    let f = one(r#"c=eq."ab"c"#)?;
    assert_eq!(f.raw_value, r#""ab"c"#);
    let f = one(r#"c=eq."ab"#)?;
    assert_eq!(f.raw_value, r#""ab"#);
    // A quote not right after `.`, `(` or `,` does not start quoting, so the comma splits.
    assert_eq!(
        err(r#"c=eq.a"b,c",d=eq.1"#),
        r#"Error parsing `filter` params: ["c\""]"#
    );
    // Parentheses protect commas outside `in` too.
    let f = one("c=eq.(a,b)")?;
    assert_eq!(f.raw_value, "(a,b)");
    // Values may contain `=` and `.`.
    let f = one("c=eq.a=b.c")?;
    assert_eq!(f.raw_value, "a=b.c");
    // Quoted elements inside `in`.
    let f = one(r#"c=in.("a,b",NULL,"NULL", x )"#)?;
    assert_eq!(
        f.value,
        FilterValue::List(vec![
            Some("a,b".into()),
            None,
            Some("NULL".into()),
            Some("x".into())
        ])
    );
    assert_eq!(f.raw_value, r#"{"a,b",NULL,"NULL", x }"#);
    // Whitespace around segments.
    let v = parse_filters(" a=eq.1 , b=not.neq.2 ").map_err(|e| e.to_string())?;
    assert_eq!(
        inspect(&v),
        r#"[{"a", "eq", "1", false}, {"b", "neq", "2", true}]"#
    );
    Ok(())
}

#[test]
fn every_operator_parses() -> Result<(), String> {
    for (name, op) in [
        ("eq", Op::Eq),
        ("neq", Op::Neq),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
        ("like", Op::Like),
        ("ilike", Op::Ilike),
        ("is", Op::Is),
        ("match", Op::Match),
        ("imatch", Op::Imatch),
        ("isdistinct", Op::IsDistinct),
    ] {
        assert_eq!(one(&format!("c={name}.x"))?.op, op);
        assert!(one(&format!("c=not.{name}.x"))?.negate);
        assert_eq!(op.as_str(), name);
    }
    Ok(())
}

#[test]
fn elixir_inspect() {
    assert_eq!(inspect(&[]), "[]");
    assert_eq!(inspect_string("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(inspect_string("a\nb\tc"), r#""a\nb\tc""#);
    assert_eq!(inspect_string("#{x}"), r#""\#{x}""#);
    assert_eq!(inspect_string("é"), "\"é\"");
    assert_eq!(inspect_string("a\u{1}"), "<<97, 1>>");
}

fn validation_error(filter: &str, oid: u32) -> Result<String, String> {
    let f = one(filter)?;
    match validate(&f, &ty(oid)?) {
        Ok(_) => Err(format!("{filter} on {oid} unexpectedly valid")),
        Err(e) => Ok(e.to_string()),
    }
}

#[test]
fn validation_errors_follow_the_reference() -> Result<(), String> {
    assert_eq!(
        validation_error("id=eq.abc", 20)?,
        r#"ERROR 22P02 (invalid_text_representation) invalid input syntax for type bigint: "abc""#
    );
    assert_eq!(
        validation_error("id=eq.99999999999", 23)?,
        r#"ERROR 22003 (numeric_value_out_of_range) value "99999999999" is out of range for type integer"#
    );
    assert_eq!(
        validation_error("id=in.(1,abc)", 23)?,
        r#"ERROR 22P02 (invalid_text_representation) invalid input syntax for type integer: "abc""#
    );
    let many = (0..101)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        validation_error(&format!("id=in.({many})"), 20)?,
        "ERROR P0001 (raise_exception) too many values for `in` filter. Maximum 100"
    );
    let hundred = (0..100)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    validate(&one(&format!("id=in.({hundred})"))?, &ty(20)?).map_err(|e| e.to_string())?;
    assert_eq!(
        validation_error("id=is.nothing", 20)?,
        "ERROR P0001 (raise_exception) invalid value for is filter: must be null, true, false, or unknown"
    );
    assert_eq!(
        validation_error("id=is.NULL", 20)?,
        "ERROR P0001 (raise_exception) invalid value for is filter: must be null, true, false, or unknown"
    );
    assert_eq!(
        validation_error("id=is.true", 20)?,
        "ERROR P0001 (raise_exception) is true filter requires a boolean column, got bigint"
    );
    assert_eq!(
        validation_error("id=like.1%", 23)?,
        r#"ERROR P0001 (raise_exception) operator like is not supported on column id of type integer: invalid input syntax for type integer: "1%""#
    );
    assert_eq!(
        validation_error("id=like.1", 23)?,
        "ERROR P0001 (raise_exception) operator like is not supported on column id of type integer: operator does not exist: integer ~~ integer"
    );
    assert_eq!(
        validation_error(r"t=like.ab\", 25)?,
        "ERROR P0001 (raise_exception) operator like is not supported on column t of type text: LIKE pattern must not end with escape character"
    );
    assert!(validation_error("t=match.(ab", 25)?.starts_with(
        "ERROR P0001 (raise_exception) invalid regular expression for match filter: invalid regular expression: "
    ));
    assert!(validation_error("j=eq.{}", 114)?.contains("operator does not exist: json = json"));
    assert_eq!(
        validation_error("d=eq.2024-02-30", 1082)?,
        r#"ERROR 22008 (datetime_field_overflow) date/time field value out of range: "2024-02-30""#
    );
    assert_eq!(
        validation_error("d=eq.tomorrowish", 1184)?,
        r#"ERROR 22007 (invalid_datetime_format) invalid input syntax for type timestamp with time zone: "tomorrowish""#
    );
    assert_eq!(
        validation_error("u=eq.nope", 2950)?,
        r#"ERROR 22P02 (invalid_text_representation) invalid input syntax for type uuid: "nope""#
    );
    assert_eq!(
        validation_error("b=eq.maybe", 16)?,
        r#"ERROR 22P02 (invalid_text_representation) invalid input syntax for type boolean: "maybe""#
    );
    assert_eq!(
        validation_error("n=eq.1.2.3", 1700)?,
        r#"ERROR 22P02 (invalid_text_representation) invalid input syntax for type numeric: "1.2.3""#
    );
    assert_eq!(
        validation_error(r#"c=in.(1,"2)"#, 23)?,
        r#"ERROR 22P02 (invalid_text_representation) malformed array literal: "{1,"2}""#
    );
    Ok(())
}

#[test]
fn validation_errors_are_typed() -> Result<(), String> {
    let error = |filter: &str, oid: u32| -> Result<ValidateError, String> {
        match validate(&one(filter)?, &ty(oid)?) {
            Ok(_) => Err(format!("{filter} on {oid} unexpectedly valid")),
            Err(e) => Ok(e),
        }
    };
    let value = error("id=eq.abc", 20)?;
    assert!(
        matches!(&value, ValidateError::Value(e) if e.sqlstate() == "22P02"),
        "{value:?}"
    );
    assert!(matches!(
        error(r#"id=in.(1,"2)"#, 20)?,
        ValidateError::MalformedList(_)
    ));
    assert!(matches!(
        error("id=is.false", 20)?,
        ValidateError::IsNeedsBoolean { .. }
    ));
    // The regex engine's error is kept as the source; the text shows its last line.
    let regex = error("t=imatch.(ab", 25)?;
    assert!(matches!(
        regex,
        ValidateError::InvalidRegex { op: Op::Imatch, .. }
    ));
    let source = std::error::Error::source(&regex).map(ToString::to_string);
    let shown = regex.to_string();
    assert!(source.is_some_and(|s| s.lines().last().is_some_and(|l| shown.ends_with(l.trim()))));
    // The reasons no other test spells out.
    let distinct = error("j=isdistinct.{}", 114)?;
    assert!(matches!(
        &distinct,
        ValidateError::Unsupported {
            reason: Unsupported::NoEquality(_),
            ..
        }
    ));
    assert_eq!(
        distinct.to_string(),
        "ERROR P0001 (raise_exception) operator isdistinct is not supported on column j of type json: could not identify an equality operator for type json"
    );
    assert_eq!(
        error("j=gt.{}", 3802)?.to_string(),
        "ERROR P0001 (raise_exception) operator gt is not supported on column j of type jsonb: realtide does not implement ordering for type jsonb"
    );
    assert_eq!(
        error(r"b=like.\x4g", 17)?.to_string(),
        r#"ERROR P0001 (raise_exception) operator like is not supported on column b of type bytea: invalid hexadecimal digit: "g""#
    );
    Ok(())
}

#[test]
fn enums_compare_by_label_and_reject_ordering() -> Result<(), String> {
    let mood = TypeInfo {
        oid: 40000,
        name: "mood".into(),
        kind: TypeKind::Enum,
    };
    let f = validate(&one("m=eq.happy")?, &mood).map_err(|e| e.to_string())?;
    assert!(f.matches(Some("happy")));
    assert!(!f.matches(Some("sad")));
    let f = validate(&one("m=in.(sad,happy)")?, &mood).map_err(|e| e.to_string())?;
    assert!(f.matches(Some("happy")));
    assert!(validate(&one("m=lt.happy")?, &mood).is_err());
    // A domain over int8 compares as int8.
    let dom = TypeInfo {
        oid: 40001,
        name: "posint".into(),
        kind: TypeKind::Domain(Box::new(ty(20)?)),
    };
    let f = validate(&one("p=gt.9")?, &dom).map_err(|e| e.to_string())?;
    assert!(f.matches(Some("10")));
    Ok(())
}

#[test]
fn never_panics_on_odd_input() {
    let inputs = [
        "",
        ",",
        "=",
        "=.",
        "a=",
        "a=.",
        "a=not.",
        "a=not..",
        "a=in.",
        "a=in.(",
        "a=in.)",
        "a=in.()",
        "\"",
        "a=eq.\"",
        "a=eq.\\",
        "a=eq.\"\\",
        "((((",
        "))))",
        "a=eq.(((,b=eq.1",
        "a=eq.\"\"\"",
        "é=eq.ü",
        "a=in.({{{{{{{{1}}}}}}}})",
        "a=in.(\"\\)",
        "a=like.%%%%_\\",
        "a=match.[",
        "a=is.",
        "\u{0}=eq.\u{0}",
    ];
    let types: Vec<TypeInfo> = [
        16, 17, 20, 23, 25, 114, 700, 701, 1042, 1082, 1083, 1114, 1184, 1266, 1700, 2950, 3802,
        1007,
    ]
    .iter()
    .filter_map(|&o| builtin(o))
    .collect();
    let values = [
        None,
        Some(""),
        Some("x"),
        Some("\\x"),
        Some("\\xzz"),
        Some("null"),
        Some("99999999999999999999999"),
        Some("2024-13-45 99:99:99+99"),
        Some("{1,2}"),
        Some("NaN"),
    ];
    for input in inputs {
        if let Ok(filters) = parse_filters(input) {
            let _ = inspect(&filters);
            for f in &filters {
                for t in &types {
                    if let Ok(c) = validate(f, t) {
                        for v in values {
                            let _ = c.matches(v);
                        }
                    }
                }
            }
        }
    }
}
