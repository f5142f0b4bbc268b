//! How the admin subcommands print an answer: as the server sent it (`--output json`, or
//! when it is not JSON) or as text, and the time format of the text; and how a printed
//! command line quotes a word ([`shell_word`]). Printing only: no requests here.

use super::args::Output;
use super::client::Answer;

/// Prints `answer`: its text as the server sent it when JSON is asked for or it is not
/// JSON; otherwise `text` prints its document.
pub fn print(answer: Answer, output: Output, text: impl FnOnce(&serde_json::Value)) {
    match (output, answer.doc) {
        (Output::Json, _) | (_, None) => println!("{}", answer.text.trim_end()),
        (Output::Text, Some(d)) => text(&d),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `n` and the noun, singular for 1: `1 job`, `3 jobs`, `0 changes`. `many` is the plural
/// (`entries`), given whole since English plurals are not all `+s`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A JSON number as `count` words; a value that is not a whole number counts as 0.
pub fn count_of(v: &serde_json::Value, one: &str, many: &str) -> String {
    count(v.as_u64().unwrap_or(0), one, many)
}

/// An expiry in seconds as text: `never` for 0, else `60 s`.
pub fn expiry(v: &serde_json::Value) -> String {
    match v.as_u64() {
        Some(0) => "never".into(),
        Some(s) => format!("{s} s"),
        None => v.to_string(),
    }
}

/// `s` as one word of a shell command line: as it is when it needs no quoting, else in
/// single quotes.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_word_quotes_only_what_needs_it() {
        assert_eq!(super::shell_word("/srv/oxbus-env"), "/srv/oxbus-env");
        assert_eq!(super::shell_word("http://h:1"), "http://h:1");
        assert_eq!(super::shell_word("/tmp/my env"), "'/tmp/my env'");
        assert_eq!(super::shell_word("it's"), r"'it'\''s'");
        assert_eq!(super::shell_word("$HOME"), "'$HOME'");
        assert_eq!(super::shell_word(""), "''");
    }

    #[test]
    fn count_says_one_thing_and_many_things() {
        assert_eq!(super::count(1, "job", "jobs"), "1 job");
        assert_eq!(super::count(0, "job", "jobs"), "0 jobs");
        assert_eq!(super::count(2, "entry", "entries"), "2 entries");
        assert_eq!(
            super::count_of(&serde_json::json!(1), "change", "changes"),
            "1 change"
        );
    }

    #[test]
    fn an_expiry_of_zero_is_never() {
        assert_eq!(super::expiry(&serde_json::json!(0)), "never");
        assert_eq!(super::expiry(&serde_json::json!(60)), "60 s");
    }

    #[test]
    fn utc_formats_unix_milliseconds() {
        for (ms, want) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400_000, "2000-02-29 00:00:00 UTC"),
            (1_795_651_323_456, "2026-11-26 00:02:03 UTC"),
            (4_107_542_400_000, "2100-03-01 00:00:00 UTC"),
        ] {
            assert_eq!(super::utc(ms), want);
        }
    }
}
