//! The password rules the capture hook enforces before it accepts a password: AD's complexity rule
//! (the hook replaces Samba's built-in check) and, optionally, JumpCloud's password policy (so a
//! password JumpCloud would refuse is refused at the DC instead of failing to sync later).
//!
//! Pure functions; a violation names the rule, never the password.

use std::fmt;

/// Windows' "non-alphanumeric" category, exactly as its password-complexity documentation lists it
/// (currency symbols, spaces and other punctuation do not count).
const AD_NON_ALPHANUMERIC: &str = "~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/";

/// Delimiters that split the full name into tokens (Windows: comma, period, dash, underscore,
/// pound sign, tab, space).
const FULL_NAME_DELIMITERS: &[char] = &[',', '.', '-', '_', '#', '\t', ' '];

/// Why a password was refused. `Display` is the one line the hook writes to stderr (Samba's log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyViolation {
    /// AD complexity: characters from fewer than 3 of the 5 categories.
    TooFewCategories {
        found: u8,
    },
    /// AD complexity: the password contains the sAMAccountName (case-insensitive).
    ContainsAccountName,
    /// AD complexity: the password contains a 3+-character token of the full name.
    ContainsFullNameToken,
    /// JumpCloud policy: shorter than `min_length` characters.
    JumpCloudTooShort {
        length: usize,
        min_length: usize,
    },
    JumpCloudNoLowercase,
    JumpCloudNoUppercase,
    JumpCloudNoNumber,
    JumpCloudNoSpecial,
}

impl fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyViolation::TooFewCategories { found } => write!(
                f,
                "AD complexity: characters from {found} of the 5 categories (upper case, lower case, digits, non-alphanumeric, other letters); at least 3 are required"
            ),
            PolicyViolation::ContainsAccountName => {
                f.write_str("AD complexity: the password contains the account name")
            }
            PolicyViolation::ContainsFullNameToken => f.write_str(
                "AD complexity: the password contains a part of the user's full name (3+ characters)",
            ),
            PolicyViolation::JumpCloudTooShort { length, min_length } => write!(
                f,
                "JumpCloud policy: {length} characters, at least {min_length} are required"
            ),
            PolicyViolation::JumpCloudNoLowercase => {
                f.write_str("JumpCloud policy: a lower-case letter (a-z) is required")
            }
            PolicyViolation::JumpCloudNoUppercase => {
                f.write_str("JumpCloud policy: an upper-case letter (A-Z) is required")
            }
            PolicyViolation::JumpCloudNoNumber => {
                f.write_str("JumpCloud policy: a number (0-9) is required")
            }
            PolicyViolation::JumpCloudNoSpecial => f.write_str(
                "JumpCloud policy: a special character (ASCII punctuation such as ! # % or -) is required",
            ),
        }
    }
}

/// The character categories AD counts, as Windows counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdCategories {
    /// Upper-case letters of any script (Latin incl. diacritics, Greek, Cyrillic, …).
    pub upper: bool,
    pub lower: bool,
    /// Base-10 digits 0–9.
    pub digit: bool,
    /// The characters in Windows' non-alphanumeric list.
    pub non_alphanumeric: bool,
    /// Alphabetic characters that are neither upper nor lower case (e.g. CJK ideographs).
    pub other_letter: bool,
}

impl AdCategories {
    pub fn of(password: &str) -> Self {
        let mut c = AdCategories::default();
        for ch in password.chars() {
            if ch.is_ascii_digit() {
                c.digit = true;
            } else if ch.is_uppercase() {
                c.upper = true;
            } else if ch.is_lowercase() {
                c.lower = true;
            } else if AD_NON_ALPHANUMERIC.contains(ch) {
                c.non_alphanumeric = true;
            } else if ch.is_alphabetic() {
                c.other_letter = true;
            }
            // Anything else (spaces, currency symbols, emoji, non-ASCII digits) counts in no
            // category, as on Windows.
        }
        c
    }

    pub fn count(&self) -> u8 {
        [
            self.upper,
            self.lower,
            self.digit,
            self.non_alphanumeric,
            self.other_letter,
        ]
        .iter()
        .filter(|b| **b)
        .count() as u8
    }
}

