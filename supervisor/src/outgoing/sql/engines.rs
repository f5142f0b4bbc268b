//! Per engine: binding [`Param`]s, reading result columns and values, and what a finished
//! statement reports. One impl of [`Engine`] per sqlx database type: no `Any` driver.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::mysql::{MySql, MySqlArguments, MySqlQueryResult, MySqlRow};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgHasArrayType, PgQueryResult, PgRow, PgTypeInfo, PgTypeKind,
    PgValueFormat, PgValueRef, Postgres,
};
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteQueryResult, SqliteRow};
use sqlx::{Arguments, Column, Database, Decode, Encode, Row, Type, TypeInfo, ValueRef};

use super::binds::Dialect;
use super::values::*;

/// What differs between engines. `args` errors and `column` / `write_value` errors are
/// messages for an `invalid` failure.
pub trait Engine: Database<Arguments: sqlx::IntoArguments<Self>> + Sized {
    const DIALECT: Dialect;
    /// Binds `params`; on PostgreSQL also returns the parameters' type signature, which
    /// prefixes the statement's text so that sqlx's statement cache (keyed by text) never
    /// reuses a statement prepared for other parameter types. `typed_nulls`: NULLs as text
    /// (PostgreSQL: the retry when the server cannot infer an untyped NULL's type).
    fn args(params: &[Param], typed_nulls: bool) -> Result<(Self::Arguments, String), String>;
    /// How a result column is read.
    fn column(col: &Self::Column) -> Result<Col, String>;
    /// Writes value `i` of `row` as JSON.
    fn write_value(row: &Self::Row, i: usize, col: &Col, out: &mut Vec<u8>) -> Result<(), String>;
    /// Rows affected and the last insert id (MySQL, SQLite).
    fn done(r: &Self::QueryResult) -> (u64, Option<i64>);
}

fn add<DB: Database, T>(a: &mut DB::Arguments, v: T) -> Result<(), String>
where
    T: for<'t> Encode<'t, DB> + Type<DB>,
{
    a.add(v).map_err(|e| e.to_string())
}

fn decode_err(col: &Col, e: sqlx::Error) -> String {
    format!("column {:?}: cannot read its value: {e}", col.name)
}

// ----- PostgreSQL -----

/// A NUMERIC of any number of digits, as text, in NUMERIC's binary form on the wire.
#[derive(Debug, Clone)]
pub struct PgNumeric(pub String);

impl Type<Postgres> for PgNumeric {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1700))
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        ty.name() == "NUMERIC"
    }
}

impl PgHasArrayType for PgNumeric {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1231))
    }
}

impl Encode<'_, Postgres> for PgNumeric {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        numeric_from_str(&self.0, buf);
        Ok(IsNull::No)
    }
}

impl Decode<'_, Postgres> for PgNumeric {
    fn decode(v: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        Ok(PgNumeric(match v.format() {
            PgValueFormat::Binary => numeric_to_string(v.as_bytes()?)?,
            PgValueFormat::Text => v.as_str()?.to_owned(),
        }))
    }
}

/// PostgreSQL's epoch for dates and timestamps on the wire.
fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

/// A TIMESTAMP / TIMESTAMPTZ's microseconds since 2000-01-01 → the value, or PostgreSQL's
/// `infinity` / `-infinity`. Checked: sqlx's own decoding panics on those and on years
/// chrono cannot hold.
fn pg_micros(v: PgValueRef<'_>) -> Result<Result<NaiveDateTime, &'static str>, BoxDynError> {
    match v.format() {
        PgValueFormat::Binary => {
            let b: [u8; 8] = v
                .as_bytes()?
                .try_into()
                .map_err(|_| "a timestamp is not 8 bytes")?;
            Ok(match i64::from_be_bytes(b) {
                i64::MAX => Err("infinity"),
                i64::MIN => Err("-infinity"),
                us => Ok(pg_epoch()
                    .checked_add_signed(chrono::TimeDelta::microseconds(us))
                    .ok_or("the timestamp is out of the range a value can be read in")?),
            })
        }
        PgValueFormat::Text => match v.as_str()? {
            "infinity" => Ok(Err("infinity")),
            "-infinity" => Ok(Err("-infinity")),
            t => {
                let t = t.get(..19.min(t.len())).unwrap_or(t);
                Ok(Ok(NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")?))
            }
        },
    }
}

macro_rules! pg_time_type {
    ($name:ident, $oid:literal, $array_oid:literal, $pg:literal) => {
        /// Decoded to its wire text (see [`pg_micros`]).
        #[derive(Debug, Clone)]
        pub struct $name(pub String);

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                PgTypeInfo::with_oid(Oid($oid))
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                ty.name() == $pg
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                PgTypeInfo::with_oid(Oid($array_oid))
            }
        }
    };
}

pg_time_type!(PgTimestamp, 1114, 1115, "TIMESTAMP");
pg_time_type!(PgTimestampTz, 1184, 1185, "TIMESTAMPTZ");
pg_time_type!(PgDate, 1082, 1182, "DATE");

impl Decode<'_, Postgres> for PgTimestamp {
    fn decode(v: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        Ok(PgTimestamp(match pg_micros(v)? {
            Ok(d) => fmt_timestamp(&d),
            Err(inf) => inf.to_owned(),
        }))
    }
}

