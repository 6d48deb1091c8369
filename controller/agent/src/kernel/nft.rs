//! nftables: every table of sluice's is replaced whole, in one `nft -f`
//! transaction, so there is no moment without its rules and they never
//! interleave with anyone else's.

use std::{io::Write as _, process::Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0} (is nftables installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the ruleset: {0}")]
    Rejected(String),
}

/// Applies `ruleset` (nft syntax) in the caller's network namespace.
pub fn apply(ruleset: &str) -> Result<(), NftError> {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// The start of every ruleset of ours: the table `family name` is dropped
/// (created first, so the delete succeeds whether or not it existed) and
/// then defined anew by what follows.
pub fn replace_table(family: &str, name: &str) -> String {
    format!("add table {family} {name}\ndelete table {family} {name}\n")
}
