//! The list of common passwords that [`crate::domain::NewPassword`] refuses.
//! The list (`common_passwords.txt`) holds only entries of twelve characters
//! or more, since shorter ones fail the length rule anyway.

use std::collections::HashSet;
use std::sync::OnceLock;

const LIST: &str = include_str!("common_passwords.txt");

/// Whether `candidate` is on the list, compared without regard to case (and
/// to surrounding spaces, which people add to lengthen a weak password).
pub fn is_common(candidate: &str) -> bool {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let set = SET.get_or_init(|| {
        LIST.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    });
    set.contains(candidate.trim().to_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewPassword;

    #[test]
    fn common_passwords_are_found_in_any_case() {
        for common in [
            "password1234",
            "Password1234",
            "LÖSENORD1234",
            "qwerty123456",
            " Välkommen123 ",
        ] {
            assert!(is_common(common), "{common}");
        }
        for uncommon in [
            "kontakt-demo",
            "correct horse battery staple",
            "Vännäs-älv-7-kaffe",
        ] {
            assert!(!is_common(uncommon), "{uncommon}");
        }
    }

    #[test]
    fn the_list_is_a_few_thousand_lower_case_entries_of_twelve_or_more() {
        let entries: Vec<&str> = LIST
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(entries.len() > 2000, "{} entries", entries.len());
        for e in entries {
            assert_eq!(e, e.to_lowercase(), "{e}");
            assert!(e.chars().count() >= NewPassword::MIN_CHARS, "{e}");
        }
    }

    #[test]
    fn a_new_password_needs_twelve_characters_and_must_not_be_common() {
        let short = NewPassword::parse("elva-tecken").unwrap_err();
        assert!(short.reason.contains("12"), "{short}");
        let common = NewPassword::parse("Password1234").unwrap_err();
        assert!(common.reason.contains("common"), "{common}");
        assert!(NewPassword::parse("tolv-tecken!").is_ok());
        assert!(NewPassword::parse(crate::seed::DEMO_PASSWORD).is_ok());
        assert!(NewPassword::parse(&"x".repeat(2000)).is_err(), "too long");
    }
}