/// AD's "password must meet complexity requirements" rule (the minimum length is Samba's, checked
/// before the hook runs): characters from 3 of 5 categories; not containing the account name
/// (when it has more than 2 characters) nor any full-name token of 3+ characters, both compared
/// case-insensitively.
pub fn check_ad_complexity(
    password: &str,
    account_name: &str,
    full_name: &str,
) -> Result<(), PolicyViolation> {
    let found = AdCategories::of(password).count();
    if found < 3 {
        return Err(PolicyViolation::TooFewCategories { found });
    }
    let lowered = password.to_lowercase();
    let account = account_name.trim();
    if account.chars().count() > 2 && lowered.contains(&account.to_lowercase()) {
        return Err(PolicyViolation::ContainsAccountName);
    }
    let hit = full_name
        .split(FULL_NAME_DELIMITERS)
        .filter(|token| token.chars().count() >= 3)
        .any(|token| lowered.contains(&token.to_lowercase()));
    if hit {
        return Err(PolicyViolation::ContainsFullNameToken);
    }
    Ok(())
}

/// JumpCloud's organisation password policy, as far as it can be checked without JumpCloud
/// (`passwordPolicy` fields `minLength`, `needsLowercase`, `needsUppercase`, `needsNumeric`,
/// `needsSymbolic`). Defaults: at least 8 characters, and each of lower case, upper case, number and
/// special character required.
///
/// The classes are read strictly (ASCII `a-z`, `A-Z`, `0-9`, ASCII punctuation) because the point is
/// to refuse at the DC anything JumpCloud might refuse: an `é` counts as neither lower case nor
/// special here. History, common-password and username-substring rules are JumpCloud's own and not
/// checked here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JumpCloudPolicy {
    pub min_length: usize,
    pub require_lowercase: bool,
    pub require_uppercase: bool,
    pub require_number: bool,
    pub require_special: bool,
}

impl Default for JumpCloudPolicy {
    fn default() -> Self {
        JumpCloudPolicy {
            min_length: 8,
            require_lowercase: true,
            require_uppercase: true,
            require_number: true,
            require_special: true,
        }
    }
}

