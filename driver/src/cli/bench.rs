//! `cryptvol bench DIR`: flags in, [`crate::bench::run`] out, the table printed and the JSON written.

use std::path::PathBuf;

use crate::bench::BenchOptions;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A directory on the file system to measure; the run works in a subdirectory it removes.
    pub dir: PathBuf,
    /// Bytes of the sequential write and read: a number with an optional K, M or G suffix.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Repetitions of every workload; the figures are their medians.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Do not measure gocryptfs.
    #[arg(long)]
    pub skip_gocryptfs: bool,
}

/// Parses `1G`, `512M`, `64K` or a number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {text}"))?;
    n.checked_shl(shift)
        .filter(|v| *v > 0 && v >> shift == n)
        .ok_or_else(|| format!("size out of range: {text}"))
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    crate::telemetry::init(crate::telemetry::LogFormat::Text, "warn");
    let mut opts = BenchOptions::new(args.dir);
    opts.size = args.size;
    opts.repeat = args.repeat.max(1);
    opts.skip_gocryptfs = args.skip_gocryptfs;
    let report = crate::bench::run(&opts).await.map_err(|e| e.to_string())?;
    println!("{}", report.table());
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("x").is_err());
        assert!(parse_size("0").is_err());
    }
}
