//! Registration files: what bridges generate (YAML, or JSON, which YAML includes), parsed with
//! the path of any bad field, and checked against each other before the server starts.

use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

/// One namespace entry as written in a registration.
#[derive(Debug, Clone, Deserialize)]
pub struct NamespaceEntry {
    #[serde(default)]
    pub exclusive: bool,
    pub regex: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NamespaceEntries {
    pub users: Vec<NamespaceEntry>,
    pub aliases: Vec<NamespaceEntry>,
    pub rooms: Vec<NamespaceEntry>,
}

/// A registration as the file states it (the spec's fields and the unstable ones bridges use).
#[derive(Debug, Clone, Deserialize)]
pub struct RawRegistration {
    pub id: String,
    /// `null` (or absent) for an appservice that only calls in.
    #[serde(default)]
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    #[serde(default)]
    pub namespaces: NamespaceEntries,
    #[serde(default)]
    pub rate_limited: Option<bool>,
    #[serde(default)]
    pub protocols: Option<Vec<String>>,
    #[serde(default)]
    pub receive_ephemeral: bool,
    /// MSC2409's name for `receive_ephemeral`, still what many bridges write.
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    pub msc2409_push_ephemeral: bool,
    #[serde(default)]
    pub push_ephemeral: bool,
    /// MSC3202: device lists and one-time key counts of the namespace's users.
    #[serde(default, rename = "org.matrix.msc3202")]
    pub msc3202: bool,
    /// MSC4190: the appservice manages its users' devices without logging in.
    #[serde(default, rename = "io.element.msc4190")]
    pub msc4190: bool,
}

/// What went wrong with a registration file: always names the file, and the field when one is
/// at fault.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{reason}", file.display(), field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct RegistrationError {
    pub file: PathBuf,
    pub field: Option<String>,
    pub reason: String,
}

impl RegistrationError {
    fn new(file: &Path, field: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// A namespace ready to match: the compiled regex, anchored at the start as bridges written for
/// other servers expect (`@_irc_.*` matches `@_irc_bob:example.org`).
#[derive(Debug, Clone)]
pub struct Namespace {
    pub exclusive: bool,
    pub source: String,
    regex: Regex,
}

impl Namespace {
    fn compile(entry: &NamespaceEntry) -> Result<Self, regex::Error> {
        Ok(Self {
            exclusive: entry.exclusive,
            source: entry.regex.clone(),
            regex: Regex::new(&format!("^(?:{})", entry.regex))?,
        })
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    /// The literal text every match starts with (the regex's fixed prefix).
    fn literal_prefix(&self) -> String {
        let mut out = String::new();
        let mut chars = self.source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    // An escaped punctuation character is itself; a class (`\d`, `\w`) ends it.
                    Some(e) if e.is_ascii_punctuation() => out.push(e),
                    _ => break,
                },
                '.' | '*' | '+' | '?' | '[' | '(' | '|' | '{' | '^' | '$' => break,
                c => {
                    // A quantifier after a literal makes that literal optional.
                    if matches!(chars.peek(), Some('*' | '?' | '{')) {
                        break;
                    }
                    out.push(c);
                }
            }
        }
        out
    }
}

/// The namespaces of one kind.
#[derive(Debug, Clone, Default)]
pub struct Namespaces(pub Vec<Namespace>);

impl Namespaces {
    /// Whether any namespace of this kind matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.0.iter().any(|n| n.is_match(value))
    }

    /// Whether an exclusive namespace of this kind matches.
    pub fn is_exclusive_match(&self, value: &str) -> bool {
        self.0.iter().any(|n| n.exclusive && n.is_match(value))
    }
}

/// A checked registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: String,
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    pub users: Namespaces,
    pub aliases: Namespaces,
    pub rooms: Namespaces,
    /// Whether the namespace's users are rate-limited (the sender never is).
    pub rate_limited: bool,
    pub protocols: Vec<String>,
    /// Typing, receipts and presence in transactions (MSC2409, in the spec since 1.13).
    pub receive_ephemeral: bool,
    /// To-device messages and device lists of the namespace's users (MSC3202 / MSC4203).
    pub device_data: bool,
    /// Device management without login (MSC4190, in the spec since 1.17).
    pub device_management: bool,
    /// The file it came from.
    pub file: PathBuf,
}

