//! Column values from pgoutput's text format to JSON text, as `to_jsonb(value::type)` renders
//! them (the reference server runs every value through `realtime.cast(text, regtype)`, which is
//! `to_jsonb(val::type)` with a special case for `bytea`).
//!
//! The result is JSON *text* (not a `serde_json::Value`) so numeric digits stay exact and the
//! caller can splice it into the payload it is writing.
//!
//! Rules, each checked against PostgreSQL 15 (`select to_jsonb('<text>'::<type>)::text`):
//!
//! | type | rendering |
//! |---|---|
//! | `int2` `int4` `int8` `float4` `float8` `numeric` | JSON number with the digits `numeric_in` of the text would print: `1.50` stays `1.50`; exponent forms are expanded (`1e+20` → `100000000000000000000`, `1.5e-07` → `0.00000015`); `-0` → `0`; `NaN`, `Infinity`, `-Infinity` → JSON strings |
//! | `bool` | `true` / `false` |
//! | `json` `jsonb` | the JSON text itself, validated and with the whitespace outside strings removed (a `json` value keeps its key order and duplicate keys, which `to_jsonb` would normalise) |
//! | `date` | `"2024-01-02"` (`"0044-03-15 BC"`, `"infinity"`) |
//! | `timestamp` | `"2024-01-02T03:04:05.678"` (BC suffix kept: `"0044-03-15T12:00:00 BC"`) |
//! | `timestamptz` | `"2024-01-02T03:04:05+00:00"`: the offset as in the text, hour-only offsets padded with `:00`, second offsets kept (`+00:19:32`) |
//! | `bytea` (the column type itself, not a domain or array element) | hex without `\x` (`\x0102` → `"0102"`): the reference's special case, not `to_jsonb`'s |
//! | arrays | JSON arrays (nested for several dimensions, bounds decoration dropped), each element converted by the element type; `bytea` elements keep their `\x` text like `to_jsonb` |
//! | domains | as their base type |
//! | everything else (`text`, `varchar`, `bpchar`, `name`, `"char"`, `uuid`, `oid`, enums, `time`, `timetz`, `interval`, `money`, `inet`, `cidr`, `macaddr`, `point`, `xml`, `tsvector`, `bit`, ranges, …) | JSON string of the text (PostgreSQL's escaping: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters `\u00XX`) |
//!
//! Known deviations from `to_jsonb`:
//! * composite values are rendered as a JSON string of their text (`"(1,x)"`); `to_jsonb` gives an
//!   object with the field names (`{"a": 1, "b": "x"}`), which needs the attribute names and types
//!   the stream does not carry here;
//! * `timestamptz` keeps the offset of the text it is given; `to_jsonb` prints the instant in the
//!   session's `TimeZone`. Both are the same instant; they are the same text when the replication
//!   session runs with `TimeZone=UTC` (the reference's sessions do);
//! * values are expected in PostgreSQL's default output styles (`DateStyle=ISO`,
//!   `IntervalStyle=postgres`, `extra_float_digits>=1`), which is what a walsender uses by default;
//! * JSON spacing: arrays and json values are written compactly (`[1,2,null]`), as the reference's
//!   wire output (re-encoded by Jason) is; `to_jsonb(...)::text` would print `[1, 2, null]`.
//!
//! Nothing here panics: text that does not have the expected form is rendered as a JSON string.

use std::fmt::Write as _;

/// A column type as the relation/type messages of pgoutput (plus a catalog lookup) describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// `pg_type.oid`.
    pub oid: u32,
    /// `pg_type.typname`: `"int8"`, `"_int4"`, `"mood"`.
    pub name: String,
    /// What kind of type it is.
    pub kind: TypeKind,
}

/// `pg_type.typtype` (plus the element / base type where there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// A base type (`b`).
    Base,
    /// An enum (`e`).
    Enum,
    /// A domain (`d`) over the given base type.
    Domain(Box<TypeInfo>),
    /// An array (`typcategory` `A`) of the given element type.
    Array(Box<TypeInfo>),
    /// A composite (row) type (`c`).
    Composite,
    /// A range or multirange (`r` / `m`).
    Range,
    /// A pseudo-type (`p`) or anything unknown.
    Pseudo,
}

impl TypeInfo {
    /// A base type.
    pub fn base(oid: u32, name: &str) -> TypeInfo {
        TypeInfo {
            oid,
            name: name.to_owned(),
            kind: TypeKind::Base,
        }
    }

    /// An array type of `element`.
    pub fn array(oid: u32, name: &str, element: TypeInfo) -> TypeInfo {
        TypeInfo {
            oid,
            name: name.to_owned(),
            kind: TypeKind::Array(Box::new(element)),
        }
    }