impl Decode<'_, Postgres> for PgTimestampTz {
    fn decode(v: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        Ok(PgTimestampTz(match pg_micros(v)? {
            Ok(d) => fmt_timestamptz(&d.and_utc()),
            Err(inf) => inf.to_owned(),
        }))
    }
}

impl Decode<'_, Postgres> for PgDate {
    fn decode(v: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        let day = match v.format() {
            PgValueFormat::Binary => {
                let b: [u8; 4] = v
                    .as_bytes()?
                    .try_into()
                    .map_err(|_| "a date is not 4 bytes")?;
                match i32::from_be_bytes(b) {
                    i32::MAX => return Ok(PgDate("infinity".into())),
                    i32::MIN => return Ok(PgDate("-infinity".into())),
                    days => pg_epoch()
                        .date()
                        .checked_add_signed(chrono::TimeDelta::days(i64::from(days)))
                        .ok_or("the date is out of the range a value can be read in")?,
                }
            }
            PgValueFormat::Text => match v.as_str()? {
                inf @ ("infinity" | "-infinity") => return Ok(PgDate(inf.to_owned())),
                t => NaiveDate::parse_from_str(t, "%Y-%m-%d")?,
            },
        };
        Ok(PgDate(fmt_date(&day)))
    }
}

/// A NULL of no declared type: the server infers it from where it is used (`INSERT … VALUES
/// ($1)` into any column).
#[derive(Debug, Clone, Copy)]
pub struct PgUntypedNull;

impl Type<Postgres> for PgUntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl Encode<'_, Postgres> for PgUntypedNull {
    fn encode_by_ref(&self, _buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}

fn pg_array(a: &mut PgArguments, items: &[Param], sig: &mut String) -> Result<(), String> {
    let kinds: Vec<&'static str> = items
        .iter()
        .filter(|p| !matches!(p, Param::Null))
        .map(Param::kind)
        .collect();
    let all = |k: &str| kinds.iter().all(|x| *x == k);
    let nums = kinds.iter().all(|x| *x == "int" || *x == "float");
    macro_rules! arr {
        ($t:ty, $c:literal, |$p:ident| $e:expr) => {{
            let v: Vec<Option<$t>> = items
                .iter()
                .map(|$p| match $p {
                    Param::Null => None,
                    $p => $e,
                })
                .collect();
            sig.push_str(concat!("A", $c));
            add::<Postgres, _>(a, v)
        }};
    }
    if kinds.is_empty() || all("string") {
        arr!(String, "s", |p| match p {
            Param::Text(s) => Some(s.clone()),
            _ => None,
        })
    } else if all("int") {
        arr!(i64, "i", |p| match p {
            Param::Int(n) => Some(*n),
            _ => None,
        })
    } else if nums {
        arr!(f64, "f", |p| match p {
            Param::Int(n) => Some(*n as f64),
            Param::Float(f) => Some(*f),
            _ => None,
        })
    } else if all("bool") {
        arr!(bool, "b", |p| match p {
            Param::Bool(b) => Some(*b),
            _ => None,
        })
    } else if all("decimal") {
        arr!(PgNumeric, "d", |p| match p {
            Param::Decimal(s) => Some(PgNumeric(s.clone())),
            _ => None,
        })
    } else if all("uuid") {
        arr!(uuid::Uuid, "u", |p| match p {
            Param::Uuid(u) => Some(*u),
            _ => None,
        })
    } else if all("datetime with offset") {
        arr!(DateTime<Utc>, "T", |p| match p {
            Param::DateTimeTz(d) => Some(d.with_timezone(&Utc)),
            _ => None,
        })
    } else if all("datetime") {
        arr!(NaiveDateTime, "t", |p| match p {
            Param::DateTime(d) => Some(*d),
            _ => None,
        })
    } else if all("date") {
        arr!(NaiveDate, "D", |p| match p {
            Param::Date(d) => Some(*d),
            _ => None,
        })
    } else {
        Err(format!(
            "a list must hold values of one type (ints, floats, bools, strings, decimals, \
             uuids, datetimes or dates, and nulls), not {}",
            kinds.join(", ")
        ))
    }
}

