//! The `postgres_changes` filter grammar and its evaluation against a row.
//!
//! Parsing follows the reference's `Subscriptions.parse_subscription_params/1` byte for byte:
//!
//! * `<column>=<op>.<value>` or `<column>=not.<op>.<value>`; several filters joined by top-level
//!   commas (AND). Commas inside `(…)` or inside a double-quoted value (a `"` right after `.`,
//!   `(` or `,`) do not split.
//! * `in` values must be `(a,b,…)` and become the array literal `{a,b,…}`; other values may be
//!   double-quoted with backslash escapes (`"a,b"` → `a,b`); a quote that does not close at the
//!   very end leaves the value as written.
//! * An empty or whitespace-only filter is no filter.
//! * Errors (their [`Display`](std::fmt::Display) is the reference's `system` message text):
//!   ``Error parsing `filter` params: ["wrong"]``, ``Error parsing `filter` params: ["foo", "hey"]``,
//!   ``Error parsing `filter` params: `in` filter value must be wrapped by parentheses``,
//!   ``Error parsing `filter` params: filter must not contain empty segments (check for extra commas)``.
//!
//! [`validate`] reproduces the reference's subscribe-time trigger (`subscription_check_filters`)
//! for one filter and a column type, and [`CompiledFilter::matches`] its per-change check
//! (`check_equality_op`): both sides are read as the column type and compared as PostgreSQL
//! would; a filter passes only when the SQL result is TRUE (a NULL column value fails every
//! comparison, negated or not, except `is` and `isdistinct`).
//!
//! Known differences from PostgreSQL:
//! * text is compared byte-wise, which is PostgreSQL's `C` collation; a database whose default
//!   collation is a linguistic one (`en_US.UTF-8`, ICU) may order `lt`/`gt` differently for
//!   non-ASCII or mixed-case text (equality is the same). `ilike`/`imatch` fold case with Unicode
//!   simple lowercasing (`C` would fold ASCII only);
//! * `match`/`imatch` use the `regex` crate: no back-references or look-around (rejected at
//!   validation), and Unicode-aware classes; PostgreSQL's ARE syntax is otherwise close;
//! * date/time filter values are read in ISO 8601 forms (`2024-01-02`, `2024-01-02 03:04:05.678`,
//!   `2024-01-02T03:04:05Z`, offsets `+05`, `+05:30`, `+0530`, `BC`, `infinity`, `epoch`);
//!   PostgreSQL's other input styles (`Jan 2 2024`, named zones) are rejected; a `timestamptz`
//!   value without an offset is read as UTC (the reference's session time zone);
//! * `json` has no equality in PostgreSQL and `jsonb` ordering is PostgreSQL-specific: comparison
//!   operators on `json`, and `lt`/`lte`/`gt`/`gte` on `jsonb`, are rejected at validation;
//!   `jsonb` equality is structural (numbers compared as numbers, up to f64 precision);
//! * types without a dedicated comparison here (enums, `interval`, `inet`, `money`, ranges,
//!   arrays, composites, …) support `eq`/`neq`/`in`/`isdistinct` by comparing the canonical
//!   output text, and reject the ordering and pattern operators;
//! * like the reference, a `bpchar` column is compared as `character` = `char(1)` (the reference
//!   casts both sides to `type_::text`, which drops the length), and a `bytea` column is compared
//!   through its hex text without `\x` (the reference reads the column back from its JSON value).

use std::cmp::Ordering;
use std::fmt;

use crate::value::{self, ArrayElem, NumericValue, TypeInfo, TypeKind};

/// The `realtime.equality_op` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `= any(<type>[])`
    In,
    /// `LIKE`
    Like,
    /// `ILIKE`
    Ilike,
    /// `IS NULL / TRUE / FALSE / UNKNOWN`
    Is,
    /// `~`
    Match,
    /// `~*`
    Imatch,
    /// `IS DISTINCT FROM`
    IsDistinct,
}

impl Op {
    /// The operator's name in the filter grammar (`eq`, `isdistinct`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }

    /// The operator for a grammar name (case-sensitive, as in the reference).
    pub fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "is" => Op::Is,
            "match" => Op::Match,
            "imatch" => Op::Imatch,
            "isdistinct" => Op::IsDistinct,
            _ => return None,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    /// The column name as written (not trimmed inside the segment, as in the reference).
    pub column: String,
    /// The operator.
    pub op: Op,
    /// The value: the unquoted scalar, or the elements of an `in` list (`None` = an unquoted
    /// `NULL` element). A malformed `in` list parses to an empty list here and is reported by
    /// [`validate`] (the reference also only fails when it casts the list).
    pub value: FilterValue,
    /// The `not.` prefix.
    pub negate: bool,
    /// The value as the reference stores and prints it: the unquoted scalar, or `{a,b}` for `in`.
    pub raw_value: String,
}

/// A filter's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterValue {
    /// Every operator but `in`.
    Scalar(String),
    /// `in`: the list's top-level elements (`None` = `NULL`).
    List(Vec<Option<String>>),
}

/// A filter parse error. `Display` gives the reference's `system` message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Unparsable segment or unknown operator: the parts, printed with Elixir's `inspect`
    /// (`["wrong"]`, `["foo", "hey"]`).
    #[error("Error parsing `filter` params: {}", inspect_strings(.0))]
    Unparsable(Vec<String>),
    /// `in` value not wrapped in parentheses.
    #[error("Error parsing `filter` params: `in` filter value must be wrapped by parentheses")]
    InNotParenthesized,
    /// An empty segment (`a=eq.1,,b=eq.2`).
    #[error(
        "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
    )]
    EmptySegment,
}

/// Parse a `filter` parameter. An empty or whitespace-only filter gives no filters.
pub fn parse_filters(input: &str) -> Result<Vec<Filter>, FilterError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(trimmed)
        .into_iter()
        .map(parse_segment)
        .collect()
}

/// The reference's `split_top_level/6`.
fn split_top_level(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut depth: usize = 0;
    let mut quoted = false;
    let mut prev: u8 = 0;
    let mut start = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if quoted {
            if b == b'\\' && i + 1 < bytes.len() {
                prev = bytes.get(i + 1).copied().unwrap_or(0);
                i += 2;
                continue;
            }
            if b == b'"' {
                quoted = false;
            }
            prev = b;
            i += 1;
            continue;
        }
        match b {
            b'"' if matches!(prev, b'.' | b'(' | b',') => quoted = true,
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                out.push(s.get(start..i).unwrap_or(""));
                start = i + 1;
                prev = 0;
                i += 1;
                continue;
            }
            _ => {}
        }
        prev = b;
        i += 1;
    }
    out.push(s.get(start..).unwrap_or(""));
    out
}

