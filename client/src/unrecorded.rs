//! The counter screen's list of printed cards whose `c` got no answer, kept in a file as well as
//! on screen: a counter PC that restarts, or a screen closed by mistake, still reminds the
//! officer of them when the screen opens again. Unrecorded, such a hold runs out and its blank,
//! already printed, counts as still in stock. The file holds reservation ids only (no NIK), one
//! a line, and is removed once the list is empty.

use std::path::{Path, PathBuf};

/// Where the list is kept when `--unrecorded-file` is not given: under the user's home
/// directory (`HOME`, or `USERPROFILE` on Windows), one file per office and counter. None
/// without a home directory: the list is then kept on screen only.
pub fn default_path(office: &str, counter: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())?;
    Some(
        PathBuf::from(home)
            .join(".blangko-counter")
            .join(format!("belum-tercatat-{office}-{counter}.txt")),
    )
}

/// A reservation id as the server makes them: 1 to 64 letters, digits, '-', '_' or '.'. A line
/// that is not one (a file edited by hand) is left out.
fn is_reservation_id(line: &str) -> bool {
    !line.is_empty()
        && line.len() <= 64
        && line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The ids kept in `path`, at most `max` (the newest), oldest first; none when there is no file.
pub fn load(path: &Path, max: usize) -> std::io::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut ids: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| is_reservation_id(l)) {
        if !ids.iter().any(|id| id == line) {
            ids.push(line.to_string());
        }
    }
    let skip = ids.len().saturating_sub(max);
    Ok(ids.split_off(skip))
}

/// Keeps `ids` in `path`: written whole under a name of its own, then renamed, so that a crash
/// never leaves half a list; removed when `ids` is empty.
pub fn save(path: &Path, ids: &[String]) -> std::io::Result<()> {
    if ids.is_empty() {
        return match std::fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let mut text = ids.join("\n");
    text.push('\n');
    let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_kept_read_back_bounded_and_removed_when_empty() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub").join("list.txt");
        assert_eq!(load(&path, 16)?, Vec::<String>::new());
        let ids: Vec<String> = ["R0001", "R0002", "R0003"].map(String::from).to_vec();
        save(&path, &ids)?;
        assert_eq!(load(&path, 16)?, ids);
        // The newest two when fewer are kept; a line that is no id (edited by hand) and a
        // repeated one are left out.
        std::fs::write(&path, "R0001\n\nnot an id!\nR0002\nR0001\nR0003\n")?;
        assert_eq!(load(&path, 2)?, ["R0002", "R0003"]);
        save(&path, &[])?;
        assert!(!path.exists());
        save(&path, &[])?;
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap_or(dir.path()))?.collect();
        assert!(names.is_empty(), "a working file was left: {names:?}");
        Ok(())
    }

    #[test]
    fn the_default_file_is_per_office_and_counter_under_the_home_directory() {
        if let Some(path) = default_path("3275", "loket-1") {
            assert!(path.ends_with(".blangko-counter/belum-tercatat-3275-loket-1.txt"));
        }
    }
}
