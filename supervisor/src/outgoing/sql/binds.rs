//! `:name` placeholders (SQLAlchemy's style) rewritten into the engine's positional form:
//! `$1…` on PostgreSQL (the same name reuses its number), `?` elsewhere (the same name binds
//! again). Skipped, per dialect: string literals (`'…'` with `''` escapes; backslash escapes
//! in MySQL's strings and PostgreSQL's `E'…'`; MySQL's `"…"` strings), quoted identifiers
//! (`"…"`, `` `…` ``, SQLite's `[…]`), `--` comments (MySQL: `-- ` with a space), MySQL's `#`
//! comments, `/* */` comments (nested on PostgreSQL), PostgreSQL's `::` casts, `$n` and
//! dollar-quoted bodies. The same reading gives each statement's leading keywords
//! ([`heads`]), which decide what a statement may do on a pooled connection.
/// The SQL dialect a statement is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn style(self) -> Style {
        match self {
            Dialect::Postgres => Style::Dollar,
            Dialect::MySql | Dialect::Sqlite => Style::Question,
        }
    }
}

/// The positional style of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `$1`, `$2`… (PostgreSQL); a name used twice keeps its first number.
    Dollar,
    /// `?` (MySQL, MariaDB, SQLite); a name used twice is bound twice.
    Question,
}

/// A statement rewritten: its SQL and the names to bind, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub sql: String,
    pub names: Vec<String>,
}