fn pg_kind(name: &str, ti: &PgTypeInfo) -> Option<Kind> {
    Some(match name {
        "BOOL" => Kind::Bool,
        "INT2" => Kind::I16,
        "INT4" => Kind::I32,
        "INT8" => Kind::I64,
        "FLOAT4" => Kind::F32,
        "FLOAT8" => Kind::F64,
        "NUMERIC" => Kind::Numeric,
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" | "XML" | "UNKNOWN" => {
            Kind::Text
        }
        "TIMESTAMP" => Kind::Timestamp,
        "TIMESTAMPTZ" => Kind::TimestampTz,
        "DATE" => Kind::Date,
        "TIME" => Kind::Time,
        "BYTEA" => Kind::Bytes,
        "UUID" => Kind::Uuid,
        "JSON" | "JSONB" => Kind::Json,
        "VOID" => Kind::Null,
        _ if matches!(ti.kind(), PgTypeKind::Enum(_)) => Kind::Text,
        _ => return None,
    })
}

impl Engine for Postgres {
    const DIALECT: Dialect = Dialect::Postgres;

    fn args(params: &[Param], typed_nulls: bool) -> Result<(PgArguments, String), String> {
        let mut a = PgArguments::default();
        let mut sig = String::with_capacity(params.len() + 12);
        if !params.is_empty() {
            sig.push_str("/*oxbus:");
        }
        for (n, p) in params.iter().enumerate() {
            let at = |e: String| format!("parameter {}: {e}", n + 1);
            let r = match p {
                Param::Null if typed_nulls => {
                    sig.push('N');
                    add::<Postgres, _>(&mut a, Option::<String>::None)
                }
                Param::Null => {
                    sig.push('n');
                    add::<Postgres, _>(&mut a, PgUntypedNull)
                }
                Param::Bool(b) => {
                    sig.push('b');
                    add::<Postgres, _>(&mut a, *b)
                }
                Param::Int(i) => {
                    sig.push('i');
                    add::<Postgres, _>(&mut a, *i)
                }
                Param::Float(f) => {
                    sig.push('f');
                    add::<Postgres, _>(&mut a, *f)
                }
                Param::Text(s) => {
                    sig.push('s');
                    add::<Postgres, _>(&mut a, s.clone())
                }
                Param::Decimal(s) => {
                    sig.push('d');
                    add::<Postgres, _>(&mut a, PgNumeric(s.clone()))
                }
                Param::DateTimeTz(d) => {
                    sig.push('T');
                    add::<Postgres, _>(&mut a, d.with_timezone(&Utc))
                }
                Param::DateTime(d) => {
                    sig.push('t');
                    add::<Postgres, _>(&mut a, *d)
                }
                Param::Date(d) => {
                    sig.push('D');
                    add::<Postgres, _>(&mut a, *d)
                }
                Param::Time(t) => {
                    sig.push('h');
                    add::<Postgres, _>(&mut a, *t)
                }
                Param::Bytes(b) => {
                    sig.push('y');
                    add::<Postgres, _>(&mut a, b.clone())
                }
                Param::Uuid(u) => {
                    sig.push('u');
                    add::<Postgres, _>(&mut a, *u)
                }
                Param::Json(v) => {
                    sig.push('j');
                    add::<Postgres, _>(&mut a, sqlx::types::Json(v.clone()))
                }
                Param::List(items) => pg_array(&mut a, items, &mut sig),
            };
            r.map_err(at)?;
        }
        if !params.is_empty() {
            sig.push_str("*/");
        }
        Ok((a, sig))
    }

