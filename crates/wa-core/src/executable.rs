//! Finding wa-ingest's other executable: `wa-ingest` runs `wa-ingest-tools`
//! for `loadgen` and `bench`, and the bench runs `wa-ingest` for the roles.
//! Only the folder of the running executable counts, so the two always come
//! from the same build (never an older copy elsewhere on `PATH`).

use std::path::PathBuf;

/// The folder of the running executable.
pub fn own_folder() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.to_path_buf())
}

/// `name` beside the running executable, if it is there.
pub fn find_companion(name: &str) -> Option<PathBuf> {
    Some(own_folder()?.join(name)).filter(|path| path.is_file())
}

/// The error of a missing companion: where it was looked for and how to build it.
pub fn missing_companion(name: &str, needed_for: &str) -> String {
    let folder = own_folder().map_or_else(
        || "the folder of this executable".to_owned(),
        |folder| folder.display().to_string(),
    );
    format!(
        "{needed_for} needs {name} beside this executable, and {folder} has none: build it with \
         `cargo build --release --locked -p {name}` (or the same profile as this binary) so that \
         both land in the same target folder"
    )
}
