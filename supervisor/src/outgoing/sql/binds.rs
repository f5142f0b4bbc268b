//! `:name` placeholders (SQLAlchemy's style) rewritten into the engine's positional form:
//! `$1…` on PostgreSQL (the same name reuses its number), `?` elsewhere (the same name binds
//! again). Skipped: string literals (`'…'` with `''` escapes; PostgreSQL's `E'…'` is read as
//! a plain literal, so a `\'` inside one is not understood), double-quoted and backquoted
//! identifiers, `--` and `/* */` comments, PostgreSQL's `::` casts and `$n` / dollar-quoted
//! bodies are left as they are.

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

/// Rewrites every `:name` of `sql` outside literals, quoted identifiers and comments.
pub fn rewrite(sql: &str, style: Style) -> Rewritten {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                // To the closing quote; a doubled quote is an escaped one.
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b'$' if style == Style::Dollar => {
                // A dollar-quoted body `$tag$…$tag$` (not `$1`): skipped whole.
                let start = i;
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let is_tag = j < b.len() && b[j] == b'$' && !b[i + 1].is_ascii_digit();
                if is_tag {
                    let tag = &sql[start..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => i = b.len(),
                    }
                } else {
                    i += 1;
                }
            }
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
            Style::Dollar,
        );
        assert_eq!(
            r.sql,
            "SELECT $1::int, ':x' AS \":y\", `:z`, 'it''s :q' -- :c\n /* :d */ FROM t WHERE b = $2 AND c = $1"
        );
        assert_eq!(r.names, vec!["a", "b"]);
        let r = rewrite("SELECT :a, :b, :a", Style::Question);
        assert_eq!(r.sql, "SELECT ?, ?, ?");
        assert_eq!(r.names, vec!["a", "b", "a"]);
    }

    #[test]
    fn dollar_quotes_time_literals_and_unclosed_quotes_are_left_alone() {
        let r = rewrite("SELECT $f$ :no $f$, $1, '10:30', x:y", Style::Dollar);
        assert_eq!(r.sql, "SELECT $f$ :no $f$, $1, '10:30', x:y");
        assert!(r.names.is_empty());
        let r = rewrite("SELECT ':open", Style::Question);
        assert_eq!(r.sql, "SELECT ':open");
        let r = rewrite("SELECT :é", Style::Question);
        assert_eq!(r.sql, "SELECT :é");
    }
}