    fn column(col: &<Postgres as Database>::Column) -> Result<Col, String> {
        let ti = col.type_info();
        let name = ti.name();
        let (base, array) = match name.strip_suffix("[]") {
            Some(b) => (b, true),
            None => (name, false),
        };
        // No arrays of void or unknown.
        let kind =
            pg_kind(base, ti).filter(|k| !array || !(matches!(k, Kind::Null) || base == "UNKNOWN"));
        match kind {
            Some(kind) => Ok(Col {
                name: col.name().to_owned(),
                kind,
                array,
            }),
            None => Err(format!(
                "column {:?} has type {name}, which has no mapping (cast it, e.g. {}::text)",
                col.name(),
                col.name()
            )),
        }
    }

    fn write_value(row: &PgRow, i: usize, col: &Col, out: &mut Vec<u8>) -> Result<(), String> {
        let raw = row.try_get_raw(i).map_err(|e| decode_err(col, e))?;
        if raw.is_null() || col.kind == Kind::Null {
            write_null(out);
            return Ok(());
        }
        macro_rules! get {
            ($t:ty) => {
                row.try_get_unchecked::<$t, _>(i)
                    .map_err(|e| decode_err(col, e))?
            };
        }
        macro_rules! list {
            ($t:ty, |$v:ident| $w:expr) => {{
                let vs = get!(Vec<Option<$t>>);
                out.push(b'[');
                for (n, x) in vs.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    match x {
                        None => write_null(out),
                        Some($v) => $w,
                    }
                }
                out.push(b']');
            }};
        }
        if col.array {
            match col.kind {
                Kind::I16 => list!(i16, |v| write_i64(i64::from(*v), out)),
                Kind::I32 => list!(i32, |v| write_i64(i64::from(*v), out)),
                Kind::I64 => list!(i64, |v| write_i64(*v, out)),
                Kind::F32 => list!(f32, |v| write_f32(*v, out)),
                Kind::F64 => list!(f64, |v| write_f64(*v, out)),
                Kind::Bool => list!(bool, |v| write_bool(*v, out)),
                Kind::Text => list!(String, |v| write_str(v, out)),
                Kind::Numeric => list!(PgNumeric, |v| write_str(&v.0, out)),
                Kind::Timestamp => list!(PgTimestamp, |v| write_str(&v.0, out)),
                Kind::TimestampTz => list!(PgTimestampTz, |v| write_str(&v.0, out)),
                Kind::Date => list!(PgDate, |v| write_str(&v.0, out)),
                Kind::Time => list!(NaiveTime, |v| write_str(&fmt_time(v), out)),
                Kind::Bytes => list!(Vec<u8>, |v| write_bytes(v, out)),
                Kind::Uuid => list!(uuid::Uuid, |v| write_str(&v.to_string(), out)),
                Kind::Json => list!(sqlx::types::JsonValue, |v| write_json(v, out)),
                _ => return Err(format!("column {:?}: unsupported array", col.name)),
            }
            return Ok(());
        }
        match col.kind {
            Kind::Bool => write_bool(get!(bool), out),
            Kind::I16 => write_i64(i64::from(get!(i16)), out),
            Kind::I32 => write_i64(i64::from(get!(i32)), out),
            Kind::I64 => write_i64(get!(i64), out),
            Kind::F32 => write_f32(get!(f32), out),
            Kind::F64 => write_f64(get!(f64), out),
            Kind::Numeric => write_str(&get!(PgNumeric).0, out),
            Kind::Text => write_str(
                raw.as_str()
                    .map_err(|e| format!("column {:?}: {e}", col.name))?,
                out,
            ),
            Kind::Timestamp => write_str(&get!(PgTimestamp).0, out),
            Kind::TimestampTz => write_str(&get!(PgTimestampTz).0, out),
            Kind::Date => write_str(&get!(PgDate).0, out),
            Kind::Time => write_str(&fmt_time(&get!(NaiveTime)), out),
            Kind::Bytes => write_bytes(
                raw.as_bytes()
                    .map_err(|e| format!("column {:?}: {e}", col.name))?,
                out,
            ),
            Kind::Uuid => write_str(&get!(uuid::Uuid).to_string(), out),
            Kind::Json => write_json(&get!(sqlx::types::JsonValue), out),
            _ => return Err(format!("column {:?}: unsupported type", col.name)),
        }
        Ok(())
    }

    fn done(r: &PgQueryResult) -> (u64, Option<i64>) {
        (r.rows_affected(), None)
    }
}

