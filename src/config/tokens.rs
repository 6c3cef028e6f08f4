//! The credentials settings: `API_KEY` (one token with every scope) and `API_TOKENS`
//! (`name:token:scope,scope` entries separated by `;`), parsed into typed tokens with
//! their scopes. Parsing lives with the other settings so that every rule is checked at
//! start, before any database is opened; `identity` authenticates against the result.
//! A token never appears in an error: refusals name entries by position only.

use super::{ApiKey, Secret};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// List pending requests, resume, remove, read runs and commands.
    Operate,
    /// Create runs.
    Submit,
}

impl Scope {
    /// Every scope, as `API_TOKENS` spells them.
    pub const ALL: [Scope; 2] = [Scope::Operate, Scope::Submit];

    /// The scope's name in settings and error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Operate => "operate",
            Scope::Submit => "submit",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    operate: bool,
    submit: bool,
}

impl Scopes {
    /// Every scope (the `API_KEY` token, a generated token).
    pub const ALL: Scopes = Scopes {
        operate: true,
        submit: true,
    };

    /// These scopes plus `scope`.
    pub const fn with(mut self, scope: Scope) -> Self {
        match scope {
            Scope::Operate => self.operate = true,
            Scope::Submit => self.submit = true,
        }
        self
    }

    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        match scope {
            Scope::Operate => self.operate,
            Scope::Submit => self.submit,
        }
    }
}

/// One configured token.
#[derive(Clone, Debug)]
pub struct ApiToken {
    /// A name for logs and audits (never the token).
    pub name: String,
    /// The token itself.
    pub secret: Secret,
    /// What it may do.
    pub scopes: Scopes,
}

/// Name of the token `API_KEY` configures.
pub const API_KEY_TOKEN_NAME: &str = "api-key";

/// The tokens of `API_KEY` and `API_TOKENS` together, or `None` when neither is set.
/// Errors name the setting's problem without quoting any value.
pub fn configured_tokens(
    api_key: Option<&Secret>,
    api_tokens: Option<&Secret>,
) -> Result<Option<Vec<ApiToken>>, String> {
    let mut tokens = Vec::new();
    if let Some(key) = api_key {
        let key: ApiKey = key.expose().parse()?;
        tokens.push(ApiToken {
            name: API_KEY_TOKEN_NAME.to_owned(),
            secret: key.0,
            scopes: Scopes::ALL,
        });
    }
    if let Some(list) = api_tokens {
        for token in parse_token_list(list.expose())? {
            if tokens.iter().any(|t| t.secret == token.secret) {
                return Err("an entry of API_TOKENS repeats the API_KEY token".into());
            }
            if tokens.iter().any(|t| t.name == token.name) {
                return Err(format!(
                    "the name `{API_KEY_TOKEN_NAME}` is reserved for API_KEY"
                ));
            }
            tokens.push(token);
        }
    }
    Ok((!tokens.is_empty()).then_some(tokens))
}

/// Parses `API_TOKENS`: `name:token:scope,scope` entries separated by `;` (an empty
/// entry, e.g. after a trailing `;`, is skipped). Names are 1 to 64 letters, digits,
/// `_`, `.` or `-`, and unique; tokens follow the `API_KEY` rules and are unique.
pub fn parse_token_list(s: &str) -> Result<Vec<ApiToken>, String> {
    let mut tokens: Vec<ApiToken> = Vec::new();
    for (i, entry) in s.split(';').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let n = i + 1;
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(token), Some(scopes)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "entry {n} is not of the form name:token:scope,scope"
            ));
        };
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(format!(
                "entry {n}: the name must be 1 to 64 letters, digits, `_`, `.` or `-`"
            ));
        }
        let secret = token
            .parse::<ApiKey>()
            .map_err(|why| format!("entry {n}: the token {why}"))?
            .0;
        let mut set = Scopes::default();
        for scope in scopes.split(',').map(str::trim) {
            let scope = Scope::parse(scope).ok_or_else(|| {
                format!("entry {n}: scopes are a comma-separated list of `operate` and `submit`")
            })?;
            set = set.with(scope);
        }
        if let Some(j) = tokens.iter().position(|t| t.name == name) {
            return Err(format!("entries {} and {n} have the same name", j + 1));
        }
        if let Some(j) = tokens.iter().position(|t| t.secret == secret) {
            return Err(format!("entries {} and {n} have the same token", j + 1));
        }
        tokens.push(ApiToken {
            name: name.to_owned(),
            secret,
            scopes: set,
        });
    }
    if tokens.is_empty() {
        return Err("lists no token".into());
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaa-operate";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb-submit";

    #[test]
    fn a_token_list_gives_each_token_its_scopes() {
        let list = parse_token_list(&format!("ops:{A}:operate; ci:{B}:submit,operate;")).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "ops");
        assert!(list[0].scopes.contains(Scope::Operate));
        assert!(!list[0].scopes.contains(Scope::Submit));
        assert_eq!(list[1].scopes, Scopes::ALL);
    }

    #[test]
    fn token_list_errors_never_quote_a_token() {
        for bad in [
            format!("ops:{A}"),
            format!("ops:{A}:admin"),
            format!("ops:operate:{A}"),
            format!("{A}:{B}:everything"),
            format!("ops:{A}:operate;ops:{B}:submit"),
            format!("ops:{A}:operate;ci:{A}:submit"),
            "ops:short:operate".to_owned(),
            String::new(),
        ] {
            let why = parse_token_list(&bad).unwrap_err();
            assert!(!why.contains(A) && !why.contains(B), "{why}");
            assert!(!why.contains("aaaa") && !why.contains("bbbb"), "{why}");
        }
    }
}
