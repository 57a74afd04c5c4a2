//! What a name may be, and when two names are the same one.
//!
//! Account names (and, later, room names) are 1–[`MAX_NAME_CHARS`] characters, each a
//! Unicode letter or digit, `_`, `-` or `.`, none of them invisible: default-ignorable
//! characters (zero-width spaces and joiners, fillers such as U+3164, variation
//! selectors, tags) and bidi controls are refused, since they let two different names
//! look alike or one name look like nothing.
//!
//! Two names are **the same** when their [`name_key`]s are equal: NFKC normalisation
//! and Unicode case folding (`Ａｌｉｃｅ`, `ALICE` and `alice` are one name). Two names
//! are **confusable** when they share a [`confusable_keys`] entry: the Unicode TS #39
//! skeleton, which maps look-alikes to one prototype (Cyrillic `а` to Latin `a`, `0` to
//! `O`, `I` to `l`), taken both before and after case folding. A name confusable with
//! an existing one, or with `server`, cannot be registered.

use unicode_normalization::UnicodeNormalization;

use crate::text::{is_bidi_control, is_default_ignorable};

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// The name the admin speaks under; nobody may register it or a look-alike.
pub const SERVER_NAME: &str = "server";

/// The rule, in a sentence, for error messages and prompts.
pub fn name_rule() -> String {
    format!(
        "a name is 1 to {MAX_NAME_CHARS} letters, digits, '_', '-' or '.', with no invisible characters"
    )
}

/// Why a name is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name has at most {MAX_NAME_CHARS} characters")]
    TooLong,
    #[error("a name cannot hold invisible or direction-changing characters (U+{:04X})", *.0 as u32)]
    Invisible(char),
    #[error("a name holds only letters, digits, '_', '-' and '.' (not U+{:04X})", *.0 as u32)]
    NotAllowed(char),
}

/// Checks the form of `name`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let mut count = 0;
    for c in name.chars() {
        count += 1;
        if is_default_ignorable(c) || is_bidi_control(c) {
            return Err(NameError::Invisible(c));
        }
        if !(c.is_alphabetic() || c.is_numeric() || matches!(c, '_' | '-' | '.')) {
            return Err(NameError::NotAllowed(c));
        }
    }
    match count {
        0 => Err(NameError::Empty),
        n if n > MAX_NAME_CHARS => Err(NameError::TooLong),
        _ => Ok(()),
    }
}

/// Whether `name` has an acceptable form (see [`check_name`]).
pub fn is_valid_name(name: &str) -> bool {
    check_name(name).is_ok()
}

/// The key under which a name is unique: NFKC, then case folding, then NFKC again
/// (folding can undo a normalisation).
pub fn name_key(name: &str) -> String {
    let normalised: String = name.nfkc().collect();
    caseless::default_case_fold_str(&normalised)
        .nfkc()
        .collect()
}

/// The keys by which a name is compared for look-alikes: its TS #39 skeleton folded
/// for case, and the skeleton of its case-folded form. Skeleton first catches `AIice`
/// (capital I) against `Alice`; folding first catches what only lower case confuses.
pub fn confusable_keys(name: &str) -> [String; 2] {
    let normalised: String = name.nfkc().collect();
    let skeleton = |s: &str| -> String { unicode_security::skeleton(s).collect() };
    let fold = |s: &str| -> String { caseless::default_case_fold_str(s).nfkc().collect() };
    [fold(&skeleton(&normalised)), skeleton(&fold(&normalised))]
}

/// Whether `name` is `server` or looks like it.
pub fn is_server_name(name: &str) -> bool {
    let reserved = confusable_keys(SERVER_NAME);
    name_key(name) == SERVER_NAME || confusable_keys(name).iter().any(|k| reserved.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confusable(a: &str, b: &str) -> bool {
        let (ka, kb) = (confusable_keys(a), confusable_keys(b));
        ka.iter().any(|k| kb.contains(k))
    }

    #[test]
    fn form() {
        assert!(is_valid_name("alice"));
        assert!(is_valid_name("Zoë_9-x.y"));
        assert!(is_valid_name("名前"));
        assert!(is_valid_name(&"é".repeat(MAX_NAME_CHARS)));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name(&"a".repeat(33)), Err(NameError::TooLong));
        assert_eq!(check_name("a b"), Err(NameError::NotAllowed(' ')));
        assert_eq!(check_name("a@b"), Err(NameError::NotAllowed('@')));
        assert_eq!(check_name("a\u{0}"), Err(NameError::NotAllowed('\u{0}')));
        // Invisible, though some of these count as letters.
        for c in [
            '\u{3164}', '\u{200b}', '\u{200d}', '\u{202e}', '\u{2066}', '\u{ad}',
        ] {
            assert_eq!(
                check_name(&format!("ab{c}")),
                Err(NameError::Invisible(c)),
                "{c:?}"
            );
        }
        assert_eq!(
            check_name("\u{3164}"),
            Err(NameError::Invisible('\u{3164}'))
        );
    }

    #[test]
    fn sameness_is_nfkc_and_case_folding() {
        assert_eq!(name_key("ALICE"), "alice");
        assert_eq!(name_key("Ａｌｉｃｅ"), "alice");
        assert_eq!(name_key("Straße"), name_key("STRASSE"));
        assert_eq!(name_key("ÀliCE"), name_key("àlice"));
        assert_ne!(name_key("alice"), name_key("alicia"));
    }

    #[test]
    fn look_alikes_of_alice_are_confusable() {
        for fake in [
            "Аlice",      // Cyrillic А
            "Alicе",      // Cyrillic е
            "AIice",      // capital I for l
            "A1ice",      // one for l
            "Ａｌｉｃｅ", // fullwidth
            "ALICE",
            "Alіce", // Cyrillic і
            "Αlice", // Greek Alpha
        ] {
            assert!(confusable("Alice", fake), "{fake}");
        }
        assert!(!confusable("Alice", "Alicia"));
        assert!(!confusable("bob", "rob"));
    }

    #[test]
    fn server_and_its_look_alikes_are_reserved() {
        for name in [
            "server",
            "SERVER",
            "ѕerver",
            "seгver",
            "Ѕerver",
            "Ｓｅｒｖｅｒ",
        ] {
            assert!(is_server_name(name), "{name}");
        }
        assert!(!is_server_name("servers"));
        assert!(!is_server_name("observer"));
    }
}