// ----- MySQL / MariaDB -----

const NO_SPECIAL_DECIMALS: &str =
    "a decimal NaN or Infinity is PostgreSQL's only (this engine's DECIMAL has none)";

impl Engine for MySql {
    const DIALECT: Dialect = Dialect::MySql;

    fn args(params: &[Param], _typed_nulls: bool) -> Result<(MySqlArguments, String), String> {
        let mut a = MySqlArguments::default();
        for (n, p) in params.iter().enumerate() {
            let r = match p {
                Param::Null => add::<MySql, _>(&mut a, Option::<String>::None),
                Param::Bool(b) => add::<MySql, _>(&mut a, *b),
                Param::Int(i) => add::<MySql, _>(&mut a, *i),
                Param::Float(f) => add::<MySql, _>(&mut a, *f),
                Param::Text(s) => add::<MySql, _>(&mut a, s.clone()),
                // A DECIMAL when rust_decimal holds it exactly (it rounds what has more
                // than 28 digits); otherwise the text, which the server converts.
                Param::Decimal(s) if is_special_decimal(s) => Err(NO_SPECIAL_DECIMALS.to_owned()),
                Param::Decimal(s) => match s.parse::<rust_decimal::Decimal>() {
                    Ok(d) if d.to_string() == *s => add::<MySql, _>(&mut a, d),
                    _ => add::<MySql, _>(&mut a, s.clone()),
                },
                Param::DateTimeTz(d) => add::<MySql, _>(&mut a, d.with_timezone(&Utc)),
                Param::DateTime(d) => add::<MySql, _>(&mut a, *d),
                Param::Date(d) => add::<MySql, _>(&mut a, *d),
                Param::Time(t) => add::<MySql, _>(&mut a, *t),
                Param::Bytes(b) => add::<MySql, _>(&mut a, b.clone()),
                Param::Uuid(u) => add::<MySql, _>(&mut a, u.hyphenated().to_string()),
                Param::Json(v) => add::<MySql, _>(&mut a, sqlx::types::Json(v.clone())),
                Param::List(_) => Err("lists (arrays) are PostgreSQL's only".to_owned()),
            };
            r.map_err(|e| format!("parameter {}: {e}", n + 1))?;
        }
        Ok((a, String::new()))
    }

    fn column(col: &<MySql as Database>::Column) -> Result<Col, String> {
        let ti = col.type_info();
        let name = ti.name();
        // A text column of a `_bin` collation carries the BINARY flag too (sqlx then names
        // it BLOB/VARBINARY; MariaDB's JSON is such a LONGTEXT): the collation decides.
        let text = <String as Type<MySql>>::compatible(ti);
        let kind = match name {
            "BOOLEAN" => Kind::Bool,
            "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" if text => {
                Kind::Text
            }
            "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" => Kind::I64,
            n if n.ends_with(" UNSIGNED") => Kind::U64,
            "YEAR" | "BIT" => Kind::U64,
            "FLOAT" => Kind::F32,
            "DOUBLE" => Kind::F64,
            "DECIMAL" => Kind::DecimalText,
            "DATETIME" => Kind::Timestamp,
            "TIMESTAMP" => Kind::TimestampTz,
            "DATE" => Kind::Date,
            "TIME" => Kind::Time,
            "CHAR" | "VARCHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM"
            | "SET" => Kind::Text,
            "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB"
            | "GEOMETRY" => Kind::Bytes,
            "JSON" => Kind::JsonText,
            "NULL" => Kind::Null,
            other => {
                return Err(format!(
                    "column {:?} has type {other}, which has no mapping (CAST it AS CHAR)",
                    col.name()
                ));
            }
        };
        Ok(Col {
            name: col.name().to_owned(),
            kind,
            array: false,
        })
    }

