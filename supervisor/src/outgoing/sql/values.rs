//! Parameters as the wire carries them (SPEC.md `out.sql`: JSON scalars, lists, `{"$t": TAG,
//! "v": …}` tags) and result columns: what each column decodes as and the type CODE it is
//! announced with. Engine-specific binding and decoding is in `engines.rs`.

use base64::Engine as _;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use serde_json::Value;

/// One parameter, parsed from its JSON form.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// A JSON list: an array (PostgreSQL only).
    List(Vec<Param>),
    /// A decimal's text, checked to be `[-+]digits[.digits]`.
    Decimal(String),
    DateTimeTz(DateTime<FixedOffset>),
    DateTime(NaiveDateTime),
    Date(NaiveDate),
    Time(NaiveTime),
    Bytes(Vec<u8>),
    Uuid(uuid::Uuid),
    Json(Value),
}

impl Param {
    /// Parses one parameter; the error says what is wrong with it (without its position).
    pub fn parse(v: Value) -> Result<Param, String> {
        Ok(match v {
            Value::Null => Param::Null,
            Value::Bool(b) => Param::Bool(b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Param::Int(i)
                } else if n.is_u64() {
                    // Beyond i64: bound as a decimal.
                    Param::Decimal(n.to_string())
                } else {
                    Param::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Param::Text(s),
            Value::Array(items) => Param::List(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::Array(_) => Err("nested lists are not supported".to_owned()),
                        v => Param::parse(v),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(mut m) => {
                let tag = match m.remove("$t") {
                    Some(Value::String(t)) => t,
                    _ => return Err("an object must be tagged: {\"$t\": TAG, \"v\": VALUE}".into()),
                };
                let v = m.remove("v").unwrap_or(Value::Null);
                if tag == "json" {
                    return Ok(Param::Json(v));
                }
                let Value::String(s) = v else {
                    return Err(format!("tag {tag:?}: v must be a string"));
                };
                let bad = |what: &str| format!("tag {tag:?}: {s:?} is not {what}");
                match tag.as_str() {
                    "decimal" => {
                        if !is_decimal(&s) && !is_special_decimal(&s) {
                            return Err(bad(
                                "a decimal ([-]digits[.digits], NaN, Infinity or -Infinity)",
                            ));
                        }
                        Param::Decimal(s)
                    }
                    "datetime" => match parse_datetime(&s) {
                        Some(p) => p,
                        None => return Err(bad("an ISO 8601 date and time")),
                    },
                    "date" => Param::Date(
                        NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                            .map_err(|_| bad("an ISO 8601 date"))?,
                    ),
                    "time" => Param::Time(
                        NaiveTime::parse_from_str(&s, "%H:%M:%S%.f")
                            .or_else(|_| NaiveTime::parse_from_str(&s, "%H:%M"))
                            .map_err(|_| bad("an ISO 8601 time without offset"))?,
                    ),
                    "bytes" => Param::Bytes(
                        base64::engine::general_purpose::STANDARD
                            .decode(s.as_bytes())
                            .map_err(|_| bad("base64"))?,
                    ),
                    "uuid" => Param::Uuid(uuid::Uuid::parse_str(&s).map_err(|_| bad("a UUID"))?),
                    other => return Err(format!("unknown tag {other:?}")),
                }
            }
        })
    }

    /// The JSON type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Param::Null => "null",
            Param::Bool(_) => "bool",
            Param::Int(_) => "int",
            Param::Float(_) => "float",
            Param::Text(_) => "string",
            Param::List(_) => "list",
            Param::Decimal(_) => "decimal",
            Param::DateTimeTz(_) => "datetime with offset",
            Param::DateTime(_) => "datetime",
            Param::Date(_) => "date",
            Param::Time(_) => "time",
            Param::Bytes(_) => "bytes",
            Param::Uuid(_) => "uuid",
            Param::Json(_) => "json",
        }
    }
}

fn parse_datetime(s: &str) -> Option<Param> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(Param::DateTimeTz(d));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(d) = DateTime::parse_from_str(s, f) {
            return Some(Param::DateTimeTz(d));
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, f) {
            return Some(Param::DateTime(d));
        }
    }
    None
}

/// Whether `s` reads as a datetime parameter would (ISO 8601, with or without offset).
pub fn is_datetime(s: &str) -> bool {
    parse_datetime(s).is_some()
}

/// The decimals that are no number: `NaN`, `Infinity`, `-Infinity` (PostgreSQL's NUMERIC
/// holds them; other engines refuse them).
pub fn is_special_decimal(s: &str) -> bool {
    matches!(s, "NaN" | "Infinity" | "-Infinity" | "+Infinity")
}