fn parse_segment(segment: &str) -> Result<Filter, FilterError> {
    let trimmed = segment.trim();
    if trimmed.is_empty() {
        return Err(FilterError::EmptySegment);
    }
    let Some((column, rest)) = trimmed.split_once('=') else {
        return Err(FilterError::Unparsable(vec![trimmed.to_owned()]));
    };
    let (negate, op_value) = match rest.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let Some((op_name, value)) = op_value.split_once('.') else {
        return Err(FilterError::Unparsable(vec![op_value.to_owned()]));
    };
    let Some(op) = Op::parse(op_name) else {
        return Err(FilterError::Unparsable(vec![
            op_name.to_owned(),
            value.to_owned(),
        ]));
    };
    if op == Op::In {
        let inner = value
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or(FilterError::InNotParenthesized)?;
        let raw_value = format!("{{{inner}}}");
        let list = value::parse_array(&raw_value, b',')
            .map(|items| flatten(&items))
            .unwrap_or_default();
        return Ok(Filter {
            column: column.to_owned(),
            op,
            value: FilterValue::List(list),
            negate,
            raw_value,
        });
    }
    let raw_value = unquote_value(value);
    Ok(Filter {
        column: column.to_owned(),
        op,
        value: FilterValue::Scalar(raw_value.clone()),
        negate,
        raw_value,
    })
}

fn flatten(items: &[ArrayElem]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for item in items {
        match item {
            ArrayElem::Null => out.push(None),
            ArrayElem::Value(v) => out.push(Some(v.clone())),
            ArrayElem::Array(inner) => out.extend(flatten(inner)),
        }
    }
    out
}

/// The reference's `unquote_value/1`: `"…"` with backslash escapes, or the value as written when
/// the quote does not close exactly at the end.
fn unquote_value(value: &str) -> String {
    let Some(rest) = value.strip_prefix('"') else {
        return value.to_owned();
    };
    let bytes = rest.as_bytes();
    let mut acc: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                if i + 1 == bytes.len() {
                    return String::from_utf8(acc).unwrap_or_else(|_| value.to_owned());
                }
                return value.to_owned();
            }
            b'\\' if i + 1 < bytes.len() => {
                if let Some(&n) = bytes.get(i + 1) {
                    acc.push(n);
                }
                i += 2;
            }
            _ => {
                acc.push(b);
                i += 1;
            }
        }
    }
    value.to_owned()
}

// ---------------------------------------------------------------------------------------------
// Elixir inspect

/// Elixir `inspect` of a filter list, as the reference prints it in its `system` messages:
/// `[{"notacolumn", "eq", "123", false}]` (`in` values print as `{a,b}`).
pub fn inspect(filters: &[Filter]) -> String {
    let mut out = String::from("[");
    for (i, f) in filters.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('{');
        out.push_str(&inspect_string(&f.column));
        out.push_str(", ");
        out.push_str(&inspect_string(f.op.as_str()));
        out.push_str(", ");
        out.push_str(&inspect_string(&f.raw_value));
        out.push_str(if f.negate { ", true}" } else { ", false}" });
    }
    out.push(']');
    out
}

/// Elixir `inspect` of a list of strings: `["foo", "hey"]`.
pub fn inspect_strings(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| inspect_string(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Elixir's default `printable_limit` for binaries.
const PRINTABLE_LIMIT: usize = 4096;

/// Elixir `inspect` of a binary: `"text"` with Elixir escapes when it is printable, otherwise
/// `<<1, 2, …>>`.
pub fn inspect_string(s: &str) -> String {
    let printable = s.chars().all(|c| {
        matches!(c, '\n' | '\r' | '\t' | '\u{b}' | '\u{8}' | '\u{c}' | '\u{1b}' | '\u{7}' | '\u{7f}')
            || matches!(u32::from(c), 0x20..=0x7E | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
    });
    if !printable {
        let mut out = String::from("<<");
        for (i, b) in s.bytes().enumerate() {
            if i == 50 {
                out.push_str(", ...");
                break;
            }
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&b.to_string());
        }
        out.push_str(">>");
        return out;
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut count = 0usize;
    let mut chars = s.chars().peekable();
    let mut truncated = false;
    while let Some(c) = chars.next() {
        if count >= PRINTABLE_LIMIT {
            truncated = true;
            break;
        }
        count += 1;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{1b}' => out.push_str("\\e"),
            '\u{7}' => out.push_str("\\a"),
            '\u{7f}' => out.push_str("\\d"),
            '#' if chars.peek() == Some(&'{') => out.push_str("\\#"),
            _ => out.push(c),
        }
    }
    out.push('"');
    if truncated {
        out.push_str(" <> ...");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Errors in the form the reference's Postgrex exceptions print

/// A PostgreSQL error raised while reading a filter value as its column's type. `Display` is
/// `ERROR <sqlstate> (<condition>) <message>`, as `Exception.message/1` prints a Postgrex error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ERROR {code} ({condition}) {message}")]
pub struct ValueError {
    code: &'static str,
    condition: &'static str,
    message: String,
}

impl ValueError {
    fn syntax(type_name: &str, text: &str) -> ValueError {
        ValueError {
            code: "22P02",
            condition: "invalid_text_representation",
            message: format!("invalid input syntax for type {type_name}: \"{text}\""),
        }
    }
    fn datetime_syntax(type_name: &str, text: &str) -> ValueError {
        ValueError {
            code: "22007",
            condition: "invalid_datetime_format",
            message: format!("invalid input syntax for type {type_name}: \"{text}\""),
        }
    }
    fn datetime_range(text: &str) -> ValueError {
        ValueError {
            code: "22008",
            condition: "datetime_field_overflow",
            message: format!("date/time field value out of range: \"{text}\""),
        }
    }
    fn out_of_range(message: String) -> ValueError {
        ValueError {
            code: "22003",
            condition: "numeric_value_out_of_range",
            message,
        }
    }

    /// The SQLSTATE code (`22P02`, ...).
    pub fn sqlstate(&self) -> &'static str {
        self.code
    }

    /// The message alone, without code and condition.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why [`validate`] refused a filter. `Display` is the text the reference puts after
/// `Exception: ` in its `system` message: Postgrex's rendering of the error its
/// `subscription_check_filters` trigger raises.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidateError {
    /// The value, or an `in` element, is not a value of the column's type.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// An `in` list that is not an array literal.
    #[error("ERROR 22P02 (invalid_text_representation) malformed array literal: \"{0}\"")]
    MalformedList(String),
    /// An `in` list of more than 100 values.
    #[error("ERROR P0001 (raise_exception) too many values for `in` filter. Maximum 100")]
    TooManyValues,
    /// `is.true`, `is.false` or `is.unknown` on a column that is not boolean.
    #[error(
        "ERROR P0001 (raise_exception) is {value} filter requires a boolean column, got {type_name}"
    )]
    IsNeedsBoolean {
        /// `true`, `false` or `unknown`.
        value: String,
        /// The column's type.
        type_name: String,
    },
    /// `is` with anything but `null`, `true`, `false` or `unknown`.
    #[error(
        "ERROR P0001 (raise_exception) invalid value for is filter: must be null, true, false, or unknown"
    )]
    InvalidIsValue,
    /// A `match`/`imatch` pattern the regex engine refuses (its last line is shown).
    #[error(
        "ERROR P0001 (raise_exception) invalid regular expression for {op} filter: invalid regular expression: {}",
        last_line(source)
    )]
    InvalidRegex {
        /// `match` or `imatch`.
        op: Op,
        /// The regex engine's error.
        #[source]
        source: regex::Error,
    },
    /// An operator the column's type has no meaning for.
    #[error(
        "ERROR P0001 (raise_exception) operator {op} is not supported on column {column} of type {type_name}: {reason}"
    )]
    Unsupported {
        /// The filter's operator.
        op: Op,
        /// The filter's column.
        column: String,
        /// The column's type.
        type_name: String,
        /// Why.
        reason: Unsupported,
    },
}