    fn write_value(row: &MySqlRow, i: usize, col: &Col, out: &mut Vec<u8>) -> Result<(), String> {
        let raw = row.try_get_raw(i).map_err(|e| decode_err(col, e))?;
        if raw.is_null() || col.kind == Kind::Null {
            write_null(out);
            return Ok(());
        }
        macro_rules! get {
            ($t:ty) => {
                row.try_get_unchecked::<$t, _>(i)
                    .map_err(|e| decode_err(col, e))?
            };
        }
        match col.kind {
            Kind::Bool => write_bool(get!(i64) != 0, out),
            Kind::I64 => write_i64(get!(i64), out),
            Kind::U64 => write_u64(get!(u64), out),
            Kind::F32 => write_f32(get!(f32), out),
            Kind::F64 => write_f64(get!(f64), out),
            Kind::DecimalText => write_str(&get!(String), out),
            Kind::Timestamp => write_str(&fmt_timestamp(&get!(NaiveDateTime)), out),
            Kind::TimestampTz => write_str(&fmt_timestamptz(&get!(DateTime<Utc>)), out),
            Kind::Date => write_str(&fmt_date(&get!(NaiveDate)), out),
            Kind::Time => write_str(&fmt_time(&get!(NaiveTime)), out),
            Kind::Text => write_str(&get!(String), out),
            Kind::Bytes => write_bytes(&get!(Vec<u8>), out),
            Kind::JsonText => {
                let s = get!(String);
                match serde_json::from_str::<serde_json::Value>(&s) {
                    Ok(v) => write_json(&v, out),
                    Err(e) => return Err(format!("column {:?}: not JSON: {e}", col.name)),
                }
            }
            _ => return Err(format!("column {:?}: unsupported type", col.name)),
        }
        Ok(())
    }

    fn done(r: &MySqlQueryResult) -> (u64, Option<i64>) {
        let id = r.last_insert_id();
        (r.rows_affected(), (id != 0).then_some(id as i64))
    }
}

// ----- SQLite -----

impl Engine for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;

    fn args(params: &[Param], _typed_nulls: bool) -> Result<(SqliteArguments, String), String> {
        let mut a = SqliteArguments::default();
        for (n, p) in params.iter().enumerate() {
            let r = match p {
                Param::Null => add::<Sqlite, _>(&mut a, Option::<String>::None),
                Param::Bool(b) => add::<Sqlite, _>(&mut a, *b),
                Param::Int(i) => add::<Sqlite, _>(&mut a, *i),
                Param::Float(f) => add::<Sqlite, _>(&mut a, *f),
                Param::Decimal(s) if is_special_decimal(s) => Err(NO_SPECIAL_DECIMALS.to_owned()),
                Param::Text(s) | Param::Decimal(s) => add::<Sqlite, _>(&mut a, s.clone()),
                Param::DateTimeTz(d) => add::<Sqlite, _>(
                    &mut a,
                    d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
                ),
                Param::DateTime(d) => add::<Sqlite, _>(&mut a, fmt_timestamp(d)),
                Param::Date(d) => add::<Sqlite, _>(&mut a, fmt_date(d)),
                Param::Time(t) => add::<Sqlite, _>(&mut a, fmt_time(t)),
                Param::Bytes(b) => add::<Sqlite, _>(&mut a, b.clone()),
                Param::Uuid(u) => add::<Sqlite, _>(&mut a, u.hyphenated().to_string()),
                Param::Json(v) => add::<Sqlite, _>(&mut a, v.to_string()),
                Param::List(_) => Err("lists (arrays) are PostgreSQL's only".to_owned()),
            };
            r.map_err(|e| format!("parameter {}: {e}", n + 1))?;
        }
        Ok((a, String::new()))
    }

    fn column(col: &<Sqlite as Database>::Column) -> Result<Col, String> {
        // The declared type; an expression's column has none ("NULL"): its values decide.
        let code = match col.type_info().name() {
            "INTEGER" => "int",
            "REAL" => "float",
            "TEXT" => "text",
            "BLOB" => "bytes",
            "BOOLEAN" => "bool",
            "NUMERIC" => "decimal",
            "DATE" => "date",
            "TIME" => "time",
            "DATETIME" => "datetime",
            _ => "",
        };
        Ok(Col {
            name: col.name().to_owned(),
            kind: Kind::Dynamic(code),
            array: false,
        })
    }

    fn write_value(row: &SqliteRow, i: usize, col: &Col, out: &mut Vec<u8>) -> Result<(), String> {
        let raw = row.try_get_raw(i).map_err(|e| decode_err(col, e))?;
        if raw.is_null() {
            write_null(out);
            return Ok(());
        }
        let class = raw.type_info().name().to_owned();
        drop(raw);
        macro_rules! get {
            ($t:ty) => {
                row.try_get_unchecked::<$t, _>(i)
                    .map_err(|e| decode_err(col, e))?
            };
        }
        let code = col.kind.code();
        // A column's values may be of any storage class: each is written in the column's
        // announced form where it can be (bytes always base64, text always a string),
        // otherwise by its class (a date column's integer stays a number).
        match class.as_str() {
            _ if code == "bytes" => match class.as_str() {
                "BLOB" => write_bytes(&get!(Vec<u8>), out),
                "INTEGER" | "BOOLEAN" => write_bytes(get!(i64).to_string().as_bytes(), out),
                "REAL" => write_bytes(get!(f64).to_string().as_bytes(), out),
                _ => write_bytes(get!(String).as_bytes(), out),
            },
            "INTEGER" | "BOOLEAN" if code == "text" => write_str(&get!(i64).to_string(), out),
            "REAL" if code == "text" => write_str(&get!(f64).to_string(), out),
            "INTEGER" | "BOOLEAN" if code == "bool" => write_bool(get!(i64) != 0, out),
            "INTEGER" | "BOOLEAN" if code == "decimal" => write_str(&get!(i64).to_string(), out),
            "INTEGER" | "BOOLEAN" => write_i64(get!(i64), out),
            "REAL" if code == "decimal" => write_str(&get!(f64).to_string(), out),
            "REAL" => write_f64(get!(f64), out),
            "BLOB" => write_bytes(&get!(Vec<u8>), out),
            _ => write_str(&get!(String), out),
        }
        Ok(())
    }

    fn done(r: &SqliteQueryResult) -> (u64, Option<i64>) {
        let id = r.last_insert_rowid();
        (r.rows_affected(), (id != 0).then_some(id))
    }
}