    /// The type with domains resolved to their base type.
    pub fn resolved(&self) -> &TypeInfo {
        let mut ty = self;
        // Domains over domains are allowed; the depth is bounded by the catalog, but guard anyway.
        for _ in 0..64 {
            match &ty.kind {
                TypeKind::Domain(base) => ty = base,
                _ => return ty,
            }
        }
        ty
    }
}

/// Built-in scalar types: (oid, typname, array oid).
const BUILTIN_SCALARS: &[(u32, &str, u32)] = &[
    (16, "bool", 1000),
    (17, "bytea", 1001),
    (18, "char", 1002),
    (19, "name", 1003),
    (20, "int8", 1016),
    (21, "int2", 1005),
    (23, "int4", 1007),
    (24, "regproc", 1008),
    (25, "text", 1009),
    (26, "oid", 1028),
    (27, "tid", 1010),
    (28, "xid", 1011),
    (29, "cid", 1012),
    (114, "json", 199),
    (142, "xml", 143),
    (600, "point", 1017),
    (601, "lseg", 1018),
    (602, "path", 1019),
    (603, "box", 1020),
    (604, "polygon", 1027),
    (628, "line", 629),
    (650, "cidr", 651),
    (700, "float4", 1021),
    (701, "float8", 1022),
    (718, "circle", 719),
    (774, "macaddr8", 775),
    (790, "money", 791),
    (829, "macaddr", 1040),
    (869, "inet", 1041),
    (1042, "bpchar", 1014),
    (1043, "varchar", 1015),
    (1082, "date", 1182),
    (1083, "time", 1183),
    (1114, "timestamp", 1115),
    (1184, "timestamptz", 1185),
    (1186, "interval", 1187),
    (1266, "timetz", 1270),
    (1560, "bit", 1561),
    (1562, "varbit", 1563),
    (1700, "numeric", 1231),
    (2205, "regclass", 2210),
    (2206, "regtype", 2211),
    (2950, "uuid", 2951),
    (3220, "pg_lsn", 3221),
    (3614, "tsvector", 3643),
    (3615, "tsquery", 3645),
    (3802, "jsonb", 3807),
    (4072, "jsonpath", 4073),
    (4089, "regnamespace", 4090),
    (4096, "regrole", 4097),
    (5069, "xid8", 271),
];

/// Built-in range types: (oid, typname, array oid).
const BUILTIN_RANGES: &[(u32, &str, u32)] = &[
    (3904, "int4range", 3905),
    (3906, "numrange", 3907),
    (3908, "tsrange", 3909),
    (3910, "tstzrange", 3911),
    (3912, "daterange", 3913),
    (3926, "int8range", 3927),
];

/// Built-in pseudo types that can appear as column types of nothing useful: (oid, typname).
const BUILTIN_PSEUDO: &[(u32, &str)] = &[(705, "unknown"), (2249, "record"), (2278, "void")];

/// The common built-in types by OID, including their array types (`1007` → `_int4` of `int4`).
pub fn builtin(oid: u32) -> Option<TypeInfo> {
    for &(o, name, arr) in BUILTIN_SCALARS {
        if o == oid {
            return Some(TypeInfo::base(o, name));
        }
        if arr == oid {
            return Some(TypeInfo::array(
                arr,
                &format!("_{name}"),
                TypeInfo::base(o, name),
            ));
        }
    }
    for &(o, name, arr) in BUILTIN_RANGES {
        let range = TypeInfo {
            oid: o,
            name: name.to_owned(),
            kind: TypeKind::Range,
        };
        if o == oid {
            return Some(range);
        }
        if arr == oid {
            return Some(TypeInfo::array(arr, &format!("_{name}"), range));
        }
    }
    for &(o, name) in BUILTIN_PSEUDO {
        if o == oid {
            return Some(TypeInfo {
                oid: o,
                name: name.to_owned(),
                kind: TypeKind::Pseudo,
            });
        }
    }
    None
}

/// How `to_jsonb` treats a (domain-resolved) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonCategory {
    Numeric,
    Bool,
    Json,
    Date,
    Timestamp,
    Timestamptz,
    Bytea,
    Array,
    String,
}

pub(crate) fn category(ty: &TypeInfo) -> JsonCategory {
    let ty = ty.resolved();
    match &ty.kind {
        TypeKind::Array(_) => JsonCategory::Array,
        TypeKind::Base => match base_name(ty) {
            "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" => JsonCategory::Numeric,
            "bool" => JsonCategory::Bool,
            "json" | "jsonb" => JsonCategory::Json,
            "date" => JsonCategory::Date,
            "timestamp" => JsonCategory::Timestamp,
            "timestamptz" => JsonCategory::Timestamptz,
            "bytea" => JsonCategory::Bytea,
            _ => JsonCategory::String,
        },
        _ => JsonCategory::String,
    }
}