impl JumpCloudPolicy {
    pub fn check(&self, password: &str) -> Result<(), PolicyViolation> {
        let length = password.chars().count();
        if length < self.min_length {
            return Err(PolicyViolation::JumpCloudTooShort {
                length,
                min_length: self.min_length,
            });
        }
        let has = |f: fn(&char) -> bool| password.chars().any(|c| f(&c));
        if self.require_lowercase && !has(char::is_ascii_lowercase) {
            return Err(PolicyViolation::JumpCloudNoLowercase);
        }
        if self.require_uppercase && !has(char::is_ascii_uppercase) {
            return Err(PolicyViolation::JumpCloudNoUppercase);
        }
        if self.require_number && !has(char::is_ascii_digit) {
            return Err(PolicyViolation::JumpCloudNoNumber);
        }
        if self.require_special && !has(char::is_ascii_punctuation) {
            return Err(PolicyViolation::JumpCloudNoSpecial);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PolicyViolation::*;

    #[test]
    fn ad_complexity_table() {
        // (password, account, full name, expected)
        let cases: &[(&str, &str, &str, Result<(), PolicyViolation>)] = &[
            ("aaaaaaaa", "bob", "", Err(TooFewCategories { found: 1 })),
            ("aaaaaaaa1", "bob", "", Err(TooFewCategories { found: 2 })),
            ("Aaaaaaaa1", "bob", "", Ok(())),
            ("aaaa!aaa1", "bob", "", Ok(())),
            ("AAAA!AAAA", "bob", "", Err(TooFewCategories { found: 2 })),
            ("AAAA!AAA1", "bob", "", Ok(())),
            // space, euro sign and emoji count in no category
            ("abc def 123", "bob", "", Err(TooFewCategories { found: 2 })),
            ("abc€def123", "bob", "", Err(TooFewCategories { found: 2 })),
            ("abc😀def123", "bob", "", Err(TooFewCategories { found: 2 })),
            // non-Latin cased letters count as upper/lower
            ("ΑΒΓδεζ12", "bob", "", Ok(())),
            ("ДОМкот12", "bob", "", Ok(())),
            ("éééÉÉÉ", "bob", "", Err(TooFewCategories { found: 2 })),
            ("éééÉÉÉ1", "bob", "", Ok(())),
            // caseless letters (CJK) are the fifth category
            ("密码密码ab12", "bob", "", Ok(())),
            (
                "密码密码abcd",
                "bob",
                "",
                Err(TooFewCategories { found: 2 }),
            ),
            // non-ASCII digits are not digits
            ("abcdABCD١٢٣", "bob", "", Err(TooFewCategories { found: 2 })),
            // account name, case-insensitive, only when longer than 2 characters
            ("xJSmith-2024", "jsmith", "", Err(ContainsAccountName)),
            ("xjsmith-2024A", "JSMITH", "", Err(ContainsAccountName)),
            ("Jo!1Jo!1", "jo", "", Ok(())),
            ("Bob!1xyz", "bob", "", Err(ContainsAccountName)),
            // full-name tokens of 3+ characters, split on , . - _ # tab space
            (
                "Smith!2024x",
                "jdoe",
                "John Smith",
                Err(ContainsFullNameToken),
            ),
            (
                "JOHN!2024x",
                "jdoe",
                "John Smith",
                Err(ContainsFullNameToken),
            ),
            ("Al!2024xyzQ", "jdoe", "Al Lee", Ok(())),
            (
                "Xx-ANNE-9",
                "jdoe",
                "Smith,Anne-Marie",
                Err(ContainsFullNameToken),
            ),
            (
                "Qq9!marie",
                "jdoe",
                "Anne_Marie#x\ty",
                Err(ContainsFullNameToken),
            ),
            ("Qq9!maria", "jdoe", "Anne_Marie#x\ty", Ok(())),
            ("Qq9!maria", "", "", Ok(())),
        ];
        for (pw, account, full, want) in cases {
            assert_eq!(
                &check_ad_complexity(pw, account, full),
                want,
                "password {pw:?} account {account:?} full name {full:?}"
            );
        }
    }

    #[test]
    fn jumpcloud_policy_table() {
        let default = JumpCloudPolicy::default();
        let relaxed = JumpCloudPolicy {
            min_length: 12,
            require_lowercase: true,
            require_uppercase: false,
            require_number: false,
            require_special: false,
        };
        let cases: &[(&JumpCloudPolicy, &str, Result<(), PolicyViolation>)] = &[
            (&default, "Abcdef1!", Ok(())),
            (
                &default,
                "Abcde1!",
                Err(JumpCloudTooShort {
                    length: 7,
                    min_length: 8,
                }),
            ),
            // length counts characters, not bytes
            (
                &default,
                "Ééééé1!",
                Err(JumpCloudTooShort {
                    length: 7,
                    min_length: 8,
                }),
            ),
            (&default, "ABCDEF1!", Err(JumpCloudNoLowercase)),
            (&default, "abcdef1!", Err(JumpCloudNoUppercase)),
            (&default, "Abcdefg!", Err(JumpCloudNoNumber)),
            (&default, "Abcdefg1", Err(JumpCloudNoSpecial)),
            // strict classes: non-ASCII letters are not lower/upper, spaces and € are not special
            (&default, "ÉÉÉÉÉ1!A", Err(JumpCloudNoLowercase)),
            (&default, "Abcdef1 €", Err(JumpCloudNoSpecial)),
            (&default, "Abcdef1 -", Ok(())),
            (&relaxed, "abcdefghijkl", Ok(())),
            (
                &relaxed,
                "abcdefghijk",
                Err(JumpCloudTooShort {
                    length: 11,
                    min_length: 12,
                }),
            ),
            (&relaxed, "ABCDEFGHIJKL", Err(JumpCloudNoLowercase)),
        ];
        for (policy, pw, want) in cases {
            assert_eq!(&policy.check(pw), want, "password {pw:?} policy {policy:?}");
        }
    }

    #[test]
    fn violation_messages_never_contain_the_password() {
        let pw = "aaaaaaaa1";
        let v = check_ad_complexity(pw, "bob", "").unwrap_err();
        assert!(!v.to_string().contains(pw));
        assert!(!v.to_string().contains('\n'));
    }
}