/// SQLite's column code from its declared code and the first row's value: the declared one
/// when the value fits it (a date, time or datetime column only when the value is text
/// that reads as one), else the value's storage class.
pub fn sqlite_code(row: &SqliteRow, i: usize, declared: &'static str) -> &'static str {
    let Ok(raw) = row.try_get_raw(i) else {
        return if declared.is_empty() {
            "text"
        } else {
            declared
        };
    };
    if raw.is_null() {
        return if declared.is_empty() {
            "text"
        } else {
            declared
        };
    }
    let class = raw.type_info().name().to_owned();
    drop(raw);
    let text = || row.try_get_unchecked::<String, _>(i).ok();
    let fits = match (declared, class.as_str()) {
        ("", _) => false,
        ("int" | "bool", c) => c == "INTEGER" || c == "BOOLEAN",
        ("float", c) => c == "REAL" || c == "INTEGER",
        ("decimal", "INTEGER" | "REAL") => true,
        ("decimal", "TEXT") => text().is_some_and(|t| is_decimal(&t)),
        ("text", c) => c == "TEXT",
        ("bytes", c) => c == "BLOB",
        ("date", "TEXT") => {
            text().is_some_and(|t| NaiveDate::parse_from_str(&t, "%Y-%m-%d").is_ok())
        }
        ("time", "TEXT") => text().is_some_and(|t| {
            NaiveTime::parse_from_str(&t, "%H:%M:%S%.f").is_ok()
                || NaiveTime::parse_from_str(&t, "%H:%M").is_ok()
        }),
        ("datetime", "TEXT") => text().is_some_and(|t| is_datetime(&t)),
        _ => false,
    };
    if fits {
        declared
    } else {
        sqlite_code_from_value(row, i)
    }
}

/// SQLite's column code when its declared type said nothing: from the first row's value.
pub fn sqlite_code_from_value(row: &SqliteRow, i: usize) -> &'static str {
    match row
        .try_get_raw(i)
        .map(|v| v.type_info().name().to_owned())
        .as_deref()
    {
        Ok("INTEGER") => "int",
        Ok("REAL") => "float",
        Ok("BLOB") => "bytes",
        _ => "text",
    }
}
