//! The token file and the in-memory token table.
//!
//! The file holds one principal per line, never a token in clear, only its SHA-256:
//!
//! ```text
//! # NAME        ROLE        OFFICE  SERVICE_POINTS  TOKEN_SHA256
//! loket-1-mpp   counter     3275    mpp             sha256:9f86d0…
//! spv-bekasi    supervisor  3275    *               sha256:…
//! kemendagri    agency      *       *               sha256:…
//! ```
//!
//! Tokens are 32 random bytes (`blk_` + 64 hex characters), so a plain SHA-256 is enough: there
//! is nothing to guess. The server parses the file at start and again on SIGHUP, and keeps the
//! table in memory: a token check is one hash and one map lookup, with no file or database read.
//! A reload that fails keeps the previous table (and says why in the log).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tonic::codegen::http::HeaderMap;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::{Principal, Role};
use crate::grpc::status::localized;

/// The prefix of every token this server issues (recognizable in a leaked paste).
pub const TOKEN_PREFIX: &str = "blk_";

/// A field of the token file as an error message shows it (and the server's log keeps it): a
/// token pasted into the wrong column is not repeated.
fn shown(field: &str) -> &str {
    if field.contains(TOKEN_PREFIX) {
        "(a token: not shown)"
    } else {
        field
    }
}
/// Longest `authorization` header value looked at (a longer one is rejected unread).
pub const MAX_AUTHORIZATION_CHARS: usize = 512;
/// Most principals in a token file.
pub const MAX_PRINCIPALS: usize = 100_000;

/// One line of the token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLine {
    /// Who.
    pub principal: Principal,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
}

/// The parsed token file: token hash → principal.
#[derive(Debug, Default, Clone)]
pub struct TokenTable {
    lines: Vec<TokenLine>,
    by_hash: HashMap<String, usize>,
}

/// The hex SHA-256 of a token.
pub fn token_hash(token: &str) -> String {
    crate::lower_hex(&Sha256::digest(token.as_bytes()))
}

/// A fresh random token.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", crate::lower_hex(&bytes))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn valid_office(office: &str) -> bool {
    office.len() == 4 && office.bytes().all(|b| b.is_ascii_digit())
}

impl TokenLine {
    /// Parses one non-comment line.
    pub fn parse(line: &str) -> Result<TokenLine, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, role, office, points, hash] = fields.as_slice() else {
            return Err(format!(
                "expected 5 fields (NAME ROLE OFFICE SERVICE_POINTS sha256:HASH), found {}",
                fields.len()
            ));
        };
        if !valid_name(name) {
            return Err(format!(
                "bad name '{}': 1..=64 of letters, digits, '-', '_', '.', '@'",
                shown(name)
            ));
        }
        let role = Role::parse(role).ok_or_else(|| {
            format!(
                "unknown role '{}' (counter, supervisor, agency or admin)",
                shown(role)
            )
        })?;
        let office_id = if role.is_office_staff() {
            if !valid_office(office) {
                return Err(format!(
                    "a {} needs a 4-digit office, found '{}'",
                    role.as_str(),
                    shown(office)
                ));
            }
            Some(office.to_string())
        } else {
            if *office != "*" {
                return Err(format!(
                    "a {} serves every office: write '*', found '{}'",
                    role.as_str(),
                    shown(office)
                ));
            }
            None
        };
        let service_points = if *points == "*" {
            None
        } else {
            if role != Role::Counter {
                return Err("only a counter is limited to service points: write '*'".into());
            }
            let list: Vec<String> = points.split(',').map(str::to_string).collect();
            if list.iter().any(|p| !valid_name(p)) {
                return Err(format!("bad service point list '{}'", shown(points)));
            }
            Some(list)
        };
        let token_sha256 = hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or("the last field must be sha256: and 64 hex characters")?
            .to_ascii_lowercase();
        Ok(TokenLine {
            principal: Principal {
                name: name.to_string(),
                role,
                office_id,
                service_points,
            },
            token_sha256,
        })
    }

    /// The line as written to the file.
    pub fn render(&self) -> String {
        let p = &self.principal;
        let (office, service_points) = p.scope_fields();
        format!(
            "{} {} {office} {service_points} sha256:{}",
            p.name,
            p.role.as_str(),
            self.token_sha256
        )
    }
}

