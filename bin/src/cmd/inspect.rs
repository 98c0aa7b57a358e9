//! `cairn inspect`: list the records of a data directory, or verify every checksum.
//!
//! Reads the segment files directly without taking the directory's lock, so it is safe to point at a
//! live node's directory (records appended while it reads may or may not be shown).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

/// Arguments of `cairn inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node's data directory.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: PathBuf,
    /// Check the CRC of every record and hint file; print a summary and exit 1 on any corruption.
    #[arg(long)]
    verify: bool,
    /// Print at most this many records.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object per record instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let dir = crate::cmd::node::engine_dir_of(&args.data_dir)?;
    if args.verify {
        let report =
            cairn_engine::verify(&dir).with_context(|| format!("verifying {}", dir.display()))?;
        println!("{report}");
        return Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let records =
        cairn_engine::inspect(&dir).with_context(|| format!("reading {}", dir.display()))?;
    if !args.json {
        println!(
            "{:>10} {:>12}  {:<10} {:<8} {:>6} {:>9}  {:<4}  key",
            "segment", "offset", "type", "keyspace", "keylen", "valuelen", "crc"
        );
    }
    let mut bad = 0usize;
    for (i, r) in records.enumerate() {
        if args.limit.is_some_and(|l| i >= l) {
            break;
        }
        if !r.crc_ok {
            bad += 1;
        }
        if args.json {
            println!("{}", r.to_json());
        } else {
            println!(
                "{:>10} {:>12}  {:<10} {:<8} {:>6} {:>9}  {:<4}  {}",
                r.segment,
                r.offset,
                r.kind,
                r.keyspace,
                r.key.len(),
                r.value_len,
                if r.crc_ok { "ok" } else { "BAD" },
                printable(&r.key)
            );
        }
    }
    if bad > 0 {
        eprintln!("{bad} record(s) failed their checksum");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows a key as text where it is printable ASCII and `\xNN` escapes elsewhere.
fn printable(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn keys_with_binary_bytes_are_escaped() {
        assert_eq!(printable(b"photos/cat.jpg"), "photos/cat.jpg");
        assert_eq!(printable(b"a\0b\xff"), "a\\x00b\\xff");
    }
}