/// Why an operator is not supported on a column; `Display` is the reason's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// PostgreSQL has no such operator for the type.
    #[error("operator does not exist: {type_name} {symbol} {type_name}")]
    NoOperator {
        /// The operand type.
        type_name: String,
        /// `=`, `~~`, ...
        symbol: &'static str,
    },
    /// A `like` pattern ending in a lone `\`.
    #[error("LIKE pattern must not end with escape character")]
    LikeEndsWithEscape,
    /// The value does not read as the column's type (the message alone).
    #[error("{}", .0.message)]
    Value(#[source] ValueError),
    /// `isdistinct` on `json`.
    #[error("could not identify an equality operator for type {0}")]
    NoEquality(String),
    /// Ordering operators on a type without an implemented ordering.
    #[error("realtide does not implement ordering for type {0}")]
    NoOrdering(String),
}

/// The last line of a regex error, trimmed: the reason without the echoed pattern.
fn last_line(error: &regex::Error) -> String {
    error
        .to_string()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Typed values

/// How values of a column type are read and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeCategory {
    Int(u8),
    Float4,
    Float8,
    Numeric,
    Bool,
    Text,
    /// `bpchar` cast to `character` (= `char(1)`), as the reference's cast does.
    Char1,
    /// `bpchar` through a domain: blank-padded comparison without the truncation.
    Bpchar,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
    Time,
    Timetz,
    Jsonb,
    Json,
    Bytea,
    Other,
}

fn category_of(ty: &TypeInfo) -> TypeCategory {
    let top_is_bpchar = matches!(ty.kind, TypeKind::Base) && value::base_name(ty) == "bpchar";
    let r = ty.resolved();
    if !matches!(r.kind, TypeKind::Base) {
        return TypeCategory::Other;
    }
    match value::base_name(r) {
        "int2" => TypeCategory::Int(16),
        "int4" => TypeCategory::Int(32),
        "int8" => TypeCategory::Int(64),
        "float4" => TypeCategory::Float4,
        "float8" => TypeCategory::Float8,
        "numeric" => TypeCategory::Numeric,
        "bool" => TypeCategory::Bool,
        "text" | "varchar" | "name" | "char" | "citext" => TypeCategory::Text,
        "bpchar" if top_is_bpchar => TypeCategory::Char1,
        "bpchar" => TypeCategory::Bpchar,
        "uuid" => TypeCategory::Uuid,
        "date" => TypeCategory::Date,
        "timestamp" => TypeCategory::Timestamp,
        "timestamptz" => TypeCategory::Timestamptz,
        "time" => TypeCategory::Time,
        "timetz" => TypeCategory::Timetz,
        "jsonb" => TypeCategory::Jsonb,
        "json" => TypeCategory::Json,
        "bytea" => TypeCategory::Bytea,
        _ => TypeCategory::Other,
    }
}

/// The type's name as `regtype::text` prints it (used in PostgreSQL's messages).
fn regtype_name(ty: &TypeInfo) -> String {
    if let TypeKind::Array(el) = &ty.kind {
        return format!("{}[]", regtype_name(el));
    }
    let name = value::base_name(ty);
    match name {
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "bool" => "boolean",
        "varchar" => "character varying",
        "bpchar" => "character",
        "char" => "\"char\"",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        "time" => "time without time zone",
        "timetz" => "time with time zone",
        "bit" => "bit",
        "varbit" => "bit varying",
        other => other,
    }
    .to_owned()
}

#[derive(Debug, Clone)]
enum Comparable {
    Int(i64),
    Float(f64),
    Num(NumericValue),
    Bool(bool),
    Bytes(Vec<u8>),
    Uuid([u8; 16]),
    /// Dates, timestamps (microseconds), times: one ordered integer.
    Ts(i128),
    /// `timetz`: (time minus offset, in microseconds; offset in seconds east).
    Timetz(i128, i32),
    Json(serde_json::Value),
}

/// Read `text` as a value of the category `cat` (the cast `'<text>'::<type>`).
fn read(cat: TypeCategory, type_name: &str, text: &str) -> Result<Comparable, ValueError> {
    match cat {
        TypeCategory::Int(bits) => read_int(bits, type_name, text).map(Comparable::Int),
        TypeCategory::Float4 => read_float(type_name, text, true).map(Comparable::Float),
        TypeCategory::Float8 => read_float(type_name, text, false).map(Comparable::Float),
        TypeCategory::Numeric => value::parse_numeric(text)
            .map(Comparable::Num)
            .ok_or_else(|| ValueError::syntax("numeric", text)),
        TypeCategory::Bool => read_bool(text)
            .map(Comparable::Bool)
            .ok_or_else(|| ValueError::syntax("boolean", text)),
        TypeCategory::Text | TypeCategory::Other => Ok(Comparable::Bytes(text.as_bytes().to_vec())),
        TypeCategory::Char1 => {
            let first: String = text.chars().take(1).collect();
            Ok(Comparable::Bytes(
                first.trim_end_matches(' ').as_bytes().to_vec(),
            ))
        }
        TypeCategory::Bpchar => Ok(Comparable::Bytes(
            text.trim_end_matches(' ').as_bytes().to_vec(),
        )),
        TypeCategory::Uuid => read_uuid(text)
            .map(Comparable::Uuid)
            .ok_or_else(|| ValueError::syntax("uuid", text)),
        TypeCategory::Date => read_datetime(text, DateTimeKind::Date).map(Comparable::Ts),
        TypeCategory::Timestamp => read_datetime(text, DateTimeKind::Timestamp).map(Comparable::Ts),
        TypeCategory::Timestamptz => {
            read_datetime(text, DateTimeKind::Timestamptz).map(Comparable::Ts)
        }
        TypeCategory::Time => read_time(text, false).map(|(t, _)| Comparable::Ts(t)),
        TypeCategory::Timetz => read_time(text, true)
            .map(|(t, off)| Comparable::Timetz(t - i128::from(off) * 1_000_000, off)),
        TypeCategory::Jsonb | TypeCategory::Json => serde_json::from_str::<serde_json::Value>(text)
            .map(Comparable::Json)
            .map_err(|_| {
                ValueError::syntax(
                    if cat == TypeCategory::Json {
                        "json"
                    } else {
                        "jsonb"
                    },
                    text,
                )
            }),
        TypeCategory::Bytea => read_bytea(text).map(Comparable::Bytes),
    }
}

