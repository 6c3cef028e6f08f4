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
    /// Overrides of what others decided (used by assignment and claims).
    Supervise,
    /// Export the audit trail.
    Audit,
}

impl Scope {
    /// Every scope, as the settings spell them.
    pub const ALL: [Scope; 4] = [
        Scope::Operate,
        Scope::Submit,
        Scope::Supervise,
        Scope::Audit,
    ];

    /// The scope's name in settings and error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Operate => "operate",
            Scope::Submit => "submit",
            Scope::Supervise => "supervise",
            Scope::Audit => "audit",
        }
    }

    /// The scope named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope (the `API_KEY` token, a generated token).
    pub const ALL: Scopes = Scopes(0b1111);

    /// These scopes plus `scope`.
    pub const fn with(self, scope: Scope) -> Self {
        Self(self.0 | scope.bit())
    }

    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
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
                format!(
                    "entry {n}: scopes are a comma-separated list of `operate`, `submit`, \
                     `supervise` and `audit`"
                )
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

/// The operator a credential is bound to: requests made with it act as this operator and
/// no other.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BoundOperator {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

/// One entry of the tokens file: the token's SHA-256, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashedToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Scopes,
    /// `None`: act-as (the body names the operator, `actAs = true`).
    pub operator: Option<BoundOperator>,
    pub groups: Vec<String>,
}

/// Tokens checked against the file's hashes must be at least this long: they are hashed
/// without salt, so only a long random token is safe from guessing.
pub const MIN_HASHED_TOKEN_LEN: usize = 32;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<toml::Spanned<FileEntry>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileEntry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    #[serde(default)]
    operator: Option<BoundOperator>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    act_as: bool,
}

/// Parses a tokens file (`HITL_TOKENS_FILE`):
///
/// ```toml
/// [[token]]
/// name = "alice"
/// sha256 = "…64 hex digits: the SHA-256 of the token…"
/// scopes = ["operate"]
/// operator = { id = "alice", displayName = "Alice", email = "alice@example.com" }
/// groups = ["payments-ops"]
///
/// [[token]]
/// name = "chat-bot"
/// sha256 = "…"
/// scopes = ["operate"]
/// actAs = true        # a service principal: the body names the operator
/// ```
///
/// Errors name the line (`line 7: …`) and never quote a hash.
pub fn parse_tokens_file(text: &str) -> Result<Vec<HashedToken>, String> {
    let file: TokensFile = super::parse_toml(text)?;
    let mut out: Vec<HashedToken> = Vec::new();
    for spanned in file.token {
        let line = super::line_of(text, spanned.span().start);
        let bad = |why: &str| Err(format!("line {line}: {why}"));
        let entry = spanned.into_inner();
        let name_ok = (1..=64).contains(&entry.name.len())
            && entry
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return bad("`name` must be 1 to 64 letters, digits, `_`, `.` or `-`");
        }
        let hex = entry.sha256.trim();
        let mut sha256 = [0u8; 32];
        if hex.len() != 64
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
            || (0..32).any(|i| {
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map(|b| sha256[i] = b)
                    .is_err()
            })
        {
            return bad("`sha256` must be 64 hex digits: the SHA-256 of the token, not the token");
        }
        let mut scopes = Scopes::default();
        if entry.scopes.is_empty() {
            return bad("`scopes` must list at least one of operate, submit, supervise, audit");
        }
        for scope in &entry.scopes {
            match Scope::parse(scope) {
                Some(s) => scopes = scopes.with(s),
                None => {
                    return bad("`scopes` are `operate`, `submit`, `supervise` and `audit`");
                }
            }
        }
        match (&entry.operator, entry.act_as) {
            (Some(_), true) => return bad("`operator` and `actAs = true` exclude each other"),
            (None, false) => {
                return bad("needs an `operator` it is bound to, or `actAs = true`");
            }
            (Some(o), false) if o.id.trim().is_empty() || o.id.len() > 256 => {
                return bad("`operator.id` must be 1 to 256 characters, not blank");
            }
            _ => {}
        }
        if out.iter().any(|t| t.name == entry.name) {
            return bad("another entry has the same `name`");
        }
        if out.iter().any(|t| t.sha256 == sha256) {
            return bad("another entry has the same `sha256`");
        }
        out.push(HashedToken {
            name: entry.name,
            sha256,
            scopes,
            operator: entry.operator,
            groups: entry.groups,
        });
    }
    Ok(out)
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
        assert!(list[1].scopes.contains(Scope::Operate) && list[1].scopes.contains(Scope::Submit));
        assert!(!list[1].scopes.contains(Scope::Supervise));
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

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_tokens_file_binds_operators_or_acts_as_and_errors_name_the_line() {
        let file = format!(
            "[[token]]\nname = \"alice\"\nsha256 = \"{HASH}\"\nscopes = [\"operate\", \"audit\"]\n\
             operator = {{ id = \"alice\", displayName = \"Alice\" }}\ngroups = [\"ops\"]\n\n\
             [[token]]\nname = \"bot\"\nsha256 = \"{}\"\nscopes = [\"operate\"]\nactAs = true\n",
            HASH.replace('9', "8")
        );
        let tokens = parse_tokens_file(&file).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].operator.as_ref().unwrap().id, "alice");
        assert!(
            tokens[0].scopes.contains(Scope::Audit) && !tokens[0].scopes.contains(Scope::Submit)
        );
        assert_eq!(tokens[0].groups, ["ops"]);
        assert!(tokens[1].operator.is_none());
        for (bad, line, says) in [
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{HASH}\"\nscopes = [\"root\"]\nactAs = true\n"
                ),
                1,
                "scopes",
            ),
            (
                "\n[[token]]\nname = \"a\"\nsha256 = \"abc\"\nscopes = [\"operate\"]\nactAs = true\n"
                    .to_owned(),
                2,
                "sha256",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{HASH}\"\nscopes = [\"operate\"]\n"),
                1,
                "actAs",
            ),
            ("[[token]]\nname = \"a\"\nsha256 = = 1\n".to_owned(), 3, ""),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{HASH}\"\nscopes = [\"operate\"]\nactAs = true\nrole = 1\n"
                ),
                6,
                "role",
            ),
        ] {
            let why = parse_tokens_file(&bad).unwrap_err();
            assert!(why.starts_with(&format!("line {line}: ")), "{why}");
            assert!(why.contains(says), "{why}");
            assert!(!why.contains(HASH), "no hash quoted: {why}");
        }
    }
}
