//! Who may read a secret from Python (`self.secrets[name]`): a list of service-name
//! patterns, each an exact name or a glob whose `*` stands for any run of characters (dots
//! included: `crm.*` names `crm.get` and `crm.sync.daily`). An empty list — the default,
//! and every secret stored before issue 19 — lets no service read it. docs/OUTGOING.md.

/// At most this many patterns per secret.
pub const MAX_PATTERNS: usize = 100;
/// At most this many characters per pattern.
pub const MAX_PATTERN_LEN: usize = 200;

/// Why a list of patterns was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("services: at most {MAX_PATTERNS} patterns, not {0}")]
    TooMany(usize),
    #[error(
        "services: {0:?} is not a service-name pattern (1-{MAX_PATTERN_LEN} characters, no \
         spaces or control characters; `*` matches any run of characters)"
    )]
    Bad(String),
    #[error("services: {0:?} is listed twice")]
    Duplicate(String),
}

/// Checks a secret's `services` list.
pub fn validate_patterns(patterns: &[String]) -> Result<(), PatternError> {
    if patterns.len() > MAX_PATTERNS {
        return Err(PatternError::TooMany(patterns.len()));
    }
    for (i, p) in patterns.iter().enumerate() {
        let ok = !p.is_empty()
            && p.chars().count() <= MAX_PATTERN_LEN
            && !p.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(PatternError::Bad(p.clone()));
        }
        if patterns[..i].contains(p) {
            return Err(PatternError::Duplicate(p.clone()));
        }
    }
    Ok(())
}

/// Whether `service` is named by `pattern` (an exact name, or a glob with `*`).
pub fn matches(pattern: &str, service: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = service.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: exact
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether any of `patterns` names `service`.
pub fn allowed(patterns: &[String], service: &str) -> bool {
    patterns.iter().any(|p| matches(p, service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_globs() {
        assert!(matches("crm.get", "crm.get"));
        assert!(!matches("crm.get", "crm.get2"));
        assert!(!matches("crm.get", "crm.ge"));
        assert!(matches("crm.*", "crm.get"));
        assert!(matches("crm.*", "crm.sync.daily"));
        assert!(matches("crm.*", "crm."));
        assert!(!matches("crm.*", "crm"));
        assert!(!matches("crm.*", "billing.crm.get"));
        assert!(matches("*", "anything"));
        assert!(matches("*.get", "crm.get"));
        assert!(!matches("*.get", "crm.get.x"));
        assert!(matches("a*b*c", "a-b-c"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        // The suffix must not overlap the prefix.
        assert!(!matches("ab*ba", "aba"));
        assert!(matches("ab*ba", "abba"));
    }

    #[test]
    fn any_pattern_allows() {
        let p = vec!["billing.charge".to_owned(), "crm.*".to_owned()];
        assert!(allowed(&p, "crm.x"));
        assert!(allowed(&p, "billing.charge"));
        assert!(!allowed(&p, "billing.refund"));
        assert!(!allowed(&[], "crm.x"));
    }

    #[test]
    fn validation() {
        assert!(validate_patterns(&[]).is_ok());
        assert!(validate_patterns(&["crm.*".into(), "x".into()]).is_ok());
        assert_eq!(
            validate_patterns(&["".into()]),
            Err(PatternError::Bad(String::new()))
        );
        assert!(matches!(
            validate_patterns(&["a b".into()]),
            Err(PatternError::Bad(_))
        ));
        assert!(matches!(
            validate_patterns(&["x".into(), "x".into()]),
            Err(PatternError::Duplicate(_))
        ));
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("s{i}")).collect();
        assert!(matches!(
            validate_patterns(&many),
            Err(PatternError::TooMany(_))
        ));
    }
}