/// The column's raw pgoutput text as the reference sees it: it reads the column back from its
/// `to_jsonb` value (`value #>> '{}'`), which changes `bytea` (hex without `\x`) and turns a
/// JSON `null` in a json/jsonb column into SQL NULL.
fn read_column(cat: TypeCategory, type_name: &str, text: &str) -> Option<Comparable> {
    match cat {
        TypeCategory::Bytea => {
            let hex = text.strip_prefix("\\x").unwrap_or(text);
            read_bytea(hex).ok().map(Comparable::Bytes)
        }
        TypeCategory::Json | TypeCategory::Jsonb => match read(cat, type_name, text) {
            Ok(Comparable::Json(serde_json::Value::Null)) => None,
            other => other.ok(),
        },
        _ => read(cat, type_name, text).ok(),
    }
}

fn read_int(bits: u8, type_name: &str, text: &str) -> Result<i64, ValueError> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, t.get(1..).unwrap_or("")),
        Some(b'+') => (false, t.get(1..).unwrap_or("")),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::syntax(type_name, text));
    }
    let range_err = || {
        ValueError::out_of_range(format!(
            "value \"{text}\" is out of range for type {type_name}"
        ))
    };
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v * 10 + i128::from(b - b'0');
        if v > (1i128 << 64) {
            return Err(range_err());
        }
    }
    if neg {
        v = -v;
    }
    let (min, max) = match bits {
        16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    };
    if v < min || v > max {
        return Err(range_err());
    }
    i64::try_from(v).map_err(|_| range_err())
}

fn read_float(type_name: &str, text: &str, single: bool) -> Result<f64, ValueError> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let lower = t.to_ascii_lowercase();
    let is_inf_word = lower.trim_start_matches(['+', '-']).starts_with("inf");
    if t.is_empty() || lower.contains('_') || lower.starts_with("0x") {
        return Err(ValueError::syntax(type_name, text));
    }
    let v = if single {
        t.parse::<f32>().map(f64::from)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| ValueError::syntax(type_name, text))?;
    if v.is_infinite() && !is_inf_word {
        return Err(ValueError::out_of_range(format!(
            "\"{t}\" is out of range for type {type_name}"
        )));
    }
    Ok(v)
}

/// `parse_bool_with_len`.
fn read_bool(text: &str) -> Option<bool> {
    let t = text
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

/// `string_to_uuid`: 32 hex digits, optional braces, a hyphen allowed after every four digits.
fn read_uuid(text: &str) -> Option<[u8; 16]> {
    let inner = match text.strip_prefix('{') {
        Some(r) => r.strip_suffix('}')?,
        None => text,
    };
    let bytes = inner.as_bytes();
    let mut out = [0u8; 16];
    let mut pos = 0usize;
    for (i, slot) in out.iter_mut().enumerate() {
        let hi = hex_val(*bytes.get(pos)?)?;
        let lo = hex_val(*bytes.get(pos + 1)?)?;
        *slot = hi << 4 | lo;
        pos += 2;
        if i % 2 == 1 && i < 15 && bytes.get(pos) == Some(&b'-') {
            pos += 1;
        }
    }
    (pos == bytes.len()).then_some(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `byteain`: `\x` hex, or the escape format (`\\`, `\nnn`).
fn read_bytea(text: &str) -> Result<Vec<u8>, ValueError> {
    let bytes = text.as_bytes();
    if let Some(hex) = text.strip_prefix("\\x") {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut it = hex.bytes().filter(|b| !b.is_ascii_whitespace());
        while let Some(h) = it.next() {
            let bad = |c: u8| ValueError {
                code: "22023",
                condition: "invalid_parameter_value",
                message: format!("invalid hexadecimal digit: \"{}\"", char::from(c)),
            };
            let hi = hex_val(h).ok_or_else(|| bad(h))?;
            let l = it.next().ok_or(ValueError {
                code: "22023",
                condition: "invalid_parameter_value",
                message: "invalid hexadecimal data: odd number of digits".to_owned(),
            })?;
            let lo = hex_val(l).ok_or_else(|| bad(l))?;
            out.push(hi << 4 | lo);
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
            continue;
        }
        let oct = |k: usize| {
            bytes
                .get(i + k)
                .filter(|c| (b'0'..=b'7').contains(c))
                .map(|c| c - b'0')
        };
        match (oct(1), oct(2), oct(3)) {
            (Some(a), Some(b2), Some(c)) if a <= 3 => {
                out.push(a << 6 | b2 << 3 | c);
                i += 4;
            }
            _ => return Err(ValueError::syntax("bytea", text)),
        }
    }
    Ok(out)
}

// Dates and times ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateTimeKind {
    Date,
    Timestamp,
    Timestamptz,
}

const USECS_PER_DAY: i128 = 86_400_000_000;
/// Julian day of 1970-01-01.
const UNIX_EPOCH_JDATE: i128 = 2_440_588;

/// PostgreSQL's `date2j` (proleptic Gregorian, astronomical year numbering).
fn date2j(year: i64, month: i64, day: i64) -> i128 {
    let (mut y, mut m) = (i128::from(year), i128::from(month));
    if m > 2 {
        m += 1;
        y += 4800;
    } else {
        m += 13;
        y += 4799;
    }
    let century = y.div_euclid(100);
    let mut julian = y * 365 - 32167;
    julian += y.div_euclid(4) - century + century.div_euclid(4);
    julian += 7834 * m / 14 + i128::from(day);
    julian
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            if leap { 29 } else { 28 }
        }
    }
}

/// A small cursor over ASCII input.
struct TextCursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl TextCursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.i;
        let mut v: i64 = 0;
        while self.i - start < max {
            match self.peek() {
                Some(d) if d.is_ascii_digit() => {
                    v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
                    self.i += 1;
                }
                _ => break,
            }
        }
        (self.i - start >= min).then_some(v)
    }
    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }
}

/// `HH:MM[:SS[.ffffff]]` → microseconds (`None` on syntax errors; range checked by the caller).
fn parse_clock(c: &mut TextCursor<'_>) -> Option<(i64, i64, i64, i128)> {
    let h = c.digits(1, 2)?;
    if !c.eat(b':') {
        return None;
    }
    let m = c.digits(2, 2)?;
    let mut s = 0;
    let mut frac_us: i128 = 0;
    if c.eat(b':') {
        s = c.digits(2, 2)?;
        if c.eat(b'.') {
            // PostgreSQL: `rint(strtod(".ffff") * 1e6)` (ties to even).
            let start = c.i;
            while c.peek().is_some_and(|d| d.is_ascii_digit()) {
                c.i += 1;
            }
            if c.i == start {
                return None;
            }
            let digits = std::str::from_utf8(c.b.get(start..c.i)?).ok()?;
            let frac: f64 = format!("0.{digits}").parse().ok()?;
            // `frac` < 1, so the product is at most 1e6 and the conversion is exact.
            frac_us = (frac * 1e6).round_ties_even() as i128;
        }
    }
    Some((h, m, s, frac_us))
}

