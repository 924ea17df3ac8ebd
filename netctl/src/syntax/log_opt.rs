//! `--log-opt max-size=SIZE` and `--log-opt max-file=N`, as Docker's json-file
//! driver takes them.

/// One `--log-opt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOpt {
    /// `max-size=SIZE`: bytes per log file.
    MaxSize(u64),
    /// `max-file=N`: log files kept.
    MaxFile(u32),
}

/// Parses `max-size=10m` (k, m, g suffixes as Docker takes them) or
/// `max-file=3`.
pub fn parse_log_opt(text: &str) -> Result<LogOpt, String> {
    match text.split_once('=') {
        Some(("max-size", size)) => {
            let lower = size.to_ascii_lowercase();
            let (digits, unit) = match lower.trim_end_matches('b').char_indices().last() {
                Some((i, c @ ('k' | 'm' | 'g'))) => (&lower[..i], c),
                _ => (lower.trim_end_matches('b'), ' '),
            };
            let factor = match unit {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => 1,
            };
            let number: u64 =
                digits.parse().map_err(|_| format!("invalid log size {size:?}: expected e.g. 10m"))?;
            Ok(LogOpt::MaxSize(number.saturating_mul(factor)))
        }
        Some(("max-file", count)) => match count.parse() {
            Ok(n) if n >= 1 => Ok(LogOpt::MaxFile(n)),
            _ => Err(format!("invalid max-file {count:?}: expected a positive integer")),
        },
        _ => Err(format!("unsupported log option {text:?}: expected max-size=SIZE or max-file=N")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_take_dockers_sizes() {
        assert_eq!(parse_log_opt("max-size=10m"), Ok(LogOpt::MaxSize(10 << 20)));
        assert_eq!(parse_log_opt("max-size=64k"), Ok(LogOpt::MaxSize(64 << 10)));
        assert_eq!(parse_log_opt("max-size=1G"), Ok(LogOpt::MaxSize(1 << 30)));
        assert_eq!(parse_log_opt("max-size=5000"), Ok(LogOpt::MaxSize(5000)));
        assert_eq!(parse_log_opt("max-file=5"), Ok(LogOpt::MaxFile(5)));
        for bad in ["max-size=ten", "max-file=0", "compress=true", "max-size"] {
            assert!(parse_log_opt(bad).is_err(), "{bad}");
        }
    }
}
