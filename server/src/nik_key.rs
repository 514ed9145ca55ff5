//! The key that turns a NIK into a keyed hash (HMAC-SHA-256). The database stores only that hash
//! and the masked form: a NIK has few enough possible values that a plain hash could be reversed
//! by trying them all, while the keyed hash cannot without the key.
//!
//! Every replica of one deployment must use the same key, or one person could hold a blank at
//! each replica: with PostgreSQL the key must come from a file or the environment. A single
//! SQLite server generates one on first start, beside the database, readable by its owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Key length in bytes.
pub const KEY_LEN: usize = 32;

/// The HMAC key.
#[derive(Clone)]
pub struct NikKey {
    key: [u8; KEY_LEN],
    /// HMAC-SHA-256 with the key already absorbed: each hash clones it instead of keying a new
    /// one (two of a short message's four SHA-256 blocks, on every Reserve twice).
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for NikKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NikKey(***)")
    }
}

impl NikKey {
    /// A key from 64 hex characters.
    pub fn from_hex(text: &str) -> anyhow::Result<NikKey> {
        let bytes = hex::decode(text.trim()).context("the NIK key must be 64 hex characters")?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("the NIK key must be 64 hex characters (32 bytes)"))?;
        Ok(NikKey::new(key))
    }

    fn new(key: [u8; KEY_LEN]) -> NikKey {
        // HMAC accepts keys of any length, so this cannot fail for our 32-byte key.
        let keyed = match <Hmac<Sha256> as Mac>::new_from_slice(&key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA-256 takes keys of any length"),
        };
        NikKey { key, keyed }
    }

    /// A fresh random key.
    pub fn generate() -> NikKey {
        NikKey::new(rand::random())
    }

    /// Reads the key file, or creates it (mode 0600) when `create` is true and it is missing.
    pub fn load_or_create(path: &Path, create: bool) -> anyhow::Result<NikKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(mode) = open_to_others(path, 0o077) {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the NIK key file can be read or written by other users: with it and a copy of the database they can recover NIKs; chmod 0600 (or 0400) and give it to the server's user");
                }
                NikKey::from_hex(&text)
                    .with_context(|| format!("bad NIK key file {}", path.display()))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && create => {
                let key = NikKey::generate();
                write_private(path, crate::lower_hex(&key.key).as_bytes())?;
                tracing::info!(path = %path.display(), "generated a new NIK hashing key");
                Ok(key)
            }
            Err(err) => {
                Err(err).with_context(|| format!("cannot read the NIK key file {}", path.display()))
            }
        }
    }

    /// The keyed hash of a NIK (hex).
    pub fn hash_nik(&self, nik: &str) -> String {
        self.mac(&[b"nik\0", nik.as_bytes()])
    }

    /// The fingerprint of a request's content, for idempotency (keyed, because the content may
    /// carry a NIK).
    pub fn fingerprint(&self, method: &str, encoded_request: &[u8]) -> String {
        self.mac(&[b"req\0", method.as_bytes(), b"\0", encoded_request])
    }

    /// A keyed hash of a fixed text: tells this key from another without revealing it.
    pub fn check_fingerprint(&self) -> String {
        self.mac(&[b"key-check\0"])
    }

    /// The form in which a caller's request id is stored and looked up: scoped to the caller
    /// (its principal, [`SCOPE_SEPARATOR`], the id), so that two agencies' clients that pick the
    /// same simple id ("r1") never meet, and a retry, which comes from the same caller, still
    /// finds its first answer. An id that holds 16 or more digits, in a row or split by anything
    /// people or programs put inside a NIK (`3275-0141-0190-0001`, `3275_0141_0190_0001`, a
    /// no-break space: it could hold a NIK) is kept as `#` and a keyed hash of the caller and the
    /// id instead, so that no NIK is stored even when a client builds its request ids from one.
    /// Ids stored in clear before underscores and every whitespace counted are hashed at start
    /// ([`crate::upgrades`]), so a retry after the upgrade still finds its answer.
    pub fn request_key(&self, principal: &str, request_id: &str) -> String {
        if crate::domain::nik::has_nik_stretch_any_separator(request_id) {
            format!(
                "#{}",
                self.mac(&[
                    b"request-id\0",
                    principal.as_bytes(),
                    b"\0",
                    request_id.as_bytes()
                ])
            )
        } else {
            format!("{principal}{SCOPE_SEPARATOR}{request_id}")
        }
    }

    /// The key an older server stored `key`'s request under, before keys were scoped to their
    /// caller: the id alone. None for a hashed key: its id is not kept, so its older form cannot
    /// be derived (a retry of such an id across the upgrade is decided again). Looked up when
    /// the scoped key finds nothing, so that a retry across an upgrade still finds its first
    /// answer until the retention purge removes the old rows. It can never find a row this
    /// server wrote: those all hold the separator, a control character no request id may hold.
    pub fn unscoped_request_key(key: &str) -> Option<&str> {
        if key.starts_with('#') {
            return None;
        }
        key.split_once(SCOPE_SEPARATOR).map(|(_, id)| id)
    }

    /// The caller's own request id in a stored key, for messages: the id without its scope, or
    /// `#…` for a hashed one.
    pub fn shown_request_id(key: &str) -> &str {
        key.split_once(SCOPE_SEPARATOR).map_or(key, |(_, id)| id)
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.keyed.clone();
        for part in parts {
            mac.update(part);
        }
        crate::lower_hex(&mac.finalize().into_bytes())
    }
}