/// `Z`, `UTC`, `GMT`, `+HH`, `+HHMM`, `+HH:MM`, `+HH:MM:SS` → seconds east.
fn parse_zone(c: &mut TextCursor<'_>) -> Option<Option<i32>> {
    c.skip_spaces();
    let rest = c.b.get(c.i..).unwrap_or(&[]);
    for word in [&b"UTC"[..], b"GMT", b"Z"] {
        if rest.len() >= word.len()
            && rest
                .get(..word.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(word))
        {
            c.i += word.len();
            return Some(Some(0));
        }
    }
    let sign = match c.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Some(None),
    };
    c.i += 1;
    let start = c.i;
    let h = c.digits(1, 4)?;
    let (h, mut m) = if c.i - start > 2 {
        (h / 100, h % 100)
    } else {
        (h, 0)
    };
    let mut s = 0;
    if c.i - start <= 2 && c.eat(b':') {
        m = c.digits(2, 2)?;
        if c.eat(b':') {
            s = c.digits(2, 2)?;
        }
    }
    if h > 15 || m > 59 || s > 59 {
        return None;
    }
    i32::try_from(sign * (h * 3600 + m * 60 + s)).ok().map(Some)
}

fn read_datetime(text: &str, kind: DateTimeKind) -> Result<i128, ValueError> {
    let type_name = match kind {
        DateTimeKind::Date => "date",
        DateTimeKind::Timestamp => "timestamp",
        DateTimeKind::Timestamptz => "timestamp with time zone",
    };
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Ok(i128::MAX),
        "-infinity" => return Ok(i128::MIN),
        "epoch" => return Ok(0),
        _ => {}
    }
    let syntax = || ValueError::datetime_syntax(type_name, text);
    let mut c = TextCursor {
        b: t.as_bytes(),
        i: 0,
    };
    let year = c.digits(1, 9).ok_or_else(syntax)?;
    if !c.eat(b'-') {
        return Err(syntax());
    }
    let month = c.digits(1, 2).ok_or_else(syntax)?;
    if !c.eat(b'-') {
        return Err(syntax());
    }
    let day = c.digits(1, 2).ok_or_else(syntax)?;
    let mut clock = (0, 0, 0, 0i128);
    let mut zone: Option<i32> = None;
    if c.eat(b'T') || c.eat(b't') || c.peek() == Some(b' ') {
        c.skip_spaces();
        if c.peek().is_some_and(|d| d.is_ascii_digit()) {
            clock = parse_clock(&mut c).ok_or_else(syntax)?;
            zone = parse_zone(&mut c).ok_or_else(syntax)?;
        }
    }
    c.skip_spaces();
    let rest = c.b.get(c.i..).unwrap_or(&[]);
    let mut bc = false;
    if rest.eq_ignore_ascii_case(b"BC") {
        bc = true;
        c.i += 2;
    } else if rest.eq_ignore_ascii_case(b"AD") {
        c.i += 2;
    }
    if !c.at_end() {
        return Err(syntax());
    }
    let (h, mi, s, frac) = clock;
    if year == 0 {
        return Err(ValueError::datetime_range(text));
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(if bc { 1 - year } else { year }, month)
        || h > 24
        || mi > 59
        || s > 60
        || (h == 24 && (mi > 0 || s > 0 || frac > 0))
    {
        return Err(ValueError::datetime_range(text));
    }
    let astro_year = if bc { 1 - year } else { year };
    if !(-4713..=5_874_897).contains(&astro_year) {
        return Err(ValueError {
            code: "22008",
            condition: "datetime_field_overflow",
            message: format!("date out of range: \"{text}\""),
        });
    }
    let days = date2j(astro_year, month, day) - UNIX_EPOCH_JDATE;
    if kind == DateTimeKind::Date {
        return Ok(days * USECS_PER_DAY);
    }
    let time_us = (i128::from(h) * 3600 + i128::from(mi) * 60 + i128::from(s)) * 1_000_000 + frac;
    let mut us = days * USECS_PER_DAY + time_us;
    if kind == DateTimeKind::Timestamptz {
        us -= i128::from(zone.unwrap_or(0)) * 1_000_000;
    }
    Ok(us)
}

/// `time` / `timetz`: microseconds since midnight and the offset (seconds east).
fn read_time(text: &str, with_zone: bool) -> Result<(i128, i32), ValueError> {
    let type_name = if with_zone {
        "time with time zone"
    } else {
        "time without time zone"
    };
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let mut c = TextCursor {
        b: t.as_bytes(),
        i: 0,
    };
    let syntax = || ValueError::datetime_syntax(type_name, text);
    let (h, m, s, frac) = parse_clock(&mut c).ok_or_else(syntax)?;
    let zone = parse_zone(&mut c).ok_or_else(syntax)?;
    c.skip_spaces();
    if !c.at_end() {
        return Err(syntax());
    }
    if h > 24 || m > 59 || s > 60 || (h == 24 && (m > 0 || s > 0 || frac > 0)) {
        return Err(ValueError::datetime_range(text));
    }
    let us = (i128::from(h) * 3600 + i128::from(m) * 60 + i128::from(s)) * 1_000_000 + frac;
    Ok((us, if with_zone { zone.unwrap_or(0) } else { 0 }))
}

// Comparison --------------------------------------------------------------------------------