/// `[-+]digits[.digits]` (or `.digits`), nothing else.
pub fn is_decimal(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    (!int.is_empty() || !frac.is_empty())
        && int.bytes().all(|c| c.is_ascii_digit())
        && frac.bytes().all(|c| c.is_ascii_digit())
}

/// How a result column is read, per engine type; each has its wire CODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    I16,
    I32,
    I64,
    U64,
    F32,
    F64,
    Bool,
    Text,
    /// PostgreSQL NUMERIC, decoded from its binary form (any number of digits).
    Numeric,
    /// A decimal the driver gives as text (MySQL DECIMAL).
    DecimalText,
    Timestamp,
    TimestampTz,
    Date,
    Time,
    Bytes,
    Uuid,
    Json,
    /// JSON stored as text (MySQL's JSON type): parsed.
    JsonText,
    /// SQLite: by each value's storage class, announced as `code`.
    Dynamic(&'static str),
    /// A column whose every value is NULL (MySQL's NULL type).
    Null,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::I16 | Kind::I32 | Kind::I64 | Kind::U64 => "int",
            Kind::F32 | Kind::F64 => "float",
            Kind::Bool => "bool",
            Kind::Text | Kind::Null => "text",
            Kind::Numeric | Kind::DecimalText => "decimal",
            Kind::Timestamp => "datetime",
            Kind::TimestampTz => "datetimetz",
            Kind::Date => "date",
            Kind::Time => "time",
            Kind::Bytes => "bytes",
            Kind::Uuid => "uuid",
            Kind::Json | Kind::JsonText => "json",
            Kind::Dynamic("") => "text",
            Kind::Dynamic(c) => c,
        }
    }
}

/// A result column: its name, how it is read, whether it is an array (PostgreSQL).
#[derive(Debug, Clone)]
pub struct Col {
    pub name: String,
    pub kind: Kind,
    pub array: bool,
}

impl Col {
    pub fn code(&self) -> String {
        if self.array {
            format!("{}[]", self.kind.code())
        } else {
            self.kind.code().to_owned()
        }
    }
}

/// Writes the `"columns": […], "types": […]` members (no braces, no trailing comma).
pub fn write_header(cols: &[Col], out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"columns\":[");
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&c.name, out);
    }
    out.extend_from_slice(b"],\"types\":[");
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&c.code(), out);
    }
    out.push(b']');
}

/// A JSON string.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub fn write_i64(n: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa(n).as_bytes());
}

fn itoa(n: i64) -> String {
    n.to_string()
}

pub fn write_u64(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// A float: a JSON number, or the string `"NaN"`, `"Infinity"` or `"-Infinity"` (JSON has no
/// such numbers).
pub fn write_f64(f: f64, out: &mut Vec<u8>) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        let _ = serde_json::to_writer(&mut *out, &f);
    }
}

/// A 4-byte float by its shortest text (REAL 0.1 is 0.1, not 0.10000000149011612).
pub fn write_f32(f: f32, out: &mut Vec<u8>) {
    let wide = if f.is_finite() {
        f.to_string().parse::<f64>().unwrap_or(f64::from(f))
    } else {
        f64::from(f)
    };
    write_f64(wide, out);
}

pub fn write_bool(b: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

pub fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

pub fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .as_bytes(),
    );
    out.push(b'"');
}

pub fn write_json(v: &Value, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, v);
}

pub fn fmt_timestamp(d: &NaiveDateTime) -> String {
    d.format("%Y-%m-%dT%H:%M:%S%.f").to_string()
}