/// Between a request key's principal and the caller's id: the ASCII unit separator, a control
/// character, which request ids may not contain (`validate::Checker::text`), so a scoped key
/// never equals an id an older server stored unscoped.
pub const SCOPE_SEPARATOR: char = '\u{1f}';

/// Where a SQLite server keeps its generated key: `blangko.db` → `blangko.db.nikkey`.
pub fn default_key_path(database_path: &Path) -> PathBuf {
    let mut name = database_path.as_os_str().to_owned();
    name.push(".nikkey");
    PathBuf::from(name)
}

/// The file's permission bits when any of `others` (e.g. 0o077: group and others, any access)
/// is set; None otherwise, or where there are no such bits.
pub(crate) fn open_to_others(path: &Path, others: u32) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & others != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, others);
        None
    }
}

/// Creates `path` (never overwriting) readable by its owner only (0600), writes `bytes` and
/// syncs them to disk, the file's name in its directory included: for key files.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    sync_directory_of(path)?;
    Ok(())
}

/// The directory that holds `path` (`.` for a bare file name).
pub(crate) fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsyncs the directory that holds `path`: a file created or renamed there keeps its name after
/// a power loss only once its directory is synced (the file's own fsync does not cover it).
/// Where directories cannot be synced (not Unix) it does nothing.
pub(crate) fn sync_directory_of(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let dir = directory_of(path);
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn files_open_to_other_users_are_told_apart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, b"x").unwrap();
        let chmod = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        chmod(0o600);
        assert_eq!(open_to_others(&path, 0o077), None);
        chmod(0o644);
        assert_eq!(
            open_to_others(&path, 0o077),
            Some(0o644),
            "readable by others"
        );
        assert_eq!(open_to_others(&path, 0o022), None, "but not writable");
        chmod(0o664);
        assert_eq!(open_to_others(&path, 0o022), Some(0o664));
        assert_eq!(open_to_others(&dir.path().join("missing"), 0o077), None);
    }

    #[test]
    fn a_hash_is_hmac_sha256_of_its_parts_so_stored_hashes_stay_valid() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut key = [0u8; KEY_LEN];
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            crate::lower_hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The keyed state the key keeps gives what a fresh HMAC of the same parts gives, for
        // every hash it makes (a NIK's hash is stored: it must not change between versions).
        key[..4].copy_from_slice(b"Jefe");
        let key = NikKey::from_hex(&crate::lower_hex(&key)).unwrap();
        let fresh = |parts: &[&[u8]]| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.key).unwrap();
            for part in parts {
                mac.update(part);
            }
            crate::lower_hex(&mac.finalize().into_bytes())
        };
        assert_eq!(
            key.hash_nik("3275014101900001"),
            fresh(&[b"nik\0", b"3275014101900001"])
        );
        assert_eq!(
            key.fingerprint("Reserve", b"abc"),
            fresh(&[b"req\0Reserve\0abc"])
        );
        assert_eq!(
            key.hash_nik("x"),
            key.hash_nik("x"),
            "the state is not used up"
        );
    }

    #[test]
    fn request_ids_are_scoped_to_their_caller_and_those_that_could_hold_a_nik_are_hashed() {
        let key = NikKey::generate();
        let plain = "py-4f1c2a9e-7d3b-4c1e-9a2f-0123456789ab";
        assert_eq!(
            key.request_key("loket-1", plain),
            format!("loket-1\u{1f}{plain}")
        );
        assert_eq!(
            NikKey::shown_request_id(&key.request_key("loket-1", plain)),
            plain
        );
        // A caller's id that spells another's scope is not that scope.
        assert_eq!(NikKey::unscoped_request_key("loket-1:r1"), None);
        assert_ne!(
            key.request_key("loket-1", "r1"),
            key.request_key("dinas-x", "r1")
        );
        assert_eq!(
            NikKey::unscoped_request_key(&key.request_key("loket-1", "a:b")),
            Some("a:b")
        );
        let with_nik = "q-3275-mpp-3275014101900001";
        let stored = key.request_key("loket-1", with_nik);
        assert!(stored.starts_with('#') && stored.len() == 65, "{stored}");
        assert!(!stored.contains("3275014101900001"));
        assert_eq!(NikKey::unscoped_request_key(&stored), None);
        assert_eq!(
            key.request_key("loket-1", with_nik),
            stored,
            "a retry finds it"
        );
        assert_ne!(key.request_key("loket-2", with_nik), stored, "scoped");
        assert_ne!(
            NikKey::generate().request_key("loket-1", with_nik),
            stored,
            "keyed"
        );
        // Typed with separators, as a NIK usually is.
        let split = key.request_key("loket-1", "q-3275-0141-0190-0001");
        assert!(split.starts_with('#') && !split.contains("0141"), "{split}");
    }

    #[test]
    fn the_same_key_gives_the_same_hash_and_another_key_another() {
        let a = NikKey::from_hex(&"11".repeat(32)).unwrap();
        let b = NikKey::from_hex(&"22".repeat(32)).unwrap();
        assert_eq!(
            a.hash_nik("3275014101900001"),
            a.hash_nik("3275014101900001")
        );
        assert_ne!(
            a.hash_nik("3275014101900001"),
            b.hash_nik("3275014101900001")
        );
        assert!(!a.hash_nik("3275014101900001").contains("3275014101900001"));
    }

    #[test]
    fn generated_key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let first = NikKey::load_or_create(&path, true).unwrap();
        let again = NikKey::load_or_create(&path, false).unwrap();
        assert_eq!(first.hash_nik("x"), again.hash_nik("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(NikKey::load_or_create(&dir.path().join("missing"), false).is_err());
        assert!(NikKey::from_hex("abc").is_err());
    }
}