impl TokenTable {
    /// Parses a token file's text; every problem names its line.
    pub fn parse(text: &str) -> anyhow::Result<TokenTable> {
        let mut table = TokenTable::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed =
                TokenLine::parse(line).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
            table
                .push(parsed)
                .map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        }
        Ok(table)
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> anyhow::Result<TokenTable> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        TokenTable::parse(&text).with_context(|| format!("bad token file {}", path.display()))
    }

    fn push(&mut self, line: TokenLine) -> Result<(), String> {
        if self.lines.len() >= MAX_PRINCIPALS {
            return Err(format!("more than {MAX_PRINCIPALS} principals"));
        }
        if self
            .lines
            .iter()
            .any(|l| l.principal.name == line.principal.name)
        {
            return Err(format!("the name '{}' appears twice", line.principal.name));
        }
        if self.by_hash.contains_key(&line.token_sha256) {
            return Err("the same token hash appears twice".into());
        }
        self.by_hash
            .insert(line.token_sha256.clone(), self.lines.len());
        self.lines.push(line);
        Ok(())
    }

    /// The principal of a token, if it is in the table.
    pub fn principal_of(&self, token: &str) -> Option<&Principal> {
        let i = *self.by_hash.get(&token_hash(token))?;
        self.lines.get(i).map(|l| &l.principal)
    }

    /// Every line, in file order.
    pub fn lines(&self) -> &[TokenLine] {
        &self.lines
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# blangko-server tokens: NAME ROLE OFFICE SERVICE_POINTS sha256:TOKEN_HASH\n\
             # Managed with `blangko-server --token-file FILE token add|list|revoke`; reloaded on SIGHUP.\n",
        );
        for l in &self.lines {
            out.push_str(&l.render());
            out.push('\n');
        }
        out
    }
}

/// How the server authenticates callers.
pub struct Authenticator {
    /// None: no token file, every caller is the anonymous admin.
    tokens: Option<TokenSource>,
    /// Counts the reloads that took effect: open streams check their caller again on each.
    reloads: tokio::sync::watch::Sender<u64>,
}

struct TokenSource {
    path: PathBuf,
    /// Swapped whole on reload; a request clones the Arc under a read lock held for nanoseconds.
    table: RwLock<Arc<TokenTable>>,
}

impl Authenticator {
    /// No authentication: every caller is "anonymous" with every right.
    pub fn open() -> Authenticator {
        Authenticator {
            tokens: None,
            reloads: tokio::sync::watch::channel(0).0,
        }
    }

    /// Authentication by the token file at `path` (read now; an unreadable or bad file is an error).
    pub fn from_file(path: &Path) -> anyhow::Result<Authenticator> {
        let table = TokenTable::load(path)?;
        warn_if_writable_by_others(path);
        Ok(Authenticator {
            tokens: Some(TokenSource {
                path: path.to_path_buf(),
                table: RwLock::new(Arc::new(table)),
            }),
            reloads: tokio::sync::watch::channel(0).0,
        })
    }

    /// Whether callers must present a token.
    pub fn is_enforcing(&self) -> bool {
        self.tokens.is_some()
    }