fn cmp_numeric(a: &NumericValue, b: &NumericValue) -> Ordering {
    use NumericValue::*;
    let rank = |v: &NumericValue| match v {
        NegInf => 0,
        Finite(_) => 1,
        PosInf => 2,
        NaN => 3,
    };
    match (a, b) {
        (Finite(x), Finite(y)) => {
            let sign = |d: &value::Decimal| {
                if d.digits.is_empty() {
                    0
                } else if d.negative {
                    -1
                } else {
                    1
                }
            };
            let (sx, sy) = (sign(x), sign(y));
            if sx != sy {
                return sx.cmp(&sy);
            }
            if sx == 0 {
                return Ordering::Equal;
            }
            let magnitude = x.point.cmp(&y.point).then_with(|| x.digits.cmp(&y.digits));
            if sx < 0 {
                magnitude.reverse()
            } else {
                magnitude
            }
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// PostgreSQL's float ordering: NaN equals NaN and sorts above everything.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => {
            match (
                value::parse_numeric(&x.to_string()),
                value::parse_numeric(&y.to_string()),
            ) {
                (Some(p), Some(q)) => cmp_numeric(&p, &q) == Ordering::Equal,
                _ => x == y,
            }
        }
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// `None` when the two cannot be ordered (jsonb ordering is not implemented).
fn compare(a: &Comparable, b: &Comparable) -> Option<Ordering> {
    Some(match (a, b) {
        (Comparable::Int(x), Comparable::Int(y)) => x.cmp(y),
        (Comparable::Float(x), Comparable::Float(y)) => cmp_float(*x, *y),
        (Comparable::Num(x), Comparable::Num(y)) => cmp_numeric(x, y),
        (Comparable::Bool(x), Comparable::Bool(y)) => x.cmp(y),
        (Comparable::Bytes(x), Comparable::Bytes(y)) => x.cmp(y),
        (Comparable::Uuid(x), Comparable::Uuid(y)) => x.cmp(y),
        (Comparable::Ts(x), Comparable::Ts(y)) => x.cmp(y),
        // timetz_cmp: by UTC time, then by zone (seconds west, so reversed offset).
        (Comparable::Timetz(x, ox), Comparable::Timetz(y, oy)) => x.cmp(y).then_with(|| oy.cmp(ox)),
        (Comparable::Json(x), Comparable::Json(y)) if json_eq(x, y) => Ordering::Equal,
        _ => return None,
    })
}

fn equal(a: &Comparable, b: &Comparable) -> bool {
    match (a, b) {
        (Comparable::Json(x), Comparable::Json(y)) => json_eq(x, y),
        _ => compare(a, b) == Some(Ordering::Equal),
    }
}

// LIKE ----------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum LikeTok<T> {
    Lit(T),
    One,
    Any,
}

/// Compile a LIKE pattern (escape `\`); `None` when it ends with the escape character.
fn like_compile<T: Copy + PartialEq>(
    pattern: &[T],
    pct: T,
    under: T,
    esc: T,
) -> Option<Vec<LikeTok<T>>> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut it = pattern.iter();
    while let Some(&c) = it.next() {
        if c == esc {
            out.push(LikeTok::Lit(*it.next()?));
        } else if c == pct {
            if out.last() != Some(&LikeTok::Any) {
                out.push(LikeTok::Any);
            }
        } else if c == under {
            out.push(LikeTok::One);
        } else {
            out.push(LikeTok::Lit(c));
        }
    }
    Some(out)
}

/// A compiled LIKE pattern, matched by simulating its automaton with one bit per pattern
/// position (shift-and): the cost is linear in the text, times the pattern's length / 64,
/// whatever the pattern. A backtracking matcher costs pattern x text on patterns such as
/// `%a%a%a...b`, which a subscriber chooses and every change pays for.
#[derive(Debug, Clone)]
struct LikeMatcher<T> {
    /// Pattern tokens + 1 states (state i: the first i tokens matched).
    states: usize,
    /// States whose token is `%` (they stay active on any character).
    any: Vec<u64>,
    /// States whose token is `_` (they advance on any character).
    one: Vec<u64>,
    /// Per literal, the states whose token is that literal; sorted by literal.
    literals: Vec<(T, Vec<u64>)>,
    /// For single-byte symbols (bytes, ASCII characters): 1 + the literal's index in
    /// `literals`, or 0; saves the search on the common path.
    small: Box<[u8; 256]>,
}

/// A pattern symbol: characters (`like`, `ilike`) or bytes (`bytea`).
trait LikeSymbol: Copy + Ord {
    /// The symbol as one byte, when it is one (a byte, an ASCII character).
    fn small(self) -> Option<u8>;
}

impl LikeSymbol for char {
    fn small(self) -> Option<u8> {
        u8::try_from(self).ok().filter(u8::is_ascii)
    }
}

impl LikeSymbol for u8 {
    fn small(self) -> Option<u8> {
        Some(self)
    }
}

impl<T: LikeSymbol> LikeMatcher<T> {
    fn new(tokens: &[LikeTok<T>]) -> LikeMatcher<T> {
        let states = tokens.len() + 1;
        let words = states.div_ceil(64);
        let mut any = vec![0u64; words];
        let mut one = vec![0u64; words];
        let mut literals: Vec<(T, Vec<u64>)> = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let set = |mask: &mut Vec<u64>| {
                if let Some(word) = mask.get_mut(i / 64) {
                    *word |= 1 << (i % 64);
                }
            };
            match token {
                LikeTok::Any => set(&mut any),
                LikeTok::One => set(&mut one),
                LikeTok::Lit(c) => match literals.binary_search_by(|(l, _)| l.cmp(c)) {
                    Ok(at) => {
                        if let Some((_, mask)) = literals.get_mut(at) {
                            set(mask);
                        }
                    }
                    Err(at) => {
                        let mut mask = vec![0u64; words];
                        set(&mut mask);
                        literals.insert(at, (*c, mask));
                    }
                },
            }
        }
        let mut small = Box::new([0u8; 256]);
        for (at, (literal, _)) in literals.iter().enumerate() {
            if let (Some(byte), Ok(slot)) = (literal.small(), u8::try_from(at + 1))
                && let Some(entry) = small.get_mut(usize::from(byte))
            {
                *entry = slot;
            }
        }
        LikeMatcher {
            states,
            any,
            one,
            literals,
            small,
        }
    }

    /// The states whose token is the literal `c`.
    fn literal(&self, c: T) -> Option<&[u64]> {
        let at = match c.small() {
            Some(byte) => match self.small.get(usize::from(byte)).copied().unwrap_or(0) {
                0 if self.literals.len() < 255 => return None,
                0 => self.literals.binary_search_by(|(l, _)| l.cmp(&c)).ok()?,
                slot => usize::from(slot) - 1,
            },
            None => self.literals.binary_search_by(|(l, _)| l.cmp(&c)).ok()?,
        };
        self.literals.get(at).map(|(_, mask)| mask.as_slice())
    }

    /// [`LikeMatcher::matches`] for patterns of at most 64 states: one machine word.
    fn matches_word(&self, text: impl IntoIterator<Item = T>) -> bool {
        let any = self.any.first().copied().unwrap_or(0);
        let one = self.one.first().copied().unwrap_or(0);
        let close = |a: u64| a | ((a & any) << 1);
        let mut active = close(1);
        for c in text {
            let literal = self
                .literal(c)
                .and_then(|m| m.first())
                .copied()
                .unwrap_or(0);
            active = close(((active & (one | literal)) << 1) | (active & any));
            if active == 0 {
                return false;
            }
        }
        active & (1 << (self.states - 1)) != 0
    }

    /// Whether the whole of `text` matches.
    fn matches(&self, text: impl IntoIterator<Item = T>) -> bool {
        if self.states <= 64 {
            return self.matches_word(text);
        }
        let words = self.any.len();
        let mut active = vec![0u64; words];
        if let Some(first) = active.first_mut() {
            *first = 1;
        }
        self.close(&mut active);
        let mut next = vec![0u64; words];
        for c in text {
            let literal = self.literal(c);
            // next = ((active & (one | literal)) << 1) | (active & any)
            let mut carry = 0u64;
            let mut alive = false;
            for w in 0..words {
                let a = active.get(w).copied().unwrap_or(0);
                let step = self.one.get(w).copied().unwrap_or(0)
                    | literal.and_then(|m| m.get(w)).copied().unwrap_or(0);
                let advanced = a & step;
                let stay = a & self.any.get(w).copied().unwrap_or(0);
                let word = (advanced << 1) | carry | stay;
                carry = advanced >> 63;
                if let Some(slot) = next.get_mut(w) {
                    *slot = word;
                }
                alive |= word != 0;
            }
            if !alive {
                return false;
            }
            std::mem::swap(&mut active, &mut next);
            self.close(&mut active);
        }
        let last = self.states - 1;
        active
            .get(last / 64)
            .is_some_and(|word| word & (1 << (last % 64)) != 0)
    }

    /// Adds the states reached without a character: `%` also matches nothing. `%` never
    /// follows `%` (compiled patterns collapse runs), so one step closes the set.
    fn close(&self, active: &mut [u64]) {
        let mut carry = 0u64;
        for w in 0..active.len() {
            let a = active.get(w).copied().unwrap_or(0);
            let skipped = a & self.any.get(w).copied().unwrap_or(0);
            if let Some(slot) = active.get_mut(w) {
                *slot = a | (skipped << 1) | carry;
            }
            carry = skipped >> 63;
        }
    }
}