/// The type name, preferring the built-in name when the OID is a built-in one.
pub(crate) fn base_name(ty: &TypeInfo) -> &str {
    for &(o, name, _) in BUILTIN_SCALARS {
        if o == ty.oid {
            return name;
        }
    }
    ty.name.as_str()
}

/// Render `text` (pgoutput's text form of a value of type `ty`) as JSON text the way
/// `to_jsonb(text::ty)` does (see the module documentation for the rules and deviations).
pub fn to_json_text(ty: &TypeInfo, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    // The reference special-cases exactly the `bytea` column type (not domains, not elements).
    if matches!(ty.kind, TypeKind::Base) && base_name(ty) == "bytea" {
        let hex = text.strip_prefix("\\x").unwrap_or(text);
        push_json_string(&mut out, hex);
        return out;
    }
    write_value(&mut out, ty, text);
    out
}

fn write_value(out: &mut String, ty: &TypeInfo, text: &str) {
    match category(ty) {
        JsonCategory::Numeric => write_number(out, text),
        JsonCategory::Bool => match text {
            "t" | "true" => out.push_str("true"),
            "f" | "false" => out.push_str("false"),
            _ => push_json_string(out, text),
        },
        JsonCategory::Json => {
            if serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok() {
                push_compact_json(out, text);
            } else {
                push_json_string(out, text);
            }
        }
        JsonCategory::Date => push_json_string(out, text),
        JsonCategory::Timestamp => push_json_string(out, &timestamp_json(text, false)),
        JsonCategory::Timestamptz => push_json_string(out, &timestamp_json(text, true)),
        JsonCategory::Bytea => push_json_string(out, text),
        JsonCategory::Array => write_array(out, ty, text),
        JsonCategory::String => push_json_string(out, text),
    }
}

fn write_array(out: &mut String, ty: &TypeInfo, text: &str) {
    let resolved = ty.resolved();
    let element = match &resolved.kind {
        TypeKind::Array(el) => el.as_ref(),
        _ => {
            push_json_string(out, text);
            return;
        }
    };
    let delim = if base_name(element.resolved()) == "box" {
        b';'
    } else {
        b','
    };
    match parse_array(text, delim) {
        Some(items) => write_elements(out, element, &items),
        None => push_json_string(out, text),
    }
}

fn write_elements(out: &mut String, element: &TypeInfo, items: &[ArrayElem]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            ArrayElem::Null => out.push_str("null"),
            ArrayElem::Value(v) => write_value(out, element, v),
            ArrayElem::Array(inner) => write_elements(out, element, inner),
        }
    }
    out.push(']');
}

/// Append `s` as a JSON string with PostgreSQL's escaping (`escape_json`).
pub fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\x08' => Some("\\b"),
            b'\x0c' => Some("\\f"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => Some(""),
            _ => None,
        };
        if let Some(esc) = esc {
            out.push_str(s.get(start..i).unwrap_or(""));
            if esc.is_empty() {
                let _ = write!(out, "\\u{b:04x}");
            } else {
                out.push_str(esc);
            }
            start = i + 1;
        }
    }
    out.push_str(s.get(start..).unwrap_or(""));
    out.push('"');
}

/// Append valid JSON text without the whitespace outside strings.
fn push_compact_json(out: &mut String, json: &str) {
    out.reserve(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
}

/// A JSON string of `s` with PostgreSQL's escaping.
pub fn json_string(s: &str) -> String {
    let mut out = String::new();
    push_json_string(&mut out, s);
    out
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// A finite decimal as `numeric_in` reads it: sign, significant digits, and where the point is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    pub(crate) negative: bool,
    /// ASCII digits, without leading zeros (empty for zero).
    pub(crate) digits: Vec<u8>,
    /// Value = 0.digits × 10^point (so `point` = number of integer digits when positive).
    pub(crate) point: i64,
    /// `numeric_in`'s display scale: digits after the decimal point it prints.
    pub(crate) dscale: i64,
}

/// A number as `numeric_in` accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NumericValue {
    NaN,
    PosInf,
    NegInf,
    Finite(Decimal),
}

/// Largest decimal exponent accepted (PostgreSQL's `NUMERIC_MAX_PRECISION`-based bound).
const MAX_EXPONENT: i64 = 1000;