    /// Re-reads the token file (on SIGHUP). On failure the previous table stays in force.
    /// Returns the number of principals now known.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let Some(source) = &self.tokens else {
            return Ok(0);
        };
        let table = TokenTable::load(&source.path)?;
        warn_if_writable_by_others(&source.path);
        let count = table.lines.len();
        match source.table.write() {
            Ok(mut guard) => *guard = Arc::new(table),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
        }
        self.reloads.send_modify(|n| *n += 1);
        Ok(count)
    }

    /// Told after every reload that took effect.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Whether the `authorization` header a call came with (None: it had none) still names
    /// `principal`, with the same rights: false once its token was revoked, or its principal
    /// changed role or scope.
    pub fn still_admits(&self, authorization: Option<&str>, principal: &Principal) -> bool {
        let header = authorization.map(Some);
        self.authenticate_header(header)
            .is_ok_and(|now| now == *principal)
    }

    fn current(&self) -> Option<Arc<TokenTable>> {
        let source = self.tokens.as_ref()?;
        let table = match source.table.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        Some(table)
    }

    /// The principal behind a request's `authorization: Bearer …` header; UNAUTHENTICATED when
    /// it is missing, malformed or unknown. The token itself never reaches a log or a message.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        self.authenticate_header(metadata.get("authorization").map(|v| v.to_str().ok()))
    }

    /// As [`Authenticator::authenticate`], from raw HTTP headers (the layer in front of the
    /// services, before any body is read).
    pub fn authenticate_headers(&self, headers: &HeaderMap) -> Result<Principal, Status> {
        self.authenticate_header(headers.get("authorization").map(|v| v.to_str().ok()))
    }

    /// `header`: None when absent, Some(None) when not printable ASCII.
    fn authenticate_header(&self, header: Option<Option<&str>>) -> Result<Principal, Status> {
        let Some(table) = self.current() else {
            return Ok(Principal::anonymous());
        };
        let Some(value) = header else {
            return Err(localized(
                Code::Unauthenticated,
                "missing credentials: send the header 'authorization: Bearer <token>'",
                "kredensial tidak ada: kirim header 'authorization: Bearer <token>'",
            ));
        };
        let token = value
            .filter(|v| v.len() <= MAX_AUTHORIZATION_CHARS)
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(localized(
                Code::Unauthenticated,
                "malformed credentials: expected 'authorization: Bearer <token>'",
                "format kredensial salah: seharusnya 'authorization: Bearer <token>'",
            ));
        };
        match table.principal_of(token) {
            Some(p) => Ok(p.clone()),
            None => Err(localized(
                Code::Unauthenticated,
                "unknown or revoked token",
                "token tidak dikenal atau sudah dicabut",
            )),
        }
    }
}

/// `token add`: a new principal with a fresh token; returns the token (shown once, never stored).
pub fn add_to_file(
    path: &Path,
    name: &str,
    role: Role,
    office: Option<&str>,
    service_points: Option<&str>,
) -> anyhow::Result<String> {
    let _edit = lock_for_edit(path)?;
    let mut table = read_or_empty(path)?;
    let token = new_token();
    let line = format!(
        "{name} {} {} {} sha256:{}",
        role.as_str(),
        office.unwrap_or("*"),
        service_points.unwrap_or("*"),
        token_hash(&token)
    );
    let parsed = TokenLine::parse(&line).map_err(|e| anyhow::anyhow!(e))?;
    table.push(parsed).map_err(|e| anyhow::anyhow!(e))?;
    write_private_atomically(path, &table.render())?;
    Ok(token)
}