fn lower_chars(s: &str) -> Vec<char> {
    s.chars().map(lower_char).collect()
}

fn lower_char(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

// ---------------------------------------------------------------------------------------------
// Compiled filters

/// A filter checked against its column's type, ready to evaluate per change.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    negate: bool,
    cat: TypeCategory,
    type_name: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Cmp(Op, Comparable),
    In(Vec<Option<Comparable>>),
    IsDistinct(Comparable),
    LikeChars(LikeMatcher<char>, bool),
    LikeBytes(LikeMatcher<u8>),
    Regex(regex::Regex),
    IsNull,
    IsBool(bool),
}

impl CompiledFilter {
    /// Does a change whose column holds `value` (pgoutput's text; `None` = NULL) pass? True only
    /// when the SQL result is TRUE: NULL comparisons fail whether negated or not.
    pub fn matches(&self, value: Option<&str>) -> bool {
        self.eval(value) == Some(true)
    }

    /// Three-valued result (`None` = SQL NULL), negation applied.
    fn eval(&self, value: Option<&str>) -> Option<bool> {
        let col = value.and_then(|t| match self.kind {
            Kind::LikeChars(..) | Kind::Regex(_) => None,
            _ => read_column(self.cat, &self.type_name, t),
        });
        match &self.kind {
            Kind::IsNull => {
                // A JSON `null` in a json/jsonb column reads back as SQL NULL in the reference.
                let is_null = match value {
                    None => true,
                    Some(t) => {
                        matches!(self.cat, TypeCategory::Json | TypeCategory::Jsonb)
                            && matches!(
                                serde_json::from_str::<serde_json::Value>(t),
                                Ok(serde_json::Value::Null)
                            )
                    }
                };
                Some(is_null != self.negate)
            }
            Kind::IsBool(want) => {
                let is = matches!(col, Some(Comparable::Bool(b)) if b == *want);
                Some(is != self.negate)
            }
            Kind::IsDistinct(rhs) => {
                let distinct = match &col {
                    None => true,
                    Some(v) => !equal(v, rhs),
                };
                Some(distinct != self.negate)
            }
            Kind::Cmp(op, rhs) => {
                let v = col?;
                let res = match op {
                    Op::Eq => equal(&v, rhs),
                    Op::Neq => !equal(&v, rhs),
                    _ => {
                        let ord = compare(&v, rhs)?;
                        match op {
                            Op::Lt => ord == Ordering::Less,
                            Op::Lte => ord != Ordering::Greater,
                            Op::Gt => ord == Ordering::Greater,
                            Op::Gte => ord != Ordering::Less,
                            _ => return None,
                        }
                    }
                };
                Some(res != self.negate)
            }
            Kind::In(list) => {
                let v = col?;
                let mut saw_null = false;
                let mut found = false;
                for item in list {
                    match item {
                        Some(x) if equal(&v, x) => {
                            found = true;
                            break;
                        }
                        Some(_) => {}
                        None => saw_null = true,
                    }
                }
                if !found && saw_null {
                    return None;
                }
                Some(found != self.negate)
            }
            Kind::LikeChars(pat, ci) => {
                let text = self.text_operand(value?);
                let res = if *ci {
                    pat.matches(text.chars().map(lower_char))
                } else {
                    pat.matches(text.chars())
                };
                Some(res != self.negate)
            }
            Kind::LikeBytes(pat) => {
                let Some(Comparable::Bytes(b)) = col else {
                    return None;
                };
                Some(pat.matches(b.iter().copied()) != self.negate)
            }
            Kind::Regex(re) => {
                let text = self.text_operand(value?);
                Some(re.is_match(&text) != self.negate)
            }
        }
    }

    /// The column text as the text operators see it after the cast to the column type.
    fn text_operand(&self, text: &str) -> String {
        match self.cat {
            TypeCategory::Char1 => text
                .chars()
                .take(1)
                .collect::<String>()
                .trim_end_matches(' ')
                .to_owned(),
            TypeCategory::Bpchar => text.trim_end_matches(' ').to_owned(),
            _ => text.to_owned(),
        }
    }
}