/// Parse `text` the way `numeric_in` does (surrounding whitespace allowed, optional sign, digits
/// with an optional point, optional exponent, `NaN`, `Infinity`, `inf`).
pub(crate) fn parse_numeric(text: &str) -> Option<NumericValue> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "nan" => return Some(NumericValue::NaN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Some(NumericValue::PosInf),
        "-infinity" | "-inf" => return Some(NumericValue::NegInf),
        _ => {}
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut negative = false;
    match bytes.first() {
        Some(b'-') => {
            negative = true;
            i = 1;
        }
        Some(b'+') => i = 1,
        _ => {}
    }
    let mut int_digits: Vec<u8> = Vec::new();
    let mut frac_digits: Vec<u8> = Vec::new();
    while let Some(&b) = bytes.get(i) {
        if b.is_ascii_digit() {
            int_digits.push(b);
            i += 1;
        } else {
            break;
        }
    }
    let mut saw_point = false;
    if bytes.get(i) == Some(&b'.') {
        saw_point = true;
        i += 1;
        while let Some(&b) = bytes.get(i) {
            if b.is_ascii_digit() {
                frac_digits.push(b);
                i += 1;
            } else {
                break;
            }
        }
    }
    let _ = saw_point;
    if int_digits.is_empty() && frac_digits.is_empty() {
        return None;
    }
    let mut exponent: i64 = 0;
    if matches!(bytes.get(i), Some(b'e') | Some(b'E')) {
        i += 1;
        let mut exp_neg = false;
        match bytes.get(i) {
            Some(b'-') => {
                exp_neg = true;
                i += 1;
            }
            Some(b'+') => i += 1,
            _ => {}
        }
        let start = i;
        while let Some(&b) = bytes.get(i) {
            if b.is_ascii_digit() {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i64::from(b - b'0'));
                i += 1;
            } else {
                break;
            }
        }
        if i == start {
            return None;
        }
        if exponent > MAX_EXPONENT {
            return None;
        }
        if exp_neg {
            exponent = -exponent;
        }
    }
    if i != bytes.len() {
        return None;
    }
    let dscale = (frac_digits.len() as i64 - exponent).max(0);
    let mut all = int_digits.clone();
    all.extend_from_slice(&frac_digits);
    let mut point = int_digits.len() as i64 + exponent;
    // Strip leading zeros.
    let lead = all.iter().take_while(|&&d| d == b'0').count();
    all.drain(..lead);
    point -= lead as i64;
    // Strip trailing zeros (they do not change the value).
    while all.last() == Some(&b'0') {
        all.pop();
    }
    if all.is_empty() {
        point = 0;
        negative = false;
    }
    Some(NumericValue::Finite(Decimal {
        negative,
        digits: all,
        point,
        dscale,
    }))
}

impl Decimal {
    /// `numeric_out`: plain notation with `dscale` fraction digits.
    pub(crate) fn to_plain(&self) -> String {
        let mut out = String::new();
        if self.negative {
            out.push('-');
        }
        if self.point <= 0 {
            out.push('0');
        } else {
            for k in 0..self.point {
                let d = usize::try_from(k)
                    .ok()
                    .and_then(|k| self.digits.get(k))
                    .copied();
                out.push(char::from(d.unwrap_or(b'0')));
            }
        }
        if self.dscale > 0 {
            out.push('.');
            for k in 0..self.dscale {
                // Fraction digit k (0-based) is digit index point + k.
                let idx = self.point + k;
                let d = if idx < 0 {
                    b'0'
                } else {
                    usize::try_from(idx)
                        .ok()
                        .and_then(|i| self.digits.get(i))
                        .copied()
                        .unwrap_or(b'0')
                };
                out.push(char::from(d));
            }
        }
        out
    }
}