pub fn fmt_timestamptz(d: &DateTime<Utc>) -> String {
    d.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

pub fn fmt_date(d: &NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub fn fmt_time(t: &NaiveTime) -> String {
    t.format("%H:%M:%S%.f").to_string()
}

/// PostgreSQL NUMERIC's binary form → its decimal text (`NaN`, `Infinity`, `-Infinity` too).
pub fn numeric_to_string(b: &[u8]) -> Result<String, String> {
    let bad = || "malformed NUMERIC value".to_owned();
    let word = |i: usize| -> Result<u16, String> {
        b.get(i * 2..i * 2 + 2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .ok_or_else(bad)
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i64;
    let sign = word(2)?;
    let dscale = word(3)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |k: i64| -> u16 {
        if k >= 0 && (k as usize) < digits.len() {
            digits[k as usize]
        } else {
            0
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                s.push_str(&digit(k).to_string());
            } else {
                s.push_str(&format!("{:04}", digit(k)));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut k = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(k)));
            k += 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Ok(s)
}

/// A decimal's text (checked by [`is_decimal`]) → PostgreSQL NUMERIC's binary form.
pub fn numeric_from_str(s: &str, buf: &mut Vec<u8>) {
    let special: Option<u16> = match s {
        "NaN" => Some(0xC000),
        "Infinity" | "+Infinity" => Some(0xD000),
        "-Infinity" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        // No digits, weight 0, the sign word, scale 0.
        buf.extend_from_slice(&[0, 0, 0, 0]);
        buf.extend_from_slice(&sign.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        return;
    }
    let neg = s.starts_with('-');
    let body = s.trim_start_matches(['-', '+']);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let dscale = frac.len();
    // Groups of four digits aligned on the point.
    let pad_int = (4 - int.len() % 4) % 4;
    let int_digits: String = "0".repeat(pad_int) + int;
    let pad_frac = (4 - frac.len() % 4) % 4;
    let frac_digits: String = frac.to_owned() + &"0".repeat(pad_frac);
    let group = |s: &str| -> Vec<u16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| c.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0')))
            .collect()
    };
    let mut groups = group(&int_digits);
    let mut weight = groups.len() as i64 - 1;
    groups.extend(group(&frac_digits));
    // Leading zero groups lower the weight; trailing ones are dropped.
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= lead as i64;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    buf.extend_from_slice(&(groups.len() as u16).to_be_bytes());
    buf.extend_from_slice(&(weight as i16).to_be_bytes());
    let sign: u16 = if neg && !groups.is_empty() { 0x4000 } else { 0 };
    buf.extend_from_slice(&sign.to_be_bytes());
    buf.extend_from_slice(&(dscale as u16).to_be_bytes());
    for g in groups {
        buf.extend_from_slice(&g.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_round_trip_through_the_binary_form() {
        for s in [
            "0",
            "1",
            "-1",
            "10000",
            "12345678901234567890123456789012345678.123456789012345678",
            "0.0001",
            "0.00000001",
            "-0.5",
            "1.10",
            "99990000",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            let mut buf = Vec::new();
            numeric_from_str(s, &mut buf);
            assert_eq!(numeric_to_string(&buf).unwrap(), s, "{s}");
        }
    }

    #[test]
    fn tags_parse_and_bad_ones_say_why() {
        let p = |v: Value| Param::parse(v);
        assert_eq!(
            p(serde_json::json!({"$t": "decimal", "v": "1.50"})).unwrap(),
            Param::Decimal("1.50".into())
        );
        assert!(matches!(
            p(serde_json::json!({"$t": "datetime", "v": "2024-05-01T10:00:00+02:00"})).unwrap(),
            Param::DateTimeTz(_)
        ));
        assert!(matches!(
            p(serde_json::json!({"$t": "datetime", "v": "2024-05-01T10:00:00.123456"})).unwrap(),
            Param::DateTime(_)
        ));
        assert_eq!(
            p(serde_json::json!({"$t": "bytes", "v": "AAEA"})).unwrap(),
            Param::Bytes(vec![0, 1, 0])
        );
        assert!(
            p(serde_json::json!({"$t": "decimal", "v": "1e5"}))
                .unwrap_err()
                .contains("decimal")
        );
        assert!(
            p(serde_json::json!({"$t": "nope", "v": "x"}))
                .unwrap_err()
                .contains("nope")
        );
        assert!(
            p(serde_json::json!({"a": 1}))
                .unwrap_err()
                .contains("tagged")
        );
        assert_eq!(
            p(serde_json::json!(18446744073709551615u64)).unwrap(),
            Param::Decimal("18446744073709551615".into())
        );
    }

    #[test]
    fn floats_that_json_cannot_hold_are_strings_and_reals_keep_their_short_form() {
        let w = |f: f64| {
            let mut o = Vec::new();
            write_f64(f, &mut o);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(w(f64::NAN), "\"NaN\"");
        assert_eq!(w(f64::INFINITY), "\"Infinity\"");
        assert_eq!(w(f64::NEG_INFINITY), "\"-Infinity\"");
        assert_eq!(w(1.5), "1.5");
        let mut o = Vec::new();
        write_f32(0.1, &mut o);
        assert_eq!(o, b"0.1");
        let mut o = Vec::new();
        write_f32(f32::NEG_INFINITY, &mut o);
        assert_eq!(o, b"\"-Infinity\"");
        assert_eq!(
            Param::parse(serde_json::json!({"$t": "decimal", "v": "NaN"})).unwrap(),
            Param::Decimal("NaN".into())
        );
        assert!(Param::parse(serde_json::json!({"$t": "decimal", "v": "nan"})).is_err());
    }
}