/// Check `filter` against its column's type once, at subscribe time, as the reference's
/// `subscription_check_filters` trigger does, and compile it for [`CompiledFilter::matches`].
///
/// The error's `Display` is the text the reference puts after `Exception: ` in its `system`
/// message, i.e. Postgrex's rendering `ERROR <sqlstate> (<condition>) <message>`, for example
/// `ERROR 22P02 (invalid_text_representation) invalid input syntax for type bigint: "abc"` or
/// ``ERROR P0001 (raise_exception) too many values for `in` filter. Maximum 100``. Checking that
/// the column exists and is SELECT-able (`invalid column for filter <col>`) is the caller's job.
pub fn validate(filter: &Filter, column_type: &TypeInfo) -> Result<CompiledFilter, ValidateError> {
    let cat = category_of(column_type);
    let type_name = regtype_name(column_type);
    let element_name = regtype_name(column_type.resolved());
    let raw = filter.raw_value.as_str();
    let unsupported = |reason: Unsupported| ValidateError::Unsupported {
        op: filter.op,
        column: filter.column.clone(),
        type_name: type_name.clone(),
        reason,
    };
    let no_operator = |symbol: &'static str| Unsupported::NoOperator {
        type_name: type_name.clone(),
        symbol,
    };
    let compiled = |kind: Kind| CompiledFilter {
        negate: filter.negate,
        cat,
        type_name: element_name.clone(),
        kind,
    };
    let scalar = |text: &str| read(cat, &element_name, text);

    match filter.op {
        Op::In => {
            let items = value::parse_array(raw, b',')
                .ok_or_else(|| ValidateError::MalformedList(raw.to_owned()))?;
            if items.len() > 100 {
                return Err(ValidateError::TooManyValues);
            }
            let mut list = Vec::new();
            for item in flatten(&items) {
                match item {
                    None => list.push(None),
                    Some(text) => list.push(Some(scalar(&text)?)),
                }
            }
            if cat == TypeCategory::Json {
                return Err(unsupported(no_operator("=")));
            }
            Ok(compiled(Kind::In(list)))
        }
        Op::Is => {
            let kind = match raw {
                "null" => Kind::IsNull,
                "true" | "false" | "unknown" => {
                    let is_bool = matches!(column_type.kind, TypeKind::Base)
                        && value::base_name(column_type) == "bool";
                    if !is_bool {
                        return Err(ValidateError::IsNeedsBoolean {
                            value: raw.to_owned(),
                            type_name,
                        });
                    }
                    match raw {
                        "true" => Kind::IsBool(true),
                        "false" => Kind::IsBool(false),
                        _ => Kind::IsNull,
                    }
                }
                _ => return Err(ValidateError::InvalidIsValue),
            };
            Ok(compiled(kind))
        }
        Op::Match | Op::Imatch => {
            let re = regex::RegexBuilder::new(raw)
                .case_insensitive(filter.op == Op::Imatch)
                .size_limit(1 << 20)
                .build()
                .map_err(|source| ValidateError::InvalidRegex {
                    op: filter.op,
                    source,
                })?;
            match cat {
                TypeCategory::Text | TypeCategory::Char1 | TypeCategory::Bpchar => {
                    Ok(compiled(Kind::Regex(re)))
                }
                _ => Err(unsupported(match scalar(raw) {
                    Err(e) => Unsupported::Value(e),
                    Ok(_) => no_operator(if filter.op == Op::Match { "~" } else { "~*" }),
                })),
            }
        }
        Op::Like | Op::Ilike => {
            let ci = filter.op == Op::Ilike;
            let end_escape = || unsupported(Unsupported::LikeEndsWithEscape);
            match cat {
                TypeCategory::Text | TypeCategory::Char1 | TypeCategory::Bpchar => {
                    let operand: Vec<char> = match cat {
                        TypeCategory::Char1 => raw
                            .chars()
                            .take(1)
                            .collect::<String>()
                            .trim_end_matches(' ')
                            .chars()
                            .collect(),
                        TypeCategory::Bpchar => raw.trim_end_matches(' ').chars().collect(),
                        _ => raw.chars().collect(),
                    };
                    let operand = if ci {
                        lower_chars(&operand.iter().collect::<String>())
                    } else {
                        operand
                    };
                    let pat = like_compile(&operand, '%', '_', '\\').ok_or_else(end_escape)?;
                    Ok(compiled(Kind::LikeChars(LikeMatcher::new(&pat), ci)))
                }
                TypeCategory::Bytea if !ci => {
                    let bytes = read_bytea(raw).map_err(|e| unsupported(Unsupported::Value(e)))?;
                    let pat = like_compile(&bytes, b'%', b'_', b'\\').ok_or_else(end_escape)?;
                    Ok(compiled(Kind::LikeBytes(LikeMatcher::new(&pat))))
                }
                _ => Err(unsupported(match scalar(raw) {
                    Err(e) => Unsupported::Value(e),
                    Ok(_) => no_operator(if ci { "~~*" } else { "~~" }),
                })),
            }
        }
        Op::Eq | Op::Neq | Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::IsDistinct => {
            let rhs = scalar(raw)?;
            let ordering = matches!(filter.op, Op::Lt | Op::Lte | Op::Gt | Op::Gte);
            let sym = match filter.op {
                Op::Eq | Op::IsDistinct => "=",
                Op::Neq => "<>",
                Op::Lt => "<",
                Op::Lte => "<=",
                Op::Gt => ">",
                _ => ">=",
            };
            if cat == TypeCategory::Json {
                if filter.op == Op::IsDistinct {
                    return Err(unsupported(Unsupported::NoEquality(type_name.clone())));
                }
                return Err(unsupported(no_operator(sym)));
            }
            if ordering && matches!(cat, TypeCategory::Jsonb | TypeCategory::Other) {
                return Err(unsupported(Unsupported::NoOrdering(type_name.clone())));
            }
            Ok(compiled(if filter.op == Op::IsDistinct {
                Kind::IsDistinct(rhs)
            } else {
                Kind::Cmp(filter.op, rhs)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious dynamic programme over (pattern, text) positions.
    fn like_reference(pattern: &[LikeTok<u8>], text: &[u8]) -> bool {
        let mut reach = vec![vec![false; text.len() + 1]; pattern.len() + 1];
        if let Some(first) = reach.get_mut(0).and_then(|row| row.get_mut(0)) {
            *first = true;
        }
        for p in 0..=pattern.len() {
            for t in 0..=text.len() {
                if !reach
                    .get(p)
                    .and_then(|row| row.get(t))
                    .copied()
                    .unwrap_or(false)
                {
                    continue;
                }
                let mut mark = |p: usize, t: usize| {
                    if let Some(cell) = reach.get_mut(p).and_then(|row| row.get_mut(t)) {
                        *cell = true;
                    }
                };
                match pattern.get(p) {
                    Some(LikeTok::Any) => {
                        mark(p + 1, t);
                        if t < text.len() {
                            mark(p, t + 1);
                        }
                    }
                    Some(LikeTok::One) if t < text.len() => mark(p + 1, t + 1),
                    Some(LikeTok::Lit(c)) if text.get(t) == Some(c) => mark(p + 1, t + 1),
                    _ => {}
                }
            }
        }
        reach
            .get(pattern.len())
            .and_then(|row| row.get(text.len()))
            .copied()
            .unwrap_or(false)
    }

    #[test]
    fn like_matcher_agrees_with_the_reference_on_random_patterns() {
        // xorshift: a fixed seed, so a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let alphabet = [b'a', b'b', b'%', b'_', b'\\'];
        for round in 0..20_000 {
            // Long patterns sometimes, to cross the 64-state word boundary.
            let max = if round % 10 == 0 { 150 } else { 12 };
            let pattern: Vec<u8> = (0..next(max))
                .map(|_| alphabet.get(next(5) as usize).copied().unwrap_or(b'a'))
                .collect();
            let text: Vec<u8> = (0..next(max + 10))
                .map(|_| if next(2) == 0 { b'a' } else { b'b' })
                .collect();
            let Some(tokens) = like_compile(&pattern, b'%', b'_', b'\\') else {
                continue;
            };
            let matcher = LikeMatcher::new(&tokens);
            assert_eq!(
                matcher.matches(text.iter().copied()),
                like_reference(&tokens, &text),
                "pattern {:?} text {:?}",
                String::from_utf8_lossy(&pattern),
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn like_matcher_handles_adversarial_patterns() {
        // `%a%a%...%b` against a long run of `a`: quadratic for a backtracking matcher.
        let pattern: Vec<char> = "%a".repeat(1000).chars().chain("%b".chars()).collect();
        let tokens = like_compile(&pattern, '%', '_', '\\').unwrap_or_default();
        let matcher = LikeMatcher::new(&tokens);
        let text = "a".repeat(20_000);
        assert!(!matcher.matches(text.chars()));
        assert!(matcher.matches(text.chars().chain(['b'])));
    }
}