fn write_number(out: &mut String, text: &str) {
    match parse_numeric(text) {
        Some(NumericValue::NaN) => out.push_str("\"NaN\""),
        Some(NumericValue::PosInf) => out.push_str("\"Infinity\""),
        Some(NumericValue::NegInf) => out.push_str("\"-Infinity\""),
        Some(NumericValue::Finite(d)) => out.push_str(&d.to_plain()),
        None => push_json_string(out, text),
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps

/// `2024-01-02 03:04:05.678+05` → `2024-01-02T03:04:05.678+05:00` (JSON/XSD style).
fn timestamp_json(text: &str, with_zone: bool) -> String {
    let Some(space) = text.find(' ') else {
        // `infinity`, `-infinity`, or a date-only form.
        return text.to_owned();
    };
    let (date, rest) = text.split_at(space);
    let rest = rest.get(1..).unwrap_or("");
    let (time_and_zone, era) = match rest.strip_suffix(" BC") {
        Some(t) => (t, " BC"),
        None => (rest, ""),
    };
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str(date);
    out.push('T');
    if with_zone {
        if let Some(pos) = time_and_zone.find(['+', '-']) {
            let (time, zone) = time_and_zone.split_at(pos);
            out.push_str(time);
            out.push_str(zone);
            // `+HH` → `+HH:00`; `+HH:MM` and `+HH:MM:SS` stay.
            if !zone.contains(':') {
                out.push_str(":00");
            }
        } else {
            out.push_str(time_and_zone);
        }
    } else {
        out.push_str(time_and_zone);
    }
    out.push_str(era);
    out
}

// ---------------------------------------------------------------------------------------------
// Array literals

/// One element of a parsed array literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayElem {
    /// An unquoted `NULL`.
    Null,
    /// A value (quotes and escapes removed).
    Value(String),
    /// A sub-array (multi-dimensional arrays).
    Array(Vec<ArrayElem>),
}

/// Parse a PostgreSQL array literal (`{1,2,NULL}`, `{"a\"b",c}`, `{{1,2},{3,4}}`, `{}`,
/// `[0:1]={1,2}`) with the given element delimiter (`,` for every built-in type but `box`,
/// which uses `;`). Returns the top-level elements, or `None` when the text is malformed.
pub fn parse_array(text: &str, delim: u8) -> Option<Vec<ArrayElem>> {
    let bytes = text.as_bytes();
    let mut p = ArrayParser {
        bytes,
        pos: 0,
        delim,
        depth: 0,
    };
    p.skip_ws();
    if p.peek() == Some(b'[') {
        // Dimension decoration: `[lb:ub][lb:ub]...=`.
        while p.peek() == Some(b'[') {
            p.pos += 1;
            while let Some(b) = p.peek() {
                p.pos += 1;
                if b == b']' {
                    break;
                }
                if !(b.is_ascii_digit()
                    || b == b':'
                    || b == b'-'
                    || b == b'+'
                    || b.is_ascii_whitespace())
                {
                    return None;
                }
            }
            p.skip_ws();
        }
        if p.peek() != Some(b'=') {
            return None;
        }
        p.pos += 1;
        p.skip_ws();
    }
    let items = p.parse_braces()?;
    p.skip_ws();
    if p.pos != bytes.len() {
        return None;
    }
    Some(items)
}

struct ArrayParser<'a> {
    bytes: &'a [u8],
    pos: usize,
    delim: u8,
    depth: usize,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn parse_braces(&mut self) -> Option<Vec<ArrayElem>> {
        if self.peek() != Some(b'{') {
            return None;
        }
        self.depth += 1;
        if self.depth > 6 {
            // PostgreSQL's MAXDIM.
            return None;
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Some(items);
        }
        loop {
            self.skip_ws();
            let item = match self.peek()? {
                b'{' => ArrayElem::Array(self.parse_braces()?),
                b'"' => ArrayElem::Value(self.parse_quoted()?),
                _ => self.parse_unquoted()?,
            };
            items.push(item);
            self.skip_ws();
            match self.peek()? {
                b'}' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(items);
                }
                b if b == self.delim => self.pos += 1,
                _ => return None,
            }
        }
    }

    fn parse_quoted(&mut self) -> Option<String> {
        self.pos += 1; // opening quote
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'\\' => {
                    let n = self.peek()?;
                    self.pos += 1;
                    buf.push(n);
                }
                b'"' => break,
                _ => buf.push(b),
            }
        }
        String::from_utf8(buf).ok()
    }

    fn parse_unquoted(&mut self) -> Option<ArrayElem> {
        let mut buf: Vec<u8> = Vec::new();
        // Length of `buf` up to the last character that is not unescaped trailing whitespace.
        let mut keep = 0usize;
        let mut escaped_any = false;
        loop {
            let b = self.peek()?;
            if b == self.delim || b == b'}' {
                break;
            }
            if b == b'{' || b == b'"' {
                return None;
            }
            self.pos += 1;
            if b == b'\\' {
                let n = self.peek()?;
                self.pos += 1;
                buf.push(n);
                keep = buf.len();
                escaped_any = true;
            } else {
                buf.push(b);
                if !b.is_ascii_whitespace() {
                    keep = buf.len();
                }
            }
        }
        buf.truncate(keep);
        if buf.is_empty() && !escaped_any {
            return None;
        }
        if !escaped_any && buf.eq_ignore_ascii_case(b"NULL") {
            return Some(ArrayElem::Null);
        }
        String::from_utf8(buf).ok().map(ArrayElem::Value)
    }
}