/// When a literal, quoted identifier or comment starts at `i`: the index just after it (the
/// end of the text when it is not closed).
fn skip(sql: &str, i: usize, d: Dialect) -> Option<usize> {
    let b = sql.as_bytes();
    let quoted = |q: u8, backslash: bool| {
        // To the closing quote; a doubled quote is an escaped one.
        let mut j = i + 1;
        while j < b.len() {
            if backslash && b[j] == b'\\' {
                j += 2;
                continue;
            }
            if b[j] == q {
                if j + 1 < b.len() && b[j + 1] == q {
                    j += 2;
                    continue;
                }
                return (j + 1).min(b.len());
            }
            j += 1;
        }
        b.len()
    };
    let to_eol = |from: usize| {
        let mut j = from;
        while j < b.len() && b[j] != b'\n' {
            j += 1;
        }
        j
    };
    Some(match b[i] {
        b'\'' => {
            let e_string = d == Dialect::Postgres
                && i > 0
                && matches!(b[i - 1], b'e' | b'E')
                && (i < 2 || !is_ident_byte(b[i - 2]));
            quoted(b'\'', d == Dialect::MySql || e_string)
        }
        b'"' => quoted(b'"', d == Dialect::MySql),
        b'`' => quoted(b'`', false),
        b'[' if d == Dialect::Sqlite => match sql[i..].find(']') {
            Some(e) => i + e + 1,
            None => b.len(),
        },
        b'#' if d == Dialect::MySql => to_eol(i),
        b'-' if b.get(i + 1) == Some(&b'-')
            && (d != Dialect::MySql
                || b.get(i + 2)
                    .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control())) =>
        {
            to_eol(i)
        }
        b'/' if b.get(i + 1) == Some(&b'*') => {
            let nested = d == Dialect::Postgres;
            let mut depth = 1;
            let mut j = i + 2;
            while j < b.len() {
                if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        return Some(j);
                    }
                    continue;
                }
                if nested && b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                    continue;
                }
                j += 1;
            }
            b.len()
        }
        b'$' if d == Dialect::Postgres => {
            // A dollar-quoted body `$tag$…$tag$` (not `$1`): skipped whole.
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j < b.len() && b[j] == b'$' && !b[i + 1].is_ascii_digit() {
                let tag = &sql[i..=j];
                match sql[j + 1..].find(tag) {
                    Some(end) => j + 1 + end + tag.len(),
                    None => b.len(),
                }
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

/// Rewrites every `:name` of `sql` outside literals, quoted identifiers and comments.
pub fn rewrite(sql: &str, d: Dialect) -> Rewritten {
    let style = d.style();
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if let Some(end) = skip(sql, i, d) {
            i = end;
            continue;
        }
        match b[i] {
            b':' if b.get(i + 1) == Some(&b':') => i += 2,
            b':' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                && (i == 0 || !is_ident_byte(b[i - 1])) =>
            {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && is_ident_byte(b[j]) {
                    j += 1;
                }
                let name = &sql[start..j];
                out.push_str(&sql[copied..i]);
                match style {
                    Style::Question => {
                        out.push('?');
                        names.push(name.to_owned());
                    }
                    Style::Dollar => {
                        let n = match names.iter().position(|x| x == name) {
                            Some(p) => p + 1,
                            None => {
                                names.push(name.to_owned());
                                names.len()
                            }
                        };
                        out.push('$');
                        out.push_str(&n.to_string());
                    }
                }
                i = j;
                copied = j;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    Rewritten { sql: out, names }
}

/// Each statement's leading keywords (up to three, upper-cased), outside comments: `SET
/// LOCAL x = 1; BEGIN` gives `[["SET", "LOCAL", "X"], ["BEGIN"]]`. Words stop at the first
/// other token. Empty statements are left out.
pub fn heads(sql: &str, d: Dialect) -> Vec<Vec<String>> {
    let b = sql.as_bytes();
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut open = true;
    let mut started = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let comment = matches!(c, b'-' | b'/' | b'#');
        if let Some(end) = skip(sql, i, d) {
            if !comment {
                open = false;
                started = true;
            }
            i = end;
            continue;
        }
        if c == b';' {
            if started {
                out.push(std::mem::take(&mut cur));
            }
            open = true;
            started = false;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if is_ident_byte(c) {
            let mut j = i;
            while j < b.len() && is_ident_byte(b[j]) {
                j += 1;
            }
            if open && cur.len() < 3 {
                cur.push(sql[i..j].to_ascii_uppercase());
            }
            started = true;
            i = j;
        } else {
            open = false;
            started = true;
            i += 1;
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// Why `sql` may not run as given (`None`: it may): transaction control outside
/// begin/commit, and statements whose effect would outlive the call on a pooled connection
/// (session settings, the current database). `in_tx`: inside an open transaction.
pub fn refused(sql: &str, d: Dialect, in_tx: bool) -> Option<String> {
    for h in heads(sql, d) {
        let w = |n: usize| h.get(n).map_or("", String::as_str);
        let why = match w(0) {
            "BEGIN" | "START" | "COMMIT" | "END" | "ABORT" => {
                Some(format!("{} controls the transaction", w(0)))
            }
            "ROLLBACK" if !(in_tx && (w(1) == "TO" || (w(1) == "WORK" && w(2) == "TO"))) => {
                Some("ROLLBACK controls the transaction".to_owned())
            }
            "SAVEPOINT" | "RELEASE" if !in_tx => Some(format!("{} outside a transaction", w(0))),
            "SET" if in_tx && matches!(w(1), "LOCAL" | "TRANSACTION") => None,
            "SET" | "RESET" => Some(format!(
                "{} would change the pooled connection's session for later calls \
                 (SET LOCAL inside a transaction is fine)",
                w(0)
            )),
            "USE" => {
                Some("USE would change the pooled connection's database for later calls".to_owned())
            }
            _ => None,
        };
        if let Some(why) = why {
            return Some(format!(
                "{why}: open and end transactions with begin/commit/rollback (transaction())"
            ));
        }
    }
    None
}

/// Whether `sql` is one INSERT or REPLACE (SQLite's last insert id is only its own then).
pub fn is_insert(sql: &str, d: Dialect) -> bool {
    let h = heads(sql, d);
    h.len() == 1 && matches!(h[0].first().map(String::as_str), Some("INSERT" | "REPLACE"))
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_positions_outside_literals_comments_and_casts() {
        let r = rewrite(
            "SELECT :a::int, ':x' AS \":y\", `:z`, 'it''s :q' -- :c\n /* :d */ FROM t WHERE b = :b AND c = :a",
            Dialect::Postgres,
        );
        assert_eq!(
            r.sql,
            "SELECT $1::int, ':x' AS \":y\", `:z`, 'it''s :q' -- :c\n /* :d */ FROM t WHERE b = $2 AND c = $1"
        );
        assert_eq!(r.names, vec!["a", "b"]);
        let r = rewrite("SELECT :a, :b, :a", Dialect::MySql);
        assert_eq!(r.sql, "SELECT ?, ?, ?");
        assert_eq!(r.names, vec!["a", "b", "a"]);
    }

    #[test]
    fn dollar_quotes_time_literals_and_unclosed_quotes_are_left_alone() {
        let r = rewrite("SELECT $f$ :no $f$, $1, '10:30', x:y", Dialect::Postgres);
        assert_eq!(r.sql, "SELECT $f$ :no $f$, $1, '10:30', x:y");
        assert!(r.names.is_empty());
        let r = rewrite("SELECT ':open", Dialect::Sqlite);
        assert_eq!(r.sql, "SELECT ':open");
        let r = rewrite("SELECT :é", Dialect::Sqlite);
        assert_eq!(r.sql, "SELECT :é");
    }

    #[test]
    fn mysql_backslashes_double_quoted_strings_and_hash_comments() {
        let r = rewrite(
            r#"SELECT 'it\'s :no', "say \":no\"", `:id` # :c
 -- :d
 FROM t WHERE a = :a"#,
            Dialect::MySql,
        );
        assert_eq!(r.names, vec!["a"]);
        assert!(r.sql.ends_with("WHERE a = ?"), "{}", r.sql);
        // Without the space, `--` is two minuses in MySQL.
        assert_eq!(rewrite("SELECT 1--:a", Dialect::MySql).names, vec!["a"]);
        // The same text in PostgreSQL: `\` is no escape in '…', "…" is an identifier.
        let r = rewrite(r"SELECT 'a\', :a, E'b\':no', :b", Dialect::Postgres);
        assert_eq!(r.names, vec!["a", "b"]);
        assert_eq!(r.sql, r"SELECT 'a\', $1, E'b\':no', $2");
    }

    #[test]
    fn postgres_comments_nest() {
        let r = rewrite("SELECT /* a /* :x */ :y */ :z", Dialect::Postgres);
        assert_eq!(r.names, vec!["z"]);
        let r = rewrite("SELECT /* a /* :x */ :y", Dialect::Sqlite);
        assert_eq!(r.names, vec!["y"]);
        assert_eq!(rewrite("SELECT [:x], :y", Dialect::Sqlite).names, vec!["y"]);
    }

    #[test]
    fn transaction_control_and_session_settings_are_refused_where_they_would_leak() {
        let no = |sql: &str, tx: bool| refused(sql, Dialect::Postgres, tx).is_some();
        for sql in [
            "BEGIN",
            "  /* c */ -- x\n begin work",
            "START TRANSACTION",
            "commit",
            "END",
            "ROLLBACK",
            "SET search_path = x",
            "RESET ALL",
            "SELECT 1; BEGIN",
            "SAVEPOINT a",
        ] {
            assert!(no(sql, false), "{sql}");
        }
        for sql in ["BEGIN", "COMMIT", "ROLLBACK", "SET x = 1", "END"] {
            assert!(no(sql, true), "{sql} in a tx");
        }
        for sql in [
            "SAVEPOINT a",
            "ROLLBACK TO SAVEPOINT a",
            "RELEASE a",
            "SET LOCAL x = 1",
        ] {
            assert!(!no(sql, true), "{sql} in a tx");
        }
        for sql in [
            "SELECT 'BEGIN'",
            "UPDATE t SET a = 1",
            "/* BEGIN */ SELECT 1",
            "\"begin\"",
        ] {
            assert!(!no(sql, false), "{sql}");
        }
        assert!(refused("# x\nUSE other", Dialect::MySql, false).is_some());
        assert!(is_insert(" insert into t values (1)", Dialect::Sqlite));
        assert!(is_insert("REPLACE INTO t VALUES (1);", Dialect::Sqlite));
        assert!(!is_insert("UPDATE t SET a = 1", Dialect::Sqlite));
        assert!(!is_insert(
            "INSERT INTO t VALUES (1); DELETE FROM t",
            Dialect::Sqlite
        ));
    }
}