/// `token revoke`: removes the principal `name`; false when there was none.
pub fn revoke_in_file(path: &Path, name: &str) -> anyhow::Result<bool> {
    let _edit = lock_for_edit(path)?;
    let table = TokenTable::load(path)?;
    let mut kept = TokenTable::default();
    let mut found = false;
    for line in table.lines {
        if line.principal.name == name {
            found = true;
        } else {
            kept.push(line).map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    if found {
        write_private_atomically(path, &kept.render())?;
    }
    Ok(found)
}

fn read_or_empty(path: &Path) -> anyhow::Result<TokenTable> {
    match std::fs::metadata(path) {
        Ok(_) => TokenTable::load(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenTable::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// An exclusive lock on `<path>.lock`, held while a `token` command reads, changes and replaces
/// the file: two edits at once (a revoke beside a provisioning script's add) would otherwise each
/// write back what they read, and one would undo the other (a revoked token back in force).
fn lock_for_edit(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    file.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    Ok(file)
}

/// Warns when users other than the file's owner may write the token file: it holds hashes only,
/// so reading it gives nothing away, but writing it gives any role at the next reload. Checked at
/// start and at every reload.
fn warn_if_writable_by_others(path: &Path) {
    if let Some(mode) = crate::nik_key::open_to_others(path, 0o022) {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the token file can be written by other users: they could give themselves any role at the next reload; chmod 0600 (or 0644)");
    }
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`, so a server
/// reloading at the same moment reads either the old file or the new one. A new file gets mode
/// 0600; a file that exists keeps who may read it and (when this process may set it) its owner,
/// so a file an operator made readable to the server's user stays readable after an edit, but
/// no one but its owner may write it any more, and special bits go.
fn write_private_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    // A new file of a name nobody could guess, never one that exists: in a shared directory
    // another user could otherwise have made the file first and kept it open to write into.
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(
        ".tmp{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    #[cfg(unix)]
    if let Ok(existing) = std::fs::metadata(path) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // The file keeps who may read it, but no one else may write it any more: whoever can
        // write it can give themselves any role at the next reload.
        let mode = existing.permissions().mode() & 0o755;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        // Only root may give a file away; anyone else keeps their own (as before).
        let _ = std::os::unix::fs::fchown(&file, Some(existing.uid()), Some(existing.gid()));
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    // The new name durable before the change is reported: after a power loss a revoked token
    // must not be back in the file.
    crate::nik_key::sync_directory_of(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_pasted_into_a_column_is_not_repeated_in_the_error() {
        let token = new_token();
        let hash = format!("sha256:{}", "ab".repeat(32));
        for line in [
            format!("{token} admin * * {hash}"),
            format!("ops {token} * * {hash}"),
            format!("ops counter {token} * {hash}"),
            format!("ops counter 3275 {token} {hash}"),
        ] {
            let err = TokenLine::parse(&line).expect_err("a bad field");
            assert!(!err.contains(&token), "{err}");
            assert!(err.contains("(a token: not shown)"), "{err}");
        }
        // Other bad fields are shown, so the operator can find them.
        let err = TokenLine::parse(&format!("ops cashier * * {hash}")).expect_err("a bad role");
        assert!(err.contains("'cashier'"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn an_edit_keeps_who_may_read_the_file_but_not_others_write_and_edits_wait_for_each_other() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.txt");
        add_to_file(&path, "ops", Role::Admin, None, None).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "a new file is private");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        add_to_file(&path, "loket-1", Role::Counter, Some("3275"), None).unwrap();
        assert_eq!(mode(&path), 0o644, "kept after an add");
        assert!(revoke_in_file(&path, "ops").unwrap());
        assert_eq!(mode(&path), 0o644, "kept after a revoke");
        // Write access for others is taken away by an edit (it gives any role), read kept.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        add_to_file(&path, "loket-2", Role::Counter, Some("3275"), None).unwrap();
        assert_eq!(mode(&path), 0o644, "no longer writable by others");
        assert!(revoke_in_file(&path, "loket-2").unwrap());
        // Eight adds at once: every one of them is in the file.
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    add_to_file(
                        &path,
                        &format!("loket-{}", 10 + i),
                        Role::Counter,
                        Some("3275"),
                        None,
                    )
                    .unwrap()
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let table = TokenTable::load(&path).unwrap();
        assert_eq!(table.lines.len(), 9, "loket-1 and the eight");
    }

    #[test]
    fn a_file_round_trips_and_tokens_map_to_principals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let t1 = add_to_file(&path, "loket-1", Role::Counter, Some("3275"), Some("mpp")).unwrap();
        let t2 = add_to_file(&path, "ops", Role::Admin, None, None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t1) && !text.contains(&t2), "{text}");
        let table = TokenTable::load(&path).unwrap();
        let p = table.principal_of(&t1).unwrap();
        assert_eq!(p.role, Role::Counter);
        assert_eq!(p.service_points, Some(vec!["mpp".to_string()]));
        assert_eq!(table.principal_of(&t2).unwrap().name, "ops");
        assert!(table.principal_of("blk_nope").is_none());
        assert!(add_to_file(&path, "ops", Role::Admin, None, None).is_err());
        assert!(revoke_in_file(&path, "loket-1").unwrap());
        assert!(!revoke_in_file(&path, "loket-1").unwrap());
        let table = TokenTable::load(&path).unwrap();
        assert!(table.principal_of(&t1).is_none());
        assert!(table.principal_of(&t2).is_some());
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let err = TokenTable::parse("# c\nx counter 32 * sha256:00\n").unwrap_err();
        assert!(format!("{err}").contains("line 2"), "{err}");
        assert!(TokenLine::parse("a agency 3275 * x").is_err());
        assert!(TokenLine::parse("a supervisor 3275 mpp x").is_err());
        assert!(TokenLine::parse(&format!("a boss * * sha256:{}", "0".repeat(64))).is_err());
        assert!(TokenLine::parse(&format!("a admin * * sha256:{}", "0".repeat(64))).is_ok());
    }
}