impl Registration {
    /// Parses a registration file's text. `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Self, RegistrationError> {
        let de = serde_norway::Deserializer::from_str(text);
        let raw: RawRegistration = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path);
            RegistrationError::new(file, field.as_deref(), e.into_inner().to_string())
        })?;
        Self::check(file, raw)
    }

    /// Reads and parses a registration file.
    pub fn load(file: &Path) -> Result<Self, RegistrationError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| RegistrationError::new(file, None, format!("cannot read: {e}")))?;
        Self::parse(file, &text)
    }

    fn check(file: &Path, raw: RawRegistration) -> Result<Self, RegistrationError> {
        let err = |field: &str, reason: &str| RegistrationError::new(file, Some(field), reason);
        if raw.id.trim().is_empty() {
            return Err(err("id", "must not be empty"));
        }
        for (field, token) in [("as_token", &raw.as_token), ("hs_token", &raw.hs_token)] {
            if token.trim().is_empty() {
                return Err(err(field, "must not be empty"));
            }
        }
        if raw.as_token == raw.hs_token {
            return Err(err("hs_token", "must differ from as_token"));
        }
        // The spec's grammar for new user IDs: the appservice's own user is new here.
        if raw.sender_localpart.is_empty()
            || !raw
                .sender_localpart
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
        {
            return Err(err("sender_localpart", "is not a valid user ID localpart"));
        }
        if let Some(url) = &raw.url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(_) => return Err(err("url", "must be an http or https URL, or null")),
                Err(e) => return Err(err("url", &format!("is not a URL: {e}"))),
            }
        }
        let compile = |kind: &str, entries: &[NamespaceEntry]| {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    Namespace::compile(e).map_err(|r| {
                        err(
                            &format!("namespaces.{kind}[{i}].regex"),
                            &format!("invalid regex: {r}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Namespaces)
        };
        Ok(Self {
            users: compile("users", &raw.namespaces.users)?,
            aliases: compile("aliases", &raw.namespaces.aliases)?,
            rooms: compile("rooms", &raw.namespaces.rooms)?,
            id: raw.id,
            url: raw.url,
            as_token: raw.as_token,
            hs_token: raw.hs_token,
            sender_localpart: raw.sender_localpart,
            // The spec's default: rate-limited unless the registration says otherwise.
            rate_limited: raw.rate_limited.unwrap_or(true),
            protocols: raw.protocols.unwrap_or_default(),
            receive_ephemeral: raw.receive_ephemeral
                || raw.push_ephemeral
                || raw.msc2409_push_ephemeral,
            device_data: raw.msc3202,
            device_management: raw.msc4190,
            file: file.to_owned(),
        })
    }

    /// The appservice's own user (`sender_localpart` on this server).
    pub fn sender(&self, server_name: &ruma::ServerName) -> Option<ruma::OwnedUserId> {
        ruma::UserId::parse(format!("@{}:{server_name}", self.sender_localpart)).ok()
    }

    /// Whether a user ID is the appservice's: its sender, or in its user namespaces.
    pub fn is_user_ours(&self, user_id: &ruma::UserId) -> bool {
        user_id.localpart() == self.sender_localpart || self.users.is_match(user_id.as_str())
    }
}

/// Registrations from the configured paths: files, or folders whose `.yaml`, `.yml` and `.json`
/// files are read in name order. Fails on the first unreadable or invalid file, and when
/// registrations collide (same id, as_token or hs_token, or the same sender, or exclusive
/// namespaces of two appservices that overlap).
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Registration>, RegistrationError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| {
                RegistrationError::new(path, None, format!("cannot read the folder: {e}"))
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let registrations = files
        .iter()
        .map(|f| Registration::load(f))
        .collect::<Result<Vec<_>, _>>()?;
    check_together(&registrations)?;
    Ok(registrations)
}

/// Registrations must not share an identity, and no two may claim the same names exclusively.
pub fn check_together(registrations: &[Registration]) -> Result<(), RegistrationError> {
    for (i, b) in registrations.iter().enumerate() {
        for a in &registrations[..i] {
            let clash = |field: &str, what: &str| {
                RegistrationError::new(
                    &b.file,
                    Some(field),
                    format!("{what} as {} (appservice {:?})", a.file.display(), a.id),
                )
            };
            if a.id == b.id {
                return Err(clash("id", "the same id"));
            }
            let tokens = [&a.as_token, &a.hs_token];
            if tokens.contains(&&b.as_token) {
                return Err(clash("as_token", "a token already used"));
            }
            if tokens.contains(&&b.hs_token) {
                return Err(clash("hs_token", "a token already used"));
            }
            if a.sender_localpart == b.sender_localpart {
                return Err(clash("sender_localpart", "the same sender"));
            }
            for (kind, ours, theirs) in [
                ("users", &b.users, &a.users),
                ("aliases", &b.aliases, &a.aliases),
                ("rooms", &b.rooms, &a.rooms),
            ] {
                for (j, n) in ours.0.iter().enumerate() {
                    if !n.exclusive {
                        continue;
                    }
                    if let Some(other) = theirs.0.iter().find(|m| m.exclusive && overlap(n, m)) {
                        return Err(clash(
                            &format!("namespaces.{kind}[{j}].regex"),
                            &format!(
                                "an exclusive namespace overlapping {:?}, held exclusively",
                                other.source
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether two namespaces may match the same name. Overlap of regular languages in general is
/// costly to decide; two namespaces whose fixed prefixes nest are taken to overlap (`@_irc_.*`
/// and `@_irc_bot_.*`), and either matching the other's prefix settles the rest. Distinct
/// prefixes (`@_irc_` and `@_slack_`) never match the same name.
fn overlap(a: &Namespace, b: &Namespace) -> bool {
    if a.source == b.source {
        return true;
    }
    let (pa, pb) = (a.literal_prefix(), b.literal_prefix());
    pa.starts_with(&pb) || pb.starts_with(&pa)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IRC: &str = r##"
id: "IRC Bridge"
url: "http://127.0.0.1:1234"
as_token: "as1"
hs_token: "hs1"
sender_localpart: "_irc_bot"
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_bridge_.*"
  aliases:
    - exclusive: false
      regex: "#_irc_bridge_.*"
  rooms: []
de.sorunome.msc2409.push_ephemeral: true
"##;

    fn parse(text: &str) -> Result<Registration, RegistrationError> {
        Registration::parse(Path::new("irc.yaml"), text)
    }

    #[test]
    fn the_spec_example_parses_and_matches_its_namespaces() {
        let r = parse(IRC).unwrap();
        assert_eq!(r.id, "IRC Bridge");
        assert!(r.receive_ephemeral);
        assert!(r.rate_limited);
        assert!(r.users.is_exclusive_match("@_irc_bridge_bob:example.org"));
        assert!(!r.users.is_match("@bob:example.org"));
        // Anchored at the start: a name that merely contains the pattern is not ours.
        assert!(!r.users.is_match("@x_@_irc_bridge_bob:example.org"));
        assert!(r.aliases.is_match("#_irc_bridge_chan:example.org"));
        assert!(!r
            .aliases
            .is_exclusive_match("#_irc_bridge_chan:example.org"));
        let sender = r.sender(ruma::server_name!("example.org")).unwrap();
        assert!(r.is_user_ours(&sender));
    }

    #[test]
    fn a_bot_that_only_calls_in_has_a_null_url() {
        let r = parse(&IRC.replace("url: \"http://127.0.0.1:1234\"", "url: null")).unwrap();
        assert!(r.url.is_none());
    }

    #[test]
    fn bad_files_name_the_field_at_fault() {
        let e = parse(&IRC.replace("as_token: \"as1\"\n", "")).unwrap_err();
        assert!(e.reason.contains("as_token"), "{e}");
        let e = parse(&IRC.replace("exclusive: true", "exclusive: maybe")).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("namespaces.users[0].exclusive"),
            "{e}"
        );
        let e = parse(&IRC.replace("@_irc_bridge_.*", "@_irc_(bridge")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("namespaces.users[0].regex"), "{e}");
        let e = parse(&IRC.replace("_irc_bot", "bad bot")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("sender_localpart"), "{e}");
        let e = parse(&IRC.replace("http://127.0.0.1:1234", "ftp://x")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("url"), "{e}");
        let e = parse("id: [unclosed").unwrap_err();
        assert!(e.to_string().starts_with("irc.yaml: "), "{e}");
    }

    fn with(id: &str, tokens: (&str, &str), sender: &str, users: &str) -> Registration {
        let text = IRC
            .replace("IRC Bridge", id)
            .replace("as1", tokens.0)
            .replace("hs1", tokens.1)
            .replace("_irc_bot", sender)
            .replace("@_irc_bridge_.*", users);
        Registration::parse(Path::new(&format!("{id}.yaml")), &text).unwrap()
    }

    #[test]
    fn registrations_that_collide_are_refused() {
        let irc = with("irc", ("a1", "h1"), "irc", "@_irc_.*");
        let slack = with("slack", ("a2", "h2"), "slack", "@_slack_.*");
        check_together(&[irc.clone(), slack.clone()]).unwrap();
        let same_id = with("irc", ("a3", "h3"), "x", "@_x_.*");
        assert_eq!(
            check_together(&[irc.clone(), same_id])
                .unwrap_err()
                .field
                .as_deref(),
            Some("id")
        );
        let same_token = with("other", ("a1", "h3"), "x", "@_x_.*");
        assert_eq!(
            check_together(&[irc.clone(), same_token])
                .unwrap_err()
                .field
                .as_deref(),
            Some("as_token")
        );
        let nested = with("irc2", ("a4", "h4"), "irc2", "@_irc_bot_.*");
        let e = check_together(&[irc.clone(), nested]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("namespaces.users[0].regex"), "{e}");
        assert!(e.reason.contains("@_irc_.*"), "{e}");
    }

    #[test]
    fn literal_prefixes_stop_at_the_first_special_character() {
        let ns = |r: &str| {
            Namespace::compile(&NamespaceEntry {
                exclusive: true,
                regex: r.into(),
            })
            .unwrap()
            .literal_prefix()
        };
        assert_eq!(ns("@_irc_.*"), "@_irc_");
        assert_eq!(ns(r"@_irc\.x_[a-z]+"), "@_irc.x_");
        assert_eq!(ns("@_ab?c"), "@_a");
        assert_eq!(ns(r"@\d+"), "@");
    }
}
