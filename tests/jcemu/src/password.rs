//! Password policy checks and salted hashes (passwords are never stored in clear, only for the history rule).

use ring::digest;

use crate::config::PasswordPolicy;

#[derive(Clone, Debug)]
pub struct PwHash {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl PwHash {
    pub fn new(password: &str, salt: [u8; 16]) -> PwHash {
        PwHash {
            salt,
            hash: digest_of(&salt, password),
        }
    }

    pub fn matches(&self, password: &str) -> bool {
        digest_of(&self.salt, password) == self.hash
    }
}

fn digest_of(salt: &[u8; 16], password: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(salt);
    ctx.update(password.as_bytes());
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Violated rules, in a fixed order, named as JumpCloud's `fieldViolationsList` descriptions.
pub fn violations(
    policy: &PasswordPolicy,
    password: &str,
    username: &str,
    history: &[PwHash],
) -> Vec<&'static str> {
    let mut v = Vec::new();
    if password.chars().count() < policy.min_length {
        v.push("minLength");
    }
    if policy.require_lowercase && !password.chars().any(char::is_lowercase) {
        v.push("lowercase");
    }
    if policy.require_uppercase && !password.chars().any(char::is_uppercase) {
        v.push("uppercase");
    }
    if policy.require_number && !password.chars().any(|c| c.is_ascii_digit()) {
        v.push("number");
    }
    if policy.require_special
        && !password
            .chars()
            .any(|c| !c.is_alphanumeric() && !c.is_whitespace())
    {
        v.push("specialCharacter");
    }
    if policy.disallow_username
        && !username.is_empty()
        && password.to_lowercase().contains(&username.to_lowercase())
    {
        v.push("containsUsername");
    }
    if policy.history > 0
        && history
            .iter()
            .rev()
            .take(policy.history)
            .any(|h| h.matches(password))
    {
        v.push("passwordHistory");
    }
    v
}

/// Human text for the plain (no `fullValidationDetails`) 400.
pub fn describe(rule: &str, policy: &PasswordPolicy) -> String {
    match rule {
        "minLength" => format!(
            "password must be at least {} characters long",
            policy.min_length
        ),
        "lowercase" => "password must contain a lowercase letter".into(),
        "uppercase" => "password must contain an uppercase letter".into(),
        "number" => "password must contain a number".into(),
        "specialCharacter" => "password must contain a special character".into(),
        "containsUsername" => "password must not contain the username".into(),
        "passwordHistory" => format!(
            "password must not match any of the last {} passwords",
            policy.history
        ),
        other => format!("password violates the policy ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let p = PasswordPolicy::default();
        assert!(violations(&p, "Str0ng!pass", "jdoe", &[]).is_empty());
        assert_eq!(
            violations(&p, "short", "jdoe", &[]),
            vec!["minLength", "uppercase", "number", "specialCharacter"]
        );
        assert_eq!(
            violations(&p, "Xjdoe12345!", "JDoe", &[]),
            vec!["containsUsername"]
        );
        let h = vec![PwHash::new("Str0ng!pass", [1; 16])];
        assert_eq!(
            violations(&p, "Str0ng!pass", "jdoe", &h),
            vec!["passwordHistory"]
        );
        assert!(violations(&p, "Str0ng!pass2", "jdoe", &h).is_empty());
    }
}
